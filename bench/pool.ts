// `npm run bench:pool`: pgbench through pgbranch in transaction mode, next to PgBouncer in
// transaction mode with the same pool size and to a direct connection, all on the same embedded
// PostgreSQL 18, interleaved round by round; then the memory each pooler needs for 10,000 idle
// clients. Progress goes to stderr; the environment and markdown tables to stdout.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { startPgbranch, tempDir, type PgbranchProcess } from '../test/support/pgbranch.js';
import { directConfig } from './support/branch-runs.js';
import type { Cleanup } from './support/cleanup.js';
import { runBenchmark } from './support/main.js';
import {
  openIdleClients,
  raiseOpenFilesLimit,
  residentBytes,
  type IdleLogin,
} from './support/pool-idle-clients.js';
import { INSTALL_HINT, pgbouncerVersion, startPgbouncer } from './support/pool-pgbouncer.js';
import { initPgbench, pgbenchVersion, runPgbench, type Endpoint } from './support/pool-pgbench.js';
import {
  profileWritten,
  profilingNodeOptions,
  summarizeProfile,
  type ProfileSummary,
} from './support/pool-profile.js';
import {
  failures,
  megabytes,
  ms,
  pairedRatio,
  range,
  ratio,
  succeeded,
  tps,
} from './support/pool-report.js';
import {
  RECONNECT_WARMUP_SECONDS,
  runRounds,
  THREADS,
  WORKLOADS,
  type RoundsResult,
  type Target,
  type TargetName,
  type Workload,
  type WorkloadResults,
} from './support/pool-runs.js';
import { bytes, markdownTable, progress, summarize } from './support/report.js';

const HELP = `usage: npm run bench:pool -- [--rounds 3] [--seconds 10] [--pool-size 20] [--idle-clients 10000] [--workloads a,b] [--profile]

  --rounds        interleaved rounds of every workload on every target (default 3)
  --seconds       length of each pgbench run (default 10)
  --pool-size     server connections of PgBouncer's and pgbranch's pool (default 20)
  --idle-clients  idle clients for the memory measurement (default 10000; 0 skips it)
  --workloads     which workloads to run, comma-separated (default all):
${WORKLOADS.map((w) => `                    ${w.name.padEnd(11)} ${w.label}`).join('\n')}
  --profile       one more pgbranch run of the first workload under V8's CPU profiler, summarized

Needs pgbench (Debian: apt-get install postgresql-client) and PgBouncer (apt-get install
pgbouncer). As root, PgBouncer runs as the postgres account. A default run takes about 12 minutes.
`;

const ROOT = path.resolve(import.meta.dirname, '..');
const DATABASE = 'bench';
const SCALE = 10;
/** Targets: transaction mode -S at least this many times PgBouncer's tps ... */
const MIN_VS_PGBOUNCER = 1.2;
/** ... and at least this share of direct; idle clients under this RSS. */
const MIN_VS_DIRECT = 0.8;
const MAX_IDLE_RSS = 300e6;
const IDLE_TARGET_CLIENTS = 10_000;
/** Logins in flight at once while opening the idle clients. */
const LOGIN_CONCURRENCY = 100;

interface Options {
  rounds: number;
  seconds: number;
  poolSize: number;
  idleClients: number;
  workloads: Workload[];
  profile: boolean;
}

interface IdleMemory {
  /** RSS right after start (pgbranch) or after the runs, before the idle clients connect. */
  atStart?: number;
  before: number;
  with: number;
  afterClose: number;
  loginMs: number;
}

