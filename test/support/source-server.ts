// A source for pgbranch to follow, of a test's own: a PostgreSQL cluster (the embedded 18 binaries,
// or Debian's 15) with wal_level replica, a role `replicator` with REPLICATION and a password, and
// initdb's pg_hba.conf, which lets replication in over TCP from loopback with SCRAM. Stopped,
// started, reconfigured and removed by the test.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { expect, vi } from 'vitest';
import {
  serverBinaries,
  serverOwner,
  startPostmaster,
  type Postmaster,
} from '../../src/branch/instance/postmaster.js';
import { freePort } from '../../src/upstream/embedded.js';
import { tempDir } from './pgbranch.js';

export const DEBIAN_15 = '/usr/lib/postgresql/15/bin';
export const REPLICATOR_PASSWORD = 'replicator-secret';
/** The source's superuser postgres: through pgbranch, clients log in with the source's passwords. */
export const SUPERUSER_PASSWORD = 'source-superuser-secret';
const log = pino({ level: 'silent' });

export interface SourceServer {
  port: number;
  pgDataDir: string;
  /** `postgres://replicator:...@127.0.0.1:port/postgres`, or as another role and password. */
  url(user?: string, password?: string): string;
  /** A superuser session on it. */
  connect(database?: string): Promise<pg.Client>;
  /** Replaces pg_hba.conf and reloads the configuration. */
  setHba(text: string): Promise<void>;
  start(): Promise<void>;
  stop(mode?: 'fast' | 'immediate'): Promise<void>;
  /**
   * Stops it and makes another cluster in its place: a new initdb (a new system identifier) at the
   * same port, with the same roles and passwords, started.
   */
  reinitialise(): Promise<void>;
  /**
   * A copy of the cluster as it is now (stopped a moment for it), which `takeOver` later puts in
   * its place: the source stops, and the copy starts at its address and is promoted, a new
   * timeline forking off where the copy was made, as a failover to a standby that lagged does.
   */
  fork(): Promise<{ takeOver: () => Promise<void> }>;
  remove(): Promise<void>;
}

export interface SourceServerOptions {
  /** A directory with initdb and postgres; the embedded PostgreSQL 18 when unset. */
  binDir?: string;
  settings?: Record<string, string>;
}

