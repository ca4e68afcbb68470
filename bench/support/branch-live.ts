// New branches of a running parent cluster under write load, by each provider, and the resume of a
// suspended instance branch. pgbench writes to database app straight to the server (not through
// pgbranch, so that its tps is the parent's own) all along; the clock runs from a new client's
// connect to app@<branch> through pgbranch to the first row of a query that reads the branch's
// pgbench_accounts.
//
// The database provider clones only a database nobody is connected to: one attempt is made under
// the load (it waits branch.drain_timeout, then fails with 55006), and every measured branch is made
// with pgbench stopped, its sessions gone, and pgbench started again right after.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { quoteIdent } from '../../src/branch/database-provider.js';
import { copyCluster, type CopyClusterResult } from '../../src/branch/instance/cluster-copy.js';
import { serverOwner } from '../../src/branch/instance/postmaster.js';
import type { PgbranchProcess } from '../../test/support/pgbranch.js';
import {
  extentCount,
  freeBytes,
  segmentFiles,
  settledFreeBytes,
  unsharedBytes,
} from './branch-disk.js';
import { directConfig } from './branch-runs.js';
import type { Cleanup } from './cleanup.js';
import { connectToFirstRow } from './first-row.js';
import { bytes, duration, progress, summarize } from './report.js';
import {
  meanLatency,
  meanTps,
  secondsOverlapping,
  startWriteLoad,
  steadyLoadSeconds,
  steadySeconds,
  type LoadTarget,
  type WriteLoad,
} from './write-load.js';

/** The query whose first row stops the clock: it reads a table of the branch. */
export const FIRST_ROW_SQL = 'SELECT 1 AS one FROM pgbench_accounts WHERE aid = 1';
export const PARENT = 'app';

/** pgbench runs this long before anything is measured. */
export const WARM_UP_MS = 10_000;
/** Between two creations: the parent runs undisturbed. */
export const GAP_MS = 10_000;
/** After a creation, the parent may still feel it (its checkpoint's full-page writes): kept apart. */
export const AFTER_MS = 5_000;
/** Just before a creation: the parent's tps to compare with, side by side in time. */
export const BEFORE_MS = 3_000;
/** Copies of the parent made with copyCluster itself after the branches, to see inside one. */
const ANATOMY_COPIES = 3;
/** pgbench started again (database provider): its first seconds are its connecting. */
const RESTART_WARM_UP_MS = 3_000;

export interface LiveCreation {
  branch: string;
  /** Connect to first row. */
  ms: number;
  /** The machine's 1-minute load average at the connect. */
  loadAverage: number;
  /** [connect, first row] in epoch ms. */
  window: [number, number];
  /** Free space the filesystem lost over that window (the parent's own writes included). */
  freed: number;
  /** The branch's blocks that no other file shares, just after the first row. */
  unshared: number | undefined;
  /**
   * Instance: where the branch came from: its parent's warm standby promoted, or a copy under the
   * backup API (then branch_created's copyMs and ms, and instance_started's ms).
   */
  from?: 'warm_spare' | 'copy';
  /** Instance: how long past GAP_MS the bench waited for the root's next warm standby to be ready. */
  spareWaitMs?: number;
  /** Instance from a warm standby: the wait for it to replay the parent's position, and the promotion. */
  promoteMs?: number;
  copyMs?: number;
  createMs?: number;
  startMs?: number;
  copiedBytes?: number;
  mode?: string;
  /** Database: branch_created's cloneMs (CREATE DATABASE) and totalMs. */
  cloneMs?: number;
  totalMs?: number;
  /** Database: pgbench stopped, its sessions gone, the branch made, pgbench started again. */
  pausedMs?: number;
  /** Database: when pgbench was stopped (epoch ms). */
  stoppedAt?: number;
  /** The parent's checkpoints that ended meanwhile (pg_stat_checkpointer before and after). */
  checkpoint?: CheckpointWork;
  /** Extents of the parent's pgbench_accounts just after: a reflink copy walks every one. */
  parentExtents?: number;
  /** The parent's tps over the BEFORE_MS before the connect (database: before pgbench stopped). */
  tpsBefore?: number;
  /** The parent's tps over the seconds of pgbench's progress that overlap the creation. */
  tpsDuring?: number;
  /** The lowest of those seconds. */
  tpsLowest?: number;
  /** The parent's tps over the AFTER_MS after the first row. */
  tpsAfter?: number;
  /** pgbench's mean latency (ms) over the same seconds as tpsBefore and tpsDuring. */
  latencyBefore?: number;
  latencyDuring?: number;
}

