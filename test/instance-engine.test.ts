// The engine of instance branches, on real servers: a consistent copy of a running cluster under
// write load (the backup API) or of a stopped one, a postmaster started on the copy, and all or
// nothing when a copy fails. On XFS with reflink the copy is a clone that costs no disk.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi, type TestContext } from 'vitest';
import { detectCloneSupport } from '../src/branch/copy-on-write.js';
import { copyCluster, type CopyClusterResult } from '../src/branch/instance/cluster-copy.js';
import {
  initCluster,
  serverBinaries,
  serverOwner,
  startPostmaster,
  stopLeftover,
  type Postmaster,
  type ServerBinaries,
} from '../src/branch/instance/postmaster.js';
import { mountReflinkXfs, type MountedXfs, type XfsMount } from './support/xfs.js';

const MB = 1024 * 1024;
/** About 100 MB of table (440 bytes a row) on top of initdb's 20-odd MB. */
const ROWS = 200_000;
/** Every server has a socket directory of its own, so they can all use one port number. */
const PORT = 5432;
const SUPERUSER = 'postgres';
const log = pino({ level: 'silent' });
const owner = serverOwner();
let binaries: ServerBinaries;

/** Run in reverse order after all tests: servers stopped before their directories go. */
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  binaries = await serverBinaries();
});

afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

interface Cluster {
  pgDataDir: string;
  postmaster: Postmaster;
  /** A superuser session on it; the caller ends it. */
  connect(applicationName?: string): Promise<pg.Client>;
}

