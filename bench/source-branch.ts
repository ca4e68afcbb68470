// `npm run bench:source-branch`: branches of a busy source. A PostgreSQL 18 source of the given size
// (pgbench's tables) runs pgbench's write load straight to it (not through pgbranch) all along;
// pgbranch follows it with --source, its data directory on a loop-mounted reflink XFS. Each round
// commits a marker row on the source and at once connects to a new branch through pgbranch: the
// clock runs from the connect to the first row of a query that reads the branch's
// pgbench_accounts, and includes the freshness wait (the marker must be in the branch, or the run
// fails). The source's tps in the seconds of each creation is compared with its tps in the
// seconds away from them, in the same run.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { startPgbranch } from '../test/support/pgbranch.js';
import { SUPERUSER_PASSWORD, sourceServer } from '../test/support/source-server.js';
import { mountReflinkXfs } from '../test/support/xfs.js';
import { readySpares } from './support/branch-live.js';
import type { Cleanup } from './support/cleanup.js';
import { runBenchmark } from './support/main.js';
import { generatePgbenchCluster } from './support/pgbench-cluster.js';
import { bytes, cell, duration, markdownTable, progress, summarize } from './support/report.js';
import {
  meanLatency,
  meanTps,
  secondsOverlapping,
  startWriteLoad,
  steadyLoadSeconds,
  type LoadSecond,
} from './support/write-load.js';

const HELP = `usage: npm run bench:source-branch -- [--gb 1] [--branches 5] [--clients 4] [--rate 0]

  --gb        size of the source's data (pgbench's tables), in GB (default 1)
  --branches  branches made under the load, one every --gap seconds (default 5)
  --clients   pgbench clients writing to the source (default 4)
  --rate      transactions per second pgbench holds to (pgbench -R; default 0: as fast as it
              can, which on a small machine leaves a creation nothing but what it takes from
              the source); the report then adds pgbench's latency away from and during creations
  --gap       seconds between two branches (default 10)
  --warm-standbys  source.warm_standbys: warm standbys kept ready (default 1); the first branch
              is asked for once that many are
  --when-ready  each branch is asked for --gap seconds after the last or once a warm standby is
              ready again, whichever is later (a branch now and then); without, every --gap
              seconds (a burst, which outruns the making of standbys)
`;

interface Options {
  gb: number;
  branches: number;
  clients: number;
  rate: number;
  gapMs: number;
  warmStandbys: number;
  whenReady: boolean;
}

interface Creation {
  branch: string;
  ms: number;
  from: 'warm standby' | 'copy';
  /** --when-ready: how long past the gap it waited for a warm standby. */
  readyWaitMs: number;
  at: number;
  end: number;
  load: number;
}

interface Results {
  options: Options;
  databaseBytes: number;
  baseBackupMs: number;
  creations: Creation[];
  steadyTps: number[];
  duringTps: number[];
  /** pgbench's mean latency (ms) away from creations and during them. */
  latency: { steady: number; during: number };
  load: [number, number];
}

/** pgbench runs this long before anything is measured. */
const WARM_UP_MS = 10_000;
/** After a creation the source may still feel it: those seconds count as the creation's. */
const AFTER_MS = 2_000;
const FIRST_ROW_SQL = 'SELECT 1 AS one FROM pgbench_accounts WHERE aid = 1';