export interface CheckpointWork {
  /** Checkpoints done (requested and timed). */
  count: number;
  /** Their writing and syncing, in ms. */
  ms: number;
  /** Buffers they wrote. */
  buffers: number;
}

/** One copy of the running parent by copyCluster, the code behind an instance branch, timed inside. */
export interface CopyAnatomy {
  ms: number;
  phases: NonNullable<CopyClusterResult['phases']>;
  checkpoint: CheckpointWork | undefined;
}

export interface LivePhase {
  provider: 'database' | 'instance';
  creations: LiveCreation[];
  /** Instance: copies of the parent under the same load, made directly (not through pgbranch). */
  anatomy?: CopyAnatomy[];
  /** Per-second tps of the parent away from creations. */
  steady: number[];
  /**
   * Instance with the warm standby: those steady seconds split by whether the root's next warm
   * standby was being made in them (spare_making to spare_ready).
   */
  steadyByMaking?: SteadyByMaking;
  /** Lines of pgbench that said a client failed. */
  loadErrors: string[];
  /** Database: the attempt made under load. */
  underLoad?: { code: string; message: string; ms: number; tpsBefore: number; tpsDuring: number };
}

export interface ResumeSample {
  branch: string;
  ms: number;
  /** instance_started's ms: the postmaster's start until it takes connections. */
  startMs: number;
}

function loadTarget(proxy: PgbranchProcess): LoadTarget {
  const server = directConfig(proxy);
  return {
    host: String(server.host),
    port: Number(server.port),
    user: String(server.user),
    password: proxy.password,
    database: PARENT,
  };
}

/** Fills in the tps around each creation and the steady seconds, once the load has stopped. */
function analyse(load: WriteLoad, creations: LiveCreation[], busy: [number, number][]) {
  for (const c of creations) {
    const start = c.stoppedAt ?? c.window[0];
    const before = secondsOverlapping(load, start - BEFORE_MS, start);
    c.tpsBefore = meanTps(before);
    c.latencyBefore = meanLatency(before);
    const during = secondsOverlapping(load, c.window[0], c.window[1]);
    if (c.pausedMs === undefined && during.length > 0) {
      c.tpsDuring = meanTps(during);
      c.latencyDuring = meanLatency(during);
      c.tpsLowest = Math.min(...during.map((s) => s.tps));
    }
    c.tpsAfter = meanTps(secondsOverlapping(load, c.window[1], c.window[1] + AFTER_MS));
  }
  return steadySeconds(load, busy, RESTART_WARM_UP_MS);
}

interface CheckpointerStats {
  done: number;
  ms: number;
  buffers: number;
}

/** The parent's checkpointer so far; undefined where pg_stat_checkpointer (PostgreSQL 17+) is not. */
async function checkpointer(admin: pg.Client): Promise<CheckpointerStats | undefined> {
  try {
    const { rows } = await admin.query<{ done: string; ms: number; buffers: string }>(
      'SELECT num_timed + num_requested AS done, write_time + sync_time AS ms, buffers_written AS buffers FROM pg_stat_checkpointer',
    );
    return {
      done: Number(rows[0]!.done),
      ms: Number(rows[0]!.ms),
      buffers: Number(rows[0]!.buffers),
    };
  } catch {
    return undefined;
  }
}

function checkpointWork(
  before: CheckpointerStats | undefined,
  after: CheckpointerStats | undefined,
): CheckpointWork | undefined {
  if (!before || !after) return undefined;
  return {
    count: after.done - before.done,
    ms: after.ms - before.ms,
    buffers: after.buffers - before.buffers,
  };
}

async function event(
  proxy: PgbranchProcess,
  name: string,
  match: (e: Record<string, unknown>) => boolean,
  // Log lines reach the bench through a pipe: on a loaded machine, seconds after the event.
  timeoutMs = 60_000,
): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = proxy.events(name).filter(match).at(-1);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`pgbranch logged no ${name} in ${timeoutMs} ms`);
    await sleep(20);
  }
}

