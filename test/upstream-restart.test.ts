// The server behind pgbranch killed or restarted while clients work: they get errors only for the
// work in flight, later clients are served without restarting pgbranch, and pgbranch keeps no
// server connection that the server does not have, nor the other way round. The embedded server
// is started again by pgbranch itself when it dies.
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { connect } from './support/clients.js';
import { ownServer, type OwnServer } from './support/own-server.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';

const started: PgbranchProcess[] = [];
const servers: OwnServer[] = [];
afterAll(async () => {
  await Promise.all(started.map((proxy) => proxy.stop()));
  await Promise.all(servers.map((server) => server.remove()));
});

/** What the server may answer while it goes away and comes back. */
const DOWNTIME_CODES = ['57P01', '57P02', '57P03', '08006', '08003', '08001'];

interface Worker {
  mode: 'session' | 'transaction';
  served: number;
  errors: { code?: string; message: string }[];
}

/**
 * Clients that connect, run a few queries and leave, over and over, half in session mode and half
 * in transaction mode, until `stop()`; each counts sessions served and errors.
 */
function load(settings: pg.ClientConfig, count: number) {
  let stopping = false;
  const workers: Worker[] = Array.from({ length: count }, (_, i) => ({
    mode: i % 2 === 0 ? 'session' : 'transaction',
    served: 0,
    errors: [],
  }));
  const loops = workers.map(async (worker) => {
    while (!stopping) {
      const client = new pg.Client({
        ...settings,
        options: `-c pgbranch.pool_mode=${worker.mode}`,
      });
      // An error between queries (the connection closed, with or without a FATAL) comes as an
      // event; the next query then fails with a message that only says the client is broken.
      let broken: { code?: string; message: string } | undefined;
      client.on('error', (error) => (broken ??= error as { code?: string; message: string }));
      try {
        await client.connect();
        for (let i = 0; i < 3; i++) await client.query('select pg_sleep(0.002)');
        worker.served++;
      } catch (error) {
        const e = broken ?? (error as { code?: string; message: string });
        worker.errors.push({ code: e.code, message: e.message });
      } finally {
        await client.end().catch(() => undefined);
      }
    }
  });
  return {
    workers,
    /** Resolves once every worker has been served `more` more times than when called. */
    async servedAgain(more: number, timeout = 60_000): Promise<void> {
      const from = workers.map((worker) => worker.served);
      await vi.waitFor(
        () =>
          workers.forEach((worker, i) =>
            expect(worker.served).toBeGreaterThan(from[i]! + more - 1),
          ),
        { timeout, interval: 20 },
      );
    },
    async stop(): Promise<void> {
      stopping = true;
      await Promise.all(loops);
    },
  };
}

/**
 * Waits until SHOW SERVERS and the server's pg_stat_activity name the same backends: every server
 * connection pgbranch holds exists, and every client backend on the server (but pgbranch's own
 * administrative ones, and this check's) is one that pgbranch holds.
 */
async function serversAgree(
  proxy: PgbranchProcess,
  directUrl: string,
  password = proxy.password,
): Promise<number> {
  const console = await connect(proxy.config('pgbranch', 'postgres', password));
  const direct = await connect(directUrl);
  let held: number[] = [];
  try {
    await vi.waitFor(
      async () => {
        const shown = await console.query<{ pid: string }>('SHOW SERVERS');
        const onServer = await direct.query<{ pid: number }>(
          `select pid from pg_stat_activity
            where backend_type = 'client backend' and pid <> pg_backend_pid()
              and application_name is distinct from 'pgbranch'`,
        );
        held = shown.rows.map((row) => Number(row.pid)).sort();
        expect(onServer.rows.map((row) => row.pid).sort()).toEqual(held);
      },
      { timeout: 20_000, interval: 100 },
    );
  } finally {
    await console.end();
    await direct.end();
  }
  return held.length;
}

function expectOnlyDowntimeErrors(workers: Worker[]): void {
  for (const worker of workers) {
    for (const error of worker.errors) {
      expect(DOWNTIME_CODES, `${worker.mode}: ${error.message}`).toContain(error.code);
    }
  }
}

describe('the embedded server', () => {
  it('killed with SIGKILL under load is started again; only the work in flight fails, and no server connection leaks', async () => {
    const proxy = await startPgbranch({ args: ['--pool-size', '4'] });
    started.push(proxy);
    const settings = proxy.config('postgres');
    const work = load(settings, 6);
    await work.servedAgain(3);

    const pidFile = path.join(proxy.dataDir, 'pg', 'postmaster.pid');
    const killed = Number(fs.readFileSync(pidFile, 'utf8').split('\n')[0]);
    process.kill(killed, 'SIGKILL');
    await vi.waitFor(() => expect(proxy.events('embedded_server_restarted')).toHaveLength(1), {
      timeout: 60_000,
      interval: 50,
    });
    expect(proxy.events('embedded_server_exited')).toMatchObject([{ serverPid: killed }]);

    await work.servedAgain(3);
    await work.stop();
    expectOnlyDowntimeErrors(work.workers);
    // A client fails only for what it had in flight when the server died: once, at most.
    for (const worker of work.workers) {
      expect(worker.errors.length, JSON.stringify(worker.errors)).toBeLessThanOrEqual(1);
    }
    expect(proxy.child.exitCode).toBeNull();

    expect(await serversAgree(proxy, proxy.directUrl('postgres'))).toBeGreaterThan(0);
  }, 180_000);
});

