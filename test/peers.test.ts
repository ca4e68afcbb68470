// Pgbranch proxies in front of one PostgreSQL server, sharing a Redis: a clone, reset or delete
// made through one drains the others' connections too, instead of failing with 55006 or leaving
// the others' clients on a database that is gone; a pause lasts as long as its holder holds it, and
// a few seconds more if the holder dies.
import net from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi, type TestContext } from 'vitest';
import { connect, connectError, queryOnce } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

const REDIS = 'redis://127.0.0.1:6379';

function redisAnswers(): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port: 6379 });
    socket.setTimeout(2000);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
    socket.once('timeout', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

let available = false;
/** Owns the embedded server; its branch.drain_timeout is 8 s, for a pause that outlasts heartbeats. */
let first: PgbranchProcess | undefined;
let second: PgbranchProcess | undefined;
/** Waits 30 s for a parent to drain, and is killed while it does. */
let third: PgbranchProcess | undefined;

function requireRedis(ctx: TestContext): void {
  if (available) return;
  const reason = 'no Redis on 127.0.0.1:6379 (apt-get install -y redis-server)';
  console.warn(`skipped "${ctx.task.name}": ${reason}`);
  ctx.skip(reason);
}

/** Another proxy of the first's server, coordinating through Redis. */
function peerOf(origin: PgbranchProcess, args: string[]): Promise<PgbranchProcess> {
  return startPgbranch({
    args: ['--upstream', origin.directUrl('postgres'), '--redis-url', REDIS, ...args],
  });
}

beforeAll(async () => {
  available = await redisAnswers();
  if (!available) return;
  first = await startPgbranch({
    args: ['--redis-url', REDIS, '--pool-mode', 'transaction', '--branch-drain-timeout', '8s'],
  });
  [second, third] = await Promise.all([
    peerOf(first, ['--pool-mode', 'transaction']),
    peerOf(first, ['--branch-drain-timeout', '30s']),
  ]);
  await queryOnce(first.url('postgres'), 'create database app');
  await queryOnce(first.url('app'), 'create table items (id int); insert into items values (1)');
}, 120_000);

afterAll(async () => {
  await Promise.all([second?.stop(), third?.stop()]);
  await first?.stop();
});

/** Resolves once `proxy` has paused `database` (SHOW POOLS on its console says so). */
async function paused(proxy: PgbranchProcess, database: string): Promise<void> {
  const admin = await connect(proxy.config('pgbranch'));
  try {
    await vi.waitFor(
      async () => {
        const { rows } = await admin.query<{ database: string; paused: boolean }>('SHOW POOLS');
        expect(rows).toContainEqual(expect.objectContaining({ database, paused: true }));
      },
      { timeout: 10_000, interval: 50 },
    );
  } finally {
    await admin.end();
  }
}

/** A transaction-mode client of `database` through `proxy`, with a server connection pooled. */
async function pooledClient(proxy: PgbranchProcess, database: string): Promise<pg.Client> {
  const client = await connect(proxy.config(database));
  await client.query('select 1');
  return client;
}

describe('two proxies of one server, with Redis', () => {
  it('find each other through a channel named after the server', (ctx) => {
    requireRedis(ctx);
    const [a] = first!.events('peers_joined');
    const [b] = second!.events('peers_joined');
    expect(a?.channel).toMatch(/^pgbranch:\d+$/);
    expect(b?.channel).toBe(a?.channel);
  });

  it('a branch made through one drains the other’s pooled connections to the parent', async (ctx) => {
    requireRedis(ctx);
    // The second proxy keeps an idle server connection to app in its pool after this.
    const client = await connect(second!.config('app'));
    try {
      await client.query('select 1');
      const rows = await queryOnce(
        first!.url('app@from-first'),
        'select count(*)::int as n from items',
      );
      expect(rows).toEqual([{ n: 1 }]);
      // Its client paused while the clone ran, and goes on.
      expect((await client.query('select count(*)::int as n from items')).rows).toEqual([{ n: 1 }]);
    } finally {
      await client.end();
    }
  });

  it('a reset through one disconnects the other’s session clients of the branch, saying why', async (ctx) => {
    requireRedis(ctx);
    await queryOnce(first!.url('app@shared'), 'select 1');
    const session = new pg.Client({
      ...second!.config('app@shared'),
      options: '-c pgbranch.pool_mode=session',
    });
    const gone = new Promise<{ code?: string; message: string }>((resolve) =>
      session.on('error', (error) => resolve(error as { code?: string; message: string })),
    );
    await session.connect();
    await session.query('select 1');
    const response = await fetch(
      `${first!.ready.adminUrl}/v1/branches/${encodeURIComponent('app@shared')}/reset`,
      { method: 'POST' },
    );
    expect(response.status).toBe(200);
    expect(await gone).toMatchObject({
      code: '57P01',
      message: 'terminating connection because branch "app@shared" was reset',
    });
    await session.end().catch(() => undefined);
    expect(
      await queryOnce(second!.url('app@shared'), 'select count(*)::int as n from items'),
    ).toEqual([{ n: 1 }]);
  });
});

describe('a pause is a lease its holder renews', () => {
  it('keeps the other proxies’ clients waiting to its end when it outlasts several heartbeats', async (ctx) => {
    requireRedis(ctx);
    // A session that bypasses the proxies: the first proxy's clone of app waits for it to leave for
    // all of its 8 s drain_timeout, holding app paused in every proxy, then gives up.
    const outsider = await connect(first!.directUrl('app'));
    const client = await pooledClient(second!, 'app');
    const expiredBefore = second!.events('peer_pause_expired').length;
    try {
      const started = Date.now();
      const creation = connectError(first!.config('app@outlasting'));
      await paused(second!, 'app');
      const ran = client.query('select count(*)::int as n from items').then((result) => ({
        rows: result.rows,
        afterMs: Date.now() - started,
      }));
      expect(await creation).toMatchObject({ code: '55006' });
      const { rows, afterMs } = await ran;
      expect(rows).toEqual([{ n: 1 }]);
      expect(afterMs).toBeGreaterThanOrEqual(8_000);
      expect(second!.events('peer_pause_expired').length).toBe(expiredBefore);
    } finally {
      await Promise.all([client.end(), outsider.end()]);
    }
  });

  it('ends a few seconds after its holder dies, and the other proxies say so', async (ctx) => {
    requireRedis(ctx);
    // As above, but the third proxy waits 30 s for the outsider, and is killed meanwhile.
    const outsider = await connect(first!.directUrl('app'));
    const client = await pooledClient(second!, 'app');
    try {
      const creation = connectError(third!.config('app@orphaned'));
      await paused(second!, 'app');
      const ran = client.query('select count(*)::int as n from items');
      third!.child.kill('SIGKILL');
      const killed = Date.now();
      expect((await ran).rows).toEqual([{ n: 1 }]);
      const waitedMs = Date.now() - killed;
      // Until the lease ran out (five heartbeats, the last up to one before the kill), not a minute.
      expect(waitedMs).toBeGreaterThanOrEqual(3_000);
      expect(waitedMs).toBeLessThan(15_000);
      expect(await creation).toBeDefined();
      // Logged just before the resume, but read from another pipe than the client's answer.
      await vi.waitFor(() => {
        for (const proxy of [first!, second!]) {
          expect(proxy.events('peer_pause_expired')).toContainEqual(
            expect.objectContaining({
              level: 40,
              database: 'app',
              peer: expect.stringContaining(`:${third!.child.pid}:`),
            }),
          );
        }
      });
    } finally {
      await Promise.all([client.end(), outsider.end()]);
    }
  });

  it('ends at once when its holder stops in order, with no warning', async (ctx) => {
    requireRedis(ctx);
    const fourth = await peerOf(first!, ['--branch-drain-timeout', '30s']);
    const outsider = await connect(first!.directUrl('app'));
    const client = await pooledClient(second!, 'app');
    const expiredBefore = second!.events('peer_pause_expired').length;
    try {
      const creation = connectError(fourth.config('app@abandoned'));
      await paused(second!, 'app');
      const ran = client.query('select count(*)::int as n from items');
      const stopping = Date.now();
      await fourth.stop();
      expect((await ran).rows).toEqual([{ n: 1 }]);
      // Not the five seconds of a lease running out.
      expect(Date.now() - stopping).toBeLessThan(3_000);
      expect(second!.events('peer_pause_expired').length).toBe(expiredBefore);
      expect(await creation).toBeDefined();
    } finally {
      await fourth.stop();
      await Promise.all([client.end(), outsider.end()]);
    }
  });

  it('lets two proxies create the same branch at once: one creates it, both use it', async (ctx) => {
    requireRedis(ctx);
    await sameBranchAtOnce(first!, second!, 'app@together');
  });
});

it('lets two proxies without Redis create the same branch at once', async (ctx) => {
  requireRedis(ctx); // for the server, which is the first proxy's
  const [a, b] = await Promise.all([
    startPgbranch({ args: ['--upstream', first!.directUrl('postgres')] }),
    startPgbranch({ args: ['--upstream', first!.directUrl('postgres')] }),
  ]);
  try {
    await sameBranchAtOnce(a, b, 'app@unaware');
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

/** Two clients, one through each proxy, connecting to a new branch `name` at the same moment. */
async function sameBranchAtOnce(a: PgbranchProcess, b: PgbranchProcess, name: string) {
  const logged = [a.logs.length, b.logs.length];
  const connected = await Promise.allSettled([connect(a.config(name)), connect(b.config(name))]);
  const clients = connected.flatMap((c) => (c.status === 'fulfilled' ? [c.value] : []));
  try {
    expect(connected.map((c) => (c.status === 'fulfilled' ? 'in' : String(c.reason)))).toEqual([
      'in',
      'in',
    ]);
    const [viaA, viaB] = clients as [pg.Client, pg.Client];
    await viaA.query('insert into items values (2)');
    for (const client of [viaA, viaB]) {
      const { rows } = await client.query(
        'select current_database() as db, array_agg(id order by id) as ids from items',
      );
      expect(rows).toEqual([{ db: name, ids: [1, 2] }]);
    }
  } finally {
    await Promise.all(clients.map((client) => client.end()));
  }
  const since = [...a.logs.slice(logged[0]), ...b.logs.slice(logged[1])];
  const branch = name.slice(name.indexOf('@') + 1);
  expect(since.filter((e) => e.event === 'branch_created' && e.branch === branch)).toHaveLength(1);
  expect(since.filter((e) => (e.level as number) >= 50)).toEqual([]);
}