/** The parent's steady tps, by what the root's next warm standby was doing in each second. */
export interface SteadyByMaking {
  /** Its copy of the running parent (reflink clones of every file). */
  copying: number[];
  /** Its start, recovery and catch-up, once copied. */
  recovering: number[];
  /** No standby being made. */
  otherwise: number[];
}

/** The parent's steady seconds, split by what the root's next warm standby was doing. */
function splitByMaking(
  proxy: PgbranchProcess,
  load: WriteLoad,
  busy: [number, number][],
): SteadyByMaking {
  const root = (e: Record<string, unknown>) => e.parent === null;
  const ready = proxy.events('spare_ready').filter(root);
  const windows = proxy
    .events('spare_making')
    .filter(root)
    .map((e) => {
      const from = Number(e.time);
      const done = ready.find((r) => Number(r.time) >= from);
      const to = done ? Number(done.time) : Infinity;
      // Without copyMs (an older pgbranch) the whole making counts as copying.
      const copied = done?.copyMs === undefined ? to : from + Number(done.copyMs);
      return { from, copied, to };
    });
  const split: SteadyByMaking = { copying: [], recovering: [], otherwise: [] };
  const overlaps = (second: { from: number; to: number }, from: number, to: number) =>
    second.to > from && second.from < to;
  for (const second of steadyLoadSeconds(load, busy, RESTART_WARM_UP_MS)) {
    if (windows.some((w) => overlaps(second, w.from, w.copied))) split.copying.push(second.tps);
    else if (windows.some((w) => overlaps(second, w.copied, w.to))) {
      split.recovering.push(second.tps);
    } else split.otherwise.push(second.tps);
  }
  return split;
}

/** Waits until the root's warm standby has been ready `count` times (the first at the start). */
export async function readySpares(
  proxy: PgbranchProcess,
  count: number,
  timeoutMs = 300_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (proxy.events('spare_ready').filter((e) => e.parent === null).length < count) {
    if (Date.now() > deadline) {
      throw new Error(`the root's warm standby was not ready a ${count}. time in ${timeoutMs} ms`);
    }
    await sleep(50);
  }
}

export function instanceDir(proxy: PgbranchProcess, branch: string): string | undefined {
  const dir = path.join(proxy.dataDir, 'instances');
  for (const id of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    try {
      const record = JSON.parse(fs.readFileSync(path.join(dir, id, 'instance.json'), 'utf8')) as {
        name?: string;
      };
      if (record.name === branch) return path.join(dir, id);
    } catch {
      // Not an instance (a copy under way).
    }
  }
  return undefined;
}

