// Starts a real pgbranch process (the CLI, as a user would) on a free port with its own data
// directory, and stops it and removes what it made afterwards.
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const ROOT = path.resolve(import.meta.dirname, '../..');
/**
 * pgbranch as a user runs it: the build in dist/ when it is current (the suite's setup makes it),
 * which starts in a third of the CPU time src/ through tsx takes.
 */
export const PGBRANCH_BIN = path.join(ROOT, 'bin/pgbranch.js');

export interface ReadyEvent {
  host: string;
  port: number;
  /** The Unix socket it listens on too (listen.socket_dir); absent without one. */
  socketPath?: string;
  connectionString: string;
  dataDir?: string;
  upstream: string;
  copyMode: 'clone' | 'copy';
  copyReason: string;
  serverVersion: string;
  /** Where Prometheus metrics are served; absent when they are turned off. */
  metricsUrl?: string;
  /** Where the HTTP admin API is served; absent when it is turned off. */
  adminUrl?: string;
}

export interface ClientSettings {
  host: string;
  port: number;
  user: string;
  password?: string;
  database: string;
}

export interface PgbranchProcess {
  child: ChildProcess;
  ready: ReadyEvent;
  port: number;
  /** pgbranch's data directory (embedded mode). */
  dataDir: string;
  /** The embedded superuser's password. */
  password: string;
  /** Every JSON log line so far. */
  logs: Record<string, unknown>[];
  /** Human output on stderr so far. */
  stderr: () => string;
  /**
   * A connection string through the proxy. `@` and `/` stay as they are, since node-postgres
   * decodes the path with decodeURI; names with `?`, `#` or `%` need a config object for pg.
   */
  url(database: string, user?: string, password?: string): string;
  /** node-postgres settings through the proxy, with the database name given as is. */
  config(database: string, user?: string, password?: string): ClientSettings;
  /** A connection string straight to the embedded server, bypassing the proxy. */
  directUrl(database: string): string;
  /** Log lines with this event name. */
  events(name: string): Record<string, unknown>[];
  /** SIGINT, wait for exit; returns the exit code. */
  stop(): Promise<number | null>;
}

export interface StartOptions {
  /** Reuse a data directory (for restart tests); default a fresh temp dir removed on stop. */
  dataDir?: string;
  keepDataDir?: boolean;
  args?: string[];
  env?: Record<string, string>;
  password?: string;
  timeoutMs?: number;
  /**
   * `bin` (default) runs bin/pgbranch.js as an installed pgbranch does, which runs the build
   * (dist/) when it is current (the suite's setup builds it) and src/ through tsx otherwise;
   * `source` runs src/main.ts through tsx; a path runs that script (a dist/main.js elsewhere, as a
   * Docker image has it) from its directory's parent.
   */
  entry?: 'source' | 'bin' | { script: string };
}

/**
 * An embedded cluster that a first start of pgbranch made (test/support/global-setup.ts makes it
 * once per run): a fresh data directory starts as a copy of it instead of running initdb, which
 * with its fsyncs was most of a start. pgbranch sets the superuser's password and the server's
 * settings at every start, so a copy is what a first start leaves, whatever the options.
 */
export const TEMPLATE_DIR = path.join(
  os.tmpdir(),
  `pgbranch-test-template-${createHash('sha256').update(ROOT).digest('hex').slice(0, 8)}`,
);

/** A new data directory, holding a copy of the template's cluster when the template exists. */
function freshDataDir(): string {
  const dir = tempDir('data');
  const cluster = path.join(TEMPLATE_DIR, 'pg');
  if (fs.existsSync(path.join(cluster, 'PG_VERSION'))) {
    // -a: modes and the server's owner (the postgres user, when the tests run as root).
    execFileSync('cp', ['-a', cluster, path.join(dir, 'pg')]);
  }
  return dir;
}

export function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `pgbranch-${prefix}-`));
  // The embedded server runs as the postgres user, which must reach the data directory.
  fs.chmodSync(dir, 0o755);
  return dir;
}

