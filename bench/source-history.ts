// `npm run bench:source-history`: a branch of a source at a past moment, with the restore points'
// spacing scaled down (source.snapshot_interval seconds instead of 15 minutes). A PostgreSQL 18
// source of pgbench's tables runs under pgbench's write load while pgbranch follows it and takes
// restore points; then, load still running, branches are made at moments just before a restore
// point (the most WAL to replay from the one before), from the oldest back to the newest, each
// timed from connect to the first row of a table. The WAL each replayed is reported with it: what
// a 15-minute spacing costs follows from how much WAL production writes in 15 minutes.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { parseLsn } from '../src/source/lsn.js';
import { startPgbranch, tempDir } from '../test/support/pgbranch.js';
import {
  SUPERUSER_PASSWORD,
  sourceServer,
  type SourceServer,
} from '../test/support/source-server.js';
import { mountReflinkXfs } from '../test/support/xfs.js';
import type { Cleanup } from './support/cleanup.js';
import { connectToFirstRow } from './support/first-row.js';
import { runBenchmark } from './support/main.js';
import { generatePgbenchCluster } from './support/pgbench-cluster.js';
import { bytes, cell, duration, markdownTable, progress, summarize } from './support/report.js';
import { meanTps, startWriteLoad } from './support/write-load.js';

const HELP = `usage: npm run bench:source-history -- [--gb 0.5] [--interval 10] [--points 6] [--clients 4]
         [--rate 0] [--checkpoint-timeout 300]

  --gb                  size of the source's data (pgbench's tables), in GB (default 0.5)
  --interval            seconds between restore points (source.snapshot_interval; default 10)
  --points              restore points taken under load before the branches are made (default 6);
                        one branch is made at the end of each interval between them
  --clients             pgbench clients writing on the source meanwhile (default 4)
  --rate                transactions per second pgbench holds to (pgbench -R); 0, the default,
                        writes as fast as the machine lets it
  --checkpoint-timeout  the source's checkpoint_timeout in seconds (default 300, PostgreSQL's;
                        at least 30): a restore point's recovery starts at the source's last
                        checkpoint before it, so with --interval 90 and 30 the bench keeps the
                        proportions of 15-minute points and 5-minute checkpoints

pgbranch's own settings come from the environment as usual (PGBRANCH_BRANCH_INSTANCE_SETTINGS, say).
`;

interface Options {
  gb: number;
  interval: number;
  points: number;
  clients: number;
  rate: number;
  checkpointTimeout: number;
}

interface Sample {
  /** How far back the moment was when the branch was asked for. */
  backMs: number;
  /** Connect to the first row of pgbench_accounts. */
  ms: number;
  /** pgbranch's own time: clone, WAL gathered, recovery, promotion. */
  recoverMs: number;
  /** WAL from the restore point's start to where the recovery stopped. */
  walBytes: number;
  /** /proc/loadavg's 1-minute figure when it was asked for. */
  load: number;
}

