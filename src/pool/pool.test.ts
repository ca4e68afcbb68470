import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { startEmbedded, type EmbeddedServer } from '../upstream/embedded.js';
import { pgClientConfig } from '../upstream/endpoint.js';
import { openServerSession } from '../upstream/server-connection.js';
import { PoolManager, type PoolLimits, type PoolRequest, type ServerConnection } from './pool.js';

let server: EmbeddedServer;
let dataDir: string;
let admin: pg.Client;

beforeAll(async () => {
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbranch-pool-'));
  // The server runs as the postgres user when the tests run as root: it must reach the directory.
  fs.chmodSync(dataDir, 0o755);
  server = await startEmbedded({
    dataDir,
    port: 0,
    maxConnections: 30,
    log: pino({ level: 'silent' }),
  });
  admin = new pg.Client({ ...pgClientConfig(server.endpoint), user: server.superuser });
  await admin.connect();
  await admin.query('create database doomed');
  await admin.query('create database other');
});

afterAll(async () => {
  await admin?.end();
  await server?.stop();
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

const limits: PoolLimits = {
  size: 5,
  minIdle: 1,
  reserveSize: 0,
  reserveTimeoutMs: 5000,
  maxServerConnections: 20,
  idleTimeoutMs: 60_000,
  serverLifetimeMs: 0,
  waitTimeoutMs: 5000,
  connectRetries: 0,
};

/** Pools on the embedded server, over its trusted socket; `delayMs` holds each connect back. */
function pools(delayMs = () => 0, overrides: Partial<PoolLimits> = {}): PoolManager {
  return new PoolManager({ ...limits, ...overrides }, async (request) => {
    await sleep(delayMs());
    return openServerSession({
      endpoint: server.endpoint,
      user: request.user,
      database: request.database,
      parameters: request.parameters,
      login: { method: 'none' },
      timeoutMs: 10_000,
    });
  });
}

function request(database: string): PoolRequest {
  return { database, user: server.superuser, parameters: new Map(), login: { method: 'none' } };
}

async function serverSessions(database: string): Promise<number> {
  const { rows } = await admin.query<{ n: number }>(
    "select count(*)::int as n from pg_stat_activity where datname = $1 and backend_type = 'client backend'",
    [database],
  );
  return rows[0]!.n;
}

describe('PoolManager.closeDatabase', () => {
  test('closes every server connection of the database: idle at once, busy and opening ones when given back', async () => {
    let delay = 0;
    const manager = pools(() => delay);
    try {
      const busy = await Promise.all([1, 2, 3].map(() => manager.acquire(request('doomed'))));
      const bystander = await manager.acquire(request('other'));
      // One more still logging in when the database is closed...
      delay = 300;
      const opening = manager.acquire(request('doomed'));
      // ...and one idle in the pool.
      manager.release(busy.pop()!, true);
      expect(await serverSessions('doomed')).toBe(3);

      manager.closeDatabase('doomed');
      await vi.waitFor(async () => expect(await serverSessions('doomed')).toBe(2));
      const late = await opening;
      expect(await serverSessions('doomed')).toBe(3);
      for (const conn of [...busy, late]) manager.release(conn, true);
      await vi.waitFor(async () => expect(await serverSessions('doomed')).toBe(0));

      // The janitor does not warm the closed pool up again (min_idle is 1)...
      await sleep(2500);
      expect(await serverSessions('doomed')).toBe(0);
      // ...so nothing of the pool's holds the database: it drops without FORCE.
      await admin.query('drop database doomed');

      // Another database's connection is untouched, and is pooled when given back.
      const { rows } = await admin.query('select 1 from pg_stat_activity where pid = $1', [
        bystander.processId,
      ]);
      expect(rows).toHaveLength(1);
      manager.release(bystander, true);
      expect(bystander.session.socket.destroyed).toBe(false);
    } finally {
      manager.close();
    }
  });
});

describe('PoolManager.acquireThen', () => {
  test('hands a connection given back to the first waiter within release(), and refuses a waiter past the wait timeout with 53300', async () => {
    const manager = pools(() => 0, { size: 1, minIdle: 0, waitTimeoutMs: 300 });
    try {
      const held = await manager.acquire(request('other'));
      const answers: (ServerConnection | Error)[] = [];
      const started = Date.now();
      for (let i = 0; i < 2; i++) {
        manager.acquireThen(request('other'), (error, conn) => answers.push(conn ?? error!));
      }
      expect(manager.stats().waiting).toBe(2);

      manager.release(held, true);
      expect(answers).toEqual([held]);

      await vi.waitFor(() => expect(answers).toHaveLength(2), { timeout: 2000 });
      expect(answers[1]).toMatchObject({ code: '53300' });
      expect(Date.now() - started).toBeGreaterThanOrEqual(290);
      expect(manager.stats().waiting).toBe(0);
      manager.release(held, true);
    } finally {
      manager.close();
    }
  });
});
