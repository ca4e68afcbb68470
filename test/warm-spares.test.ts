// Warm spares, on real servers: a standby of a running cluster made without the backup API (its
// pg_control first, its WAL last), kept streaming, and promoted into a branch that has every row
// the cluster committed before the ask. Checkpoints run all along, so copies that race one are
// met; writers on the cluster never notice.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  initCluster,
  serverBinaries,
  serverOwner,
  startPostmaster,
  type Postmaster,
  type ServerBinaries,
} from '../src/branch/instance/postmaster.js';
import { socketConninfo, Spares, type SpareSource } from '../src/branch/instance/spares.js';

vi.setConfig({ testTimeout: 240_000 });

const PORT = 5432;
const SUPERUSER = 'postgres';
const log = pino({ level: 'silent' });
const owner = serverOwner();
let binaries: ServerBinaries;
let dir: string;
let source: Postmaster;
let spares: Spares;
const stops: (() => Promise<void>)[] = [];

function session(endpoint: { socketDir: string; port: number }): Promise<pg.Client> {
  const client = new pg.Client({
    host: endpoint.socketDir,
    port: endpoint.port,
    user: SUPERUSER,
    database: 'postgres',
  });
  client.on('error', () => undefined);
  return client.connect().then(() => client);
}

async function query<T extends pg.QueryResultRow>(
  endpoint: { socketDir: string; port: number },
  sql: string,
  params: unknown[] = [],
): Promise<T[]> {
  const client = await session(endpoint);
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

function start(pgDataDir: string, socketDir: string, settings: Record<string, string> = {}) {
  return startPostmaster({
    binary: binaries.postgres,
    pgDataDir,
    socketDir,
    port: PORT,
    settings: { shared_buffers: '32MB', max_connections: '40', ...settings },
    owner,
    log,
  });
}

const sourceOf = (): SpareSource => ({
  key: '',
  pgDataDir: path.join(dir, 'source'),
  connect: () => session(source.endpoint),
  conninfo: socketConninfo(source.endpoint.socketDir, PORT, SUPERUSER),
});

beforeAll(async () => {
  binaries = await serverBinaries();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbranch-spares-'));
  fs.chmodSync(dir, 0o755);
  const pgDataDir = path.join(dir, 'source');
  await initCluster({ initdb: binaries.initdb, pgDataDir, superuser: SUPERUSER, owner, log });
  // Checkpoints as often as PostgreSQL allows, besides the ones the test asks for.
  source = await start(pgDataDir, path.join(dir, 'source.run'), { checkpoint_timeout: '30s' });
  stops.push(() => source.stop('immediate'));
  await query(
    source.endpoint,
    'create table t as select g as id, repeat(md5(g::text), 12) as filler from generate_series(1, 100000) g',
  );
  await query(source.endpoint, 'create table w (id bigserial primary key, writer int not null)');
  const instances = path.join(dir, 'instances');
  fs.mkdirSync(instances, { mode: 0o755 });
  spares = new Spares({
    dir: instances,
    owner,
    superuser: SUPERUSER,
    settings: { shared_buffers: '16MB', max_connections: '30' },
    start: (at, settings) =>
      start(path.join(at, 'pg'), path.join(at, 'run'), { shared_buffers: '16MB', ...settings }),
    catchUpMs: 30_000,
    clone: true,
    log,
  });
}, 180_000);

afterAll(async () => {
  await spares?.close();
  for (const stop of stops.reverse()) await stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** Inserts into w as fast as it can until stopped, keeping the ids it saw committed. */
function writer(id: number) {
  const state = { committed: [] as number[], errors: [] as unknown[], stopped: false };
  const done = (async () => {
    const client = await session(source.endpoint);
    try {
      while (!state.stopped) {
        try {
          const { rows } = await client.query<{ id: string }>(
            'insert into w (writer) values ($1) returning id',
            [id],
          );
          state.committed.push(Number(rows[0]!.id));
        } catch (error) {
          state.errors.push(error);
        }
      }
    } finally {
      await client.end();
    }
  })();
  return { state, stop: async () => ((state.stopped = true), await done) };
}

/** CHECKPOINT over and over until stopped: copies meet checkpoints that end while they run. */
function checkpoints() {
  let stopped = false;
  let count = 0;
  const done = (async () => {
    const client = await session(source.endpoint);
    try {
      while (!stopped) {
        await client.query('checkpoint');
        count++;
      }
    } finally {
      await client.end();
    }
  })();
  return { count: () => count, stop: async () => ((stopped = true), await done) };
}

describe('warm spares', () => {
  it('promotes a standby of a running cluster into a branch with every row committed before the ask, five times under writes and checkpoints', async () => {
    const writers = [writer(1), writer(2)];
    const checkpointing = checkpoints();
    const committed = () => writers.flatMap((w) => w.state.committed);
    try {
      for (let round = 1; round <= 5; round++) {
        spares.prepare(sourceOf());
        await spares.settled();
        expect(spares.running()).toBe(1);
        const floor = committed().length;
        await vi.waitFor(() => expect(committed().length).toBeGreaterThan(floor + 20), {
          timeout: 60_000,
          interval: 10,
        });
        const before = committed();
        const taken = await spares.take(sourceOf());
        expect(taken).toBeDefined();
        stops.push(() => taken!.postmaster.stop('immediate'));
        const at = taken!.postmaster.endpoint;
        expect(
          await query(at, 'select count(*)::int as n from w where id = any($1::bigint[])', [
            before,
          ]),
        ).toEqual([{ n: before.length }]);
        expect(await query(at, 'select count(*)::int as n from t')).toEqual([{ n: 100000 }]);
        // A primary of its own now: it takes writes, which stay in it.
        expect(await query(at, 'select pg_is_in_recovery() as r')).toEqual([{ r: false }]);
        await query(at, 'insert into w (writer) values (99)');
        expect(
          await query(source.endpoint, 'select count(*)::int as n from w where writer = 99'),
        ).toEqual([{ n: 0 }]);
        expect(await query(at, 'select count(*)::int as n from pg_replication_slots')).toEqual([
          { n: 0 },
        ]);
        await taken!.postmaster.stop('fast');
        fs.rmSync(taken!.dir, { recursive: true, force: true });
      }
    } finally {
      await checkpointing.stop();
      await Promise.all(writers.map((w) => w.stop()));
    }
    expect(checkpointing.count()).toBeGreaterThan(5);
    expect(writers.flatMap((w) => w.state.errors)).toEqual([]);
  });

  it('leaves the source no slot of a spare once the spares are gone', async () => {
    spares.prepare(sourceOf());
    await spares.settled();
    await vi.waitFor(
      async () =>
        expect(
          await query(source.endpoint, 'select count(*)::int as n from pg_replication_slots'),
        ).toEqual([{ n: 1 }]),
      { timeout: 30_000, interval: 50 },
    );
    await spares.discard('');
    expect(spares.running()).toBe(0);
    expect(
      await query(source.endpoint, 'select count(*)::int as n from pg_replication_slots'),
    ).toEqual([{ n: 0 }]);
    expect(fs.readdirSync(path.join(dir, 'instances'))).toEqual([]);
  });
});
