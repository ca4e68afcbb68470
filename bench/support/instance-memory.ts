// Memory of instance branches: branches made one after another through pgbranch (each a connect,
// the first row, a disconnect) while at most branch.max_running run, with pgbranch's RSS and the
// instances' memory sampled all along; then each instance still running, idle, on its own.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { PgbranchProcess } from '../../test/support/pgbranch.js';
import { FIRST_ROW_SQL, PARENT } from './branch-live.js';
import { connectToFirstRow } from './first-row.js';
import {
  add,
  childrenByParent,
  postmasterPid,
  processMemory,
  treeMemory,
  type Memory,
} from './process-memory.js';
import { bytes, duration, progress } from './report.js';

const SAMPLE_EVERY_MS = 250;
/** After the last branch: its backends settle (the first query's caches) before they are counted. */
export const SETTLE_MS = 5_000;

export interface MemorySamples {
  branches: number;
  maxRunning: number;
  /** Connect to first row of each new branch, in order. */
  ms: number[];
  samples: number;
  /** Highest of the samples: pgbranch's own process, ... */
  pgbranchRss: number;
  /** ... every running instance's postmaster and children together (each sum at one moment), ... */
  instancesPss: number;
  instancesRss: number;
  /** ... the most instances seen running at once, and the root instance (the embedded server). */
  running: number;
  rootPss: number;
  /** Each instance running at the end, idle for SETTLE_MS: postmaster and children. */
  idle: Memory[];
  /** pgbranch's RSS at the end. */
  pgbranchRssEnd: number;
  /** instance_suspended with reason limit: made room for a new branch. */
  suspendedForLimit: number;
  /** Making all the branches. */
  totalMs: number;
}

/** Running instances of this pgbranch: their postmasters, by data directory. */
function runningInstances(proxy: PgbranchProcess): number[] {
  const dir = path.join(proxy.dataDir, 'instances');
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .map((id) => postmasterPid(path.join(dir, id, 'pg')))
    .filter((pid): pid is number => pid !== undefined);
}

export async function measureInstanceMemory(options: {
  proxy: PgbranchProcess;
  branches: number;
  maxRunning: number;
  label: string;
}): Promise<MemorySamples> {
  const { proxy, branches, maxRunning, label } = options;
  const pgbranchPid = proxy.child.pid!;
  const rootPgDataDir = proxy.ready.dataDir ?? path.join(proxy.dataDir, 'pg');
  const result: MemorySamples = {
    branches,
    maxRunning,
    ms: [],
    samples: 0,
    pgbranchRss: 0,
    instancesPss: 0,
    instancesRss: 0,
    running: 0,
    rootPss: 0,
    idle: [],
    pgbranchRssEnd: 0,
    suspendedForLimit: 0,
    totalMs: 0,
  };
  const sample = () => {
    const children = childrenByParent();
    const instances: Memory = { rss: 0, pss: 0, processes: 0 };
    const pids = runningInstances(proxy);
    for (const pid of pids) add(instances, treeMemory(pid, children));
    const root = postmasterPid(rootPgDataDir);
    result.samples++;
    result.pgbranchRss = Math.max(result.pgbranchRss, processMemory(pgbranchPid).rss);
    result.instancesPss = Math.max(result.instancesPss, instances.pss);
    result.instancesRss = Math.max(result.instancesRss, instances.rss);
    result.running = Math.max(result.running, pids.length);
    if (root) result.rootPss = Math.max(result.rootPss, treeMemory(root, children).pss);
  };
  const suspendedBefore = proxy
    .events('instance_suspended')
    .filter((e) => e.reason === 'limit').length;
  const timer = setInterval(sample, SAMPLE_EVERY_MS);
  const started = performance.now();
  try {
    for (let i = 1; i <= branches; i++) {
      const ms = await connectToFirstRow(proxy.config(`${PARENT}@mem-${i}`), FIRST_ROW_SQL);
      result.ms.push(ms);
      if (i % 10 === 0 || i === branches) {
        progress(
          `${label} memory: ${i} of ${branches} branches made (this one ${duration(ms)}); so far at most ${result.running} running, pgbranch ${bytes(result.pgbranchRss)} RSS, instances ${bytes(result.instancesPss)} PSS together`,
        );
      }
    }
    result.totalMs = performance.now() - started;
    await sleep(SETTLE_MS);
    sample();
  } finally {
    clearInterval(timer);
  }
  const children = childrenByParent();
  result.idle = runningInstances(proxy).map((pid) => treeMemory(pid, children));
  result.pgbranchRssEnd = processMemory(pgbranchPid).rss;
  result.suspendedForLimit =
    proxy.events('instance_suspended').filter((e) => e.reason === 'limit').length - suspendedBefore;
  return result;
}
