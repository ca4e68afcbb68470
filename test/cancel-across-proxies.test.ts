// Several proxies behind one address (a load balancer): a client's CancelRequest goes to whichever
// proxy the balancer picks, not necessarily the one running its query. The proxies share their
// cancel keys through Redis, and the one that gets the request has the owner cancel.
import net from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi, type TestContext } from 'vitest';
import { cancelRequest } from '../src/wire/frontend.js';
import { connect } from './support/clients.js';
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
/** Owns the embedded server. */
let first: PgbranchProcess | undefined;
/** Another proxy of the same server, sharing the Redis. */
let second: PgbranchProcess | undefined;
let direct: pg.Client | undefined;

function requireRedis(ctx: TestContext): void {
  if (available) return;
  const reason = 'no Redis on 127.0.0.1:6379 (apt-get install -y redis-server)';
  console.warn(`skipped "${ctx.task.name}": ${reason}`);
  ctx.skip(reason);
}

beforeAll(async () => {
  available = await redisAnswers();
  if (!available) return;
  first = await startPgbranch({ args: ['--redis-url', REDIS] });
  second = await startPgbranch({
    args: ['--upstream', first.directUrl('postgres'), '--redis-url', REDIS],
  });
  direct = await connect(first.directUrl('postgres'));
}, 120_000);

afterAll(async () => {
  await direct?.end();
  await second?.stop();
  await first?.stop();
});

/** Sends a CancelRequest to `proxy`; resolves once the proxy has closed the connection. */
function sendCancel(proxy: PgbranchProcess, processId: number, secret: number): Promise<void> {
  const key = Buffer.alloc(4);
  key.writeInt32BE(secret);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: proxy.port });
    socket.once('connect', () => socket.write(cancelRequest(processId, key)));
    socket.once('error', reject);
    socket.once('close', () => resolve());
    socket.resume();
  });
}

/** The cancel key node-postgres got in BackendKeyData. */
function keyOf(client: pg.Client): { processId: number; secret: number } {
  const { processID, secretKey } = client as unknown as { processID: number; secretKey: number };
  return { processId: processID, secret: secretKey };
}

/** Resolves once the server runs `sql` (a backend is active with it). */
async function running(sql: string): Promise<void> {
  await vi.waitFor(
    async () => {
      const { rows } = await direct!.query(
        "select 1 from pg_stat_activity where state = 'active' and query = $1",
        [sql],
      );
      expect(rows).toHaveLength(1);
    },
    { timeout: 10_000, interval: 20 },
  );
}

describe('a CancelRequest sent to another proxy', () => {
  for (const mode of ['session', 'transaction'] as const) {
    it(`cancels the query a ${mode}-mode client runs through the first`, async (ctx) => {
      requireRedis(ctx);
      const client = await connect({
        ...first!.config('postgres'),
        options: `-c pgbranch.pool_mode=${mode}`,
      });
      try {
        const sql = `select pg_sleep(600) /* ${mode} */`;
        const query = client.query(sql).then(
          () => undefined,
          (error: { code?: string }) => error,
        );
        await running(sql);
        const { processId, secret } = keyOf(client);
        await sendCancel(second!, processId, secret);
        expect(await query).toMatchObject({
          code: '57014',
          message: 'canceling statement due to user request',
        });
        // The session goes on.
        expect((await client.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
      } finally {
        await client.end();
      }
    }, 60_000);
  }

  it('with a wrong secret cancels nothing', async (ctx) => {
    requireRedis(ctx);
    const client = await connect(first!.config('postgres'));
    try {
      const sql = 'select pg_sleep(600) /* wrong secret */';
      const query = client.query(sql).then(
        () => undefined,
        (error: { code?: string }) => error,
      );
      await running(sql);
      const { processId, secret } = keyOf(client);
      await sendCancel(second!, processId, secret ^ 1);
      // The other proxy has answered (closed the connection): the query still runs.
      await running(sql);
      await sendCancel(second!, processId, secret);
      expect(await query).toMatchObject({ code: '57014' });
    } finally {
      await client.end();
    }
  }, 60_000);
});