async function run(options: Options, cleanup: Cleanup): Promise<Results> {
  const loadAtStart = os.loadavg()[0]!;
  const imageMib = Math.ceil(options.gb * 3000) + 4096;
  progress(`mounting a reflink XFS (${imageMib} MiB, sparse) for pgbranch's data directory`);
  const mount = await mountReflinkXfs(imageMib);
  if ('skipped' in mount) throw new Error(`needs a reflink XFS: ${mount.skipped}`);
  cleanup.add(`unmount ${mount.dir}`, () => mount.unmount());
  const dataDir = fs.mkdtempSync(path.join(mount.dir, 'pgbranch-'));
  fs.chmodSync(dataDir, 0o755);

  progress('starting the source (PostgreSQL 18)');
  const source = await sourceServer({ settings: { max_connections: '100' } });
  cleanup.add('remove the source', () => source.remove());
  const server = {
    host: '127.0.0.1',
    port: source.port,
    user: 'postgres',
    password: SUPERUSER_PASSWORD,
    database: 'postgres',
  };
  const generated = await generatePgbenchCluster(server, 'app', options.gb);
  // The generator's speed-ups are not how a production server runs.
  const admin = new pg.Client(server);
  await admin.connect();
  await admin.query('ALTER SYSTEM RESET full_page_writes');
  await admin.query('ALTER SYSTEM RESET checkpoint_timeout');
  await admin.query('SELECT pg_reload_conf()');
  await admin.query('CHECKPOINT');
  await admin.end();
  const marker = new pg.Client({ ...server, database: 'app' });
  await marker.connect();
  cleanup.add('end the marker session', () => marker.end());
  await marker.query('CREATE TABLE IF NOT EXISTS marker (round int PRIMARY KEY)');

  progress(`pgbranch --source: base backup of ${bytes(generated.databaseBytes)}`);
  const started = performance.now();
  const proxy = await startPgbranch({
    dataDir,
    keepDataDir: true,
    args: [
      ...['--source', source.url(), '--branch-suspend-after', '10s'],
      ...['--source-warm-standbys', String(options.warmStandbys)],
    ],
    timeoutMs: 30 * 60_000,
  });
  const baseBackupMs = performance.now() - started;
  cleanup.add('stop pgbranch', () => proxy.stop());
  const config = (database: string) => proxy.config(database, 'postgres', SUPERUSER_PASSWORD);

  progress(`pgbench on the source: ${options.clients} clients, warming up`);
  const load = startWriteLoad({
    target: { ...server, database: 'app' },
    clients: options.clients,
    rate: options.rate,
    cleanup,
  });
  await sleep(WARM_UP_MS);
  progress(`waiting for ${options.warmStandbys} warm standby(s) to be ready`);
  await readySpares(proxy, options.warmStandbys);
  const creations: Creation[] = [];
  for (let round = 1; round <= options.branches; round++) {
    await sleep(options.gapMs);
    const readyFrom = Date.now();
    // The n-th branch takes the n-th standby that became ready (the first ones before the loop).
    if (options.whenReady) await readySpares(proxy, round + options.warmStandbys - 1);
    const readyWaitMs = Date.now() - readyFrom;
    const branch = `bench-${round}-${randomBytes(3).toString('hex')}`;
    await marker.query('INSERT INTO marker VALUES ($1)', [round]);
    const at = Date.now();
    const t0 = performance.now();
    const client = new pg.Client(config(`app@${branch}`));
    client.on('error', () => undefined);
    const notices: string[] = [];
    client.on('notice', (notice) => notices.push(notice.message ?? ''));
    await client.connect();
    const { rows } = await client.query<{ one: number }>(FIRST_ROW_SQL);
    const ms = performance.now() - t0;
    const end = Date.now();
    if (rows[0]?.one !== 1) throw new Error(`${FIRST_ROW_SQL} returned no row in ${branch}`);
    const fresh = await client.query('SELECT 1 FROM marker WHERE round = $1', [round]);
    await client.end();
    const event = proxy.events('branch_created').find((e) => e.branch === branch);
    if (fresh.rowCount !== 1) {
      throw new Error(
        `${branch} lacks the row committed on the source before it was asked for (its NOTICE: ${notices.join(' | ')}; ${JSON.stringify(event)})`,
      );
    }
    const creation: Creation = {
      branch,
      ms,
      from: event?.from === 'warm_spare' ? 'warm standby' : 'copy',
      readyWaitMs,
      at,
      end,
      load: os.loadavg()[0]!,
    };
    creations.push(creation);
    progress(`${branch}: ${duration(ms)} to the first row (${creation.from})`);
  }
  await sleep(AFTER_MS + 2_000);
  await load.stop();
  if (load.errors.length > 0) throw new Error(`pgbench failed: ${load.errors.join('; ')}`);
  const busy = creations.map((c): [number, number] => [c.at - 1000, c.end + AFTER_MS]);
  const during: LoadSecond[] = creations.flatMap((c) =>
    secondsOverlapping(load, c.at, c.end + AFTER_MS),
  );
  const steady = steadyLoadSeconds(load, busy, WARM_UP_MS);
  return {
    options,
    databaseBytes: generated.databaseBytes,
    baseBackupMs,
    creations,
    steadyTps: steady.map((s) => s.tps),
    duringTps: [meanTps(during)],
    latency: { steady: meanLatency(steady), during: meanLatency(during) },
    load: [loadAtStart, os.loadavg()[0]!],
  };
}

