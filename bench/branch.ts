// `npm run bench:branch`: how long a client waits for the first row on a NEW branch. Parts:
// creation (database provider, quiet parent: by size, cloned and copied, against pg_dump |
// pg_restore and against CREATE DATABASE run directly on the server); live (a new branch of a
// running cluster under pgbench write load, database and instance provider side by side: time,
// the parent's tps, disk); resume (of a suspended instance branch); memory (instances, idle and 100
// made in a row). Progress goes to stderr; the environment and markdown tables to stdout.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { filesystemType } from '../src/branch/copy-on-write.js';
import { quoteIdent } from '../src/branch/database-provider.js';
import { startPgbranch, type PgbranchProcess } from '../test/support/pgbranch.js';
import { mountReflinkXfs } from '../test/support/xfs.js';
import {
  directConfig,
  measureBranching,
  type Mode,
  type ModeSamples,
  type Parent,
} from './support/branch-runs.js';
import type { Cleanup } from './support/cleanup.js';
import { liveReport } from './support/live-report.js';
import { runLiveSize, type LiveParts, type LiveSizeResult } from './support/live-runs.js';
import { runBenchmark } from './support/main.js';
import { measureDumpRestore, type DumpRestoreResult } from './support/dump-restore.js';
import { fillParent } from './support/parent-data.js';
import {
  bytes,
  cell,
  duration,
  markdownTable,
  pairedMedianDifference,
  progress,
  signedDuration,
  summarize,
} from './support/report.js';

const HELP = `usage: npm run bench:branch -- [--provider both] [--parts creation,live,resume,memory]
         [--sizes 100,1000] [--live-sizes 1] [--repeat 5] [--clients 4] [--rate 0]
         [--branches 100] [--max-running 10]

  --provider     database, instance or both (default both): creation needs database; resume and
                 memory need instance; live measures the providers given side by side
  --parts        what to run, comma-separated (default all four):
                   creation  database provider, quiet parent: clone and copy by parent size,
                             against pg_dump | pg_restore and CREATE DATABASE on the server
                   live      a new branch of a running cluster under pgbench write load (parent's
                             tps during the creation, disk); the database provider with pgbench
                             stopped, after one attempt under load
                   resume    connect to first row on a suspended instance branch
                   memory    RSS/PSS of idle instances; --branches made in a row with
                             --branch-max-running --max-running, pgbranch and instances sampled
  --sizes        creation: parent sizes in MB, comma-separated (default 100,1000; e.g. 100,1000,5000)
  --live-sizes   live: cluster sizes in GB, comma-separated (default 1; e.g. 1,10); resume and
                 memory run on the smallest
  --repeat       repetitions per cell, each on a new branch (default 5)
  --clients      live: pgbench clients writing to the parent (default 4)
  --rate         live: the transactions per second pgbench holds to (pgbench -R); 0, the
                 default, writes as fast as the machine lets it, which on a small machine leaves
                 nothing for a branch's creation but what it takes from the parent
  --branches     memory: branches made in a row (default 100)
  --max-running  memory: branch.max_running meanwhile (default 10)

Runs as root to mount a reflink XFS for the clone runs; without one, only copy is measured.
Needs pgbench and, for the pg_dump | pg_restore baseline, the machine's PostgreSQL 15 on
127.0.0.1:5432 (trust, user postgres).
`;

const ROOT = path.resolve(import.meta.dirname, '..');

const PARTS = ['creation', 'live', 'resume', 'memory'] as const;
type Part = (typeof PARTS)[number];

/** The goal this benchmark checks: on copy-on-write, under this at every size, flat as size grows. */
const TARGET_MS = 200;
/** "Flat": the slowest size's median is within this factor of the fastest's, or within FLAT_MS. */
const FLAT_RATIO = 1.5;
const FLAT_MS = 20;

interface Options {
  provider: 'database' | 'instance' | 'both';
  parts: Set<Part>;
  sizes: number[];
  liveSizes: number[];
  repeat: number;
  clients: number;
  rate: number;
  branches: number;
  maxRunning: number;
}

interface ModeRun {
  mode: Mode;
  reason: string;
  samples: ModeSamples[];
}

/** The creation part: the database provider's branches of a quiet parent, by size. */
interface CreationResults {
  options: Options;
  serverVersion: string;
  filesystem: string;
  /** Why clone was not measured, when it was not. */
  noClone?: string;
  parents: Parent[];
  runs: ModeRun[];
  dump: DumpRestoreResult | { error: string };
  /** 1-minute load average when the run started and when it ended. */
  load: [number, number];
}

