// Two pgbranch proxies in front of one PostgreSQL server, sharing a Redis: a clone, reset or delete
// made through one drains the other's connections too, instead of failing with 55006 or leaving
// the other's clients on a database that is gone.
import fs from 'node:fs';
import net from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import { connect, queryOnce } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';

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
let first: PgbranchProcess | undefined;
let second: PgbranchProcess | undefined;
const secondDir = tempDir('peer');

function requireRedis(ctx: TestContext): void {
  if (available) return;
  const reason = 'no Redis on 127.0.0.1:6379 (apt-get install -y redis-server)';
  console.warn(`skipped "${ctx.task.name}": ${reason}`);
  ctx.skip(reason);
}

beforeAll(async () => {
  available = await redisAnswers();
  if (!available) return;
  first = await startPgbranch({ args: ['--redis-url', REDIS, '--pool-mode', 'transaction'] });
  second = await startPgbranch({
    dataDir: secondDir,
    args: [
      '--upstream',
      first.directUrl('postgres'),
      '--redis-url',
      REDIS,
      '--pool-mode',
      'transaction',
    ],
  });
  await queryOnce(first.url('postgres'), 'create database app');
  await queryOnce(first.url('app'), 'create table items (id int); insert into items values (1)');
}, 120_000);

afterAll(async () => {
  await second?.stop();
  await first?.stop();
  fs.rmSync(secondDir, { recursive: true, force: true });
});

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
