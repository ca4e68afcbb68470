// `npm run bench:source`: how fast pgbranch's own base backup makes a standby of a source, against
// a plain file copy (cp -r) of the same data directory on the same disk. A PostgreSQL 18 source
// of the given size (pgbench's tables) runs on loopback; its files are read once first so that
// both read from the page cache; then, round after round, cp -r and pgbranch's BASE_BACKUP, each
// into a fresh directory and synced to disk (sync -f) before the clock stops, since a standby is
// made only of durable files. Rates are bytes written per second of each.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { receiveBaseBackup } from '../src/source/base-backup.js';
import { ReplicationConnection } from '../src/source/replication-connection.js';
import { parseSourceUrl } from '../src/source/source-url.js';
import { tempDir } from '../test/support/pgbranch.js';
import { SUPERUSER_PASSWORD, sourceServer } from '../test/support/source-server.js';
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
  filesystem: string;
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

async function run(options: Options, cleanup: Cleanup): Promise<Results> {
  progress(`starting a PostgreSQL 18 source`);
  const source = await sourceServer();
  cleanup.add('stopping the source', () => source.remove());
  await generatePgbenchCluster(
    {
      host: '127.0.0.1',
      port: source.port,
      user: 'postgres',
      password: SUPERUSER_PASSWORD,
      database: 'postgres',
    },
    'app',
    options.gb,
  );
  const admin = await source.connect();
  try {
    await admin.query('CHECKPOINT');
  } finally {
    await admin.end();
  }
  const dataDirBytes = treeBytes(source.pgDataDir);
  const walBytes = treeBytes(path.join(source.pgDataDir, 'pg_wal'));
  progress(`reading the source's files once (${bytes(dataDirBytes)}), into the page cache`);
  execFileSync('sh', ['-c', `find "${source.pgDataDir}" -type f -exec cat {} + > /dev/null`]);

  const scratch = tempDir('bench-source');
  cleanup.add('removing the copies', () => fs.rmSync(scratch, { recursive: true, force: true }));
  const target = path.join(scratch, 'copy');
  const copy: Sample[] = [];
  const backup: Results['backup'] = [];
  for (let round = 1; round <= options.rounds; round++) {
    progress(`round ${round}/${options.rounds}: cp -r`);
    let started = performance.now();
    execFileSync('cp', ['-r', source.pgDataDir, target]);
    execFileSync('sync', ['-f', target]);
    copy.push({ bytes: treeBytes(target), ms: performance.now() - started });
    fs.rmSync(target, { recursive: true, force: true });
    execFileSync('sync', ['-f', scratch]);

    progress(`round ${round}/${options.rounds}: base backup`);
    started = performance.now();
    const connection = await ReplicationConnection.open(parseSourceUrl(source.url()));
    try {
      const received = await receiveBaseBackup({
        connection,
        target,
        tablespaceDir: (oid) => path.join(scratch, `tablespace-${oid}`),
        label: 'bench:source',
        onProgress: (p) => progress(`  ${bytes(p.bytes)} at ${bytes(p.rate)}/s`),
      });
      backup.push({
        bytes: received.bytes,
        ms: performance.now() - started,
        copyMs: received.copyMs,
      });
    } finally {
      connection.close();
    }
    fs.rmSync(target, { recursive: true, force: true });
    execFileSync('sync', ['-f', scratch]);
  }
  return {
    options,
    dataDirBytes,
    walBytes,
    copy,
    backup,
    filesystem: execFileSync('df', ['--output=fstype', scratch]).toString().split('\n')[1]!.trim(),
  };
}

function report(results: Results, command: string): string {
  const rate = (sample: Sample) => (sample.bytes / sample.ms) * 1000;
  // Each round's two runs side by side: the machine's load shifts between rounds, not within one.
  const ratios = results.backup.map((sample, i) => rate(sample) / rate(results.copy[i]!));
  const ratio = summarize(ratios);
  const row = (name: string, samples: Sample[], what: string) => [
    name,
    what,
    bytes(summarize(samples.map((s) => s.bytes)).median),
    cell(samples.map((s) => s.ms)),
    `${bytes(summarize(samples.map(rate)).median)}/s`,
  ];
  return [
    `# ${command}`,
    '',
    `Source: PostgreSQL 18 on loopback, ${bytes(results.dataDirBytes)} data directory (${bytes(results.walBytes)} of it WAL), ` +
      `copies on ${results.filesystem}; ${os.cpus().length} cores, ${bytes(os.totalmem())} memory; ${results.options.rounds} rounds, interleaved; median (min–max).`,
    '',
    markdownTable(
      ['method', 'what it writes', 'bytes', 'time', 'rate'],
      [
        row('cp -r + sync -f', results.copy, 'the whole data directory, WAL included'),
        row(
          'pgbranch base backup',
          results.backup,
          'BASE_BACKUP (checkpoint fast, no WAL) extracted, then sync -f',
        ),
      ],
    ),
    '',
    `Base backup rate against cp -r's in the same round: median ${(ratio.median * 100).toFixed(0)}% ` +
      `(${(ratio.min * 100).toFixed(0)}–${(ratio.max * 100).toFixed(0)}%; target: at least 80%). ` +
      `Of the backup's time, the COPY itself (after the checkpoint, before the sync): ${cell(results.backup.map((s) => s.copyMs))}.`,
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
