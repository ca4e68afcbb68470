// A parent cluster of a given size for branching under load: database app holding pgbench's tables
// at the scale that makes it that size, logged (a branch must copy real data), generated as fast as
// this machine allows: pgbench creates the tables (-I dt), pgbench_accounts is filled on the server
// in chunks by two sessions at once with progress, then primary keys and VACUUM (ANALYZE) as
// pgbench's p and v steps do. During the fill, full_page_writes is off and checkpoints are rare
// (ALTER SYSTEM, reset afterwards), so that the WAL is about the data once, not twice.
import { spawn } from 'node:child_process';
import pg from 'pg';
import { quoteIdent } from '../../src/branch/database-provider.js';
import { bytes, progress } from './report.js';

/** pgbench_accounts heap and primary key per unit of scale (100,000 rows); measured on PostgreSQL 18. */
const BYTES_PER_SCALE = 15.0 * 2 ** 20;
const ROWS_PER_SCALE = 100_000;
/** Scale units per INSERT: about 150 MB, a progress line every few seconds. */
const SCALE_PER_CHUNK = 10;
const FILLERS = 2;

export interface PgbenchCluster {
  database: string;
  scale: number;
  /** pg_database_size of app. */
  databaseBytes: number;
  /** How long generating took, in ms. */
  ms: number;
}

/** The scale at which pgbench's tables come to `gb` (1 GB = 1000 MiB, as the other table's sizes). */
function scaleFor(gb: number): number {
  return Math.max(1, Math.round((gb * 1000 * 2 ** 20) / BYTES_PER_SCALE));
}

export async function generatePgbenchCluster(
  server: pg.ClientConfig,
  database: string,
  gb: number,
): Promise<PgbenchCluster> {
  const started = performance.now();
  const scale = scaleFor(gb);
  const say = (step: string) =>
    progress(`generating ${database} (${gb} GB, scale ${scale}): ${step}`);
  const admin = new pg.Client(server);
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${quoteIdent(database)}`);
    for (const sql of [
      'ALTER SYSTEM SET full_page_writes = off',
      "ALTER SYSTEM SET max_wal_size = '4GB'",
      "ALTER SYSTEM SET checkpoint_timeout = '1h'",
      'SELECT pg_reload_conf()',
    ]) {
      await admin.query(sql);
    }
    say('tables (pgbench -i -I dt)');
    await pgbenchInit(server, database, ['-I', 'dt', '-s', String(scale)]);
    const db = { ...server, database };
    const first = new pg.Client(db);
    await first.connect();
    try {
      await first.query(
        'INSERT INTO pgbench_branches (bid, bbalance) SELECT bid, 0 FROM generate_series(1, $1::int) AS bid',
        [scale],
      );
      await first.query(
        'INSERT INTO pgbench_tellers (tid, bid, tbalance) SELECT tid, (tid - 1) / 10 + 1, 0 FROM generate_series(1, $1::int) AS tid',
        [scale * 10],
      );
    } finally {
      await first.end();
    }
    await fillAccounts(db, scale, say);
    say('primary keys (as pgbench -I p)');
    const keys = new pg.Client(db);
    await keys.connect();
    try {
      await keys.query("SET maintenance_work_mem = '1GB'");
      for (const [table, column] of [
        ['pgbench_branches', 'bid'],
        ['pgbench_tellers', 'tid'],
        ['pgbench_accounts', 'aid'],
      ] as const) {
        await keys.query(`ALTER TABLE ${table} ADD PRIMARY KEY (${column})`);
      }
      say('VACUUM (ANALYZE) (as pgbench -I v)');
      await keys.query(
        'VACUUM (ANALYZE) pgbench_branches, pgbench_tellers, pgbench_accounts, pgbench_history',
      );
    } finally {
      await keys.end();
    }
    for (const sql of [
      'ALTER SYSTEM RESET full_page_writes',
      'ALTER SYSTEM RESET max_wal_size',
      'ALTER SYSTEM RESET checkpoint_timeout',
      'SELECT pg_reload_conf()',
    ]) {
      await admin.query(sql);
    }
    say('CHECKPOINT');
    await admin.query('CHECKPOINT');
    const { rows } = await admin.query<{ bytes: string }>('SELECT pg_database_size($1) AS bytes', [
      database,
    ]);
    const databaseBytes = Number(rows[0]!.bytes);
    const ms = performance.now() - started;
    say(`done: ${bytes(databaseBytes)} in ${(ms / 1000).toFixed(0)} s`);
    return { database, scale, databaseBytes, ms };
  } finally {
    await admin.end();
  }
}

/** pgbench_accounts as pgbench's server-side generation (-I G) fills it, in chunks, two at a time. */
async function fillAccounts(
  db: pg.ClientConfig,
  scale: number,
  say: (step: string) => void,
): Promise<void> {
  const chunks: [number, number][] = [];
  for (let from = 1; from <= scale; from += SCALE_PER_CHUNK) {
    const to = Math.min(scale, from + SCALE_PER_CHUNK - 1);
    chunks.push([(from - 1) * ROWS_PER_SCALE + 1, to * ROWS_PER_SCALE]);
  }
  const rows = scale * ROWS_PER_SCALE;
  const started = performance.now();
  let done = 0;
  let next = 0;
  const filler = async () => {
    const client = new pg.Client(db);
    await client.connect();
    try {
      await client.query('SET synchronous_commit = off');
      while (next < chunks.length) {
        const [first, last] = chunks[next++]!;
        await client.query(
          `INSERT INTO pgbench_accounts (aid, bid, abalance, filler)
           SELECT aid, (aid - 1) / ${ROWS_PER_SCALE} + 1, 0, '' FROM generate_series($1::int, $2::int) AS aid`,
          [first, last],
        );
        done += last - first + 1;
        const seconds = (performance.now() - started) / 1000;
        const rate = done / seconds;
        say(
          `pgbench_accounts ${Math.round((100 * done) / rows)}% (${done.toLocaleString('en')} of ${rows.toLocaleString('en')} rows, ${Math.round(rate).toLocaleString('en')} rows/s, about ${Math.ceil((rows - done) / rate)} s left)`,
        );
      }
    } finally {
      await client.end();
    }
  };
  await Promise.all(Array.from({ length: Math.min(FILLERS, chunks.length) }, filler));
}

function pgbenchInit(server: pg.ClientConfig, database: string, args: string[]): Promise<void> {
  const child = spawn(
    'pgbench',
    [
      '-h',
      String(server.host),
      '-p',
      String(server.port),
      '-U',
      String(server.user),
      '-i',
      ...args,
      database,
    ],
    {
      env: { ...process.env, PGPASSWORD: String(server.password), PGSSLMODE: 'disable' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  return new Promise((resolve, reject) => {
    child.once('error', (error) => reject(new Error(`pgbench: ${error.message}`)));
    child.once('close', (code) =>
      code === 0 ? resolve() : reject(new Error(`pgbench -i ${args.join(' ')} failed:\n${output}`)),
    );
  });
}