interface Results {
  options: Options;
  filesystem: string;
  /** The commit the live parts' build came from (the tree may carry uncommitted changes). */
  commit?: string;
  creation?: CreationResults;
  live: LiveSizeResult[];
  /** 1-minute load average when the run started and when it ended. */
  load: [number, number];
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      provider: { type: 'string', default: 'both' },
      parts: { type: 'string', default: PARTS.join(',') },
      sizes: { type: 'string', default: '100,1000' },
      'live-sizes': { type: 'string', default: '1' },
      repeat: { type: 'string', default: '5' },
      clients: { type: 'string', default: '4' },
      rate: { type: 'string', default: '0' },
      branches: { type: 'string', default: '100' },
      'max-running': { type: 'string', default: '10' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const sizes = values.sizes.split(',').map((word) => Number(word.trim()));
  if (sizes.length === 0 || sizes.some((n) => !Number.isInteger(n) || n < 10)) {
    throw new Error(`--sizes "${values.sizes}": write whole MB of at least 10, e.g. 100,1000,5000`);
  }
  const liveSizes = values['live-sizes'].split(',').map((word) => Number(word.trim()));
  if (liveSizes.length === 0 || liveSizes.some((n) => !(n >= 0.1))) {
    throw new Error(
      `--live-sizes "${values['live-sizes']}": write GB of at least 0.1, e.g. 1 or 1,10`,
    );
  }
  const provider = values.provider;
  if (provider !== 'database' && provider !== 'instance' && provider !== 'both') {
    throw new Error(`--provider "${provider}": write database, instance or both`);
  }
  const parts = new Set<Part>();
  for (const word of values.parts.split(',').map((w) => w.trim())) {
    if (!(PARTS as readonly string[]).includes(word)) {
      throw new Error(`--parts "${values.parts}": "${word}" is none of ${PARTS.join(', ')}`);
    }
    parts.add(word as Part);
  }
  const count = (name: string, text: string) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1)
      throw new Error(`--${name} "${text}": write a positive whole number`);
    return n;
  };
  const instance = provider !== 'database';
  const runs =
    (provider !== 'instance' && parts.has('creation')) ||
    parts.has('live') ||
    (instance && (parts.has('resume') || parts.has('memory')));
  if (!runs) {
    throw new Error(
      `nothing to run: --parts ${values.parts} with --provider ${provider} (creation needs database; resume and memory need instance)`,
    );
  }
  return {
    provider,
    parts,
    sizes: [...new Set(sizes)].sort((a, b) => a - b),
    liveSizes: [...new Set(liveSizes)].sort((a, b) => a - b),
    repeat: count('repeat', values.repeat),
    clients: count('clients', values.clients),
    rate: values.rate === '0' ? 0 : count('rate', values.rate),
    branches: count('branches', values.branches),
    maxRunning: count('max-running', values['max-running']),
  };
}

