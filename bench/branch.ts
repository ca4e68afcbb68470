// `npm run bench:branch`: how long a client waits for the first row on a NEW branch, by parent
// size, cloned and copied, against pg_dump | pg_restore and against CREATE DATABASE run directly on
// the server. Progress goes to stderr; the environment and a markdown table to stdout.
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

const HELP = `usage: npm run bench:branch -- [--sizes 100,1000] [--repeat 5]

  --sizes    parent sizes in MB, comma-separated (default 100,1000; e.g. 100,1000,5000)
  --repeat   repetitions per cell, each on a new branch (default 5)

Runs as root to mount a reflink XFS for the clone runs; without one, only copy is measured.
Needs the machine's PostgreSQL 15 on 127.0.0.1:5432 (trust, user postgres) for the
pg_dump | pg_restore baseline.
`;

/** The goal this benchmark checks: on copy-on-write, under this at every size, flat as size grows. */
const TARGET_MS = 200;
/** "Flat": the slowest size's median is within this factor of the fastest's, or within FLAT_MS. */
const FLAT_RATIO = 1.5;
const FLAT_MS = 20;

interface Options {
  sizes: number[];
  repeat: number;
}

interface ModeRun {
  mode: Mode;
  reason: string;
  samples: ModeSamples[];
}

interface Results {
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

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      sizes: { type: 'string', default: '100,1000' },
      repeat: { type: 'string', default: '5' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const sizes = values.sizes.split(',').map((word) => Number(word.trim()));
  if (sizes.length === 0 || sizes.some((n) => !Number.isInteger(n) || n < 10)) {
    throw new Error(`--sizes "${values.sizes}": write whole MB of at least 10, e.g. 100,1000,5000`);
  }
  const repeat = Number(values.repeat);
  if (!Number.isInteger(repeat) || repeat < 1) {
    throw new Error(`--repeat "${values.repeat}": write a positive whole number`);
  }
  return { sizes: [...new Set(sizes)].sort((a, b) => a - b), repeat };
}

async function run(options: Options, cleanup: Cleanup): Promise<Results> {
  const loadAtStart = os.loadavg()[0]!;
  const imageMib = Math.max(4096, 3 * options.sizes.reduce((a, b) => a + b, 0) + 2048);
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

  const dataDir = path.join(dataRoot, 'pgbranch');
  const password = randomBytes(12).toString('base64url');
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

  let dump: Results['dump'];
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

function verdict(results: Results): string {
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