interface Results {
  options: Options;
  filesystem: string;
  copyMode: string;
  tps: number;
  /** The source's WAL per second while the points were taken. */
  walRate: number;
  samples: Sample[];
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      gb: { type: 'string', default: '0.5' },
      interval: { type: 'string', default: '10' },
      points: { type: 'string', default: '6' },
      clients: { type: 'string', default: '4' },
      rate: { type: 'string', default: '0' },
      'checkpoint-timeout': { type: 'string', default: '300' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const number = (
    name: 'gb' | 'interval' | 'points' | 'clients' | 'rate' | 'checkpoint-timeout',
    min: number,
  ) => {
    const value = Number(values[name]);
    if (!(value >= min))
      throw new Error(`--${name} "${values[name]}": write a number of at least ${min}`);
    return value;
  };
  return {
    gb: number('gb', 0.01),
    interval: number('interval', 2),
    points: Math.floor(number('points', 2)),
    clients: Math.floor(number('clients', 1)),
    rate: Math.floor(number('rate', 0)),
    checkpointTimeout: Math.floor(number('checkpoint-timeout', 30)),
  };
}

async function run(options: Options, cleanup: Cleanup): Promise<Results> {
  const mount = await mountReflinkXfs(Math.ceil(options.gb * 1024 * 8 + 4096));
  let dataDir: string;
  if ('skipped' in mount) {
    progress(`no XFS with reflink (${mount.skipped}): restore points are full copies`);
    dataDir = tempDir('bench-history');
  } else {
    cleanup.add('unmounting the XFS image', () => mount.unmount());
    dataDir = fs.mkdtempSync(path.join(mount.dir, 'bench-history-'));
    fs.chmodSync(dataDir, 0o755);
  }
  cleanup.add('removing the data directory', () =>
    fs.rmSync(dataDir, { recursive: true, force: true }),
  );
  progress('starting a PostgreSQL 18 source');
  const source = await sourceServer({
    settings: { checkpoint_timeout: `${options.checkpointTimeout}s` },
  });
  cleanup.add('stopping the source', () => source.remove());
  const target = {
    host: '127.0.0.1',
    port: source.port,
    user: 'postgres',
    password: SUPERUSER_PASSWORD,
    database: 'app',
  };
  await generatePgbenchCluster({ ...target, database: 'postgres' }, 'app', options.gb);
  progress('starting pgbranch: base backup, standby, first restore point');
  const proxy = await startPgbranch({
    dataDir,
    args: [
      '--source',
      source.url(),
      '--source-snapshot-interval',
      `${options.interval}s`,
      '--source-retention',
      '1d',
    ],
    timeoutMs: 30 * 60_000,
  });
  cleanup.add('stopping pgbranch', async () => void (await proxy.stop()));
  const points = () => proxy.events('source_point_taken');
  const waitForPoints = async (count: number) => {
    while (points().length < count) await new Promise((resolve) => setTimeout(resolve, 100));
  };
  await waitForPoints(1);
  const load = startWriteLoad({ target, clients: options.clients, rate: options.rate, cleanup });
  cleanup.add('stopping the write load', () => load.stop());
  progress(`write load on the source; waiting for ${options.points} restore points under it`);
  const lsnFrom = await sourceLsn(source);
  const timeFrom = Date.now();
  await waitForPoints(options.points + 1);
  const walRate = Number((await sourceLsn(source)) - lsnFrom) / ((Date.now() - timeFrom) / 1000);

  // A moment just before each point after the first under load: the most WAL from the one before.
  const ends = points().slice(2, options.points + 1);
  const samples: Sample[] = [];
  for (const [i, point] of ends.entries()) {
    const at = new Date(pointTime(point) - 500);
    const backMs = Date.now() - at.getTime();
    progress(`branch ${i + 1}/${ends.length}: ${duration(backMs)} back`);
    const ms = await connectToFirstRow(
      {
        ...proxy.config(`app@past-${i}`, 'postgres', SUPERUSER_PASSWORD),
        options: `-c pgbranch.at=${at.toISOString()}`,
      },
      'SELECT 1 AS one FROM pgbench_accounts LIMIT 1',
    );
    const made = proxy.events('source_branch_at').at(-1)!;
    const from = points().find((p) => p.point === made.point)!;
    samples.push({
      backMs,
      ms,
      recoverMs: Number(made.ms),
      walBytes: Number(parseLsn(String(made.lsn)) - parseLsn(String(from.startLsn))),
      load: os.loadavg()[0]!,
    });
    progress(
      `  ${duration(ms)}: ${bytes(samples.at(-1)!.walBytes)} of WAL replayed, pgbranch ${duration(Number(made.ms))}`,
    );
  }
  await load.stop();
  return {
    options,
    filesystem: 'skipped' in mount ? 'the temporary directory (no reflink)' : 'XFS with reflink',
    copyMode: proxy.ready.copyMode,
    tps: meanTps(load.seconds),
    walRate,
    samples,
  };
}

/** The source's current WAL insert position. */
async function sourceLsn(source: SourceServer): Promise<bigint> {
  const client = await source.connect();
  try {
    const { rows } = await client.query<{ lsn: string }>(
      'select pg_current_wal_lsn()::text as lsn',
    );
    return parseLsn(rows[0]!.lsn);
  } finally {
    await client.end();
  }
}

/** When a restore point was complete: its id is that moment, written without separators. */
function pointTime(event: Record<string, unknown>): number {
  const id = String(event.point);
  const iso = `${id.slice(0, 4)}-${id.slice(4, 6)}-${id.slice(6, 11)}:${id.slice(11, 13)}:${id.slice(13, 15)}.${id.slice(15, 18)}Z`;
  return Date.parse(iso);
}

function report(results: Results, command: string): string {
  const { options, samples } = results;
  const rates = samples.map((s) => s.walBytes / (s.recoverMs / 1000));
  const rate = summarize(rates).median;
  return [
    `# ${command}`,
    '',
    `Source: PostgreSQL 18 on loopback, pgbench scale for ${options.gb} GB, ${options.clients} pgbench clients writing ` +
      `(${options.rate > 0 ? `held to ${options.rate} tps, ` : ''}${results.tps.toFixed(0)} tps on average, ${bytes(results.walRate)}/s of WAL), ` +
      `checkpoint_timeout ${options.checkpointTimeout} s; restore points every ${options.interval} s on ${results.filesystem} (${results.copyMode}); ` +
      `${os.cpus().length} cores, ${bytes(os.totalmem())} memory; instance settings: ` +
      `${process.env.PGBRANCH_BRANCH_INSTANCE_SETTINGS || "pgbranch's defaults"}. Each branch is at a moment 0.5 s before a restore point, ` +
      `so it replays nearly a whole interval of WAL from the point before, and more: from the source's last checkpoint before that point.`,
    '',
    markdownTable(
      [
        'moment',
        'WAL replayed',
        'pgbranch: clone + recovery + promotion',
        'WAL per second of it',
        'connect to first row',
        'load average',
      ],
      samples.map((s, i) => [
        `${duration(s.backMs)} back`,
        bytes(s.walBytes),
        duration(s.recoverMs),
        `${bytes(rates[i]!)}/s`,
        duration(s.ms),
        s.load.toFixed(1),
      ]),
    ),
    '',
    `Connect to first row: ${cell(samples.map((s) => s.ms))} (median, min–max); WAL replayed ` +
      `${bytes(summarize(samples.map((s) => s.walBytes)).median)} (median), ${bytes(rate)} per second of pgbranch's time ` +
      `(median; clone and promotion included). At that rate 10 s replays ${bytes(10 * rate)}: with 15-minute restore points ` +
      `and the source's checkpoints 5 minutes apart (up to about 20 minutes of WAL from a point's start to the moment), ` +
      `a source writing up to ${bytes((10 * rate) / (20 * 60))}/s of WAL.`,
    '',
  ].join('\n');
}

process.exitCode = await runBenchmark({
  name: 'bench:source-history',
  help: HELP,
  parseOptions,
  run,
  report,
});
