// `npm run bench:source`: how fast pgbranch's own base backup makes a standby of a source, against
// a plain file copy (cp -r) of the same data directory on the same disk. A PostgreSQL 18 source
// of the given size (pgbench's tables) runs on loopback; its files are read once first so that
// both read from the page cache; then, round after round, cp -r and pgbranch's BASE_BACKUP, each
// into a fresh directory and synced to disk (sync -f) before the clock stops, since a standby is
// made only of durable files. Rates are bytes written per second of each.
//
// For reference, what a C client reaches: a PostgreSQL 15 source of the same size (Debian's
// binaries, when installed) backed up in the same rounds by its pg_basebackup and by pgbranch, and
// copied by cp -r.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { receiveBaseBackup } from '../src/source/base-backup.js';
import { ReplicationConnection } from '../src/source/replication-connection.js';
import { parseSourceUrl } from '../src/source/source-url.js';
import { tempDir } from '../test/support/pgbranch.js';
import {
  DEBIAN_15,
  REPLICATOR_PASSWORD,
  SUPERUSER_PASSWORD,
  sourceServer,
  type SourceServer,
} from '../test/support/source-server.js';
import type { Cleanup } from './support/cleanup.js';
import { runBenchmark } from './support/main.js';
import { generatePgbenchCluster } from './support/pgbench-cluster.js';
import { bytes, cell, markdownTable, progress, summarize } from './support/report.js';

const HELP = `usage: npm run bench:source -- [--gb 1] [--rounds 3]

  --gb       size of the source's data (pgbench's tables), in GB (default 1)
  --rounds   cp -r and base backup, interleaved, this many times each (default 3)
`;

interface Options {
  gb: number;
  rounds: number;
}

interface Sample {
  bytes: number;
  ms: number;
}

interface Results {
  options: Options;
  dataDirBytes: number;
  walBytes: number;
  copy: Sample[];
  backup: (Sample & { copyMs: number })[];
  /** The PostgreSQL 15 reference, when Debian's binaries are there. */
  reference: { copy: Sample[]; backup: Sample[]; pgBasebackup: Sample[] } | undefined;
  filesystem: string;
  /** /proc/loadavg's 1-minute figure at the start of each round. */
  load: number[];
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      gb: { type: 'string', default: '1' },
      rounds: { type: 'string', default: '3' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const gb = Number(values.gb);
  if (!(gb > 0)) throw new Error(`--gb "${values.gb}": write a size in GB above 0`);
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1) {
    throw new Error(`--rounds "${values.rounds}": write a whole number of at least 1`);
  }
  return { gb, rounds };
}

const PG_BASEBACKUP = path.join(DEBIAN_15, 'pg_basebackup');

async function run(options: Options, cleanup: Cleanup): Promise<Results> {
  progress(`starting a PostgreSQL 18 source`);
  const source = await makeSource(options.gb, undefined, cleanup);
  const dataDirBytes = treeBytes(source.pgDataDir);
  const walBytes = treeBytes(path.join(source.pgDataDir, 'pg_wal'));
  let source15: SourceServer | undefined;
  if (fs.existsSync(PG_BASEBACKUP)) {
    progress(`starting a PostgreSQL 15 source (Debian's), for pg_basebackup's reference`);
    source15 = await makeSource(options.gb, DEBIAN_15, cleanup);
  } else {
    progress(`no ${PG_BASEBACKUP}: no reference row`);
  }
  for (const dir of [source.pgDataDir, source15?.pgDataDir]) {
    if (!dir) continue;
    progress(`reading ${dir} (${bytes(treeBytes(dir))}) once, into the page cache`);
    execFileSync('sh', ['-c', `find "${dir}" -type f -exec cat {} + > /dev/null`]);
  }

  const scratch = tempDir('bench-source');
  cleanup.add('removing the copies', () => fs.rmSync(scratch, { recursive: true, force: true }));
  const target = path.join(scratch, 'copy');
  const timed = async (write: () => Promise<number>): Promise<Sample> => {
    const started = performance.now();
    const written = await write();
    execFileSync('sync', ['-f', target]);
    const sample = { bytes: written, ms: performance.now() - started };
    fs.rmSync(target, { recursive: true, force: true });
    execFileSync('sync', ['-f', scratch]);
    return sample;
  };
  const copy = (from: string) =>
    timed(async () => {
      execFileSync('cp', ['-r', from, target]);
      return treeBytes(target);
    });
  let copyMs = 0;
  const backup = (from: SourceServer) =>
    timed(async () => {
      const connection = await ReplicationConnection.open(parseSourceUrl(from.url()));
      try {
        const received = await receiveBaseBackup({
          connection,
          target,
          tablespaceDir: (oid) => path.join(scratch, `tablespace-${oid}`),
          label: 'bench:source',
          onProgress: (p) => progress(`  ${bytes(p.bytes)} at ${bytes(p.rate)}/s`),
        });
        copyMs = received.copyMs;
        return received.bytes;
      } finally {
        connection.close();
      }
    });
  // As pgbranch's: plain format, no WAL, fast checkpoint, no manifest, then sync -f.
  const pgBasebackup = (from: SourceServer) =>
    timed(async () => {
      execFileSync(
        PG_BASEBACKUP,
        [
          `--dbname=${from.url()}`,
          `--pgdata=${target}`,
          '--format=plain',
          '--wal-method=none',
          '--checkpoint=fast',
          '--no-manifest',
          '--no-sync',
        ],
        { env: { ...process.env, PGPASSWORD: REPLICATOR_PASSWORD }, stdio: 'ignore' },
      );
      return treeBytes(target);
    });

  const results: Results = {
    options,
    dataDirBytes,
    walBytes,
    copy: [],
    backup: [],
    reference: source15 ? { copy: [], backup: [], pgBasebackup: [] } : undefined,
    filesystem: execFileSync('df', ['--output=fstype', scratch]).toString().split('\n')[1]!.trim(),
    load: [],
  };
  for (let round = 1; round <= options.rounds; round++) {
    results.load.push(os.loadavg()[0]!);
    const step = (what: string) => progress(`round ${round}/${options.rounds}: ${what}`);
    step('cp -r');
    results.copy.push(await copy(source.pgDataDir));
    step('base backup');
    results.backup.push({ ...(await backup(source)), copyMs });
    if (source15 && results.reference) {
      step('PostgreSQL 15: cp -r');
      results.reference.copy.push(await copy(source15.pgDataDir));
      step('PostgreSQL 15: base backup');
      results.reference.backup.push(await backup(source15));
      step('PostgreSQL 15: pg_basebackup');
      results.reference.pgBasebackup.push(await pgBasebackup(source15));
    }
  }
  return results;
}