export async function sourceServer(options: SourceServerOptions = {}): Promise<SourceServer> {
  const binaries = options.binDir
    ? {
        initdb: path.join(options.binDir, 'initdb'),
        postgres: path.join(options.binDir, 'postgres'),
      }
    : await serverBinaries();
  const owner = serverOwner();
  const dir = tempDir('source');
  const pgDataDir = path.join(dir, 'pg');
  const pwfile = path.join(dir, 'pwfile');
  const port = await freePort();
  let running: Postmaster | undefined;
  const init = async () => {
    fs.writeFileSync(pwfile, `${SUPERUSER_PASSWORD}\n`);
    if (owner) fs.chownSync(pwfile, owner.uid, owner.gid);
    await initdb(binaries.initdb, pgDataDir, pwfile, owner);
    fs.rmSync(pwfile);
  };
  const start = async () => {
    running = await startPostmaster({
      binary: binaries.postgres,
      pgDataDir,
      socketDir: path.join(dir, 'run'),
      port,
      listenTcp: '127.0.0.1',
      settings: {
        wal_level: 'replica',
        shared_buffers: '32MB',
        max_connections: '40',
        ...options.settings,
      },
      owner,
      log,
    });
  };
  await init();
  await start();
  const connect = async (database = 'postgres') => {
    const client = new pg.Client({
      host: '127.0.0.1',
      port,
      user: 'postgres',
      password: SUPERUSER_PASSWORD,
      database,
    });
    await client.connect();
    return client;
  };
  const addReplicator = async () => {
    const admin = await connect();
    try {
      await admin.query(
        `CREATE ROLE replicator LOGIN REPLICATION PASSWORD '${REPLICATOR_PASSWORD}'`,
      );
    } finally {
      await admin.end();
    }
  };
  await addReplicator();
  return {
    port,
    pgDataDir,
    url: (user = 'replicator', password = REPLICATOR_PASSWORD) =>
      `postgres://${user}:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`,
    connect,
    setHba: async (text) => {
      const file = path.join(pgDataDir, 'pg_hba.conf');
      fs.writeFileSync(file, text);
      if (owner) fs.chownSync(file, owner.uid, owner.gid);
      const client = await connect();
      try {
        await client.query('SELECT pg_reload_conf()');
      } finally {
        await client.end();
      }
    },
    start,
    stop: async (mode = 'fast') => {
      await running?.stop(mode);
      running = undefined;
    },
    reinitialise: async () => {
      await running?.stop('fast');
      running = undefined;
      fs.rmSync(pgDataDir, { recursive: true, force: true });
      await init();
      await start();
      await addReplicator();
    },
    fork: async () => {
      await running?.stop('fast');
      running = undefined;
      const copy = path.join(dir, 'fork');
      await run('cp', ['-a', pgDataDir, copy]);
      await start();
      return {
        takeOver: async () => {
          await running?.stop('fast');
          running = undefined;
          fs.rmSync(pgDataDir, { recursive: true, force: true });
          fs.renameSync(copy, pgDataDir);
          const signal = path.join(pgDataDir, 'standby.signal');
          fs.writeFileSync(signal, '');
          if (owner) fs.chownSync(signal, owner.uid, owner.gid);
          await start();
          const client = await connect();
          try {
            await client.query('SELECT pg_promote()');
          } finally {
            await client.end();
          }
        },
      };
    },
    remove: async () => {
      await running?.stop('immediate');
      running = undefined;
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

function run(command: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: 'ignore' });
    child.once('error', reject);
    child.once('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`${command} exited with ${code}`)),
    );
  });
}

/** initdb with options every major from 15 on takes. */
async function initdb(
  binary: string,
  pgDataDir: string,
  pwfile: string,
  owner: { uid: number; gid: number } | undefined,
): Promise<void> {
  fs.mkdirSync(pgDataDir, { mode: 0o700 });
  if (owner) fs.chownSync(pgDataDir, owner.uid, owner.gid);
  const output: string[] = [];
  const code = await new Promise<number | null>((resolve, reject) => {
    const child = spawn(
      binary,
      [
        `--pgdata=${pgDataDir}`,
        '--username=postgres',
        `--pwfile=${pwfile}`,
        '--auth-local=trust',
        '--auth-host=scram-sha-256',
        '--encoding=UTF8',
        '--locale=C',
      ],
      { ...owner, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_MESSAGES: 'C' } },
    );
    child.stdout!.on('data', (chunk: Buffer) => output.push(chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => output.push(chunk.toString()));
    child.once('error', reject);
    child.once('exit', resolve);
  });
  if (code !== 0) throw new Error(`initdb failed (exit ${code}):\n${output.join('')}`);
}

/** Inserts a row into app's orders on the source; resolves with its WAL position after the commit. */
export async function commitOrder(source: SourceServer, id: number, note: string): Promise<string> {
  const app = await source.connect('app');
  try {
    await app.query('INSERT INTO orders VALUES ($1, $2)', [id, note]);
    return (await app.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn')).rows[0]!
      .lsn;
  } finally {
    await app.end();
  }
}

/** Waits until the standby that `connect` opens a session on has replayed `lsn`. */
export async function replayedOn(connect: () => Promise<pg.Client>, lsn: string): Promise<void> {
  const client = await connect();
  try {
    await vi.waitFor(
      async () => {
        const { rows } = await client.query<{ done: boolean }>(
          'SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS done',
          [lsn],
        );
        expect(rows[0]!.done).toBe(true);
      },
      { timeout: 60_000, interval: 50 },
    );
  } finally {
    await client.end();
  }
}