interface Results {
  options: Options;
  /** The commit the measured tree is based on (it may carry uncommitted changes). */
  commit: string;
  serverVersion: string;
  pgbench: string;
  pgbouncer: string;
  /** Client connection limit of both poolers. */
  maxClients: number;
  rounds: RoundsResult;
  idle?: Record<'pgbranch' | 'pgbouncer', IdleMemory>;
  profile?: { workload: Workload; tps: string; summary: ProfileSummary };
  /** 1-minute load average when the run started and when it ended. */
  load: [number, number];
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      rounds: { type: 'string', default: '3' },
      seconds: { type: 'string', default: '10' },
      'pool-size': { type: 'string', default: '20' },
      'idle-clients': { type: 'string', default: String(IDLE_TARGET_CLIENTS) },
      workloads: { type: 'string', default: WORKLOADS.map((w) => w.name).join(',') },
      profile: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const whole = (flag: string, text: string, min: number) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min) {
      throw new Error(`--${flag} "${text}": write a whole number of at least ${min}`);
    }
    return n;
  };
  return {
    rounds: whole('rounds', values.rounds, 1),
    seconds: whole('seconds', values.seconds, 1),
    poolSize: whole('pool-size', values['pool-size'], 1),
    idleClients: whole('idle-clients', values['idle-clients'], 0),
    workloads: values.workloads.split(',').map((name) => {
      const workload = WORKLOADS.find((w) => w.name === name.trim());
      if (!workload) {
        throw new Error(
          `--workloads: no workload "${name}"; there are ${WORKLOADS.map((w) => w.name).join(', ')}`,
        );
      }
      return workload;
    }),
    profile: values.profile,
  };
}

async function run(options: Options, cleanup: Cleanup): Promise<Results> {
  const loadAtStart = os.loadavg()[0]!;
  const pgbench = await pgbenchVersion();
  if (!pgbench) throw new Error('pgbench is not installed: apt-get install -y postgresql-client');
  const pgbouncer = pgbouncerVersion();
  if (!pgbouncer) throw new Error(INSTALL_HINT);
  // Each idle client is a socket here and one in the pooler, which inherits this limit.
  const files = raiseOpenFilesLimit(options.idleClients + 2048);
  progress(`open files limit: ${files}`);

  const dataDir = tempDir('bench-pool');
  cleanup.add(`remove ${dataDir}`, () => fs.rmSync(dataDir, { recursive: true, force: true }));
  // Runs after pgbranch is stopped: a pgbranch that had to be killed leaves its server running.
  cleanup.add('stop a PostgreSQL left behind by pgbranch', () =>
    stopLeftoverServer(path.join(dataDir, 'pg')),
  );
  const password = 'bench-pool-password';
  const maxClients = Math.max(20_000, options.idleClients + 1000);
  const pgbranchArgs = [
    '--pool-mode',
    'transaction',
    '--pool-size',
    String(options.poolSize),
    // Also sizes the server's max_connections (this + 20): direct runs have 256 clients.
    '--pool-max-server-connections',
    '400',
    '--pool-max-client-connections',
    String(maxClients),
  ];
  progress(`starting pgbranch (transaction mode, pool size ${options.poolSize}) in ${dataDir}`);
  progress('building pgbranch (npm run build): the benchmark runs the build, as production would');
  execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: ['ignore', 2, 2] });
  const proxy = await startPgbranch({
    dataDir,
    keepDataDir: true,
    password,
    args: pgbranchArgs,
    timeoutMs: 120_000,
    entry: 'bin',
  });
  const stopProxy = cleanup.add('stop pgbranch', () => proxy.stop());
  const proxyAtStart = residentBytes(proxy.child.pid!);

  const server = directConfig(proxy);
  const admin = new pg.Client(server);
  await admin.connect();
  const closeAdmin = cleanup.add('close the administrative connection', () => admin.end());
  await admin.query(`CREATE DATABASE ${DATABASE}`);
  const direct: Endpoint = {
    host: '127.0.0.1',
    port: Number(server.port),
    user: 'postgres',
    password,
    database: DATABASE,
  };
  progress(`pgbench -i -s ${SCALE} on PostgreSQL ${proxy.ready.serverVersion}, directly`);
  await initPgbench(direct, SCALE, cleanup);

  progress(`starting ${pgbouncer} (transaction mode, pool size ${options.poolSize})`);
  const bouncer = await startPgbouncer({
    admin,
    user: 'postgres',
    password,
    database: DATABASE,
    socketDir: path.join(dataDir, 'run'),
    serverPort: direct.port,
    poolSize: options.poolSize,
    maxClientConnections: maxClients,
    cleanup,
  });
  await closeAdmin();

  const targets: Target[] = [
    { name: 'direct', label: 'direct', endpoint: direct },
    {
      name: 'pgbouncer',
      label: 'PgBouncer',
      endpoint: { ...direct, port: bouncer.port },
      pid: bouncer.pid,
    },
    {
      name: 'pgbranch',
      label: 'pgbranch',
      endpoint: { ...direct, port: proxy.port },
      pid: proxy.child.pid!,
    },
  ];
  const runs = options.workloads.length * targets.length * options.rounds;
  progress(
    `${runs} runs of ${options.seconds} s: ${options.rounds} rounds of ${options.workloads.length} workloads on ${targets.length} targets, interleaved`,
  );
  const rounds = await runRounds({
    targets,
    workloads: options.workloads,
    rounds: options.rounds,
    seconds: options.seconds,
    cleanup,
  });

  let idle: Results['idle'];
  if (options.idleClients > 0) {
    const login = (port: number): IdleLogin => ({
      host: '127.0.0.1',
      port,
      user: 'postgres',
      password,
      database: DATABASE,
    });
    const ofProxy = await idleMemory('pgbranch', proxy.child.pid!, login(proxy.port), options);
    const ofBouncer = await idleMemory('PgBouncer', bouncer.pid, login(bouncer.port), options);
    idle = { pgbranch: { ...ofProxy, atStart: proxyAtStart }, pgbouncer: ofBouncer };
  }
  await bouncer.stop();

  let profile: Results['profile'];
  if (options.profile) {
    await stopProxy();
    profile = await profiledRun(dataDir, password, pgbranchArgs, options, cleanup);
  }
  const load: [number, number] = [loadAtStart, os.loadavg()[0]!];
  return {
    options,
    commit: sourceCommit(),
    serverVersion: proxy.ready.serverVersion,
    pgbench,
    pgbouncer: bouncer.version,
    maxClients,
    rounds,
    idle,
    profile,
    load,
  };
}