async function run(options: Options, cleanup: Cleanup): Promise<Results> {
  const loadAtStart = os.loadavg()[0]!;
  const database = options.provider !== 'instance';
  const instance = options.provider !== 'database';
  const parts = options.parts;
  const creation = database && parts.has('creation');
  const liveParts: LiveParts = {
    database,
    instance,
    live: parts.has('live'),
    resume: instance && parts.has('resume'),
    memory: instance && parts.has('memory'),
  };
  const live = liveParts.live || liveParts.resume || liveParts.memory;
  // Sparse: the image costs the host only what is written. Room for the creation part's parents
  // (removed when it ends), then for the live clusters: each as generated and its working copy
  // (with their WAL), the branches' own blocks and the parent's writes copied on write.
  const creationMib = creation ? 3 * options.sizes.reduce((a, b) => a + b, 0) + 2048 : 0;
  // A 10 GB parent under pgbench filled 44.6 GiB with both sizes (its writes copied on write
  // away from five branches' blocks): 3,500 MiB per GB, as far as the host's free space allows.
  const liveMib = live
    ? Math.ceil(3500 * options.liveSizes.reduce((a, b) => a + b, 0)) +
      Math.ceil(1000 * Math.max(...options.liveSizes)) +
      8192
    : 0;
  const host = fs.statfsSync(os.tmpdir());
  const hostFreeMib = Math.floor((host.bavail * host.bsize) / 1024 ** 2);
  const imageMib = Math.min(Math.max(4096, creationMib, liveMib), hostFreeMib - 8192);
  progress(`mounting a reflink XFS (${imageMib} MiB, sparse) for the clone runs`);
  const mount = await mountReflinkXfs(imageMib);
  let dataRoot: string;
  let filesystem: string;
  let noClone: string | undefined;
  if ('skipped' in mount) {
    noClone = `no copy-on-write filesystem: ${mount.skipped}`;
    progress(`${noClone}; measuring copy only`);
    dataRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbranch-bench-'));
    cleanup.add(`remove ${dataRoot}`, () => fs.rmSync(dataRoot, { recursive: true, force: true }));
    // The embedded server runs as the postgres user, which must reach the data directory.
    fs.chmodSync(dataRoot, 0o755);
    filesystem = `${filesystemType(dataRoot)} (no copy-on-write)`;
  } else {
    cleanup.add(`unmount ${mount.dir}`, () => mount.unmount());
    dataRoot = mount.dir;
    filesystem = `XFS (reflink=1, ${imageMib} MiB) on a loop-mounted sparse file on ${filesystemType(os.tmpdir())}`;
  }
  const password = randomBytes(12).toString('base64url');

  const results: Results = { options, filesystem, live: [], load: [loadAtStart, loadAtStart] };
  if (creation) {
    results.creation = await runCreation(options, cleanup, {
      dataRoot,
      filesystem,
      noClone,
      password,
    });
  }
  if (live) {
    progress(
      'building pgbranch (npm run build): the live parts run the build, as production would',
    );
    execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: ['ignore', 2, 2] });
    results.commit = sourceCommit();
    for (const [i, gb] of options.liveSizes.entries()) {
      results.live.push(
        await runLiveSize({
          dataRoot,
          gb,
          password,
          // Resume and memory do not depend on the parent's size: the smallest one serves.
          parts: i === 0 ? liveParts : { ...liveParts, resume: false, memory: false },
          repeat: options.repeat,
          clients: options.clients,
          rate: options.rate,
          branches: options.branches,
          maxRunning: options.maxRunning,
          cleanup,
        }),
      );
    }
  }
  results.load[1] = os.loadavg()[0]!;
  return results;
}

function sourceCommit(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
      cwd: ROOT,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  } catch {
    return 'unknown';
  }
}

async function runCreation(
  options: Options,
  cleanup: Cleanup,
  where: { dataRoot: string; filesystem: string; noClone: string | undefined; password: string },
): Promise<CreationResults> {
  const loadAtStart = os.loadavg()[0]!;
  const { filesystem, password } = where;
  let noClone = where.noClone;
  const dataDir = path.join(where.dataRoot, 'pgbranch');
  const removeDataDir = cleanup.add(`remove ${dataDir}`, () =>
    fs.rmSync(dataDir, { recursive: true, force: true }),
  );
  const modes: Mode[] = noClone ? ['copy'] : ['clone', 'copy'];
  const runs: ModeRun[] = [];
  let parents: Parent[] = [];
  let serverVersion = '';
  for (const mode of modes) {
    progress(`starting pgbranch (${mode}) with its data directory in ${dataDir}`);
    const proxy = await startPgbranch({
      dataDir,
      password,
      args: ['--log-level', 'info', ...(mode === 'copy' ? ['--branch-copy-method', 'copy'] : [])],
      timeoutMs: 120_000,
    });
    const stopProxy = cleanup.add('stop pgbranch', () => proxy.stop());
    serverVersion = proxy.ready.serverVersion;
    if (proxy.ready.copyMode !== mode) {
      // Only clone can fail to happen: pgbranch found the filesystem or server unable.
      noClone = `pgbranch would not clone: ${proxy.ready.copyReason}`;
      progress(`${noClone}; measuring copy only`);
      await stopProxy();
      continue;
    }
    // The same data directory serves every mode, so the parents are generated once.
    if (parents.length === 0) parents = await generateParents(proxy, options.sizes);
    const samples = await measureBranching({ proxy, mode, parents, repeat: options.repeat });
    runs.push({ mode, reason: proxy.ready.copyReason, samples });
    progress(`stopping pgbranch (${mode})`);
    await stopProxy();
  }
  // The live part's clusters need the room.
  await removeDataDir();

  let dump: CreationResults['dump'];
  try {
    dump = await measureDumpRestore({ sizes: options.sizes, repeat: options.repeat, cleanup });
  } catch (error) {
    dump = { error: (error as Error).message };
    progress(`pg_dump | pg_restore baseline failed: ${dump.error}`);
  }
  const load: [number, number] = [loadAtStart, os.loadavg()[0]!];
  return { options, serverVersion, filesystem, noClone, parents, runs, dump, load };
}

