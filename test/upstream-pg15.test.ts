// Pointing pgbranch at an existing server older than 18 (the machine's PostgreSQL 15): branches are
// copied instead of cloned and pgbranch says why, and everything else works the same.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi, type TestContext } from 'vitest';
import { connectError, psql, queryOnce } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

const UPSTREAM = 'postgres://postgres@127.0.0.1:5432/postgres';
const suffix = randomBytes(4).toString('hex');
/** Everything this file makes on the shared server carries the suffix, and is dropped afterwards. */
const DB = `pgb15_${suffix}`;
const ROLE = `pgb15_user_${suffix}`;
const PASSWORD = `secret-${suffix}`;

let proxy: PgbranchProcess | undefined;
let unavailable: string | undefined;

/** Runs `fn` on a direct connection to the upstream server (bypassing pgbranch). */
async function onUpstream<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: UPSTREAM, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** A client config through the proxy as the test role; database names here need no URL escaping. */
function asRole(database: string, extra: pg.ClientConfig = {}): pg.ClientConfig {
  return {
    host: '127.0.0.1',
    port: proxy!.port,
    user: ROLE,
    password: PASSWORD,
    database,
    ...extra,
  };
}

async function query<T extends pg.QueryResultRow>(config: pg.ClientConfig, sql: string) {
  const client = new pg.Client(config);
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

function requireUpstream(ctx: TestContext): void {
  if (unavailable === undefined) return;
  console.warn(`skipped "${ctx.task.name}": ${unavailable}`);
  ctx.skip(unavailable);
}

beforeAll(async () => {
  try {
    const version = await onUpstream(async (client) => {
      const { rows } = await client.query<{ num: string }>(
        "select current_setting('server_version_num') as num",
      );
      return Number(rows[0]!.num);
    });
    if (version >= 180000)
      unavailable = `the server on 127.0.0.1:5432 is ${version}, not older than 18`;
  } catch (error) {
    unavailable = `no PostgreSQL on 127.0.0.1:5432: ${(error as Error).message}`;
  }
  if (unavailable !== undefined) {
    console.warn(`upstream tests skipped: ${unavailable}`);
    return;
  }
  await onUpstream(async (client) => {
    await client.query("set password_encryption = 'scram-sha-256'");
    await client.query(`create role ${ROLE} login createdb password '${PASSWORD}'`);
  });
  proxy = await startPgbranch({ args: ['--upstream', UPSTREAM] });
  await queryOnce(proxy.url('postgres', ROLE, PASSWORD), `create database ${DB}`);
  const db = new pg.Client(asRole(DB));
  await db.connect();
  await db.query('create table items (id int primary key, name text)');
  await db.query("insert into items select g, 'item ' || g from generate_series(1, 1000) g");
  await db.end();
});

afterAll(async () => {
  await proxy?.stop();
  if (unavailable !== undefined) return;
  await onUpstream(async (client) => {
    const { rows } = await client.query<{ datname: string }>(
      'select datname from pg_database where datname = $1 or starts_with(datname, $2)',
      [DB, `${DB}@`],
    );
    for (const { datname } of rows) {
      await client.query(`drop database "${datname.replace(/"/g, '""')}" with (force)`);
    }
    await client.query(`drop role if exists ${ROLE}`);
  });
});

describe('with PostgreSQL 15 upstream', () => {
  it('copies branches, and says that cloning needs PostgreSQL 18', (ctx) => {
    requireUpstream(ctx);
    expect(proxy!.ready).toMatchObject({
      copyMode: 'copy',
      copyReason: expect.stringMatching(/^PostgreSQL 15\.\S+.* cloning needs PostgreSQL 18/),
      upstream: expect.stringContaining('127.0.0.1:5432'),
    });
  });

  it('still authenticates clients itself, though the server trusts them', async (ctx) => {
    requireUpstream(ctx);
    const rows = await queryOnce(proxy!.url('postgres', ROLE, PASSWORD), 'select current_user');
    expect(rows).toEqual([{ current_user: ROLE }]);
    expect(await connectError(proxy!.url('postgres', ROLE, 'wrong'))).toMatchObject({
      code: '28P01',
      message: `password authentication failed for user "${ROLE}"`,
    });
    const withoutPassword = await psql(proxy!.url('postgres', ROLE), 'select 1', { args: ['-w'] });
    expect(withoutPassword.code).not.toBe(0);
    expect(withoutPassword.stderr).toMatch(/password/);
  });

  it('branches a database made through the proxy by copy, with its data, on first connect', async (ctx) => {
    requireUpstream(ctx);
    const rows = await query<{ db: string; n: number }>(
      asRole(`${DB}@feature-x`),
      'select current_database() as db, count(*)::int as n from items',
    );
    expect(rows).toEqual([{ db: `${DB}@feature-x`, n: 1000 }]);
    // The log line is read from pgbranch's stdout, which may come after the client's answer.
    await vi.waitFor(
      () =>
        expect(proxy!.events('branch_created').some((e) => e.branch === 'feature-x')).toBe(true),
      { timeout: 10_000 },
    );
    const event = proxy!.events('branch_created').find((e) => e.branch === 'feature-x');
    expect(event).toMatchObject({
      root: DB,
      mode: 'copy',
      user: ROLE,
      cloneMs: expect.any(Number),
      totalMs: expect.any(Number),
    });
    console.info(
      `copy on PostgreSQL 15: ${String(event!.cloneMs)} ms (${String(event!.totalMs)} ms in all)`,
    );
  });

  it('keeps writes in the branch or the parent that made them', async (ctx) => {
    requireUpstream(ctx);
    await query(asRole(`${DB}@isolated`), "insert into items values (1001, 'branch only')");
    await query(asRole(DB), "insert into items values (1002, 'parent only')");
    const inBranch = await query<{ id: number }>(
      asRole(`${DB}@isolated`),
      'select id from items where id > 1000',
    );
    const inParent = await query<{ id: number }>(
      asRole(DB),
      'select id from items where id > 1000',
    );
    expect(inBranch).toEqual([{ id: 1001 }]);
    expect(inParent).toEqual([{ id: 1002 }]);
    await query(asRole(DB), 'delete from items where id = 1002');
  });

  it('takes a 200-character branch name, and finds the same branch by it again', async (ctx) => {
    requireUpstream(ctx);
    const branch = `feature/${'a-long-branch-name-'.repeat(11)}`.slice(0, 200);
    expect(branch).toHaveLength(200);
    await query(asRole(`${DB}@${branch}`), 'create table marker (x int)');
    const rows = await query<{ db: string; found: boolean }>(
      asRole(`${DB}@${branch}`),
      "select current_database() as db, to_regclass('marker') is not null as found",
    );
    expect(rows[0]!.found).toBe(true);
    expect(rows[0]!.db.startsWith(`${DB}@feature/`)).toBe(true);
    expect(Buffer.byteLength(rows[0]!.db)).toBeLessThanOrEqual(63);
    expect(proxy!.events('branch_created').filter((e) => e.branch === branch)).toHaveLength(1);
  });

  it('takes the branch from options=-c pgbranch.branch=...', async (ctx) => {
    requireUpstream(ctx);
    const rows = await query<{ db: string; n: number }>(
      asRole(DB, { options: '-c pgbranch.branch=from-options' }),
      'select current_database() as db, count(*)::int as n from items',
    );
    expect(rows).toEqual([{ db: `${DB}@from-options`, n: 1000 }]);
  });
});

describe('instance branches of a PostgreSQL 15 upstream on this host', () => {
  it('copies the running server with its own major version, and keeps branch and server apart', async (ctx) => {
    requireUpstream(ctx);
    const instances = await startPgbranch({
      args: ['--upstream', UPSTREAM, '--branch-provider', 'instance'],
    });
    try {
      expect(instances.ready).toMatchObject({ provider: 'instance' });
      // A session held on the parent, through pgbranch, does not stand in the way.
      const held = new pg.Client({ ...asRole(DB), port: instances.port });
      await held.connect();
      await held.query('begin');
      await held.query('select count(*) from items');
      const branch = new pg.Client({ ...asRole(`${DB}@inst-1`), port: instances.port });
      await branch.connect();
      const { rows } = await branch.query<{ n: number; version: string }>(
        "select count(*)::int as n, current_setting('server_version_num') as version from items",
      );
      expect(rows[0]).toMatchObject({ n: 1000, version: expect.stringMatching(/^15/) });
      await branch.query("insert into items values (5000, 'only in the branch')");
      await branch.end();
      await held.query('commit');
      await held.end();
      // The server itself, through the first pgbranch (database provider): not there.
      const direct = new pg.Client(asRole(DB));
      await direct.connect();
      expect(
        (await direct.query('select count(*)::int as n from items where id = 5000')).rows,
      ).toEqual([{ n: 0 }]);
      await direct.end();
    } finally {
      await instances.stop();
    }
  });
});

describe('pg_dump through transaction mode', () => {
  it('dumps the same database twice in a row: the statements it prepares with SQL stay its own', async (ctx) => {
    requireUpstream(ctx);
    await query(asRole(DB), 'create table if not exists dumped (id int primary key, name text)');
    for (let i = 0; i < 3; i++) {
      const { code, stdout, stderr } = await run(
        'pg_dump',
        ['--schema-only', proxy!.url(DB, ROLE, PASSWORD)],
        {
          PGOPTIONS: '-c pgbranch.pool_mode=transaction',
        },
      );
      expect(stderr).toBe('');
      expect(code).toBe(0);
      expect(stdout).toContain('CREATE TABLE public.dumped');
    }
  });
});

function run(
  command: string,
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