function sourceCommit(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
      cwd: ROOT,
      encoding: 'utf8',
    }).trim();
  } catch {
    return 'unknown';
  }
}

/** Stops the postmaster of `pgDataDir` if one still runs (fast shutdown, then SIGKILL). */
async function stopLeftoverServer(pgDataDir: string): Promise<void> {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(path.join(pgDataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return;
  }
  const alive = () => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (!Number.isInteger(pid) || pid <= 0 || !alive()) return;
  progress(`stopping PostgreSQL (pid ${pid}), which pgbranch left running`);
  process.kill(pid, 'SIGINT');
  for (let waited = 0; waited < 10_000 && alive(); waited += 100) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  if (alive()) process.kill(pid, 'SIGKILL');
}

/** RSS of a pooler before, with and after `options.idleClients` logged-in idle clients. */
async function idleMemory(
  label: string,
  pid: number,
  login: IdleLogin,
  options: Options,
): Promise<IdleMemory> {
  const before = residentBytes(pid);
  progress(`${label}: opening ${options.idleClients} idle clients (RSS now ${bytes(before)})`);
  const clients = await openIdleClients(login, options.idleClients, LOGIN_CONCURRENCY, (n) =>
    progress(`${label}: ${n} clients logged in`),
  );
  try {
    // Let the pooler settle (finish logging, free login-time garbage) before reading its RSS.
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const withClients = residentBytes(pid);
    await clients.check(100);
    progress(
      `${label}: ${clients.sockets.length} idle clients: RSS ${bytes(withClients)}; SELECT 1 answered on 100 of them`,
    );
    await clients.close();
    await new Promise((resolve) => setTimeout(resolve, 2000));
    return { before, with: withClients, afterClose: residentBytes(pid), loginMs: clients.loginMs };
  } finally {
    await clients.close();
  }
}

/** pgbranch again on the same data, under node --cpu-prof, for one run of the first workload. */
async function profiledRun(
  dataDir: string,
  password: string,
  args: string[],
  options: Options,
  cleanup: Cleanup,
): Promise<Results['profile']> {
  const profileDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbranch-bench-profile-'));
  cleanup.add(`remove ${profileDir}`, () =>
    fs.rmSync(profileDir, { recursive: true, force: true }),
  );
  progress('starting pgbranch under the CPU profiler');
  const proxy: PgbranchProcess = await startPgbranch({
    dataDir,
    keepDataDir: true,
    password,
    args,
    env: { NODE_OPTIONS: profilingNodeOptions(profileDir) },
    timeoutMs: 120_000,
  });
  const stop = cleanup.add('stop the profiled pgbranch', () => proxy.stop());
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbranch-bench-pgbench-'));
  cleanup.add(`remove ${logDir}`, () => fs.rmSync(logDir, { recursive: true, force: true }));
  const endpoint: Endpoint = {
    host: '127.0.0.1',
    port: proxy.port,
    user: 'postgres',
    password,
    database: DATABASE,
  };
  const workload = options.workloads[0]!;
  const common = { endpoint, args: workload.args, clients: workload.clients, threads: THREADS };
  await runPgbench({ ...common, seconds: 2, logDir, cleanup });
  progress(`profiled run: ${workload.label} for ${options.seconds} s through pgbranch`);
  const pid = proxy.child.pid!;
  process.kill(pid, 'SIGUSR2');
  const result = await runPgbench({ ...common, seconds: options.seconds, logDir, cleanup });
  process.kill(pid, 'SIGUSR2');
  await profileWritten(profileDir);
  await stop();
  return {
    workload,
    tps:
      'failed' in result
        ? `failed: ${result.failed}`
        : `${tps(result.tps)} ${workload.reconnects ? 'connections/s' : 'tps'}`,
    summary: summarizeProfile(profileDir, ROOT, 15),
  };
}

const TARGET_LABELS: Record<TargetName, string> = {
  direct: 'direct (A)',
  pgbouncer: 'PgBouncer (B)',
  pgbranch: 'pgbranch (C)',
};

function report(results: Results, command: string): string {
  const { options, rounds } = results;
  const cpus = os.cpus();
  const out: string[] = [];
  out.push('## Connection pooling: pgbench directly, through PgBouncer and through pgbranch', '');
  out.push(
    `- Machine: ${cpus.length} CPUs (${cpus[0]?.model.trim() ?? 'unknown'}), ${bytes(os.totalmem())} RAM, Linux ${os.release()}, Node.js ${process.version}`,
  );
  const runLoad = summarize(rounds.load);
  out.push(
    `- Load average (1 min): ${results.load[0].toFixed(1)} at start, ${results.load[1].toFixed(1)} at end, ${runLoad.min.toFixed(1)}–${runLoad.max.toFixed(1)} as runs started (this benchmark itself adds about 2; other work on the machine adds noise to every column)`,
  );
  out.push(
    `- Server: embedded PostgreSQL ${results.serverVersion}, \`pgbench -i -s ${SCALE}\` once, directly. Client: ${results.pgbench}, \`-j ${THREADS} --no-vacuum -T ${options.seconds}\`${options.workloads
      .filter((w) => w.extraSeconds > 0)
      .map(
        (w) =>
          ` (${w.clients} clients: \`-T ${options.seconds + w.extraSeconds}\`, as pgbench 15 counts connecting against -T)`,
      )
      .join('')}, over TCP on 127.0.0.1 with SCRAM-SHA-256 to every target`,
  );
  out.push(
    `- pgbranch: this working tree (commit ${results.commit}, with any uncommitted changes), built with \`npm run build\` and run as \`node bin/pgbranch.js\` (which runs the build, dist/main.js)`,
  );
  out.push(
    `- (A) direct to the server; (B) ${results.pgbouncer}, \`pool_mode = transaction\`, \`default_pool_size = ${options.poolSize}\`; (C) pgbranch, \`--pool-mode transaction --pool-size ${options.poolSize}\`. Both poolers reach the server through its private Unix socket`,
  );
  out.push(
    `- ${options.rounds} round${options.rounds === 1 ? '' : 's'}, each running every workload on A, B and C back to back, after one uncounted 2 s warm-up per target${options.workloads.some((w) => w.reconnects) ? ` and ${RECONNECT_WARMUP_SECONDS} s more of \`-C\`` : ''}. tps: pgbench's, without connection time, except with \`-C\`, where each transaction has a connection of its own (login with SCRAM, one SELECT, Terminate) and pgbench counts it in: there tps is connections per second and CPU µs/tx is the pooler's CPU per connection. Latency: from pgbench's per-transaction log (\`-l\`), every transaction of the run; mean and nearest-rank p99 per run. Cells: median over rounds (min–max); ratios: median of the per-round ratios`,
  );
  out.push(`- Command: \`${command}\``, '');

  const rows: string[][] = [];
  for (const entry of rounds.results) {
    let label = entry.workload.label;
    for (const name of ['direct', 'pgbouncer', 'pgbranch'] as const) {
      rows.push([label, TARGET_LABELS[name], ...cells(entry, name)]);
      label = '';
    }
  }
  out.push(
    markdownTable(
      [
        'workload',
        'target',
        'tps',
        'latency mean, ms',
        'latency p99, ms',
        'CPU µs/tx',
        'tps C/B',
        'tps C/A',
        'p99 C/B',
      ],
      rows,
    ),
    '',
  );
  const failedNotes = rounds.results.flatMap((entry) =>
    (['direct', 'pgbouncer', 'pgbranch'] as const).flatMap((name) => {
      const failed = failures(entry.runs[name]);
      return failed.length > 0
        ? [
            `- ${entry.workload.label}, ${TARGET_LABELS[name]}: ${failed.length} of ${entry.runs[name].length} runs failed: ${failed[0]!.failed}`,
          ]
        : [];
    }),
  );
  if (failedNotes.length > 0) out.push('Failed runs:', '', ...failedNotes, '');

  if (results.idle) {
    const { pgbranch, pgbouncer } = results.idle;
    const perClient = (m: IdleMemory) =>
      `${((m.with - m.before) / options.idleClients / 1024).toFixed(1)} KiB`;
    out.push(
      `### ${options.idleClients.toLocaleString('en')} idle clients`,
      '',
      `Each client logs in (SCRAM-SHA-256, up to ReadyForQuery) and stays idle; ${LOGIN_CONCURRENCY} logins in flight at a time. RSS is VmRSS from /proc/<pid>/status, 3 s after the last login; afterwards \`SELECT 1\` is answered on 100 of the clients. pgbranch: the same process, after the pgbench rounds, with \`--pool-max-client-connections ${results.maxClients}\`; PgBouncer with \`max_client_conn = ${results.maxClients}\`.`,
      '',
      markdownTable(
        [
          'process',
          'RSS after start',
          'RSS before the clients',
          `RSS with ${options.idleClients.toLocaleString('en')} idle clients`,
          'per client',
          'RSS after they left',
          'time to log all in',
        ],
        [
          [
            'pgbranch (transaction mode)',
            pgbranch.atStart === undefined ? '—' : megabytes(pgbranch.atStart),
            megabytes(pgbranch.before),
            megabytes(pgbranch.with),
            perClient(pgbranch),
            megabytes(pgbranch.afterClose),
            `${(pgbranch.loginMs / 1000).toFixed(1)} s`,
          ],
          [
            results.pgbouncer,
            '—',
            megabytes(pgbouncer.before),
            megabytes(pgbouncer.with),
            perClient(pgbouncer),
            megabytes(pgbouncer.afterClose),
            `${(pgbouncer.loginMs / 1000).toFixed(1)} s`,
          ],
        ],
      ),
      '',
    );
  }

  out.push(...verdict(results), '');
  if (results.profile) out.push(...profileReport(results.profile, options));
  return `${out.join('\n')}\n`;
}