function report(results: Results, command: string): string {
  const { creations, steadyTps, duringTps } = results;
  const steady = summarize(steadyTps);
  const change = steady.median > 0 ? (duringTps[0]! / steady.median - 1) * 100 : 0;
  const rows = creations.map((c) => [
    c.branch,
    duration(c.ms),
    c.from,
    results.options.whenReady ? duration(c.readyWaitMs) : '—',
    c.load.toFixed(1),
  ]);
  return [
    `# ${command}`,
    '',
    `Source: PostgreSQL 18, ${bytes(results.databaseBytes)} of pgbench tables, pgbench -c ${results.options.clients}${results.options.rate > 0 ? ` -R ${results.options.rate}` : ''} writing to it all along; a branch every ${results.options.gapMs / 1000} s${results.options.whenReady ? ' or once a warm standby was ready again, whichever was later' : ''}; source.warm_standbys ${results.options.warmStandbys}; pgbranch's data directory on a reflink XFS. Load average ${results.load[0].toFixed(1)} at the start, ${results.load[1].toFixed(1)} at the end.`,
    `Base backup (first start of pgbranch --source, to ready): ${duration(results.baseBackupMs)}.`,
    '',
    markdownTable(
      [
        'branch',
        'connect to first row',
        'made from',
        'asked for later, waiting for a standby',
        'load average',
      ],
      rows,
    ),
    '',
    markdownTable(
      ['', 'value'],
      [
        [
          'new branch, connect to first row (incl. freshness wait)',
          cell(creations.map((c) => c.ms)),
        ],
        ['source tps away from creations (median of seconds)', steady.median.toFixed(0)],
        ['source tps during creations (mean)', duringTps[0]!.toFixed(0)],
        ['source tps during creations vs away', `${change >= 0 ? '+' : ''}${change.toFixed(1)}%`],
        [
          "pgbench's mean latency away from creations → during them",
          `${results.latency.steady.toFixed(1)} ms → ${results.latency.during.toFixed(1)} ms`,
        ],
      ],
    ),
    '',
  ].join('\n');
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      gb: { type: 'string', default: '1' },
      branches: { type: 'string', default: '5' },
      clients: { type: 'string', default: '4' },
      rate: { type: 'string', default: '0' },
      gap: { type: 'string', default: '10' },
      'warm-standbys': { type: 'string', default: '1' },
      'when-ready': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) return undefined;
  const number = (name: string, value: string, min: number) => {
    const n = Number(value);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number >= ${min}`);
    return n;
  };
  return {
    gb: number('gb', values.gb, 0.01),
    branches: Math.round(number('branches', values.branches, 1)),
    clients: Math.round(number('clients', values.clients, 1)),
    rate: Math.round(number('rate', values.rate, 0)),
    gapMs: number('gap', values.gap, 1) * 1000,
    warmStandbys: Math.round(number('warm-standbys', values['warm-standbys'], 1)),
    whenReady: values['when-ready'],
  };
}

process.exitCode = await runBenchmark({
  name: 'bench:source-branch',
  help: HELP,
  parseOptions,
  run,
  report,
});