export async function startPgbranch(options: StartOptions = {}): Promise<PgbranchProcess> {
  const dataDir = options.dataDir ?? freshDataDir();
  const password = options.password ?? 'test-password';
  const child = spawn(
    process.execPath,
    [
      ...(options.entry === 'source'
        ? ['--import', 'tsx', path.join(ROOT, 'src/main.ts')]
        : typeof options.entry === 'object'
          ? [options.entry.script]
          : [PGBRANCH_BIN]),
      '--port',
      '0',
      '--data-dir',
      dataDir,
      '--log-format',
      'json',
      '--metrics-port',
      '0',
      '--admin-port',
      '0',
      ...(options.args ?? []),
    ],
    {
      cwd:
        typeof options.entry === 'object' ? path.dirname(path.dirname(options.entry.script)) : ROOT,
      env: { ...process.env, PGBRANCH_PASSWORD: password, ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const logs: Record<string, unknown>[] = [];
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const lines = readline.createInterface({ input: child.stdout! });
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  const removeDataDir = () => {
    if (!options.dataDir && !options.keepDataDir) {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  };
  const starting = new Promise<ReadyEvent>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`pgbranch did not become ready:\n${stderr}`)),
      options.timeoutMs ?? 60_000,
    );
    lines.on('line', (line) => {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      logs.push(entry);
      if (entry.event === 'ready') {
        clearTimeout(timer);
        resolve(entry as unknown as ReadyEvent);
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`pgbranch exited with ${code} before it was ready:\n${stderr}`));
    });
  });
  // A start refused (what some tests check) leaves no data directory of this file's making.
  const ready = await starting.catch(async (error: unknown) => {
    if (child.exitCode === null) child.kill('SIGINT');
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(timer);
    removeDataDir();
    throw error;
  });
  await bannerWritten(() => stderr);
  let stopped: Promise<number | null> | undefined;
  return {
    child,
    ready,
    port: ready.port,
    dataDir,
    password,
    logs,
    stderr: () => stderr,
    url: (database, user = 'postgres', pw = user === 'postgres' ? password : undefined) =>
      `postgres://${encodeURIComponent(user)}${pw === undefined ? '' : `:${encodeURIComponent(pw)}`}@127.0.0.1:${ready.port}/${encodeDatabase(database)}`,
    config: (database, user = 'postgres', pw = user === 'postgres' ? password : undefined) => ({
      host: '127.0.0.1',
      port: ready.port,
      user,
      password: pw,
      database,
    }),
    directUrl: (database) => {
      const pid = fs.readFileSync(path.join(dataDir, 'pg', 'postmaster.pid'), 'utf8').split('\n');
      return `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${pid[3]}/${encodeDatabase(database)}`;
    },
    events: (name) => logs.filter((entry) => entry.event === name),
    stop: () =>
      (stopped ??= (async () => {
        if (child.exitCode === null) child.kill('SIGINT');
        const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
        const code = await exited;
        clearTimeout(timer);
        removeDataDir();
        return code;
      })()),
  };
}

function encodeDatabase(name: string): string {
  return encodeURIComponent(name).replace(/%40/g, '@').replace(/%2F/g, '/');
}

/**
 * Waits for the human banner on stderr. pgbranch writes it just before the ready line on stdout,
 * but the two are separate pipes and either may be read first.
 */
export async function bannerWritten(stderr: () => string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!/\n {2}branches: .*\n/.test(stderr())) {
    if (Date.now() > deadline) throw new Error(`ready, but no banner on stderr:\n${stderr()}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** What a run of the CLI printed, and its exit code (null when a signal ended it). */
export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The CLI as a user runs it (`npx pgbranch ...`), with `env` saying where pgbranch is. */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [PGBRANCH_BIN, ...args],
      { cwd: ROOT, env: { ...process.env, ...env }, timeout: 120_000 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}
