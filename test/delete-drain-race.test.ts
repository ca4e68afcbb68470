// A client that is still logging in to a branch when the branch is deleted: its first server
// connection is out when the delete disconnects the branch's clients, so it is not among them yet,
// and the delete waits for that connection before it drops the database. The client must then be
// told the branch was deleted (57P01, as every other client of the branch), not find its database
// gone at its first query (3D000). Found by the soak (npm run soak).
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect, psql } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

/** How long a login of role `slow` takes on the server: the window the delete falls into. */
const LOGIN_SECONDS = 3;

let proxy: PgbranchProcess;
let direct: pg.Client;

beforeAll(async () => {
  proxy = await startPgbranch();
  direct = await connect(proxy.directUrl('postgres'));
  await direct.query("create role slow login password 'slow-pw'");
  await direct.query('create database app');
  // A login event trigger (PostgreSQL 17+) that holds role slow's server logins back; branches of
  // app are clones, so they have it too.
  const setup = [
    'create table visits (n int)',
    'grant all on visits to slow',
    `create function slow_login() returns event_trigger language plpgsql as $$
       begin
         if current_user = 'slow' then perform pg_sleep(${LOGIN_SECONDS}); end if;
       end $$`,
    'create event trigger slow_login on login execute function slow_login()',
  ];
  for (const sql of setup) {
    expect(await psql(proxy.directUrl('app'), sql)).toMatchObject({ code: 0 });
  }
});

afterAll(async () => {
  await direct?.end();
  await proxy?.stop();
});

describe('a branch deleted while a client logs in to it', () => {
  it.each(['transaction', 'session'] as const)(
    'tells the %s-mode client the branch was deleted (57P01)',
    async (mode) => {
      const branch = `app@going-${mode}`;
      const created = await fetch(`${proxy.ready.adminUrl}/v1/branches`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name: branch }),
      });
      expect(created.status).toBe(201);

      const client = new pg.Client({
        ...proxy.config(branch, 'slow', 'slow-pw'),
        options: `-c pgbranch.pool_mode=${mode}`,
      });
      let lost: { code?: string; message: string } | undefined;
      client.on('error', (error) => (lost ??= error as { code?: string; message: string }));
      const connecting = client.connect();
      // pgbranch's first server connection for the client is logging in (held by the trigger).
      await vi.waitFor(
        async () => {
          const { rows } = await direct.query(
            'select 1 from pg_stat_activity where usename = $1 and datname = $2',
            ['slow', branch],
          );
          expect(rows).toHaveLength(1);
        },
        { timeout: 30_000, interval: 20 },
      );
      const deleted = await fetch(
        `${proxy.ready.adminUrl}/v1/branches/${encodeURIComponent(branch)}`,
        { method: 'DELETE' },
      );
      expect(deleted.status).toBe(200);

      // Whether the client learns it at login or at its first query, it is the delete's 57P01.
      const failure = await connecting
        .then(() => client.query('select count(*) from visits'))
        .then(
          () => undefined,
          (error: { code?: string; message: string }) => lost ?? error,
        );
      await client.end().catch(() => undefined);
      expect(failure).toMatchObject({
        code: '57P01',
        message: `terminating connection because branch "${branch}" was deleted`,
      });
    },
    120_000,
  );
});
