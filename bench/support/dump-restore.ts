// The way copies are made without branches: pg_dump -Fc | pg_restore into a new database. The
// machine's client tools are PostgreSQL 15 and can't dump a PostgreSQL 18 server, so this runs on
// the machine's PostgreSQL 15 with the same generated data, and says so.
import { spawn } from 'node:child_process';
import pg from 'pg';
import { filesystemType } from '../../src/branch/copy-on-write.js';
import { quoteIdent } from '../../src/branch/database-provider.js';
import type { Cleanup } from './cleanup.js';
import { connectToFirstRow } from './first-row.js';
import { fillParent } from './parent-data.js';
import { bytes, duration, progress } from './report.js';

export const PG15: pg.ClientConfig = {
  host: '127.0.0.1',
  port: 5432,
  user: 'postgres',
  database: 'postgres',
};

export interface DumpRestoreSamples {
  mib: number;
  /** pg_database_size of the source on PostgreSQL 15. */
  bytes: number;
  /** CREATE DATABASE, pg_dump -Fc -Z0 | pg_restore, connect, first row of select 1. */
  dumpRestore: number[];
  /** CREATE DATABASE ... TEMPLATE source STRATEGY FILE_COPY on the same server, for scale. */
  fileCopy: number[];
}

export interface DumpRestoreResult {
  server: string;
  filesystem: string;
  samples: DumpRestoreSamples[];
}

/** Where the baseline server is: its version and the filesystem under its data directory. */
export async function describePg15(): Promise<{ server: string; filesystem: string }> {
  const client = new pg.Client(PG15);
  await client.connect();
  try {
    const { rows } = await client.query<{ version: string; dir: string }>(
      "SELECT current_setting('server_version') AS version, current_setting('data_directory') AS dir",
    );
    return {
      server: `PostgreSQL ${rows[0]!.version} at ${PG15.host}:${PG15.port}`,
      filesystem: filesystemType(rows[0]!.dir),
    };
  } finally {
    await client.end();
  }
}

export async function measureDumpRestore(options: {
  sizes: number[];
  repeat: number;
  cleanup: Cleanup;
}): Promise<DumpRestoreResult> {
  const { sizes, repeat, cleanup } = options;
  const where = await describePg15();
  const admin = new pg.Client(PG15);
  await admin.connect();
  const closeAdmin = cleanup.add('close the PostgreSQL 15 connection', () => admin.end());
  const dropLater = (database: string) =>
    cleanup.add(`drop ${database} on PostgreSQL 15`, () =>
      admin.query(`DROP DATABASE IF EXISTS ${quoteIdent(database)} WITH (FORCE)`),
    );
  try {
    const samples: DumpRestoreSamples[] = [];
    for (const mib of sizes) {
      // Named for this benchmark, so a leftover of an interrupted run is ours to replace.
      const source = `pgbranch_bench_${mib}mb`;
      await admin.query(`DROP DATABASE IF EXISTS ${quoteIdent(source)} WITH (FORCE)`);
      await admin.query(`CREATE DATABASE ${quoteIdent(source)}`);
      const dropSource = dropLater(source);
      const size = await fillParent(PG15, source, mib, (step) =>
        progress(`PostgreSQL 15: generating ${source}: ${step}`),
      );
      progress(`PostgreSQL 15: ${source} is ${bytes(size)}`);
      const result: DumpRestoreSamples = { mib, bytes: size, dumpRestore: [], fileCopy: [] };
      for (let i = 1; i <= repeat; i++) {
        const target = `${source}_restore_${i}`;
        progress(`PostgreSQL 15: pg_dump | pg_restore of ${source}, repetition ${i} of ${repeat}`);
        await admin.query('CHECKPOINT');
        const dropTarget = dropLater(target);
        const started = performance.now();
        await admin.query(`CREATE DATABASE ${quoteIdent(target)}`);
        await dumpIntoRestore(source, target);
        await connectToFirstRow({ ...PG15, database: target });
        result.dumpRestore.push(performance.now() - started);
        progress(`PostgreSQL 15: ${target} ready after ${duration(result.dumpRestore.at(-1)!)}`);
        await dropTarget();
      }
      for (let i = 1; i <= repeat; i++) {
        const target = `${source}_copy_${i}`;
        await admin.query('CHECKPOINT');
        const dropTarget = dropLater(target);
        const started = performance.now();
        await admin.query(
          `CREATE DATABASE ${quoteIdent(target)} TEMPLATE ${quoteIdent(source)} STRATEGY FILE_COPY`,
        );
        result.fileCopy.push(performance.now() - started);
        progress(
          `PostgreSQL 15: CREATE DATABASE from ${source}, repetition ${i} of ${repeat}: ${duration(result.fileCopy.at(-1)!)}`,
        );
        await dropTarget();
      }
      await dropSource();
      samples.push(result);
    }
    return { ...where, samples };
  } finally {
    await closeAdmin();
  }
}

/** pg_dump -Fc -Z0 source | pg_restore -d target: compression only costs time in a pipe. */
async function dumpIntoRestore(source: string, target: string): Promise<void> {
  const server = ['-h', String(PG15.host), '-p', String(PG15.port), '-U', String(PG15.user)];
  const dump = spawn('pg_dump', [...server, '-Fc', '-Z0', '-d', source], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const restore = spawn('pg_restore', [...server, '--exit-on-error', '-d', target], {
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  restore.stdin.on('error', () => undefined);
  dump.stdout.pipe(restore.stdin);
  await Promise.all([finished(dump, 'pg_dump'), finished(restore, 'pg_restore')]);
}

function finished(child: ReturnType<typeof spawn>, name: string): Promise<void> {
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    child.once('error', (error) => reject(new Error(`${name}: ${error.message}`)));
    child.once('close', (code, signal) =>
      code === 0
        ? resolve()
        : reject(new Error(`${name} exited with ${code ?? signal}: ${stderr.trim()}`)),
    );
  });
}
