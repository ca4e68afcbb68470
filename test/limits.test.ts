// Pool limits beyond size and timeouts: connections kept warm (min_idle), a reserve for clients
// that waited (reserve_size, reserve_timeout), a lifetime for server connections, a limit on idling
// inside a transaction, and connects retried when the server refuses for a passing reason. Server
// connections are watched on the embedded server itself, through pg_stat_activity.
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connectEndedAfterEachTest, connectError, psql } from './support/clients.js';
import { backendExists, connectDirect, leave } from './support/observe.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

/** Clients a test opened are ended after it, whatever happened. */
const connect = connectEndedAfterEachTest();

async function pidOf(client: pg.Client): Promise<number> {
  return (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
}

/** The server processes that carry this application_name: the connections of one pool. */
async function serverPids(direct: pg.Client, applicationName: string): Promise<number[]> {
  const { rows } = await direct.query<{ pid: number }>(
    `select pid from pg_stat_activity
      where application_name = $1 and backend_type = 'client backend' order by pid`,
    [applicationName],
  );
  return rows.map((row) => row.pid);
}

const proxies = {} as Record<'warm' | 'reserve' | 'lifetime', PgbranchProcess>;

beforeAll(async () => {
  // Most of a start is the embedded server's initdb: start them side by side.
  const starts = {
    warm: startPgbranch({
      args: [
        '--pool-size',
        '3',
        '--pool-min-idle',
        '2',
        '--pool-idle-timeout',
        '1s',
        '--pool-idle-in-transaction-timeout',
        '500ms',
      ],
    }),
    reserve: startPgbranch({
      args: [
        '--pool-size',
        '1',
        '--pool-reserve-size',
        '1',
        '--pool-reserve-timeout',
        '500ms',
        '--pool-wait-timeout',
        '2s',
      ],
    }),
    lifetime: startPgbranch({
      args: ['--pool-server-lifetime', '2s', '--pool-connect-retries', '4'],
    }),
  };
  for (const [name, start] of Object.entries(starts)) {
    start.then((proxy) => (proxies[name as keyof typeof proxies] = proxy)).catch(() => undefined);
  }
  await Promise.all(Object.values(starts));
  for (const proxy of Object.values(proxies)) {
    expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
  }
});

afterAll(async () => {
  await Promise.all(Object.values(proxies).map((proxy) => proxy.stop()));
});

describe('pool.min_idle', () => {
  let proxy: PgbranchProcess;
  let direct: pg.Client;
  const app = (application_name: string) => ({ ...proxy.config('app'), application_name });

  beforeAll(async () => {
    proxy = proxies.warm;
    direct = await connectDirect(proxy);
  });

  afterAll(async () => {
    await direct?.end();
  });

  it('keeps that many connections open in a pool once a client has used it, past the idle timeout', async () => {
    expect(await serverPids(direct, 'warm')).toHaveLength(0);
    await leave(proxy, await connect(app('warm')));
    // The janitor, which looks every second, opens the second one.
    await vi.waitFor(async () => expect(await serverPids(direct, 'warm')).toHaveLength(2), {
      timeout: 5000,
      interval: 50,
    });
    const pids = await serverPids(direct, 'warm');
    // Idle for more than pool.idle_timeout (1s), and still there.
    await sleep(2500);
    expect(await serverPids(direct, 'warm')).toEqual(pids);
  });

  it('opens new ones when the server closes them', async () => {
    await leave(proxy, await connect(app('reopened')));
    await vi.waitFor(async () => expect(await serverPids(direct, 'reopened')).toHaveLength(2), {
      timeout: 5000,
    });
    const before = await serverPids(direct, 'reopened');
    await direct.query('select pg_terminate_backend(pid) from unnest($1::int[]) pid', [before]);
    await vi.waitFor(
      async () => {
        const after = await serverPids(direct, 'reopened');
        expect(after).toHaveLength(2);
        expect(after.some((pid) => before.includes(pid))).toBe(false);
      },
      { timeout: 15_000, interval: 50 },
    );
  });

  it('still closes the idle connections beyond it after the idle timeout', async () => {
    const clients = await Promise.all([1, 2, 3].map(() => connect(app('burst'))));
    for (const client of clients) await leave(proxy, client);
    expect(await serverPids(direct, 'burst')).toHaveLength(3);
    await vi.waitFor(async () => expect(await serverPids(direct, 'burst')).toHaveLength(2), {
      timeout: 5000,
      interval: 50,
    });
    await sleep(1500);
    expect(await serverPids(direct, 'burst')).toHaveLength(2);
  });
});

describe('pool.reserve_size and pool.reserve_timeout', () => {
  let proxy: PgbranchProcess;
  let direct: pg.Client;
  const app = () => ({ ...proxy.config('app'), application_name: 'reserve' });

  beforeAll(async () => {
    proxy = proxies.reserve;
    direct = await connectDirect(proxy);
  });

  afterAll(async () => {
    await direct?.end();
  });

  it('open a connection beyond the pool size for a client that waited the reserve timeout', async () => {
    const holder = await connect(app());
    const started = Date.now();
    const waiter = await connect(app());
    const waited = Date.now() - started;
    expect(waited).toBeGreaterThanOrEqual(450);
    expect(waited).toBeLessThan(1900);
    expect(await serverPids(direct, 'reserve')).toHaveLength(2);

    // Given back with nobody waiting, the reserve connection is closed; the pool's own stays.
    const reservePid = await pidOf(waiter);
    await leave(proxy, waiter);
    await vi.waitFor(async () => expect(await backendExists(direct, reservePid)).toBe(false));
    await leave(proxy, holder);
    expect(await serverPids(direct, 'reserve')).toHaveLength(1);
  });

  it('open no more than reserve_size: the next client waits out pool.wait_timeout (53300)', async () => {
    const held = [await connect(app()), await connect(app())];
    const started = Date.now();
    const refused = await connectError(app());
    expect(refused).toMatchObject({ code: '53300' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
    expect(await serverPids(direct, 'reserve')).toHaveLength(2);
    for (const client of held) await leave(proxy, client);
  });
});

describe('pool.server_lifetime', () => {
  let proxy: PgbranchProcess;
  let direct: pg.Client;
  const app = (application_name: string) => ({ ...proxy.config('app'), application_name });

  beforeAll(async () => {
    proxy = proxies.lifetime;
    direct = await connectDirect(proxy);
  });

  afterAll(async () => {
    await direct?.end();
  });

  it('closes a server connection older than the lifetime when its client gives it back', async () => {
    const first = await connect(app('aged'));
    const pid = await pidOf(first);
    await sleep(2200);
    await leave(proxy, first);
    await vi.waitFor(async () => expect(await backendExists(direct, pid)).toBe(false));
    const next = await connect(app('aged'));
    expect(await pidOf(next)).not.toBe(pid);
  });

  it('reuses a younger one, and closes it once it grows old in the pool', async () => {
    const first = await connect(app('young'));
    const pid = await pidOf(first);
    const openedAt = Date.now();
    await leave(proxy, first);
    const second = await connect(app('young'));
    expect(await pidOf(second)).toBe(pid);
    await leave(proxy, second);
    await vi.waitFor(async () => expect(await backendExists(direct, pid)).toBe(false), {
      timeout: 6000,
      interval: 50,
    });
    expect(Date.now() - openedAt).toBeGreaterThanOrEqual(1800);
  });
});

describe('pool.connect_retries', () => {
  let proxy: PgbranchProcess;
  let direct: pg.Client;
  /** Roles that may hold one session each: a second is refused with 53300 by the server. */
  const roles = { freed: 'one_slot_freed', full: 'one_slot_full' };
  const PASSWORD = 'one-slot';

  beforeAll(async () => {
    proxy = proxies.lifetime;
    direct = await connectDirect(proxy);
    for (const role of Object.values(roles)) {
      await direct.query(`create role ${role} login connection limit 1 password '${PASSWORD}'`);
    }
  });

  afterAll(async () => {
    await direct?.end();
  });

  /** A session as `role` straight on the server, taking the role's only slot. */
  function takeSlot(role: string): Promise<pg.Client> {
    const url = new URL(proxy.directUrl('app'));
    url.username = role;
    url.password = PASSWORD;
    return connect({ connectionString: url.toString() });
  }

  it('retries a connect the server refused for want of slots, and the client gets in once one frees', async () => {
    const holder = await takeSlot(roles.freed);
    const started = Date.now();
    const client = connect(proxy.config('app', roles.freed, PASSWORD));
    await sleep(500);
    await holder.end();
    const admitted = await client;
    expect(Date.now() - started).toBeGreaterThanOrEqual(500);
    expect((await admitted.query('select current_user as u')).rows).toEqual([{ u: roles.freed }]);
  });

  it('gives the client the server’s own error once the retries are used up', async () => {
    await takeSlot(roles.full);
    const started = Date.now();
    const refused = await connectError(proxy.config('app', roles.full, PASSWORD));
    expect(refused).toMatchObject({
      code: '53300',
      message: `too many connections for role "${roles.full}"`,
    });
    // Four retries after 200, 400, 800 and 1600 ms.
    expect(Date.now() - started).toBeGreaterThanOrEqual(2900);
  });
});

describe('pool.idle_in_transaction_timeout', () => {
  let proxy: PgbranchProcess;
  let direct: pg.Client;
  const transactions = (application_name: string) => ({
    ...proxy.config('app'),
    application_name,
    options: '-c pgbranch.pool_mode=transaction',
  });

  beforeAll(async () => {
    proxy = proxies.warm;
    direct = await connectDirect(proxy);
    const setup = await connect(proxy.config('app'));
    await setup.query('create table items (id int primary key)');
    await setup.end();
  });

  afterAll(async () => {
    await direct?.end();
  });

  it('disconnects a transaction-mode client idle inside a transaction with 25P03, rolling back its work', async () => {
    const client = await connect(transactions('idler'));
    const ended = new Promise<Error & { code?: string }>((resolve) =>
      client.once('error', resolve),
    );
    await client.query('begin');
    await client.query('insert into items values (1)');
    const pid = await pidOf(client);
    const error = await Promise.race([
      ended,
      sleep(5000).then(() => ({ code: 'still connected', message: '' })),
    ]);
    expect(error.code).toBe('25P03');
    expect(error.message).toBe('terminating connection due to idle-in-transaction timeout');
    await expect(client.query('select 1')).rejects.toThrow();

    // The row went with the transaction; the server connection is back in the pool, idle.
    await vi.waitFor(async () => {
      const { rows } = await direct.query('select state from pg_stat_activity where pid = $1', [
        pid,
      ]);
      expect(rows).toEqual([{ state: 'idle' }]);
    });
    const check = await connect(transactions('idler'));
    expect((await check.query('select count(*)::int as n from items')).rows).toEqual([{ n: 0 }]);
  });

  it('leaves alone a transaction whose statement runs long, and a client idle between transactions', async () => {
    const client = await connect(transactions('patient'));
    await client.query('begin');
    await client.query('select pg_sleep(1)');
    await client.query('insert into items values (2)');
    await client.query('commit');
    await sleep(1000);
    expect((await client.query('select count(*)::int as n from items')).rows).toEqual([{ n: 1 }]);
    await client.query('delete from items');
  });

  it('does not apply in session mode', async () => {
    const client = await connect({ ...proxy.config('app'), application_name: 'session-idler' });
    await client.query('begin');
    await sleep(1000);
    expect((await client.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
    await client.query('rollback');
  });
});