/** A source of `gb` of pgbench's tables, checkpointed; the embedded 18 unless `binDir`. */
async function makeSource(
  gb: number,
  binDir: string | undefined,
  cleanup: Cleanup,
): Promise<SourceServer> {
  const source = await sourceServer(binDir ? { binDir } : {});
  cleanup.add(`stopping the source on port ${source.port}`, () => source.remove());
  await generatePgbenchCluster(
    {
      host: '127.0.0.1',
      port: source.port,
      user: 'postgres',
      password: SUPERUSER_PASSWORD,
      database: 'postgres',
    },
    'app',
    gb,
  );
  const admin = await source.connect();
  try {
    await admin.query('CHECKPOINT');
  } finally {
    await admin.end();
  }
  return source;
}

function report(results: Results, command: string): string {
  const rate = (sample: Sample) => (sample.bytes / sample.ms) * 1000;
  // Each round's runs side by side: the machine's load shifts between rounds, not within one.
  const ratio = (a: Sample[], b: Sample[]) => {
    const r = summarize(a.map((sample, i) => rate(sample) / rate(b[i]!)));
    const pct = (x: number) => (x * 100).toFixed(0);
    return `median ${pct(r.median)}% (${pct(r.min)}–${pct(r.max)}%)`;
  };
  const row = (name: string, samples: Sample[], what: string) => [
    name,
    what,
    bytes(summarize(samples.map((s) => s.bytes)).median),
    cell(samples.map((s) => s.ms)),
    `${bytes(summarize(samples.map(rate)).median)}/s`,
  ];
  const backupWhat = 'BASE_BACKUP (checkpoint fast, no WAL) extracted, then sync -f';
  const rows = [
    row('cp -r + sync -f', results.copy, 'the whole data directory, WAL included'),
    row('pgbranch base backup', results.backup, backupWhat),
  ];
  const { reference } = results;
  if (reference) {
    rows.push(
      row('PG 15: cp -r + sync -f', reference.copy, 'the whole data directory, WAL included'),
      row('PG 15: pgbranch base backup', reference.backup, backupWhat),
      row(
        'PG 15: pg_basebackup 15',
        reference.pgBasebackup,
        'plain, -X none, checkpoint fast, no manifest, --no-sync, then sync -f',
      ),
    );
  }
  const load = summarize(results.load);
  return [
    `# ${command}`,
    '',
    `Source: PostgreSQL 18 on loopback, ${bytes(results.dataDirBytes)} data directory (${bytes(results.walBytes)} of it WAL), ` +
      `copies on ${results.filesystem}; ${os.cpus().length} cores, ${bytes(os.totalmem())} memory; ${results.options.rounds} rounds, interleaved; median (min–max). ` +
      `Load average (1 min) at the rounds' starts: ${load.min.toFixed(1)}–${load.max.toFixed(1)}.`,
    '',
    markdownTable(['method', 'what it writes', 'bytes', 'time', 'rate'], rows),
    '',
    `Base backup rate against cp -r's in the same round: ${ratio(results.backup, results.copy)} (target: at least 80%). ` +
      `Of the backup's time, the COPY itself (after the checkpoint, before the sync): ${cell(results.backup.map((s) => s.copyMs))}.`,
    ...(reference
      ? [
          '',
          `PostgreSQL 15, in the same rounds: pgbranch's base backup against cp -r ${ratio(reference.backup, reference.copy)}, ` +
            `pg_basebackup against cp -r ${ratio(reference.pgBasebackup, reference.copy)}, ` +
            `pgbranch against pg_basebackup ${ratio(reference.backup, reference.pgBasebackup)}.`,
        ]
      : []),
    '',
  ].join('\n');
}

function treeBytes(dir: string): number {
  let total = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += fs.statSync(path.join(entry.parentPath, entry.name)).size;
  }
  return total;
}

process.exitCode = await runBenchmark({
  name: 'bench:source',
  help: HELP,
  parseOptions,
  run,
  report,
});
