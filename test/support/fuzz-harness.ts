// The protocol fuzzer's run as a whole, shared by `npm run fuzz` and test/fuzz-protocol.test.ts:
// one pgbranch with the embedded PostgreSQL, the fuzz cases against it in both pool modes, and the
// oracles around them (the process stays up, its RSS stays bounded, the good clients are served).
// PostgreSQL itself can crash on an input (PostgreSQL 18.4 does: see fuzz-regressions.test.ts):
// a watcher notes each crash, the failures it causes are counted apart from pgbranch's, and the
// case that caused it is found by replaying the cases in flight one by one.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { writeDevCertificates } from '../../src/cli/tls-init.js';
import { startPgbranch, tempDir } from './pgbranch.js';
import {
  CasesInFlight,
  duringCrash,
  formatTally,
  prepareServer,
  runFuzz,
  sampleRss,
  startGoodClients,
  treeCpuSeconds,
  watchServer,
  type Failure,
  type GoodClientResult,
  type Kind,
  type ProcessSample,
  type ServerCrash,
  type Tally,
} from './fuzz-runner.js';

export interface FuzzRunResult {
  seed: number;
  /** The inputs and outcomes; `failures` holds pgbranch's only, not those of a server crash. */
  tally: Tally;
  elapsedMs: number;
  rss: ProcessSample;
  /** The well-behaved clients; `failures` holds those outside server crashes only. */
  good: GoodClientResult;
  /** PostgreSQL crashes during the run, each with the case that causes it when replayed alone. */
  crashes: ServerCrash[];
  /** Failures put down to those crashes: fuzz inputs and good clients' queries. */
  duringCrashes: { fuzz: number; good: number };
  /** pgbranch exited (code or signal) during the run. */
  exited?: string;
  /** pgbranch's log lines at level error or worse, by event. */
  errorLogs: Record<string, number>;
  /** A query through pgbranch after the run. */
  servingAfter: boolean;
  report: string;
}

export const SEED = Number(process.env.FUZZ_SEED ?? randomBytes(4).readUInt32BE(0));

/** Crashes whose culprit is looked for by replaying (each replay that finds it crashes it again). */
const MAX_CRASHES_TRACED = 5;

