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
import {
  configuredInstanceBudget,
  deriveBudget,
  instanceBudget,
  readServerSlots,
  type ServerBudget,
} from './budget.js';
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
  connectTimeoutMs: 10_000,
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

/** A request; each `application_name` is a pool of its own. */
function request(database: string, applicationName?: string): PoolRequest {
  return {
    database,
    user: server.superuser,
    parameters: new Map(applicationName ? [['application_name', applicationName]] : []),
    login: { method: 'none' },
  };
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

/** Connects to the server until it refuses for lack of slots, keeping the connections in `into`. */
async function fillServer(into: pg.Client[]): Promise<void> {
  for (;;) {
    const outsider = new pg.Client({ ...pgClientConfig(server.endpoint), user: server.superuser });
    outsider.on('error', () => undefined);
    const failed = await outsider.connect().then(
      () => undefined,
      (error: { code?: string }) => error,
    );
    if (failed) {
      expect(failed.code).toBe('53300');
      return;
    }
    into.push(outsider);
  }
}

describe('the server connection budget', () => {
  test("is max_connections less the reserved slots, pgbranch's own connections and the margin", () => {
    const slots = { maxConnections: 30, superuserReserved: 3, reserved: 0 };
    expect(deriveBudget(slots, 5, '10%')).toEqual({
      max: 19,
      derivation: "max_connections 30 - 3 reserved - 5 pgbranch's own - 3 margin = 19",
    });
    // PostgreSQL 16's reserved_connections count as reserved too; a margin may be a number.
    expect(deriveBudget({ maxConnections: 100, superuserReserved: 3, reserved: 2 }, 5, 7).max).toBe(
      83,
    );
    // A percentage is rounded up: 10% of 101 leaves 11.
    expect(
      deriveBudget({ maxConnections: 101, superuserReserved: 3, reserved: 0 }, 5, '10%').max,
    ).toBe(82);
    // A server too small for the rest still gets one connection, and says so.
    expect(deriveBudget({ maxConnections: 8, superuserReserved: 3, reserved: 0 }, 5, 2)).toEqual({
      max: 1,
      derivation: "max_connections 8 - 3 reserved - 5 pgbranch's own - 2 margin = -2, raised to 1",
    });
  });

  test('reads its slots from PostgreSQL 18, and from PostgreSQL 15 which has no reserved_connections', async () => {
    expect(await readServerSlots((sql) => admin.query(sql))).toEqual({
      maxConnections: 30,
      superuserReserved: 3,
      reserved: 0,
    });
    const pg15 = new pg.Client({ host: '127.0.0.1', port: 5432, user: 'postgres' });
    await pg15.connect();
    try {
      const { rows } = await pg15.query<{ v: string }>(
        "select current_setting('server_version_num') as v",
      );
      expect(rows[0]!.v.slice(0, 2)).toBe('15');
      const settings = await pg15.query<{ n: string }>(
        "select current_setting('max_connections') as n",
      );
      expect(await readServerSlots((sql) => pg15.query(sql))).toEqual({
        maxConnections: Number(settings.rows[0]!.n),
        superuserReserved: 3,
        reserved: 0,
      });
    } finally {
      await pg15.end();
    }
  });

  test("of a branch instance is read from it with 2 connections of pgbranch's own, named after its branch, and a number caps it", async () => {
    const query = (sql: string) => admin.query<{ name: string; setting: string }>(sql);
    expect(await instanceBudget('feature-x', 'auto', '10%', query)).toEqual({
      max: 22,
      derivation:
        "branch instance feature-x: max_connections 30 - 3 reserved - 2 pgbranch's own - 3 margin = 22",
    });
    expect(await instanceBudget('feature-x', 10, '10%', query)).toEqual({
      max: 10,
      derivation:
        "branch instance feature-x: max_connections 30 - 3 reserved - 2 pgbranch's own - 3 margin = 22, capped at pool.max_server_connections = 10",
    });
    // A number above what the instance holds does not raise it.
    expect((await instanceBudget('feature-x', 50, 2, query)).max).toBe(23);
    expect(configuredInstanceBudget('feature-x', 10, 'auto', '10%')).toEqual({
      max: 4,
      derivation:
        "branch instance feature-x: max_connections 10 - 3 reserved - 2 pgbranch's own - 1 margin = 4 (as configured: not read from it)",
    });
  });

  test('still being read from the server, holds checkouts back until it is known', async () => {
    const manager = pools(() => 0, { minIdle: 0, waitTimeoutMs: 60_000 });
    let known!: (budget: ServerBudget) => void;
    try {
      manager.setBudgetFrom(new Promise<ServerBudget>((resolve) => (known = resolve)), {
        max: 10,
        derivation: 'until read',
      });
      const first = manager.acquire(request('other', 'a'));
      const second = manager.acquire(request('other', 'b'));
      // Without the wait both would be opening now: a checkout counts as soon as it is asked.
      expect(manager.stats()).toMatchObject({ open: 0, budget: 10 });
      known({ max: 1, derivation: 'read' });
      const conn = await first;
      // The second waits for the one slot of the budget read, not the 10 it had until then.
      await vi.waitFor(() => expect(manager.stats()).toMatchObject({ open: 1, waiting: 1 }));
      manager.release(conn, true);
      manager.release(await second, true);
      expect(manager.stats()).toMatchObject({ open: 1, budget: 1 });
    } finally {
      manager.close();
    }
  });

  test('when spent, closes the idle connection of another pool given back longest ago', async () => {
    const manager = pools(() => 0, { minIdle: 0, maxServerConnections: 3 });
    try {
      const [a, b, c] = await Promise.all(
        ['a', 'b', 'c'].map((name) => manager.acquire(request('other', name))),
      );
      for (const conn of [b!, a!, c!]) manager.release(conn, true);
      expect(manager.stats()).toMatchObject({ open: 3, idle: 3 });

      const d = await manager.acquire(request('other', 'd'));
      expect([a, b, c].map((conn) => conn!.session.socket.destroyed)).toEqual([false, true, false]);
      const e = await manager.acquire(request('other', 'e'));
      expect([a, c].map((conn) => conn!.session.socket.destroyed)).toEqual([true, false]);
      expect(manager.stats()).toMatchObject({ open: 3, idle: 1, active: 2 });

      // A budget lowered (a RELOAD) closes idle connections beyond it at once, busy ones not.
      manager.setBudget({ max: 1, derivation: 'test' });
      expect(c!.session.socket.destroyed).toBe(true);
      expect(manager.stats()).toMatchObject({ open: 2, idle: 0, active: 2, budget: 1 });
      for (const conn of [d, e]) manager.release(conn, true);
    } finally {
      manager.close();
    }
  });

  test('a client that waits past the wait timeout with every slot busy gets 53300 naming the budget and who holds it', async () => {
    const manager = pools(() => 0, { minIdle: 0, waitTimeoutMs: 200 });
    try {
      manager.setBudget(
        deriveBudget({ maxConnections: 10, superuserReserved: 3, reserved: 0 }, 4, 1),
      );
      const held = await Promise.all([
        manager.acquire(request('other', 'x')),
        manager.acquire(request('other', 'y')),
      ]);
      const refusal = await manager.acquire(request('other', 'z')).catch((error: Error) => error);
      expect(refusal).toMatchObject({ code: '53300' });
      expect((refusal as Error).message).toBe(
        `no server connection for pool other/${server.superuser} became free within 200 ms: all 2 server connections of pgbranch's budget (max_connections 10 - 3 reserved - 4 pgbranch's own - 1 margin = 2) are in use, by other/${server.superuser} 1, other/${server.superuser} 1`,
      );
      for (const conn of held) manager.release(conn, false);
    } finally {
      manager.close();
    }
  });

  test('when the server itself is out of slots, closes idle connections of its own and connects again', async () => {
    const manager = pools(() => 0, {
      minIdle: 0,
      maxServerConnections: 100,
      connectTimeoutMs: 2000,
    });
    const outsiders: pg.Client[] = [];
    try {
      const idle = await Promise.all(
        ['p', 'q'].map((name) => manager.acquire(request('other', name))),
      );
      for (const conn of idle) manager.release(conn, true);
      // Something outside pgbranch takes every slot that is left.
      await fillServer(outsiders);
      const conn = await manager.acquire(request('other', 'r'));
      // The least recently used first (a second too, if the server was slow to free the slot).
      expect(idle[0]!.session.socket.destroyed).toBe(true);

      // With nothing idle left to close, the refusal reaches the client after connectTimeoutMs,
      // saying who holds what.
      manager.closeDatabase('other');
      await vi.waitFor(async () => expect(await serverSessions('other')).toBe(1));
      await fillServer(outsiders);
      const refusal = await manager.acquire(request('other', 't')).catch((error: Error) => error);
      expect(refusal).toMatchObject({ code: '53300' });
      expect((refusal as Error).message).toContain(
        'the PostgreSQL server refused connections for lack of slots for 2000 ms',
      );
      manager.release(conn, false);
    } finally {
      manager.close();
      await Promise.all(outsiders.map((client) => client.end()));
    }
  });
});
