// One parent cluster of one size, generated once, and everything measured on it in turn: pgbranch
// with the database provider (branches under load, then with pgbench stopped), pgbranch with the
// instance provider on the same data directory (branches under load, then resumes of the suspended
// ones), and pgbranch with the instance provider and a low branch.max_running (memory). The cluster
// is removed afterwards, to make room for the next size.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { startPgbranch, type PgbranchProcess } from '../../test/support/pgbranch.js';
import { freeBytes } from './branch-disk.js';
import {
  measureLiveDatabase,
  measureLiveInstance,
  measureResume,
  FIRST_ROW_SQL,
  PARENT,
  type LivePhase,
  type ResumeSample,
} from './branch-live.js';
import { directConfig } from './branch-runs.js';
import type { Cleanup } from './cleanup.js';
import { connectToFirstRow } from './first-row.js';
import { measureInstanceMemory, type MemorySamples } from './instance-memory.js';
import { generatePgbenchCluster, type PgbenchCluster } from './pgbench-cluster.js';
import { bytes, duration, progress } from './report.js';

const run = promisify(execFile);

/** Instances are suspended this soon after their last client leaves, for the resume runs. */
export const RESUME_SUSPEND_AFTER = '2s';

export interface LiveParts {
  database: boolean;
  instance: boolean;
  live: boolean;
  resume: boolean;
  memory: boolean;
}

export interface LiveSizeResult {
  gb: number;
  cluster: PgbenchCluster;
  /** How each provider's pgbranch said it makes branches (its banner's reason). */
  reasons: Partial<Record<'database' | 'instance', string>>;
  database?: LivePhase;
  instance?: LivePhase;
  /** The instance provider with branch.warm_spare off: every branch a copy under the backup API. */
  instanceCopy?: LivePhase;
  resume?: ResumeSample[];
  memory?: MemorySamples | { skipped: string };
  serverVersion: string;
}

export async function runLiveSize(options: {
  dataRoot: string;
  gb: number;
  password: string;
  parts: LiveParts;
  repeat: number;
  clients: number;
  rate: number;
  branches: number;
  maxRunning: number;
  cleanup: Cleanup;
}): Promise<LiveSizeResult> {
  const { dataRoot, gb, password, parts, repeat, clients, rate, cleanup } = options;
  const label = `${gb} GB:`;
  const dataDir = path.join(dataRoot, `live-${gb}gb`);
  const pgDataDir = path.join(dataDir, 'pg');
  const generated = path.join(dataRoot, `live-${gb}gb-generated`);
  let cluster: PgbenchCluster | undefined;
  let serverVersion = '';
  const result: Partial<LiveSizeResult> = { gb, reasons: {} };

  const withPgbranch = async <T>(
    provider: 'database' | 'instance',
    args: string[],
    work: (proxy: PgbranchProcess) => Promise<T>,
  ): Promise<T> => {
    progress(
      `${label} starting pgbranch (${provider} provider${args.length ? ` ${args.join(' ')}` : ''})`,
    );
    const proxy = await startPgbranch({
      dataDir,
      password,
      args: [
        '--log-level',
        'info',
        // The memory run makes branches faster than the default 60 a minute a role may.
        '--branch-max-creations-per-minute',
        '0',
        ...(provider === 'instance' ? ['--branch-provider', 'instance'] : []),
        ...args,
      ],
      timeoutMs: 300_000,
      entry: 'bin',
    });
    const stop = cleanup.add('stop pgbranch', () => proxy.stop());
    try {
      serverVersion = proxy.ready.serverVersion;
      result.reasons![provider] = `${proxy.ready.copyMode}: ${proxy.ready.copyReason}`;
      return await work(proxy);
    } finally {
      await stop();
    }
  };

  /**
   * The cluster as generated, as a plain copy: every file unshared and in few extents again. The
   * last phase's branches go too: sharing blocks with the copy they were made of, they would keep
   * them all once it is gone (a 10 GB run filled its image that way).
   */
  const restore = async () => {
    const started = performance.now();
    fs.rmSync(dataDir, { recursive: true, force: true });
    // The embedded server runs as the postgres user, which must reach its data directory.
    fs.mkdirSync(dataDir, { mode: 0o755 });
    await run('cp', ['-a', '--reflink=never', generated, pgDataDir]);
    // Written back now, not during the measurements.
    await run('sync', ['-f', pgDataDir]);
    progress(
      `${label} a fresh plain copy of the generated cluster in ${duration(performance.now() - started)}`,
    );
  };

  try {
    await withPgbranch('database', [], async (proxy) => {
      cluster = await generatePgbenchCluster(directConfig(proxy), PARENT, gb);
    });
    fs.renameSync(pgDataDir, generated);
    if (parts.database && parts.live) {
      await restore();
      result.database = await withPgbranch('database', [], (proxy) =>
        measureLiveDatabase({ proxy, repeat, clients, rate, cleanup, label }),
      );
    }
    if (parts.instance && (parts.live || parts.resume)) {
      await restore();
      await withPgbranch(
        'instance',
        ['--branch-suspend-after', RESUME_SUSPEND_AFTER],
        async (proxy) => {
          if (parts.live) {
            result.instance = await measureLiveInstance({
              proxy,
              repeat,
              clients,
              rate,
              cleanup,
              label,
              warmSpare: true,
            });
          }
          if (parts.resume) {
            let branches = result.instance?.creations.map((c) => c.branch);
            if (!branches) {
              // No branches from the live runs: one made here, quietly, to be suspended.
              branches = ['resume-1'];
              await connectToFirstRow(proxy.config(`${PARENT}@resume-1`), FIRST_ROW_SQL);
            }
            result.resume = await measureResume({ proxy, branches, repeat, label });
          }
        },
      );
    }
    if (parts.instance && parts.live) {
      await restore();
      result.instanceCopy = await withPgbranch(
        'instance',
        ['--branch-warm-spare', 'off'],
        (proxy) =>
          measureLiveInstance({
            proxy,
            repeat,
            clients,
            rate,
            cleanup,
            label: `${label} (warm_spare off)`,
            warmSpare: false,
          }),
      );
    }
    if (parts.instance && parts.memory) {
      await restore();
      result.memory = await withPgbranch(
        'instance',
        ['--branch-max-running', String(options.maxRunning)],
        async (proxy) => {
          const clones = proxy.ready.copyMode === 'clone';
          const need = (cluster?.databaseBytes ?? 0) * options.branches;
          if (!clones && need > 0.8 * freeBytes(dataDir)) {
            return {
              skipped: `instances are full copies here and ${options.branches} of them need ${bytes(need)}; ${bytes(freeBytes(dataDir))} free`,
            };
          }
          return measureInstanceMemory({
            proxy,
            branches: options.branches,
            maxRunning: options.maxRunning,
            label,
          });
        },
      );
    }
  } finally {
    progress(`${label} done`);
  }
  if (!cluster) throw new Error(`${label} nothing to measure (no part of this size was asked for)`);
  return { ...result, cluster, serverVersion } as LiveSizeResult;
}