export async function measureLiveInstance(options: {
  proxy: PgbranchProcess;
  repeat: number;
  clients: number;
  rate: number;
  cleanup: Cleanup;
  label: string;
  /** branch.warm_spare is on (pgbranch's default where instances are clones). */
  warmSpare: boolean;
}): Promise<LivePhase> {
  const { proxy, repeat, clients, rate, cleanup, label } = options;
  const dataRoot = proxy.dataDir;
  const admin = new pg.Client(directConfig(proxy));
  await admin.connect();
  const closeAdmin = cleanup.add('close the admin connection', () => admin.end());
  const load = startWriteLoad({ target: loadTarget(proxy), clients, rate, cleanup });
  const busy: [number, number][] = [[load.starts[0]!, load.starts[0]! + WARM_UP_MS]];
  const creations: LiveCreation[] = [];
  const anatomy: CopyAnatomy[] = [];
  const pgDataDir = proxy.ready.dataDir ?? path.join(proxy.dataDir, 'pg');
  const accounts = await accountsFiles(proxy, pgDataDir);
  try {
    progress(`${label} instance: pgbench -c ${clients} on ${PARENT}, warming up`);
    await sleep(WARM_UP_MS);
    if (options.warmSpare) {
      // The root's warm standby is made at pgbranch's start; the first branch waits for nothing else.
      const ready = await event(proxy, 'spare_ready', (e) => e.parent === null, 300_000);
      progress(
        `${label} instance: the root's warm standby was ready in ${duration(Number(ready.ms))}`,
      );
    }
    for (let i = 1; i <= repeat; i++) {
      await sleep(GAP_MS);
      // Each branch is asked for once the root's next warm standby is ready, as a branch made now
      // and then finds it: branches in quicker succession than the standby is made are copied.
      const readyFrom = Date.now();
      if (options.warmSpare) await readySpares(proxy, i);
      const spareWaitMs = Date.now() - readyFrom;
      const branch = `${options.warmSpare ? 'live' : 'copied'}-${i}`;
      const stats = await checkpointer(admin);
      const before = freeBytes(dataRoot);
      const loadAverage = os.loadavg()[0]!;
      const t0 = Date.now();
      const ms = await connectToFirstRow(proxy.config(`${PARENT}@${branch}`), FIRST_ROW_SQL);
      const t1 = Date.now();
      const freed = before - freeBytes(dataRoot);
      const checkpoint = checkpointWork(stats, await checkpointer(admin));
      busy.push([t0, t1 + AFTER_MS]);
      const created = await event(proxy, 'branch_created', (e) => e.branch === branch);
      const fromSpare = created.from === 'warm_spare';
      const started = fromSpare
        ? { ms: 0 }
        : await event(proxy, 'instance_started', (e) => e.branch === branch);
      const dir = instanceDir(proxy, branch);
      const unshared = dir ? await unsharedBytes(path.join(dir, 'pg')) : undefined;
      const parentExtents = await extentCount(accounts());
      const creation: LiveCreation = {
        branch,
        ms,
        loadAverage,
        window: [t0, t1],
        freed,
        unshared,
        from: fromSpare ? 'warm_spare' : 'copy',
        spareWaitMs,
        promoteMs: fromSpare ? Number(created.promoteMs) : 0,
        copyMs: fromSpare ? 0 : Number(created.copyMs),
        createMs: Number(created.ms),
        startMs: Number(started.ms),
        copiedBytes: fromSpare ? 0 : Number(created.bytes),
        mode: String(created.mode),
        checkpoint,
        parentExtents,
      };
      creations.push(creation);
      const tps = secondsOverlapping(load, t0 - 1000, t0).at(-1)?.tps;
      progress(
        `${label} instance, ${branch} (${i} of ${repeat}): connect → first row ${duration(ms)} (${fromSpare ? `from the warm standby${spareWaitMs > 100 ? `, asked for ${duration(spareWaitMs)} later than ${GAP_MS / 1000} s after the last once it was ready` : ''}: catch-up and promotion ${duration(creation.promoteMs!)}; ` : ''}copy ${duration(creation.copyMs!)}${checkpoint ? `, of which the parent's checkpoint ${duration(checkpoint.ms)} for ${checkpoint.buffers} buffers` : ''}, start ${duration(creation.startMs!)}), ${bytes(creation.copiedBytes!)} ${creation.mode}d, free space ${freed >= 0 ? '−' : '+'}${bytes(Math.abs(freed))}, unshared ${unshared === undefined ? '?' : bytes(unshared)}, parent's pgbench_accounts in ${parentExtents ?? '?'} extents; parent ${tps === undefined ? '?' : Math.round(tps)} tps the second before`,
      );
    }
    for (let i = 1; i <= ANATOMY_COPIES; i++) {
      await sleep(GAP_MS);
      const target = path.join(dataRoot, 'anatomy', `copy-${i}`);
      const stats = await checkpointer(admin);
      const t0 = Date.now();
      const copied = await copyCluster({
        sourceDataDir: pgDataDir,
        target,
        running: {
          // As pgbranch reaches the root: its private Unix socket, trust (no SCRAM round trips).
          connect: async () => {
            const client = new pg.Client({
              host: path.join(proxy.dataDir, 'run'),
              port: Number(directConfig(proxy).port),
              user: 'postgres',
              database: 'postgres',
            });
            await client.connect();
            return client;
          },
        },
        owner: serverOwner(),
      });
      busy.push([t0, Date.now() + AFTER_MS]);
      const checkpoint = checkpointWork(stats, await checkpointer(admin));
      fs.rmSync(target, { recursive: true, force: true });
      anatomy.push({ ms: copied.ms, phases: copied.phases!, checkpoint });
      const p = copied.phases!;
      progress(
        `${label} instance, copyCluster of the parent directly (${i} of ${ANATOMY_COPIES}): ${duration(copied.ms)}: pg_backup_start ${duration(p.backupStartMs)} (checkpoint ${checkpoint ? duration(checkpoint.ms) : '?'}), files ${duration(p.filesMs)}, pg_backup_stop ${duration(p.backupStopMs)}, WAL ${duration(p.walMs)}`,
      );
    }
    await sleep(AFTER_MS + GAP_MS);
  } finally {
    await load.stop();
    await closeAdmin();
  }
  const steady = analyse(load, creations, busy);
  const steadyByMaking = options.warmSpare ? splitByMaking(proxy, load, busy) : undefined;
  if (steadyByMaking) {
    const { copying, recovering, otherwise } = steadyByMaking;
    const describe = (tps: number[]) =>
      tps.length
        ? `median ${Math.round(summarize(tps).median)}, lowest ${Math.round(summarize(tps).min)} (${tps.length} s)`
        : 'none';
    progress(
      `${label} instance: parent's steady tps while the next warm standby was copied ${describe(copying)}, while it recovered and caught up ${describe(recovering)}; otherwise ${describe(otherwise)}`,
    );
  }
  return {
    provider: 'instance',
    creations,
    anatomy,
    steady,
    steadyByMaking,
    loadErrors: load.errors,
  };
}

export async function measureLiveDatabase(options: {
  proxy: PgbranchProcess;
  repeat: number;
  clients: number;
  rate: number;
  cleanup: Cleanup;
  label: string;
}): Promise<LivePhase> {
  const { proxy, repeat, clients, rate, cleanup, label } = options;
  const dataRoot = proxy.dataDir;
  const admin = new pg.Client(directConfig(proxy));
  await admin.connect();
  const closeAdmin = cleanup.add('close the admin connection', () => admin.end());
  const load = startWriteLoad({ target: loadTarget(proxy), clients, rate, cleanup });
  const busy: [number, number][] = [[load.starts[0]!, load.starts[0]! + WARM_UP_MS]];
  const creations: LiveCreation[] = [];
  let underLoad: LivePhase['underLoad'];
  try {
    progress(`${label} database: pgbench -c ${clients} on ${PARENT}, warming up`);
    await sleep(WARM_UP_MS + GAP_MS);
    const t0 = Date.now();
    try {
      await connectToFirstRow(proxy.config(`${PARENT}@busy`), FIRST_ROW_SQL);
      underLoad = {
        code: 'none',
        message: 'made a branch under load',
        ms: Date.now() - t0,
        tpsBefore: 0,
        tpsDuring: 0,
      };
    } catch (error) {
      const e = error as { code?: string; message: string };
      underLoad = {
        code: e.code ?? '?',
        message: e.message,
        ms: Date.now() - t0,
        tpsBefore: 0,
        tpsDuring: 0,
      };
    }
    busy.push([t0, Date.now() + AFTER_MS]);
    progress(
      `${label} database, under load: ${underLoad.code} after ${duration(underLoad.ms)}: ${underLoad.message}`,
    );
    for (let i = 1; i <= repeat; i++) {
      await sleep(GAP_MS);
      const branch = `db-${i}`;
      const stopped = Date.now();
      await load.stop();
      await quiet(admin, PARENT);
      const stats = await checkpointer(admin);
      // Not part of the pause a user would see: taken off pausedMs below.
      const settling = Date.now();
      const before = await settledFreeBytes(dataRoot, 1_000);
      const settledMs = Date.now() - settling;
      const loadAverage = os.loadavg()[0]!;
      const c0 = Date.now();
      const ms = await connectToFirstRow(proxy.config(`${PARENT}@${branch}`), FIRST_ROW_SQL);
      const c1 = Date.now();
      const freed = before - freeBytes(dataRoot);
      load.restart();
      const checkpoint = checkpointWork(stats, await checkpointer(admin));
      const pausedMs = Date.now() - stopped - settledMs;
      busy.push([stopped, c1 + AFTER_MS]);
      const created = await event(
        proxy,
        'branch_created',
        (e) => e.database === `${PARENT}@${branch}`,
      );
      const { rows } = await admin.query<{ oid: number }>(
        'SELECT oid FROM pg_database WHERE datname = $1',
        [`${PARENT}@${branch}`],
      );
      const pgDataDir = proxy.ready.dataDir ?? path.join(proxy.dataDir, 'pg');
      const unshared = rows[0]
        ? await unsharedBytes(path.join(pgDataDir, 'base', String(rows[0].oid)))
        : undefined;
      creations.push({
        branch,
        ms,
        loadAverage,
        window: [c0, c1],
        freed,
        unshared,
        cloneMs: Number(created.cloneMs),
        totalMs: Number(created.totalMs),
        mode: String(created.mode),
        pausedMs,
        stoppedAt: stopped,
        checkpoint,
      });
      progress(
        `${label} database, ${branch} (${i} of ${repeat}), pgbench stopped: connect → first row ${duration(ms)} (CREATE DATABASE ${duration(Number(created.cloneMs))}${checkpoint ? `, of which checkpoints ${duration(checkpoint.ms)} for ${checkpoint.buffers} buffers` : ''}), pgbench off ${duration(pausedMs)}, free space ${freed >= 0 ? '−' : '+'}${bytes(Math.abs(freed))}, unshared ${unshared === undefined ? '?' : bytes(unshared)}`,
      );
    }
    await sleep(AFTER_MS + GAP_MS);
  } finally {
    await load.stop();
    for (const branch of ['busy', ...creations.map((c) => c.branch)]) {
      await admin
        .query(`DROP DATABASE IF EXISTS ${quoteIdent(`${PARENT}@${branch}`)} WITH (FORCE)`)
        .catch(() => undefined);
    }
    await closeAdmin();
  }
  const steady = analyse(load, creations, busy);
  if (underLoad) {
    const [from] = busy[1]!;
    underLoad.tpsBefore = meanTps(secondsOverlapping(load, from - BEFORE_MS, from));
    underLoad.tpsDuring = meanTps(secondsOverlapping(load, from, from + underLoad.ms));
  }
  return { provider: 'database', creations, steady, loadErrors: load.errors, underLoad };
}

/** The files of the parent's pgbench_accounts (main fork); its segments are listed anew each call. */
async function accountsFiles(proxy: PgbranchProcess, pgDataDir: string): Promise<() => string[]> {
  const client = new pg.Client({ ...directConfig(proxy), database: PARENT });
  await client.connect();
  try {
    const { rows } = await client.query<{ file: string }>(
      "SELECT pg_relation_filepath('pgbench_accounts') AS file",
    );
    const first = path.join(pgDataDir, rows[0]!.file);
    return () => segmentFiles(first);
  } finally {
    await client.end();
  }
}

/** Waits until nobody but this session is connected to `database`. */
async function quiet(admin: pg.Client, database: string): Promise<void> {
  for (let waited = 0; waited < 10_000; waited += 20) {
    const { rows } = await admin.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
      [database],
    );
    if (rows[0]!.n === 0) return;
    await sleep(20);
  }
  throw new Error(`sessions stayed on ${database} 10 s after pgbench stopped`);
}

