// PgBouncer as the baseline pooler: started by the benchmark in transaction mode, pointed at the
// same embedded PostgreSQL through the same private Unix socket pgbranch uses, with clients
// authenticated by SCRAM against the role's verifier copied from pg_authid.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { freePort } from '../../src/upstream/embedded.js';
import type { Cleanup } from './cleanup.js';

export const INSTALL_HINT =
  'PgBouncer is not installed: on Debian or Ubuntu, `apt-get install -y pgbouncer` (any 1.x from 1.14 up works; CI uses 1.18)';

/** PgBouncer refuses to run as root; as root it runs as this account (the server's own). */
const OS_USER = 'postgres';

export interface PgbouncerOptions {
  /** An open superuser connection straight to the server, to read the role's SCRAM verifier. */
  admin: pg.Client;
  user: string;
  /** The role's password, for the check that PgBouncer lets it in. */
  password: string;
  database: string;
  /** The server's private socket directory and port. */
  socketDir: string;
  serverPort: number;
  poolSize: number;
  maxClientConnections: number;
  cleanup: Cleanup;
}

export interface PgbouncerProcess {
  pid: number;
  port: number;
  version: string;
  /** The last lines PgBouncer logged, for error messages. */
  log: () => string;
  stop(): Promise<void>;
}

/** `PgBouncer 1.18.0`, or undefined when it is not installed. */
export function pgbouncerVersion(): string | undefined {
  try {
    return execFileSync('pgbouncer', ['--version'], { encoding: 'utf8' }).split('\n')[0]!.trim();
  } catch {
    return undefined;
  }
}

export async function startPgbouncer(options: PgbouncerOptions): Promise<PgbouncerProcess> {
  const version = pgbouncerVersion();
  if (!version) throw new Error(INSTALL_HINT);
  const { rows } = await options.admin.query<{ verifier: string | null }>(
    'SELECT rolpassword AS verifier FROM pg_authid WHERE rolname = $1',
    [options.user],
  );
  const verifier = rows[0]?.verifier;
  if (!verifier?.startsWith('SCRAM-SHA-256$')) {
    throw new Error(`role ${options.user} has no SCRAM-SHA-256 verifier in pg_authid`);
  }

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbranch-bench-pgbouncer-'));
  options.cleanup.add(`remove ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const ini = path.join(dir, 'pgbouncer.ini');
  const logFile = path.join(dir, 'pgbouncer.log');
  fs.writeFileSync(
    path.join(dir, 'userlist.txt'),
    `"${options.user}" "${verifier}"\n`,
    // Only PgBouncer's account may read the verifier.
    { mode: 0o600 },
  );
  fs.writeFileSync(
    ini,
    [
      '[databases]',
      `${options.database} = host=${options.socketDir} port=${options.serverPort} dbname=${options.database}`,
      '',
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = scram-sha-256',
      `auth_file = ${path.join(dir, 'userlist.txt')}`,
      'pool_mode = transaction',
      `default_pool_size = ${options.poolSize}`,
      'min_pool_size = 0',
      'reserve_pool_size = 0',
      `max_client_conn = ${options.maxClientConnections}`,
      `logfile = ${logFile}`,
      `pidfile = ${path.join(dir, 'pgbouncer.pid')}`,
      // 10,000 logins would otherwise be 10,000 log lines; pgbranch logs at info either way.
      'log_connections = 0',
      'log_disconnections = 0',
      'stats_period = 3600',
      '',
    ].join('\n'),
  );

  const asRoot = os.userInfo().uid === 0;
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', OS_USER], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', OS_USER], { encoding: 'utf8' }).trim());
    fs.chmodSync(dir, 0o755);
    for (const file of [dir, ...fs.readdirSync(dir).map((f) => path.join(dir, f))]) {
      fs.chownSync(file, uid, gid);
    }
  }
  // setpriv, unlike runuser, opens no PAM session: PgBouncer keeps this process's raised open
  // files limit, and its pid is the child's (setpriv execs it).
  const command = asRoot ? 'setpriv' : 'pgbouncer';
  const args = asRoot
    ? [`--reuid=${OS_USER}`, `--regid=${OS_USER}`, '--init-groups', 'pgbouncer', ini]
    : [ini];
  const child = spawn(command, args, {
    // Its own process group: a Ctrl-C reaches it only through the cleanup, as an immediate stop
    // (SIGINT would make it wait for its clients).
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  const log = () => {
    let text = stderr;
    try {
      text += fs.readFileSync(logFile, 'utf8');
    } catch {
      // not written yet
    }
    return text.trim().split('\n').slice(-20).join('\n');
  };
  const stop = options.cleanup.add('stop PgBouncer', () => stopChild(child, exited));
  try {
    await waitForLogin(port, options, exited);
  } catch (error) {
    await stop();
    throw new Error(`PgBouncer did not start: ${(error as Error).message}\n${log()}`, {
      cause: error,
    });
  }
  return { pid: child.pid!, port, version, log, stop };
}

async function waitForLogin(
  port: number,
  options: PgbouncerOptions,
  exited: Promise<number | null>,
): Promise<void> {
  let exitCode: number | null | undefined;
  void exited.then((code) => (exitCode = code ?? -1));
  let lastError: Error | undefined;
  for (const deadline = Date.now() + 10_000; Date.now() < deadline;) {
    if (exitCode !== undefined) throw new Error(`pgbouncer exited with code ${exitCode}`);
    const client = new pg.Client({
      host: '127.0.0.1',
      port,
      user: options.user,
      password: options.password,
      database: options.database,
    });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.query('SELECT 1');
      await client.end();
      return;
    } catch (error) {
      lastError = error as Error;
      await client.end().catch(() => undefined);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  throw new Error(`no login after 10 s: ${lastError?.message ?? 'no answer'}`);
}

async function stopChild(child: ChildProcess, exited: Promise<number | null>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM'); // immediate shutdown
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}
