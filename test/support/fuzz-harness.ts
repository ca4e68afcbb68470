// The protocol fuzzer's run as a whole, shared by `npm run fuzz` and test/fuzz-protocol.test.ts:
// one pgbranch with the embedded PostgreSQL, the fuzz cases against it in both pool modes, and the
// oracles around them (the process stays up, its RSS stays bounded, the good clients are served).
import { randomBytes } from 'node:crypto';
import { startPgbranch } from './pgbranch.js';
import {
  formatTally,
  prepareServer,
  runFuzz,
  sampleRss,
  startGoodClients,
  type Failure,
  type GoodClientResult,
  type ProcessSample,
  type Tally,
} from './fuzz-runner.js';

export interface FuzzRunResult {
  seed: number;
  tally: Tally;
  elapsedMs: number;
  rss: ProcessSample;
  good: GoodClientResult;
  /** pgbranch exited (code or signal) during the run. */
  exited?: string;
  /** pgbranch's log lines at level error or worse, by event. */
  errorLogs: Record<string, number>;
  /** A query through pgbranch after the run. */
  servingAfter: boolean;
  report: string;
}

export const SEED = Number(process.env.FUZZ_SEED ?? randomBytes(4).readUInt32BE(0));

export async function fuzzRun(options: {
  inputs: number;
  concurrency?: number;
  log?: (line: string) => void;
}): Promise<FuzzRunResult> {
  const log = options.log ?? console.log;
  const onlyCase = process.env.FUZZ_CASE === undefined ? undefined : Number(process.env.FUZZ_CASE);
  log(
    `fuzz: seed ${SEED} (FUZZ_SEED=${SEED} replays; FUZZ_CASE=<n> runs one case), ${options.inputs} inputs`,
  );
  const proxy = await startPgbranch({
    args: ['--pool-size', process.env.FUZZ_POOL ?? '40', '--auth-max-failures', '0'],
  });
  try {
    await prepareServer(proxy.directUrl('postgres'));
    const pid = proxy.child.pid!;
    const errorLogs: Record<string, number> = {};
    /** Keeps the test's copy of the log from growing with the run: only errors are counted. */
    const trimLogs = setInterval(() => {
      for (const entry of proxy.logs.splice(0)) {
        if (typeof entry.level === 'number' && entry.level >= 50) {
          const event = String(entry.event ?? entry.msg);
          errorLogs[event] = (errorLogs[event] ?? 0) + 1;
        }
      }
    }, 1_000);
    const good = startGoodClients(proxy.config('postgres'));
    const rss = sampleRss(pid);
    const started = Date.now();
    let reported = 0;
    const tally = await runFuzz({
      port: proxy.port,
      password: proxy.password,
      seed: SEED,
      inputs: options.inputs,
      concurrency: options.concurrency ?? Number(process.env.FUZZ_CONCURRENCY ?? 24),
      onlyCase,
      onProgress: (t) => {
        log(`fuzz: ${formatTally(t, Date.now() - started)}`);
        // Failures as they come, so that a long run shows them before it ends.
        for (const f of t.failures.slice(reported)) log(`fuzz: failure: ${describeFailure(f)}`);
        reported = t.failures.length;
      },
    });
    const elapsedMs = Date.now() - started;
    const memory = rss.stop();
    const goodResult = await good.stop();
    clearInterval(trimLogs);
    const exited =
      proxy.child.exitCode !== null || proxy.child.signalCode !== null
        ? `exit ${proxy.child.exitCode ?? proxy.child.signalCode}`
        : undefined;
    let servingAfter = false;
    if (!exited) {
      const pg = (await import('pg')).default;
      const client = new pg.Client(proxy.config('postgres'));
      try {
        await client.connect();
        servingAfter = (await client.query('select 1 as one')).rows[0]?.one === 1;
      } finally {
        await client.end().catch(() => undefined);
      }
    }
    const report = [
      `fuzz: seed ${SEED}: ${formatTally(tally, elapsedMs)}`,
      `  pgbranch RSS: ${memory.firstMb} MB at the start, peak ${memory.peakMb} MB, ${memory.lastMb} MB at the end; ${memory.cpuSeconds.toFixed(1)} s of CPU`,
      `  good clients: ${goodResult.queries.session} queries in session mode, ${goodResult.queries.transaction} in transaction mode, slowest ${goodResult.slowestMs} ms, ${goodResult.failures.length} failures`,
      `  pgbranch: ${exited ?? 'still running'}, ${servingAfter ? 'serving' : 'NOT serving'} after the run; error log lines: ${JSON.stringify(errorLogs)}`,
      `  failures: ${tally.failures.length}`,
      ...tally.failures.slice(0, 20).map((f) => `    ${describeFailure(f)}`),
      ...goodResult.failures.slice(0, 5).map((f) => `    good client: ${f}`),
    ].join('\n');
    log(report);
    return {
      seed: SEED,
      tally,
      elapsedMs,
      rss: memory,
      good: goodResult,
      exited,
      errorLogs,
      servingAfter,
      report,
    };
  } finally {
    await proxy.stop();
  }
}

function describeFailure(f: Failure): string {
  return `case ${f.case} (${f.kind}, ${f.mode}, FUZZ_SEED=${SEED} FUZZ_CASE=${f.case}): ${f.what}; input ${f.input}; bytes ${f.bytes}`;
}