export async function fuzzRun(options: {
  inputs: number;
  concurrency?: number;
  log?: (line: string) => void;
}): Promise<FuzzRunResult> {
  const log = options.log ?? console.log;
  const env = process.env;
  const onlyCase = env.FUZZ_CASE === undefined ? undefined : Number(env.FUZZ_CASE);
  log(
    `fuzz: seed ${SEED} (FUZZ_SEED=${SEED} replays; FUZZ_CASE=<n> runs one case), ${options.inputs} inputs`,
  );
  // TLS on, for the TLS stage (and SSLRequests that other inputs turn into get S).
  const certificates = tempDir('fuzz-tls');
  const { cert, key } = await writeDevCertificates(certificates, []);
  const proxy = await startPgbranch({
    args: [
      ...['--pool-size', env.FUZZ_POOL ?? '40', '--auth-max-failures', '0'],
      ...['--tls-cert', cert, '--tls-key', key],
    ],
  });
  try {
    const directUrl = proxy.directUrl('postgres');
    await prepareServer(directUrl);
    const pid = proxy.child.pid!;
    const errorLogs: Record<string, number> = {};
    /** FUZZ_LOG=<file>: pgbranch's log lines at warning level or worse, and its refusals. */
    const logFile = env.FUZZ_LOG;
    /** Keeps the test's copy of the log from growing with the run: only errors are counted. */
    const trimLogs = setInterval(() => {
      for (const entry of proxy.logs.splice(0)) {
        const level = typeof entry.level === 'number' ? entry.level : 0;
        if (logFile && (level >= 40 || entry.event === 'client_refused')) {
          fs.appendFileSync(logFile, `${JSON.stringify(entry)}\n`);
        }
        if (level >= 50) {
          const event = String(entry.event ?? entry.msg);
          errorLogs[event] = (errorLogs[event] ?? 0) + 1;
        }
      }
    }, 1_000);
    const inFlight = new CasesInFlight();
    const watch = watchServer(directUrl, inFlight);
    const good = startGoodClients(proxy.config('postgres'));
    const rss = sampleRss(pid);
    const postmaster = Number(
      fs.readFileSync(path.join(proxy.dataDir, 'pg', 'postmaster.pid'), 'utf8').split('\n')[0],
    );
    const serverCpuBefore = treeCpuSeconds(postmaster);
    const ownCpuBefore = process.cpuUsage();
    const started = Date.now();
    let reported = 0;
    const run = {
      port: proxy.port,
      password: proxy.password,
      seed: SEED,
      kinds: env.FUZZ_KINDS?.split(',') as Kind[] | undefined,
    };
    const tally = await runFuzz({
      ...run,
      inputs: options.inputs,
      concurrency: options.concurrency ?? Number(env.FUZZ_CONCURRENCY ?? 24),
      onlyCase,
      firstCase: env.FUZZ_FIRST_CASE === undefined ? undefined : Number(env.FUZZ_FIRST_CASE),
      inFlight,
      onProgress: (t) => {
        log(`fuzz: ${formatTally(t, Date.now() - started)}`);
        // Failures as they come, so that a long run shows them before it ends.
        for (const f of t.failures.slice(reported)) log(`fuzz: failure: ${describeFailure(f)}`);
        reported = t.failures.length;
      },
    });
    const elapsedMs = Date.now() - started;
    const memory = rss.stop();
    const serverCpu = treeCpuSeconds(postmaster) - serverCpuBefore;
    const ownCpu = process.cpuUsage(ownCpuBefore);
    const fuzzerCpu = (ownCpu.user + ownCpu.system) / 1e6;
    const goodResult = await good.stop();
    await watch.stop();
    const crashes = watch.crashes;
    for (const crash of crashes.slice(0, MAX_CRASHES_TRACED)) {
      crash.culprit = await findCulprit(crash, directUrl, (index) =>
        runFuzz({ ...run, inputs: Infinity, concurrency: 1, onlyCase: index }),
      );
    }
    // What a crash of PostgreSQL did is not pgbranch's failure: counted, not failed.
    const fuzzInCrash = tally.failures.filter((f) => duringCrash(crashes, f.at));
    tally.failures = tally.failures.filter((f) => !duringCrash(crashes, f.at));
    tally.outcomes.failure = (tally.outcomes.failure ?? 0) - fuzzInCrash.length;
    if (tally.outcomes.failure === 0) delete tally.outcomes.failure;
    if (fuzzInCrash.length > 0) tally.outcomes['during a PostgreSQL crash'] = fuzzInCrash.length;
    const goodInCrash = goodResult.failures.filter((f) => duringCrash(crashes, f.at));
    goodResult.failures = goodResult.failures.filter((f) => !duringCrash(crashes, f.at));
    clearInterval(trimLogs);
    const exited =
      proxy.child.exitCode !== null || proxy.child.signalCode !== null
        ? `exit ${proxy.child.exitCode ?? proxy.child.signalCode}`
        : undefined;
    let servingAfter = false;
    let serverSessions: Record<string, number> = {};
    if (!exited) {
      await untilServerAnswers(directUrl);
      servingAfter = await servesSelect1(proxy.config('postgres'));
      serverSessions = await sessionsOn(directUrl);
    }
    const report = [
      `fuzz: seed ${SEED}: ${formatTally(tally, elapsedMs)}`,
      `  pgbranch RSS: ${memory.firstMb} MB at the start, peak ${memory.peakMb} MB, ${memory.lastMb} MB at the end`,
      `  CPU: pgbranch ${memory.cpuSeconds.toFixed(1)} s, PostgreSQL ${serverCpu.toFixed(1)} s, the fuzzer and good clients ${fuzzerCpu.toFixed(1)} s (${((1000 * (memory.cpuSeconds + serverCpu + fuzzerCpu)) / Math.max(1, tally.inputs)).toFixed(2)} ms per input)`,
      `  PostgreSQL sessions: ${JSON.stringify(serverSessions)} (a new backend costs ~25 ms of CPU on this machine)`,
      `  PostgreSQL crashes: ${crashes.length}${crashes.map((crash) => `\n    ${describeCrash(crash)}`).join('')}`,
      `    failures put down to them: ${fuzzInCrash.length} fuzz inputs, ${goodInCrash.length} good-client queries`,
      `  good clients: ${goodResult.queries.session} queries in session mode, ${goodResult.queries.transaction} in transaction mode, slowest ${goodResult.slowestMs} ms, ${goodResult.failures.length} failures`,
      `  pgbranch: ${exited ?? 'still running'}, ${servingAfter ? 'serving' : 'NOT serving'} after the run; error log lines: ${JSON.stringify(errorLogs)}`,
      `  failures: ${tally.failures.length}`,
      ...tally.failures.slice(0, 20).map((f) => `    ${describeFailure(f)}`),
      ...goodResult.failures.slice(0, 5).map((f) => `    good client: ${f.what}`),
    ].join('\n');
    log(report);
    return {
      seed: SEED,
      tally,
      elapsedMs,
      rss: memory,
      good: goodResult,
      crashes,
      duringCrashes: { fuzz: fuzzInCrash.length, good: goodInCrash.length },
      exited,
      errorLogs,
      servingAfter,
      report,
    };
  } finally {
    await proxy.stop();
    fs.rmSync(certificates, { recursive: true, force: true });
  }
}