function cells(entry: WorkloadResults, name: TargetName): string[] {
  const runs = entry.runs[name];
  const ok = succeeded(runs);
  if (ok.length === 0) {
    return [`failed (${runs.length} of ${runs.length} runs)`, 'n/a', 'n/a', '', '', '', ''];
  }
  const partial = ok.length < runs.length ? ` ⚠ ${runs.length - ok.length} failed` : '';
  const values = [
    range(
      ok.map((r) => r.tps),
      tps,
    ) + partial,
    summarize(ok.map((r) => r.meanMs)).median.toFixed(3),
    range(
      ok.map((r) => r.p99Ms),
      ms,
    ),
    name === 'direct' ? '' : summarize(ok.map((r) => r.cpuUsPerTx ?? 0)).median.toFixed(1),
  ];
  if (name !== 'pgbranch') return [...values, '', '', ''];
  const { direct, pgbouncer } = entry.runs;
  return [
    ...values,
    ratio(pairedRatio(runs, pgbouncer, (r) => r.tps)),
    ratio(pairedRatio(runs, direct, (r) => r.tps)),
    ratio(pairedRatio(runs, pgbouncer, (r) => r.p99Ms)),
  ];
}

function verdict(results: Results): string[] {
  const selectOnly = results.rounds.results.filter((entry) => entry.workload.selectOnly);
  const check = (
    pick: (entry: WorkloadResults) => number | undefined,
    ok: (v: number) => boolean,
  ) =>
    selectOnly.map((entry) => {
      const value = pick(entry);
      return { entry, value, met: value !== undefined && ok(value) };
    });
  const vsBouncer = check(
    (e) => pairedRatio(e.runs.pgbranch, e.runs.pgbouncer, (r) => r.tps),
    (v) => v >= MIN_VS_PGBOUNCER,
  );
  const vsDirect = check(
    (e) => pairedRatio(e.runs.pgbranch, e.runs.direct, (r) => r.tps),
    (v) => v >= MIN_VS_DIRECT,
  );
  const p99 = check(
    (e) => pairedRatio(e.runs.pgbranch, e.runs.pgbouncer, (r) => r.p99Ms),
    (v) => v <= 1,
  );
  const line = (goal: string, checks: typeof vsBouncer) => {
    const met = checks.every((c) => c.met);
    const each = checks
      .map((c) => `${c.entry.workload.clients} clients ${ratio(c.value)}${c.met ? '' : ' ✗'}`)
      .join(', ');
    return `- ${goal}: **${met ? 'met' : 'not met'}** (${each})`;
  };
  const out = ['**Targets**:', ''];
  if (selectOnly.length > 0) {
    out.push(
      line(`\`-S\`: tps at least ${MIN_VS_PGBOUNCER}× PgBouncer's`, vsBouncer),
      line(`\`-S\`: tps at least ${MIN_VS_DIRECT}× direct`, vsDirect),
      line(`\`-S\`: p99 latency no worse than PgBouncer's (C/B at most 1.00×)`, p99),
    );
  }
  for (const entry of results.rounds.results.filter((e) => e.workload.reconnects)) {
    const { pgbranch, pgbouncer } = entry.runs;
    const perSecond = pairedRatio(pgbranch, pgbouncer, (r) => r.tps);
    const cpu = pairedRatio(pgbranch, pgbouncer, (r) => r.cpuUsPerTx ?? NaN);
    const judged = (value: number | undefined, ok: (v: number) => boolean) =>
      value === undefined || Number.isNaN(value) ? 'not measured' : ok(value) ? 'met' : 'not met';
    out.push(
      `- new connections (\`-C\`, ${entry.workload.clients} clients): connections/s at least PgBouncer's: **${judged(perSecond, (v) => v >= 1)}** (${ratio(perSecond)}); CPU per connection at most PgBouncer's: **${judged(cpu, (v) => v <= 1)}** (${ratio(cpu)})`,
    );
  }
  const idle = results.idle?.pgbranch;
  const goal = `${IDLE_TARGET_CLIENTS.toLocaleString('en')} idle clients under ${megabytes(MAX_IDLE_RSS)} RSS`;
  if (!idle) {
    out.push(`- ${goal}: **not measured** (--idle-clients 0)`);
  } else if (results.options.idleClients < IDLE_TARGET_CLIENTS) {
    out.push(
      `- ${goal}: **not judged**: measured with ${results.options.idleClients} clients (${megabytes(idle.with)})`,
    );
  } else {
    out.push(
      `- ${goal}: **${idle.with < MAX_IDLE_RSS ? 'met' : 'not met'}** (${megabytes(idle.with)} with ${results.options.idleClients.toLocaleString('en')})`,
    );
  }
  return out;
}

function profileReport(profile: NonNullable<Results['profile']>, options: Options): string[] {
  const { summary } = profile;
  return [
    `### Where pgbranch's time goes (V8 CPU profile, 1 ms samples, ${profile.workload.label}, ${options.seconds} s: ${profile.tps})`,
    '',
    `The main thread was busy ${(summary.busyMs / 1000).toFixed(1)} s of ${(summary.wallMs / 1000).toFixed(1)} s of the profiled pgbench run (its connecting included). Samples are taken on wall-clock time: a system call counts in full where it was made (writeBuffer is the write(2) to a socket), including any time the thread spent preempted in it. By kind: ${summary.kinds
      .map((k) => `${k.kind} ${(k.share * 100).toFixed(0)}%`)
      .join(', ')}.`,
    '',
    markdownTable(
      ['function (self time)', 'where', 'self ms', 'share of busy'],
      summary.top.map((f) => [
        f.name,
        f.where || '—',
        f.ms.toFixed(0),
        `${(f.share * 100).toFixed(1)}%`,
      ]),
    ),
    '',
  ];
}

process.exitCode = await runBenchmark({
  name: 'bench:pool',
  help: HELP,
  parseOptions,
  run,
  report,
});