async function generateParents(proxy: PgbranchProcess, sizes: number[]): Promise<Parent[]> {
  const server = directConfig(proxy);
  const parents: Parent[] = [];
  for (const mib of sizes) {
    const name = `app_${mib}mb`;
    const admin = new pg.Client(server);
    await admin.connect();
    try {
      await admin.query(`CREATE DATABASE ${quoteIdent(name)}`);
    } finally {
      await admin.end();
    }
    const size = await fillParent(server, name, mib, (step) =>
      progress(`PostgreSQL ${proxy.ready.serverVersion}: generating ${name}: ${step}`),
    );
    progress(`PostgreSQL ${proxy.ready.serverVersion}: ${name} is ${bytes(size)}`);
    parents.push({ name, mib, bytes: size });
  }
  return parents;
}

function sizeLabel(mib: number): string {
  return mib >= 1000 && mib % 1000 === 0 ? `${mib / 1000} GB` : `${mib} MB`;
}

function report(results: Results, command: string): string {
  const sections: string[] = [];
  if (results.creation) sections.push(creationReport(results.creation, command));
  if (results.live.length > 0) {
    sections.push(
      liveReport({
        sizes: results.live,
        filesystem: results.filesystem,
        commit: results.commit ?? 'unknown',
        load: results.load,
        repeat: results.options.repeat,
        clients: results.options.clients,
        rate: results.options.rate,
        command,
      }),
    );
  }
  return sections.join('\n');
}

function creationReport(results: CreationResults, command: string): string {
  const { options, parents, runs, dump } = results;
  const cpus = os.cpus();
  const dumpSamples = 'error' in dump ? undefined : dump.samples;
  const out: string[] = [];
  out.push('## Branch creation: connect to first row on a new branch', '');
  out.push(
    `- Machine: ${cpus.length} CPUs (${cpus[0]?.model.trim() ?? 'unknown'}), ${bytes(os.totalmem())} RAM, Linux ${os.release()}, Node.js ${process.version}`,
  );
  out.push(
    `- pgbranch: embedded PostgreSQL ${results.serverVersion}; data directory on ${results.filesystem}`,
  );
  for (const run of runs) out.push(`- ${run.mode} run, as pgbranch reported it: ${run.reason}`);
  if (results.noClone) out.push(`- Clone not measured (${results.noClone}): copy only.`);
  out.push(
    'error' in dump
      ? `- pg_dump | pg_restore baseline not measured: ${dump.error}`
      : `- pg_dump | pg_restore baseline: ${dump.server}, data directory on ${dump.filesystem} (pg_dump 15 can't dump PostgreSQL 18)`,
  );
  out.push(
    `- Load average (1 min) at start ${results.load[0].toFixed(1)}, at end ${results.load[1].toFixed(1)} (other work on the machine adds noise to every column)`,
  );
  out.push(
    `- ${options.repeat} repetition${options.repeat === 1 ? '' : 's'} per cell, each on a new branch, dropped afterwards: median (min–max)`,
  );
  out.push(`- Command: \`${command}\``, '');

  const rows: string[][] = [];
  parents.forEach((parent, i) => {
    const first = `${sizeLabel(parent.mib)} (${bytes(parent.bytes)})`;
    let label = first;
    const take = () => {
      const value = label;
      label = '';
      return value;
    };
    for (const run of runs) {
      const s = run.samples[i]!;
      rows.push([
        take(),
        `${run.mode}, via pgbranch`,
        cell(s.proxy),
        cell(s.create),
        signedDuration(pairedMedianDifference(s.proxy, s.create)),
      ]);
    }
    const d = dumpSamples?.[i];
    rows.push([
      take(),
      'pg_dump -Fc -Z0 | pg_restore, on PostgreSQL 15 ¹',
      d ? cell(d.dumpRestore) : 'not measured',
      '—',
      '—',
    ]);
  });
  out.push(
    markdownTable(
      [
        'parent (pg_database_size)',
        'how',
        'connect → first row on the new branch',
        'CREATE DATABASE alone, on the server ²',
        'pgbranch overhead ³',
      ],
      rows,
    ),
    '',
  );

  out.push(
    `Through pgbranch: a node-postgres client connects to app_<size>mb@bench-N (SCRAM), the branch is made on that connect, and the clock stops at the first row of \`select 1\`. A CHECKPOINT (not timed) precedes every repetition; one warm-up branch per pgbranch process is not counted.`,
    '',
  );
  if (dumpSamples) {
    const scale = dumpSamples.map((d) => `${cell(d.fileCopy)} at ${sizeLabel(d.mib)}`).join(', ');
    out.push(
      `¹ PostgreSQL 15 with the same generated data (${dumpSamples.map((d) => bytes(d.bytes)).join(', ')}): CREATE DATABASE, \`pg_dump -Fc -Z0 source | pg_restore -d target\`, connect, first row of \`select 1\`. For scale between the two servers: CREATE DATABASE ... STRATEGY FILE_COPY (a copy) there took ${scale}.`,
      '',
    );
  } else {
    out.push('¹ Not measured (see above).', '');
  }
  out.push(
    `² \`CREATE DATABASE x TEMPLATE app_<size>mb STRATEGY FILE_COPY\` with \`SET file_copy_method\` to the same mode, on an open superuser connection straight to the server, interleaved with the runs through pgbranch.`,
    '',
  );
  const medianOf = (run: ModeRun, pick: (s: ModeSamples) => number[]) =>
    duration(summarize(run.samples.flatMap(pick)).median);
  const perMode = (pick: (s: ModeSamples) => number[]) =>
    runs.map((run) => `${medianOf(run, pick)} (${run.mode})`).join(', ') || 'n/a';
  out.push(
    `³ Median of the paired differences. pgbranch's own log puts its checks and drain around the CREATE DATABASE at ${perMode((s) => s.proxyBookkeeping)} median; the rest is connecting, client to pgbranch and pgbranch to the new database. Any client pays for the latter: directly on the server, a first connection to the new database and the first row of \`select 1\` took ${perMode((s) => s.connect)} median.`,
    '',
  );
  const largest = parents.length - 1;
  if (largest >= 0 && runs.length > 0) {
    const disk = runs
      .map((run) => `${run.mode} ${bytes(summarize(run.samples[largest]!.diskUsed).median)}`)
      .join(', ');
    out.push(
      `Disk: a branch of the ${sizeLabel(parents[largest]!.mib)} parent took ${disk} of the filesystem's free space (median).`,
      '',
    );
  }
  out.push(verdict(results));
  const clone = runs.find((r) => r.mode === 'clone');
  if (clone && dumpSamples && largest >= 0) {
    const branchMs = summarize(clone.samples[largest]!.proxy).median;
    const dumpMs = summarize(dumpSamples[largest]!.dumpRestore).median;
    out.push(
      '',
      `At ${sizeLabel(parents[largest]!.mib)}, a cloned branch was ready ${Math.round(dumpMs / branchMs)}× sooner than a pg_dump | pg_restore copy.`,
    );
  }
  return `${out.join('\n')}\n`;
}

