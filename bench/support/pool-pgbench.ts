// One pgbench run against one target, and what came of it: tps as pgbench reports it, and latency
// percentiles computed from pgbench's per-transaction log (-l), which records every transaction's
// latency in microseconds. pgbench's own summary gives only the mean.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Cleanup } from './cleanup.js';

export interface Endpoint {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
}

export interface PgbenchRun {
  tps: number;
  /** From the per-transaction log: mean, median and 99th percentile, in ms. */
  meanMs: number;
  p50Ms: number;
  p99Ms: number;
  transactions: number;
  /**
   * pgbench's "initial connection time" (logging in all clients, per thread, averaged), or with
   * -C its "average connection time" (one login).
   */
  connectMs: number;
  /** The pooler's CPU time (user + system) per transaction, in microseconds; none for direct. */
  cpuUsPerTx?: number;
}

export interface PgbenchFailure {
  /** What went wrong, in pgbench's words: the first error and how many clients it stopped. */
  failed: string;
}

/** pgbench's major version (15 here), or undefined when it is not installed. */
export function pgbenchVersion(): Promise<string | undefined> {
  return new Promise((resolve) => {
    const child = spawn('pgbench', ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.once('error', () => resolve(undefined));
    child.once('close', (code) => resolve(code === 0 ? out.trim() : undefined));
  });
}

/** `pgbench -i` at this scale: the tables every workload reads. */
export async function initPgbench(
  endpoint: Endpoint,
  scale: number,
  cleanup: Cleanup,
): Promise<void> {
  const { code, stdout, stderr } = await pgbench(
    endpoint,
    ['-i', '-s', String(scale), '-q'],
    cleanup,
    600_000,
  );
  if (code !== 0) throw new Error(`pgbench -i failed (exit ${code}):\n${stderr}${stdout}`);
}

export async function runPgbench(options: {
  endpoint: Endpoint;
  /** Workload flags: -S, -M prepared, ... */
  args: string[];
  clients: number;
  threads: number;
  seconds: number;
  /** An empty directory for this run's transaction log; emptied again afterwards. */
  logDir: string;
  cleanup: Cleanup;
}): Promise<PgbenchRun | PgbenchFailure> {
  const { endpoint, args, clients, threads, seconds, logDir, cleanup } = options;
  const prefix = path.join(logDir, 'tx');
  const { code, stdout, stderr } = await pgbench(
    endpoint,
    [
      ...args,
      '--no-vacuum',
      '-c',
      String(clients),
      '-j',
      String(threads),
      '-T',
      String(seconds),
      '-l',
      `--log-prefix=${prefix}`,
    ],
    cleanup,
    (seconds + 120) * 1000,
  );
  try {
    const aborted = abortedClients(stderr);
    if (code !== 0 || aborted.count > 0) {
      const why = aborted.first ?? lastLine(stderr) ?? `exit ${code}`;
      return {
        failed:
          aborted.count > 0 ? `${aborted.count} of ${clients} clients aborted: ${why}` : `${why}`,
      };
    }
    // With -C, connecting is what is measured: pgbench counts it in.
    const tps =
      /^tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)/m.exec(
        stdout,
      );
    if (!tps) {
      const done = /^number of transactions actually processed: (\d+)/m.exec(stdout)?.[1];
      return {
        failed:
          done === '0'
            ? `no transaction completed in ${seconds} s (connecting ${clients} clients may have taken the whole run)`
            : `no tps in pgbench's output: ${stdout.trim().split('\n').slice(-3).join(' / ')}`,
      };
    }
    const connect = /^(?:initial|average) connection time = ([\d.]+) ms/m.exec(stdout);
    const latencies = readLatencies(logDir);
    if (latencies.length === 0) return { failed: 'pgbench logged no transactions' };
    latencies.sort();
    let sum = 0;
    for (const us of latencies) sum += us;
    return {
      tps: Number(tps[1]),
      meanMs: sum / latencies.length / 1000,
      p50Ms: percentile(latencies, 0.5) / 1000,
      p99Ms: percentile(latencies, 0.99) / 1000,
      transactions: latencies.length,
      connectMs: Number(connect?.[1] ?? NaN),
    };
  } finally {
    for (const file of fs.readdirSync(logDir)) fs.rmSync(path.join(logDir, file), { force: true });
  }
}

/** Nearest rank: the smallest value with at least `q` of the values at or below it. */
function percentile(sorted: Float64Array, q: number): number {
  return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)]!;
}

/**
 * Latencies in µs from every thread's log file: `client_id transaction_no time script_no
 * time_epoch time_us`, where time is the transaction's latency in µs (or `failed`/`skipped`).
 */
function readLatencies(logDir: string): Float64Array {
  const values: number[] = [];
  for (const file of fs.readdirSync(logDir)) {
    const text = fs.readFileSync(path.join(logDir, file), 'utf8');
    let start = 0;
    while (start < text.length) {
      let end = text.indexOf('\n', start);
      if (end < 0) end = text.length;
      const first = text.indexOf(' ', start);
      const second = text.indexOf(' ', first + 1);
      const third = text.indexOf(' ', second + 1);
      if (first > 0 && third > second && third <= end) {
        const us = Number(text.slice(second + 1, third));
        if (Number.isFinite(us)) values.push(us);
      }
      start = end + 1;
    }
  }
  return Float64Array.from(values);
}

/** pgbench 15: `pgbench: error: client 3 script 0 aborted in command 1 query 0: ERROR:  ...`. */
function abortedClients(stderr: string): { count: number; first?: string } {
  const lines = stderr.split('\n').filter((line) => / aborted in command /.test(line));
  const first = lines[0]
    ?.replace(/^.*? aborted in command \d+( query \d+)?: /, '')
    .replace(/\s+/g, ' ')
    .trim();
  return { count: lines.length, first };
}

function lastLine(text: string): string | undefined {
  return (
    text
      .trim()
      .split('\n')
      .at(-1)
      ?.replace(/^pgbench: /, '') || undefined
  );
}

function pgbench(
  endpoint: Endpoint,
  args: string[],
  cleanup: Cleanup,
  timeoutMs: number,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(
    'pgbench',
    [
      '-h',
      endpoint.host,
      '-p',
      String(endpoint.port),
      '-U',
      endpoint.user,
      ...args,
      endpoint.database,
    ],
    {
      env: { ...process.env, PGPASSWORD: endpoint.password, PGSSLMODE: 'disable' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const stop = cleanup.add('stop pgbench', () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve, reject) => {
    child.once('error', (error) => {
      clearTimeout(timer);
      void stop();
      reject(new Error(`pgbench: ${error.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      void stop();
      resolve({ code: code ?? (signal ? -1 : null), stdout, stderr });
    });
  });
}