describe('the embedded server killed while a branch is being made', () => {
  it('fails that creation and nothing else: pgbranch keeps running and makes the next one', async () => {
    // A branch script that takes its time holds the creation open at a known moment.
    const scripts = tempDir('slow-script');
    fs.writeFileSync(path.join(scripts, 'slow.sql'), 'select pg_sleep(60)');
    const proxy = await startPgbranch({
      args: ['--branch-scripts', `app@slow-*=${path.join(scripts, 'slow.sql')}`],
    });
    started.push(proxy);
    try {
      const admin = await connect(proxy.directUrl('postgres'));
      await admin.query('create database app');
      const creation = fetch(`${proxy.ready.adminUrl}/v1/branches`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'app@slow-1' }),
      });
      await vi.waitFor(
        async () => {
          const { rows } = await admin.query(
            "select 1 from pg_stat_activity where query = 'select pg_sleep(60)'",
          );
          expect(rows).toHaveLength(1);
        },
        { timeout: 60_000, interval: 50 },
      );
      await admin.end();

      const pidFile = path.join(proxy.dataDir, 'pg', 'postmaster.pid');
      process.kill(Number(fs.readFileSync(pidFile, 'utf8').split('\n')[0]), 'SIGKILL');
      const answer = await creation;
      expect(answer.status).toBeGreaterThanOrEqual(500);
      await vi.waitFor(() => expect(proxy.events('embedded_server_restarted')).toHaveLength(1), {
        timeout: 60_000,
        interval: 50,
      });

      expect(proxy.child.exitCode).toBeNull();
      const client = await connect(proxy.config('app@after-restart'));
      expect((await client.query('select current_database() as db')).rows).toEqual([
        { db: 'app@after-restart' },
      ]);
      await client.end();
    } finally {
      fs.rmSync(scripts, { recursive: true, force: true });
    }
  }, 180_000);
});

describe('an external upstream', () => {
  it('restarted under load serves clients again, with no server connection leaked', async () => {
    const server = await ownServer();
    servers.push(server);
    const proxy = await startPgbranch({ args: ['--upstream', server.url(), '--pool-size', '4'] });
    started.push(proxy);
    const work = load(proxy.config('postgres', 'postgres', server.password), 6);
    await work.servedAgain(3);

    await server.stop('fast');
    await server.start();

    await work.servedAgain(3);
    await work.stop();
    expectOnlyDowntimeErrors(work.workers);
    expect(await serversAgree(proxy, server.url(), server.password)).toBeGreaterThan(0);
  }, 180_000);

  it('killed with SIGKILL under load and started again serves clients again, with no server connection leaked', async () => {
    const server = await ownServer();
    servers.push(server);
    const proxy = await startPgbranch({ args: ['--upstream', server.url(), '--pool-size', '4'] });
    started.push(proxy);
    const work = load(proxy.config('postgres', 'postgres', server.password), 6);
    await work.servedAgain(3);

    await server.kill();
    await server.start();

    await work.servedAgain(3);
    await work.stop();
    expectOnlyDowntimeErrors(work.workers);
    expect(await serversAgree(proxy, server.url(), server.password)).toBeGreaterThan(0);
  }, 180_000);
});

/** The error a client's query or connect failed with: node-postgres's code and message. */
async function failure(work: Promise<unknown>): Promise<{ code?: string; message: string }> {
  try {
    await work;
  } catch (error) {
    return { code: (error as { code?: string }).code, message: (error as Error).message };
  }
  throw new Error('it did not fail');
}

/** Databases on the server whose names start with `prefix`, from pg_database. */
async function databasesOn(server: OwnServer, prefix: string): Promise<string[]> {
  const direct = await connect(server.url());
  try {
    const { rows } = await direct.query<{ datname: string }>(
      'select datname from pg_database where starts_with(datname, $1) order by 1',
      [prefix],
    );
    return rows.map((row) => row.datname);
  } finally {
    await direct.end();
  }
}