/**
 * Replays the crash's candidate cases one at a time, the server recovered before each: the first
 * after which the server is down again is the culprit (undefined when none crashes it alone).
 */
async function findCulprit(
  crash: ServerCrash,
  directUrl: string,
  replay: (index: number) => Promise<Tally>,
): Promise<number | undefined> {
  for (const index of crash.candidates) {
    await untilServerAnswers(directUrl);
    await replay(index);
    if (!(await serverAnswers(directUrl))) return index;
  }
  return undefined;
}

async function serverAnswers(directUrl: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: directUrl });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('select 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Waits (up to a minute) for a crashed server to have recovered. */
async function untilServerAnswers(directUrl: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!(await serverAnswers(directUrl)) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

async function servesSelect1(config: pg.ClientConfig): Promise<boolean> {
  const client = new pg.Client(config);
  try {
    await client.connect();
    return (await client.query('select 1 as one')).rows[0]?.one === 1;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** How many backends the server started, and how they ended: what the run cost PostgreSQL. */
async function sessionsOn(directUrl: string): Promise<Record<string, number>> {
  const client = new pg.Client({ connectionString: directUrl });
  try {
    await client.connect();
    const { rows } = await client.query<Record<string, string>>(
      `select sum(sessions) as started, sum(sessions_fatal) as fatal,
              sum(sessions_abandoned) as abandoned, sum(sessions_killed) as killed
         from pg_stat_database`,
    );
    return Object.fromEntries(Object.entries(rows[0]!).map(([k, v]) => [k, Number(v)]));
  } finally {
    await client.end().catch(() => undefined);
  }
}

function describeFailure(f: Failure): string {
  return `case ${f.case} (${f.kind}, ${f.mode}, FUZZ_SEED=${SEED} FUZZ_CASE=${f.case}): ${f.what}; input ${f.input}; bytes ${f.bytes}`;
}

function describeCrash(crash: ServerCrash): string {
  const down = crash.recoveredAt ? `${crash.recoveredAt - crash.at} ms` : 'not recovered';
  const cause =
    crash.culprit === undefined
      ? `no case crashes it when replayed alone (candidates ${crash.candidates.join(', ')})`
      : `case ${crash.culprit} crashes it again when replayed alone: FUZZ_SEED=${SEED} FUZZ_CASE=${crash.culprit}`;
  return `at ${new Date(crash.at).toISOString()}, down ${down}: ${cause}`;
}
