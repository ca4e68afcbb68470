// A slash in a branch name inside a connection URL, as each client reads it. Branch names come from
// git (feature/login-v3); the README's rule, shown here: write the slash as it is. `%2F` is a slash
// only to clients that percent-decode the database name (libpq, so psql and psycopg; JDBC), while
// node-postgres and postgres.js pass it on as three characters and make another branch.
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, psql, queryOnce } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

let proxy: PgbranchProcess;
/** The URL up to the database name, which each test writes out itself. */
let base: string;

beforeAll(async () => {
  proxy = await startPgbranch();
  base = `postgres://postgres:${encodeURIComponent(proxy.password)}@127.0.0.1:${proxy.port}`;
  await queryOnce(proxy.url('postgres'), 'create database app');
});

afterAll(async () => {
  await proxy?.stop();
});

/** current_database() as each client sees it when given `url`. */
const clients: Record<string, (url: string) => Promise<string>> = {
  psql: async (url) => {
    const result = await psql(url, 'select current_database()');
    expect(result).toMatchObject({ code: 0 });
    return result.stdout;
  },
  'node-postgres': async (url) => {
    const client = await connect(url);
    try {
      return (await client.query<{ db: string }>('select current_database() as db')).rows[0]!.db;
    } finally {
      await client.end();
    }
  },
  'postgres.js': async (url) => {
    const sql = postgres(url, { max: 1, onnotice: () => undefined });
    try {
      const [row] = await sql<{ db: string }[]>`select current_database() as db`;
      return row!.db;
    } finally {
      await sql.end();
    }
  },
};

describe('a slash in a branch name in a connection URL', () => {
  it.each(Object.keys(clients))('written as it is, reaches the branch through %s', async (name) => {
    expect(await clients[name]!(`${base}/app@feature/login-v3`)).toBe('app@feature/login-v3');
  });

  it('written as %2F, is a slash to psql but three characters to node-postgres and postgres.js', async () => {
    const url = `${base}/app@feature%2Flogin-v3`;
    expect(await clients.psql!(url)).toBe('app@feature/login-v3');
    expect(await clients['node-postgres']!(url)).toBe('app@feature%2Flogin-v3');
    expect(await clients['postgres.js']!(url)).toBe('app@feature%2Flogin-v3');
  });
});
