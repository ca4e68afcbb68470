// The pgbench workloads and the interleaved rounds over the three targets: every round runs each
// workload against direct, PgBouncer and pgbranch back to back, so that the machine's drifting
// load falls on all three alike and ratios can be taken within a round.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Cleanup } from './cleanup.js';
import { runPgbench, type Endpoint, type PgbenchFailure, type PgbenchRun } from './pool-pgbench.js';
import { progress } from './report.js';

export interface Workload {
  /** What --workloads calls it. */
  name: string;
  label: string;
  /** pgbench flags besides clients, threads, duration and logging. */
  args: string[];
  clients: number;
  /**
   * Added to -T: pgbench 15 counts connecting its clients against the duration, and 256 direct
   * logins (a backend each) can take seconds on a busy machine.
   */
  extraSeconds: number;
  /** A select-only (-S) workload with the simple protocol: the ones the targets are about. */
  selectOnly: boolean;
  /**
   * pgbench -C: every transaction on a new connection (login, SCRAM, one SELECT, Terminate), so
   * tps counts connections per second and CPU per transaction is CPU per connection.
   */
  reconnects: boolean;
}

export const WORKLOADS: Workload[] = [
  {
    name: 'select-16',
    label: '-S, 16 clients',
    args: ['-S'],
    clients: 16,
    extraSeconds: 0,
    selectOnly: true,
    reconnects: false,
  },
  {
    name: 'select-64',
    label: '-S, 64 clients',
    args: ['-S'],
    clients: 64,
    extraSeconds: 0,
    selectOnly: true,
    reconnects: false,
  },
  {
    name: 'select-256',
    label: '-S, 256 clients',
    args: ['-S'],
    clients: 256,
    extraSeconds: 10,
    selectOnly: true,
    reconnects: false,
  },
  {
    name: 'tpcb',
    label: 'TPC-B-like, 16 clients',
    args: [],
    clients: 16,
    extraSeconds: 0,
    selectOnly: false,
    reconnects: false,
  },
  {
    name: 'prepared',
    label: '-S -M prepared, 16 clients',
    args: ['-S', '-M', 'prepared'],
    clients: 16,
    extraSeconds: 0,
    selectOnly: false,
    reconnects: false,
  },
  {
    name: 'connect',
    label: '-C -S (new connection per transaction), 8 clients',
    args: ['-C', '-S'],
    clients: 8,
    extraSeconds: 0,
    selectOnly: false,
    reconnects: true,
  },
];

export type TargetName = 'direct' | 'pgbouncer' | 'pgbranch';

export interface Target {
  name: TargetName;
  label: string;
  endpoint: Endpoint;
  /** The pooler's process, whose CPU time each run measures. */
  pid?: number;
}

/** utime + stime of a process, in microseconds (from /proc/<pid>/stat, in clock ticks). */
function cpuMicros(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1_000_000) / CLOCK_TICKS;
}

/** USER_HZ: 100 on Linux everywhere that matters. */
const CLOCK_TICKS = 100;

/** One workload's runs on one target, in round order; a run is a result or why it failed. */
export type Runs = (PgbenchRun | PgbenchFailure)[];

export interface WorkloadResults {
  workload: Workload;
  runs: Record<TargetName, Runs>;
}

export interface RoundsResult {
  results: WorkloadResults[];
  /** 1-minute load average when each run started. */
  load: number[];
}

export const THREADS = 2;
/** Warm-up of a workload of new connections, per target. */
export const RECONNECT_WARMUP_SECONDS = 10;

export async function runRounds(options: {
  targets: Target[];
  workloads: Workload[];
  rounds: number;
  seconds: number;
  cleanup: Cleanup;
}): Promise<RoundsResult> {
  const { targets, workloads, rounds, seconds, cleanup } = options;
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbranch-bench-pgbench-'));
  const removeLogDir = cleanup.add(`remove ${logDir}`, () =>
    fs.rmSync(logDir, { recursive: true, force: true }),
  );
  const results: WorkloadResults[] = workloads.map((workload) => ({
    workload,
    runs: { direct: [], pgbouncer: [], pgbranch: [] },
  }));
  const load: number[] = [];
  const run = async (target: Target, workload: Workload, runSeconds: number) => {
    const cpuBefore = target.pid === undefined ? 0 : cpuMicros(target.pid);
    const result = await runPgbench({
      endpoint: target.endpoint,
      args: workload.args,
      clients: workload.clients,
      threads: THREADS,
      seconds: runSeconds,
      logDir,
      cleanup,
    });
    if (target.pid !== undefined && !('failed' in result) && result.transactions > 0) {
      // Includes the clients' logins, which pgbench keeps out of its tps; the same for both poolers.
      result.cpuUsPerTx = (cpuMicros(target.pid) - cpuBefore) / result.transactions;
    }
    return result;
  };
  try {
    // Not counted: fills both poolers' server connections and warms up pgbranch's JIT. A login
    // runs code that a transaction never does, and 2 s of logins leave much of it unoptimized
    // (V8's compiler took a fifth of pgbranch's CPU in such a run): a workload of new
    // connections gets a longer warm-up of its own.
    const reconnecting = workloads.find((w) => w.reconnects);
    for (const target of targets) {
      progress(`warm-up: ${target.label}, ${workloads[0]!.label} for 2 s`);
      await run(target, workloads[0]!, 2);
      if (reconnecting) {
        progress(
          `warm-up: ${target.label}, ${reconnecting.label} for ${RECONNECT_WARMUP_SECONDS} s`,
        );
        await run(target, reconnecting, RECONNECT_WARMUP_SECONDS);
      }
    }
    for (let round = 1; round <= rounds; round++) {
      for (const entry of results) {
        for (const target of targets) {
          load.push(os.loadavg()[0]!);
          const result = await run(target, entry.workload, seconds + entry.workload.extraSeconds);
          entry.runs[target.name].push(result);
          progress(
            `round ${round} of ${rounds}: ${entry.workload.label}, ${target.label}: ${
              'failed' in result
                ? `failed: ${result.failed}`
                : `${Math.round(result.tps).toLocaleString('en')} ${entry.workload.reconnects ? 'connections/s' : 'tps'}, p99 ${result.p99Ms.toFixed(2)} ms, connecting took ${result.connectMs.toFixed(entry.workload.reconnects ? 2 : 0)} ms${entry.workload.reconnects ? ' on average' : ''}${result.cpuUsPerTx === undefined ? '' : `, ${result.cpuUsPerTx.toFixed(1)} µs CPU/${entry.workload.reconnects ? 'connection' : 'tx'}`}`
            }`,
          );
        }
      }
    }
    return { results, load };
  } finally {
    await removeLogDir();
  }
}
