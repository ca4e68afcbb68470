// A PostgreSQL 18 of a test's own (the embedded binaries), reachable over TCP with a password, to be
// stopped, killed and started again while a pgbranch uses it as its upstream.
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import {
  initCluster,
  serverBinaries,
  serverOwner,
  startPostmaster,
  type Postmaster,
} from '../../src/branch/instance/postmaster.js';
import { freePort } from '../../src/upstream/embedded.js';
import { tempDir } from './pgbranch.js';

export interface OwnServer {
  port: number;
  /** The superuser's password (SCRAM over TCP). */
  password: string;
  /** postgres://postgres:...@127.0.0.1:port/database */
  url(database?: string): string;
  /** The running postmaster; undefined while stopped. */
  postmaster(): Postmaster | undefined;
  start(): Promise<void>;
  /** Fast shutdown, or immediate (as a crash: no checkpoint). */
  stop(mode?: 'fast' | 'immediate'): Promise<void>;
  /** SIGKILL to the postmaster; resolves once it has exited. */
  kill(): Promise<void>;
  /** Stops it and removes its files. */
  remove(): Promise<void>;
}

const PASSWORD = 'own-server-password';
const log = pino({ level: 'silent' });

export async function ownServer(settings: Record<string, string> = {}): Promise<OwnServer> {
  const binaries = await serverBinaries();
  const owner = serverOwner();
  const dir = tempDir('own-server');
  const pgDataDir = path.join(dir, 'pg');
  await initCluster({
    initdb: binaries.initdb,
    pgDataDir,
    superuser: 'postgres',
    password: PASSWORD,
    owner,
    log,
  });
  const port = await freePort();
  let running: Postmaster | undefined;
  const start = async () => {
    // After a SIGKILL its backends linger until they notice, and the postmaster refuses to start
    // while they hold its shared memory: tried again until they are gone.
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        running = await startOnce();
        return;
      } catch (error) {
        if (Date.now() > deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
  };
  const startOnce = () =>
    startPostmaster({
      binary: binaries.postgres,
      pgDataDir,
      socketDir: path.join(dir, 'run'),
      port,
      listenTcp: '127.0.0.1',
      settings: { shared_buffers: '32MB', max_connections: '50', ...settings },
      owner,
      log,
    });
  await start();
  const server: OwnServer = {
    port,
    password: PASSWORD,
    url: (database = 'postgres') =>
      `postgres://postgres:${PASSWORD}@127.0.0.1:${port}/${encodeURIComponent(database)}`,
    postmaster: () => running,
    start,
    stop: async (mode = 'fast') => {
      await running?.stop(mode);
      running = undefined;
    },
    kill: async () => {
      if (!running) return;
      process.kill(running.pid, 'SIGKILL');
      await running.exited;
      running = undefined;
    },
    remove: async () => {
      await server.stop('immediate');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}