function verdict(results: CreationResults): string {
  const goal = `on a copy-on-write filesystem, under ${TARGET_MS} ms at every size, flat as size grows`;
  const clone = results.runs.find((r) => r.mode === 'clone');
  if (!clone) return `**Target** (${goal}): **not measured**, no clone run (${results.noClone}).`;
  const medians = clone.samples.map((s) => summarize(s.proxy).median);
  const worst = Math.max(...clone.samples.flatMap((s) => s.proxy));
  const under = medians.every((m) => m < TARGET_MS);
  const slowest = Math.max(...medians);
  const fastest = Math.min(...medians);
  const flat = slowest <= fastest * FLAT_RATIO || slowest - fastest <= FLAT_MS;
  const each = clone.samples
    .map((_, i) => `${duration(medians[i]!)} at ${sizeLabel(results.parents[i]!.mib)}`)
    .join(', ');
  const met = under && flat && medians.length > 1;
  return [
    `**Target** (${goal}): **${met ? 'met' : 'not met'}**.`,
    `Clone through pgbranch, medians ${each} (${under ? 'all' : 'not all'} under ${TARGET_MS} ms; slowest single run ${duration(worst)}).`,
    medians.length > 1
      ? `Slowest/fastest median ${(slowest / fastest).toFixed(2)}: ${flat ? 'flat' : 'not flat'} (flat means within ${FLAT_RATIO}× or ${FLAT_MS} ms).`
      : 'One size only: flatness not judged; give --sizes with two or more.',
  ].join(' ');
}

process.exitCode = await runBenchmark({
  name: 'bench:branch',
  help: HELP,
  parseOptions,
  run,
  report,
});