/** A directory the server's OS user can reach (the tests may run as root), removed afterwards. */
function tempDir(name: string, parent = os.tmpdir()): string {
  const dir = fs.mkdtempSync(path.join(parent, `pgbranch-${name}-`));
  fs.chmodSync(dir, 0o755);
  cleanups.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function start(pgDataDir: string, settings: Record<string, string> = {}): Promise<Cluster> {
  const postmaster = await startPostmaster({
    binary: binaries.postgres,
    pgDataDir,
    socketDir: `${pgDataDir}.run`,
    port: PORT,
    settings: { shared_buffers: '32MB', max_connections: '20', ...settings },
    owner,
    log,
  });
  cleanups.push(() => postmaster.stop('immediate'));
  return {
    pgDataDir,
    postmaster,
    connect: async (applicationName = 'instance-engine-test') => {
      const client = new pg.Client({
        host: postmaster.endpoint.socketDir,
        port: postmaster.endpoint.port,
        user: SUPERUSER,
        database: 'postgres',
        application_name: applicationName,
      });
      await client.connect();
      return client;
    },
  };
}

/** initdb, start, and a table `t` of ROWS rows (frozen, checkpointed) plus a table `w` to write. */
async function newCluster(dir: string, settings: Record<string, string> = {}): Promise<Cluster> {
  const pgDataDir = path.join(dir, 'source');
  await initCluster({ initdb: binaries.initdb, pgDataDir, superuser: SUPERUSER, owner, log });
  const cluster = await start(pgDataDir, settings);
  await query(
    cluster,
    'create table t as select g as id, repeat(md5(g::text), 12) as filler from generate_series(1, $1::int) g',
    [ROWS],
  );
  // Hint bits set now: a first read of the copy would otherwise rewrite (and unshare) every page.
  await query(cluster, 'vacuum (freeze) t');
  await query(cluster, 'create table w (id bigserial primary key, writer int not null)');
  await query(cluster, 'create unlogged table u as select g from generate_series(1, 1000) g');
  await query(cluster, 'checkpoint');
  return cluster;
}

async function query<T extends pg.QueryResultRow>(
  cluster: Cluster,
  sql: string,
  params: unknown[] = [],
): Promise<T[]> {
  const client = await cluster.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

/** Copies a running cluster, recording the sessions copyCluster opened on it. */
async function copyRunning(
  source: Cluster,
  target: string,
  extra: Partial<Parameters<typeof copyCluster>[0]> = {},
): Promise<CopyClusterResult> {
  return copyCluster({
    sourceDataDir: source.pgDataDir,
    target,
    running: { connect: () => source.connect('instance-engine-copy') },
    owner,
    ...extra,
  });
}

/**
 * Not in backup mode: a non-exclusive backup lives as long as its session, and the copy's
 * session (with its temporary slot) is gone; pg_backup_stop was called rather than the backup
 * being aborted by the session's end (PostgreSQL would have warned); no backup_label was left.
 */
async function expectOutOfBackupMode(source: Cluster): Promise<void> {
  await vi.waitFor(
    async () => {
      const sessions = await query(
        source,
        "select pid from pg_stat_activity where application_name = 'instance-engine-copy'",
      );
      expect(sessions).toEqual([]);
    },
    { timeout: 10_000, interval: 20 },
  );
  expect(await query(source, 'select slot_name from pg_replication_slots')).toEqual([]);
  expect(source.postmaster.recentLog().join('\n')).not.toMatch(/aborting backup/);
  expect(fs.existsSync(path.join(source.pgDataDir, 'backup_label'))).toBe(false);
}

/** Every directory and file of the copy belongs to the server's user; the data dir is 0700. */
function expectOwnedByServer(pgDataDir: string): void {
  const uid = owner?.uid ?? process.getuid!();
  expect(fs.statSync(pgDataDir).mode & 0o777).toBe(0o700);
  const strangers = fs
    .readdirSync(pgDataDir, { recursive: true, encoding: 'utf8' })
    .filter((rel) => fs.lstatSync(path.join(pgDataDir, rel)).uid !== uid);
  expect(strangers).toEqual([]);
}

/** A client inserting into `w` one row at a time, as fast as it can, until stopped. */
function writer(cluster: Cluster, id: number) {
  const state = {
    committed: [] as number[],
    errors: [] as unknown[],
    stopped: false,
    done: Promise.resolve(),
  };
  state.done = (async () => {
    const client = await cluster.connect();
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
  return state;
}

const ms = (from: number) => Math.round(performance.now() - from);
const mb = (bytes: number) => `${(bytes / MB).toFixed(1)} MB`;

function describeCopy(what: string, result: CopyClusterResult, startMs: number): string {
  const phases = result.phases
    ? ` (pg_backup_start ${result.phases.backupStartMs} ms, files ${result.phases.filesMs} ms, pg_backup_stop ${result.phases.backupStopMs} ms, WAL ${result.phases.walMs} ms)`
    : '';
  return `${what}: ${mb(result.bytes)} in ${result.files} files, ${result.mode} in ${result.ms} ms${phases}, then a postmaster recovered and accepting connections in ${startMs} ms (total ${result.ms + startMs} ms)`;
}

describe(`on ${os.tmpdir()} (${detectCloneSupport(os.tmpdir()).filesystem})`, () => {
  let dir: string;
  let source: Cluster;
  let expectedMode: 'clone' | 'copy';

  beforeAll(async () => {
    dir = tempDir('engine');
    expectedMode = detectCloneSupport(dir).supported ? 'clone' : 'copy';
    console.info(
      `copies here are expected to be: ${expectedMode} (${detectCloneSupport(dir).detail})`,
    );
    source = await newCluster(dir);
  }, 180_000);

  it('copies a running cluster under write load and with sessions held open: the copy starts with every row committed before, and the writers never notice', async () => {
    const idle = await source.connect();
    const inTransaction = await source.connect();
    await inTransaction.query('begin');
    await inTransaction.query('select count(*) from w');
    const writers = [writer(source, 1), writer(source, 2)];
    const committed = () => writers.reduce((n, w) => n + w.committed.length, 0);
    await vi.waitFor(() => expect(committed()).toBeGreaterThanOrEqual(200), {
      timeout: 30_000,
      interval: 10,
    });

    const before = writers.flatMap((w) => [...w.committed]);
    const target = path.join(dir, 'running-copy');
    const result = await copyRunning(source, target);
    const during = committed() - before.length;
    const started = performance.now();
    const copy = await start(target);
    const startMs = ms(started);
    // The writers go on after the copy too; then they stop, having seen no error.
    const after = committed();
    await vi.waitFor(() => expect(committed()).toBeGreaterThan(after + 50), {
      timeout: 30_000,
      interval: 10,
    });
    for (const w of writers) w.stopped = true;
    await Promise.all(writers.map((w) => w.done));
    expect(writers.flatMap((w) => w.errors)).toEqual([]);
    console.info(
      describeCopy('running source under write load', result, startMs) +
        `; ${during} rows committed on the source during the copy`,
    );

    expect(result.mode).toBe(expectedMode);
    expect(result.startLsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(result.stopLsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(result.bytes).toBeGreaterThan(80 * MB);
    expect(await query(copy, 'select count(*)::int as n from t')).toEqual([{ n: ROWS }]);
    expect(
      await query(copy, 'select count(*)::int as n from w where id = any($1::bigint[])', [before]),
    ).toEqual([{ n: before.length }]);

    // Two clusters from here on: a write to the copy stays in the copy.
    await query(copy, 'insert into w (writer) values (99)');
    expect(await query(copy, 'select count(*)::int as n from w where writer = 99')).toEqual([
      { n: 1 },
    ]);
    expect(await query(source, 'select count(*)::int as n from w where writer = 99')).toEqual([
      { n: 0 },
    ]);
    expect(await query(copy, 'select count(*)::int as n from pg_replication_slots')).toEqual([
      { n: 0 },
    ]);
    // An unlogged table comes back empty, as after a crash, and takes writes.
    await query(copy, 'insert into u values (1)');
    expect(await query(copy, 'select count(*)::int as n from u')).toEqual([{ n: 1 }]);

    await expectOutOfBackupMode(source);
    expect((await idle.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
    await inTransaction.query('commit');
    await idle.end();
    await inTransaction.end();
    await copy.postmaster.stop();
    expectOwnedByServer(target);
  });

  it('copies a stopped cluster (a suspended branch) as it lies, and the copy starts with its data', async () => {
    const branchDir = path.join(dir, 'suspended-branch');
    await copyRunning(source, branchDir);
    const branch = await start(branchDir);
    await query(branch, "create table made_in_branch as select 'kept' as word");
    await query(branch, 'insert into u select generate_series(1, 10)');
    await branch.postmaster.stop('fast');

    const target = path.join(dir, 'copy-of-suspended');
    const result = await copyCluster({ sourceDataDir: branchDir, target, owner });
    expect(fs.existsSync(path.join(target, 'postmaster.pid'))).toBe(false);
    const started = performance.now();
    const copy = await start(target);
    const startMs = ms(started);
    console.info(describeCopy('stopped source', result, startMs));

    expect(result.mode).toBe(expectedMode);
    expect(result.startLsn).toBeUndefined();
    expect(await query(copy, 'select word from made_in_branch')).toEqual([{ word: 'kept' }]);
    // Shut down cleanly, the source kept its unlogged tables' rows: so does the copy.
    expect(await query(copy, 'select count(*)::int as n from u')).toEqual([{ n: 10 }]);
    expect(await query(copy, 'select count(*)::int as n from t')).toEqual([{ n: ROWS }]);
    await copy.postmaster.stop();
    expectOwnedByServer(target);
  });

  it('aborted mid-copy: no target is left, and the source is out of backup mode', async () => {
    const target = path.join(dir, 'aborted');
    const controller = new AbortController();
    let filesWhenAborted = 0;
    await expect(
      copyRunning(source, target, {
        signal: controller.signal,
        onProgress: ({ files }) => {
          if (files < 20 || controller.signal.aborted) return;
          filesWhenAborted = files;
          controller.abort();
        },
      }),
    ).rejects.toThrow(/aborted/);
    expect(filesWhenAborted).toBeGreaterThanOrEqual(20);
    expect(fs.existsSync(target)).toBe(false);
    await expectOutOfBackupMode(source);

    // Nothing was left half done: the next copy succeeds.
    const again = path.join(dir, 'after-abort');
    await copyRunning(source, again);
    expect(fs.existsSync(path.join(again, 'global', 'pg_control'))).toBe(true);
    await expectOutOfBackupMode(source);
  });

  it("startPostmaster rejects with the server's own words when it exits before it is ready", async () => {
    await expect(start(source.pgDataDir)).rejects.toThrow(
      /did not start: exited with code 1[\s\S]*lock file "postmaster.pid" already exists/,
    );
    expect(await query(source, 'select 1 as one')).toEqual([{ one: 1 }]);
  });

  it('stopLeftover stops a postmaster left running on a data directory, and finds none after', async () => {
    const target = path.join(dir, 'left-running');
    await copyRunning(source, target);
    const leftover = await start(target);
    expect(await stopLeftover(target, log)).toBe(true);
    expect(await leftover.postmaster.exited).toBe(0);
    expect(await stopLeftover(target, log)).toBe(false);
  });

  it('refuses to copy as stopped a cluster a server runs on, and never touches a target that exists', async () => {
    const target = path.join(dir, 'refused');
    await expect(copyCluster({ sourceDataDir: source.pgDataDir, target })).rejects.toThrow(
      /runs on .*pass running/,
    );
    expect(fs.existsSync(target)).toBe(false);

    const existing = path.join(dir, 'existing');
    fs.mkdirSync(existing);
    fs.writeFileSync(path.join(existing, 'keep'), 'mine');
    await expect(copyRunning(source, existing)).rejects.toThrow(/already exists/);
    expect(fs.readdirSync(existing)).toEqual(['keep']);
  });

  it('refuses a cluster with a tablespace outside its data directory, saying which', async () => {
    const location = tempDir('tablespace');
    if (owner) fs.chownSync(location, owner.uid, owner.gid);
    await query(source, `create tablespace elsewhere location '${location}'`);
    try {
      const target = path.join(dir, 'with-tablespace');
      await expect(copyRunning(source, target)).rejects.toThrow(
        new RegExp(`tablespaces outside the data directory \\(pg_tblspc/\\d+ -> ${location}\\)`),
      );
      expect(fs.existsSync(target)).toBe(false);
    } finally {
      await query(source, 'drop tablespace elsewhere');
    }
  });
});

/** Blocks in use once the figure has settled (XFS frees blocks in the background). */
function usedBytes(dir: string): number {
  const read = () => {
    execFileSync('sync', ['-f', dir]);
    const s = fs.statfsSync(dir);
    return (s.blocks - s.bfree) * s.bsize;
  };
  let last = read();
  for (let tries = 0; tries < 100; tries++) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
    const now = read();
    if (now === last) return now;
    last = now;
  }
  return last;
}

/** Skips the test, saying why, when there is no XFS to run it on. */
function requireXfs(ctx: TestContext, mount: XfsMount | undefined): asserts mount is MountedXfs {
  const reason = !mount ? 'the XFS mount was not attempted' : 'skipped' in mount && mount.skipped;
  if (!reason) return;
  console.warn(`skipped "${ctx.task.name}": ${reason}`);
  ctx.skip(reason);
}

describe('on XFS with reflink', () => {
  let mount: XfsMount | undefined;
  let source: Cluster | undefined;

  beforeAll(async () => {
    mount = await mountReflinkXfs(2048);
    if ('skipped' in mount) return;
    cleanups.push(() => (mount as MountedXfs).unmount());
    // A new WAL segment would otherwise be 16 MB of zeros written for the source, not the copy.
    source = await newCluster(tempDir('engine-xfs', mount.dir), { wal_init_zero: 'off' });
  }, 180_000);

  it('clones a running cluster: every file a reflink, no disk used for the data, and the clone starts', async (ctx) => {
    requireXfs(ctx, mount);
    const dataBytes = Number(
      (
        await query<{ bytes: string }>(
          source!,
          'select sum(pg_database_size(oid)) as bytes from pg_database',
        )
      )[0]!.bytes,
    );
    const target = path.join(path.dirname(source!.pgDataDir), 'clone');
    const before = usedBytes(mount.dir);
    const result = await copyRunning(source!, target);
    const growth = usedBytes(mount.dir) - before;
    const started = performance.now();
    const clone = await start(target);
    const startMs = ms(started);
    console.info(
      describeCopy('running source on XFS', result, startMs) +
        `; the filesystem's used space grew by ${mb(growth)} for ${mb(dataBytes)} of databases`,
    );

    expect(result.mode).toBe('clone');
    expect(dataBytes).toBeGreaterThan(80 * MB);
    expect(growth).toBeLessThan(dataBytes * 0.1);
    expect(await query(clone, 'select count(*)::int as n from t')).toEqual([{ n: ROWS }]);
    await expectOutOfBackupMode(source!);
    await clone.postmaster.stop();
    expectOwnedByServer(target);
  });
});