describe('an external upstream that fails', () => {
  let server: OwnServer;
  let proxy: PgbranchProcess;
  const settings = (database = 'app', mode = 'session') => ({
    ...proxy.config(database, 'postgres', server.password),
    options: `-c pgbranch.pool_mode=${mode}`,
  });

  it('refusing connections (stopped) gets clients 08006 naming the server, and serves them once it is back', async () => {
    server = await ownServer();
    servers.push(server);
    const setup = await connect(server.url());
    await setup.query('create database app');
    await setup.end();
    proxy = await startPgbranch({
      args: ['--upstream', server.url(), '--pool-connect-retries', '1'],
    });
    started.push(proxy);
    // A connection pgbranch has pooled already, and a login that needs the server anew.
    await (await connect(settings())).end();
    await server.stop('fast');

    for (const mode of ['session', 'transaction']) {
      const refused = await failure(connect(settings('app', mode)));
      expect(refused).toEqual({
        code: '08006',
        message: `pgbranch could not reach the PostgreSQL server: ECONNREFUSED: connect ECONNREFUSED 127.0.0.1:${server.port}`,
      });
    }
    expect(proxy.child.exitCode).toBeNull();

    await server.start();
    await vi.waitFor(
      async () => {
        const client = await connect(settings());
        try {
          expect((await client.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
        } finally {
          await client.end();
        }
      },
      { timeout: 30_000, interval: 200 },
    );
  }, 120_000);

  it('refusing a role (its connection limit) passes the server’s own 53300 on', async () => {
    const setup = await connect(server.url());
    await setup.query(`create role limited login password 'limited-pw' connection limit 0`);
    await setup.end();
    const refused = await failure(connect({ ...proxy.config('app', 'limited', 'limited-pw') }));
    expect(refused).toMatchObject({
      code: '53300',
      message: 'too many connections for role "limited"',
    });
  });

  it('killed (SIGKILL of the postmaster) mid-query fails that query with 08006 in either pool mode, and later clients are served once it is back', async () => {
    const session = await connect(settings('app', 'session'));
    const transaction = await connect(settings('app', 'transaction'));
    // The connection's end comes as an event too, besides the failed query.
    for (const client of [session, transaction]) client.on('error', () => undefined);
    const inFlight = [session, transaction].map((client) =>
      failure(client.query('select pg_sleep(60)')),
    );
    const direct = await connect(server.url());
    await vi.waitFor(
      async () => {
        const { rows } = await direct.query(
          `select 1 from pg_stat_activity where query = 'select pg_sleep(60)' and state = 'active'`,
        );
        expect(rows).toHaveLength(2);
      },
      { timeout: 10_000, interval: 50 },
    );
    await direct.end().catch(() => undefined);
    await server.kill();
    const [inSession, inTransaction] = await Promise.all(inFlight);
    expect(inSession).toEqual({
      code: '08006',
      message:
        'pgbranch could not reach the PostgreSQL server: the server closed the connection unexpectedly',
    });
    expect(inTransaction).toEqual({
      code: '08006',
      message: 'server connection lost in the middle of a transaction',
    });
    await Promise.all([
      session.end().catch(() => undefined),
      transaction.end().catch(() => undefined),
    ]);

    await server.start();
    for (const mode of ['session', 'transaction']) {
      const client = await connect(settings('app', mode));
      try {
        expect((await client.query('select 2 as two')).rows).toEqual([{ two: 2 }]);
      } finally {
        await client.end();
      }
    }
    expect(proxy.child.exitCode).toBeNull();
    expect(await serversAgree(proxy, server.url(), server.password)).toBeGreaterThanOrEqual(0);
  }, 120_000);

  it('killed mid-creation (CREATE DATABASE in flight) fails the connect with a SQLSTATE, leaves no half branch, and makes the branch on the next connect once it is back', async () => {
    // A lock on the parent's catalog entry holds CREATE DATABASE ... TEMPLATE app at its start, so
    // that the kill lands while it is in flight.
    const holder = await connect(server.url());
    await holder.query('begin');
    await holder.query(`comment on database app is 'held by the test'`);
    const connecting = failure(connect(settings('app@mid-kill')));
    const direct = await connect(server.url());
    await vi.waitFor(
      async () => {
        const { rows } = await direct.query(
          `select 1 from pg_stat_activity where query like 'CREATE DATABASE%' and wait_event_type = 'Lock'`,
        );
        expect(rows).toHaveLength(1);
      },
      { timeout: 20_000, interval: 50 },
    );
    holder.on('error', () => undefined);
    direct.on('error', () => undefined);
    await server.kill();
    const failed = await connecting;
    expect(failed).toEqual({
      code: '08006',
      message:
        'could not create branch "app@mid-kill": the PostgreSQL server closed the connection during CREATE DATABASE (Connection terminated unexpectedly)',
    });
    expect(proxy.child.exitCode).toBeNull();
    await Promise.all([holder.end().catch(() => undefined), direct.end().catch(() => undefined)]);

    await server.start();
    // No half branch: the server has no such database, and pgbranch's list agrees.
    expect(await databasesOn(server, 'app@')).toEqual([]);
    const listed = await fetch(`${proxy.ready.adminUrl}/v1/branches?database=app`).then(
      (response) => response.json() as Promise<{ branches: { name: string }[] }>,
    );
    expect(listed.branches.map((branch) => branch.name)).toEqual(['app']);

    const branch = await connect(settings('app@mid-kill'));
    try {
      expect((await branch.query('select current_database() as db')).rows).toEqual([
        { db: 'app@mid-kill' },
      ]);
    } finally {
      await branch.end();
    }
    expect(await databasesOn(server, 'app@')).toEqual(['app@mid-kill']);
  }, 120_000);
});
