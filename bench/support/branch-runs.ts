// Branches of each parent on the embedded PostgreSQL 18, in one copy mode: through pgbranch
// (connect to parent@bench-N, first row) and, side by side, the same CREATE DATABASE run directly
// on the server, so that the difference is what the proxy adds.
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { quoteIdent } from '../../src/branch/database-provider.js';
import { physicalName } from '../../src/branch/names.js';
import type { PgbranchProcess } from '../../test/support/pgbranch.js';
import { freeBytes, settledFreeBytes } from './branch-disk.js';
import { connectToFirstRow } from './first-row.js';
import { progress } from './report.js';

export type Mode = 'clone' | 'copy';

export interface Parent {
  name: string;
  /** The size asked for. */
  mib: number;
  /** pg_database_size on the PostgreSQL 18 server. */
  bytes: number;
}

export interface ModeSamples {
  /** Through pgbranch: before connecting to parent@bench-N, to the first row of select 1. */
  proxy: number[];
  /** Directly on the server: CREATE DATABASE ... TEMPLATE parent STRATEGY FILE_COPY. */
  create: number[];
  /** Directly on the server, after that CREATE DATABASE: connect to the new database, first row. */
  connect: number[];
  /** How much free space the data directory's filesystem lost to one branch made by pgbranch. */
  diskUsed: number[];
  /** From pgbranch's branch_created log: its CREATE DATABASE (cloneMs) ... */
  proxyCreate: number[];
  /** ... and the checks and drain around it (totalMs - cloneMs). */
  proxyBookkeeping: number[];
}

/** The embedded server itself (not the proxy): 127.0.0.1, SCRAM, port from postmaster.pid. */
export function directConfig(proxy: PgbranchProcess): pg.ClientConfig {
  const pgDataDir = proxy.ready.dataDir ?? path.join(proxy.dataDir, 'pg');
  const lines = fs.readFileSync(path.join(pgDataDir, 'postmaster.pid'), 'utf8').split('\n');
  const port = Number(lines[3]);
  if (!Number.isInteger(port) || port <= 0) {
    throw new Error(`no port on line 4 of ${pgDataDir}/postmaster.pid`);
  }
  return {
    host: '127.0.0.1',
    port,
    user: 'postgres',
    password: proxy.password,
    database: 'postgres',
  };
}

let branchNumber = 0;

export async function measureBranching(options: {
  proxy: PgbranchProcess;
  mode: Mode;
  parents: Parent[];
  repeat: number;
}): Promise<ModeSamples[]> {
  const { proxy, mode, parents, repeat } = options;
  const server = directConfig(proxy);
  const admin = new pg.Client(server);
  await admin.connect();
  try {
    await admin.query(`SET file_copy_method = ${mode}`);
    const free = () => freeBytes(proxy.dataDir);
    const viaProxy = async (parent: string) => {
      const database = physicalName(parent, `bench-${++branchNumber}`);
      await admin.query('CHECKPOINT');
      const before = await settledFreeBytes(proxy.dataDir);
      const ms = await connectToFirstRow({ connectionString: proxy.url(database) });
      const used = before - free();
      const created = await branchCreated(proxy, database);
      await admin.query(`DROP DATABASE ${quoteIdent(database)} WITH (FORCE)`);
      return { ms, used, create: created.cloneMs, bookkeeping: created.totalMs - created.cloneMs };
    };
    const onServer = async (parent: string) => {
      const database = physicalName(parent, `direct-${++branchNumber}`);
      await admin.query('CHECKPOINT');
      const started = performance.now();
      await admin.query(
        `CREATE DATABASE ${quoteIdent(database)} TEMPLATE ${quoteIdent(parent)} STRATEGY FILE_COPY`,
      );
      const create = performance.now() - started;
      const connect = await connectToFirstRow({ ...server, database });
      await admin.query(`DROP DATABASE ${quoteIdent(database)} WITH (FORCE)`);
      return { create, connect };
    };

    // The first branch of a process pays for warming up (pools, code paths); it is not counted.
    await viaProxy(parents[0]!.name);
    await onServer(parents[0]!.name);

    const results: ModeSamples[] = [];
    for (const parent of parents) {
      const samples: ModeSamples = {
        proxy: [],
        create: [],
        connect: [],
        diskUsed: [],
        proxyCreate: [],
        proxyBookkeeping: [],
      };
      for (let i = 0; i < repeat; i++) {
        // Alternate which goes first, so neither always follows the other's checkpoint and drop.
        const order = i % 2 === 0 ? ['proxy', 'server'] : ['server', 'proxy'];
        for (const step of order) {
          if (step === 'proxy') {
            const { ms, used, create, bookkeeping } = await viaProxy(parent.name);
            samples.proxy.push(ms);
            samples.diskUsed.push(used);
            samples.proxyCreate.push(create);
            samples.proxyBookkeeping.push(bookkeeping);
          } else {
            const { create, connect } = await onServer(parent.name);
            samples.create.push(create);
            samples.connect.push(connect);
          }
        }
        const ms = (list: number[]) => `${Math.round(list.at(-1)!)} ms`;
        progress(
          `${mode}: ${parent.name}, repetition ${i + 1} of ${repeat}: via pgbranch ${ms(samples.proxy)} (its CREATE DATABASE ${ms(samples.proxyCreate)}); directly, CREATE DATABASE ${ms(samples.create)}, then connect ${ms(samples.connect)}`,
        );
      }
      results.push(samples);
    }
    return results;
  } finally {
    await admin.end().catch(() => undefined);
  }
}

/** pgbranch's log line for a branch it made; it may trail the client's first row by a moment. */
async function branchCreated(
  proxy: PgbranchProcess,
  database: string,
): Promise<{ cloneMs: number; totalMs: number }> {
  for (let waited = 0; waited < 2000; waited += 10) {
    const event = proxy.events('branch_created').find((e) => e.database === database);
    if (event) return { cloneMs: Number(event.cloneMs), totalMs: Number(event.totalMs) };
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`pgbranch logged no branch_created for ${database}`);
}