async function countReached(count: () => number, wanted: number, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (count() < wanted) {
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for a log event`);
    await sleep(20);
  }
}

/**
 * Connect to first row on branches that pgbranch has suspended (no clients for
 * branch.suspend_after): each time, waits for a new instance_suspended of the branch first.
 */
export async function measureResume(options: {
  proxy: PgbranchProcess;
  branches: string[];
  repeat: number;
  label: string;
}): Promise<ResumeSample[]> {
  const { proxy, branches, repeat, label } = options;
  const samples: ResumeSample[] = [];
  const count = (name: string, branch: string) =>
    proxy.events(name).filter((e) => e.branch === branch).length;
  /** Suspensions of each branch to wait for before the next resume. */
  const needed = new Map<string, number>();
  for (let i = 0; i < repeat; i++) {
    const branch = branches[i % branches.length]!;
    await countReached(() => count('instance_suspended', branch), needed.get(branch) ?? 1, 60_000);
    const starts = count('instance_started', branch);
    const ms = await connectToFirstRow(proxy.config(`${PARENT}@${branch}`), FIRST_ROW_SQL);
    needed.set(branch, count('instance_suspended', branch) + 1);
    await countReached(() => count('instance_started', branch), starts + 1, 10_000);
    const started = proxy.events('instance_started').filter((e) => e.branch === branch);
    const sample = { branch, ms, startMs: Number(started.at(-1)!.ms) };
    samples.push(sample);
    progress(
      `${label} resume of ${branch} (${i + 1} of ${repeat}): connect → first row ${duration(ms)} (start ${duration(sample.startMs)})`,
    );
  }
  return samples;
}
