// Write load on a parent while it is branched: pgbench's TPC-B-like script, run until stopped, with
// its per-second progress (-P 1 --progress-timestamp) kept, so that the seconds around a branch's
// creation can be compared with the seconds away from it. pgbench's per-transaction log would be
// finer, but pgbench writes it only when it ends by itself, and this load is stopped by a signal.
import { spawn } from 'node:child_process';
import type { Cleanup } from './cleanup.js';

export interface LoadTarget {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
}

/** One line of pgbench's progress: the interval [from, to] (epoch ms) and its rate. */
export interface LoadSecond {
  from: number;
  to: number;
  tps: number;
  latencyMs: number;
}

export interface WriteLoad {
  /** Progress so far, of every run of this load (a restart appends). */
  seconds: LoadSecond[];
  /** When each pgbench run was started (epoch ms): its first seconds are warm-up. */
  starts: number[];
  /** Lines of pgbench that say a client failed (none is expected). */
  errors: string[];
  /** Stops pgbench (SIGINT) and waits for it to exit. */
  stop(): Promise<void>;
  /** Starts pgbench again after a stop, appending to the same seconds. */
  restart(): void;
}

/** pgbench -P with --progress-timestamp: `progress: 1717000000.123 s, 1190.2 tps, lat 3.356 ms ...` */
const PROGRESS = /^progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms/;

export function startWriteLoad(options: {
  target: LoadTarget;
  clients: number;
  /** Transactions per second pgbench holds to (-R), or 0 for as fast as it can. */
  rate?: number | undefined;
  cleanup: Cleanup;
}): WriteLoad {
  const { target, clients, rate = 0, cleanup } = options;
  const load: WriteLoad = {
    seconds: [],
    starts: [],
    errors: [],
    stop: async () => undefined,
    restart: () => {
      const child = spawn(
        'pgbench',
        [
          '-h',
          target.host,
          '-p',
          String(target.port),
          '-U',
          target.user,
          '-n',
          '-c',
          String(clients),
          '-j',
          String(Math.min(2, clients)),
          '-T',
          '86400',
          '-P',
          '1',
          '--progress-timestamp',
          ...(rate > 0 ? ['-R', String(rate)] : []),
          target.database,
        ],
        {
          env: { ...process.env, PGPASSWORD: target.password, PGSSLMODE: 'disable' },
          stdio: ['ignore', 'ignore', 'pipe'],
        },
      );
      load.starts.push(Date.now());
      let last: number | undefined;
      let buffered = '';
      child.stderr.on('data', (chunk: Buffer) => {
        buffered += chunk.toString();
        let newline: number;
        while ((newline = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, newline);
          buffered = buffered.slice(newline + 1);
          const match = PROGRESS.exec(line);
          if (match) {
            const to = Number(match[1]) * 1000;
            load.seconds.push({
              from: last ?? to - 1000,
              to,
              tps: Number(match[2]),
              latencyMs: Number(match[3]),
            });
            last = to;
          } else if (/error|abort/i.test(line)) {
            load.errors.push(line.trim());
          }
        }
      });
      const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
      const kill = cleanup.add('stop pgbench', async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
        await exited;
      });
      load.stop = kill;
    },
  };
  load.restart();
  return load;
}

/** The seconds of `load` that overlap [from, to]. */
export function secondsOverlapping(load: WriteLoad, from: number, to: number): LoadSecond[] {
  return load.seconds.filter((s) => s.to > from && s.from < to);
}

/**
 * The steady state: per-second tps of every second that overlaps none of `busy` (creations and
 * the time after them) and is past each run's first `warmUpMs`.
 */
export function steadySeconds(
  load: WriteLoad,
  busy: [number, number][],
  warmUpMs: number,
): number[] {
  return steadyLoadSeconds(load, busy, warmUpMs).map((s) => s.tps);
}

/** The seconds steadySeconds() takes the tps of. */
export function steadyLoadSeconds(
  load: WriteLoad,
  busy: [number, number][],
  warmUpMs: number,
): LoadSecond[] {
  return load.seconds
    .filter((s) => load.starts.every((start) => s.from >= start + warmUpMs || s.to <= start))
    .filter((s) => busy.every(([from, to]) => s.to <= from || s.from >= to));
}

/**
 * Mean latency over some seconds, each weighted by its transactions. With -R, pgbench counts a
 * transaction's latency from its scheduled start, so a server slower for a moment shows here.
 */
export function meanLatency(seconds: LoadSecond[]): number {
  let weighted = 0;
  let transactions = 0;
  for (const s of seconds) {
    const n = (s.tps * (s.to - s.from)) / 1000;
    weighted += s.latencyMs * n;
    transactions += n;
  }
  return transactions > 0 ? weighted / transactions : 0;
}

/** Mean tps over some seconds, each weighted by its length. */
export function meanTps(seconds: LoadSecond[]): number {
  let transactions = 0;
  let ms = 0;
  for (const s of seconds) {
    transactions += (s.tps * (s.to - s.from)) / 1000;
    ms += s.to - s.from;
  }
  return ms > 0 ? (transactions * 1000) / ms : 0;
}
