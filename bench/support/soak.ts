// The soak: one pgbranch (embedded PostgreSQL 18) under pgbench in session and in transaction mode,
// psql and node-postgres clients that come and go, branches created, reset, restored and deleted
// every few seconds through the admin API and the CLI, and the embedded server killed once, for as
// long as asked. It records every error with its moment, pgbranch's RSS over time, and at the end
// whether pgbranch's server connections and the server's backends agree. `npm run soak` runs it
// for 10 minutes; test/soak.test.ts for one.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { connect, psql, queryOnce } from '../../test/support/clients.js';
import { startPgbranch, type PgbranchProcess } from '../../test/support/pgbranch.js';
import { processMemory } from './process-memory.js';
import {
  classify,
  type BranchOperation,
  type ClassifiedError,
  type RestartWindow,
  type SoakError,
} from './soak-errors.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'bin/pgbranch.js');

export interface SoakOptions {
  durationMs: number;
  /** When the embedded server is killed, from the start of the load; undefined: never. */
  restartAtMs: number | undefined;
  /** A branch operation starts this often. */
  operationEveryMs: number;
  /** Every n-th branch operation goes through the CLI (a process of its own), the rest the API. */
  cliEvery: number;
  /** pgbranch's RSS is read this often. */
  rssEveryMs: number;
  /** pgbench clients in each pool mode, and the rate each pgbench is held to (0: as fast as it can). */
  pgbenchClients: number;
  pgbenchRate: number;
  /** psql and node-postgres clients (half each), each connecting and leaving over and over. */
  clientWorkers: number;
  /** Seeds the choice of branch operations and client targets, so that a run can be replayed. */
  seed: number;
  /** How pgbranch runs: from source (tsx) or as `bin/pgbranch.js` (the build when it is current). */
  entry: 'source' | 'bin';
  progress: (message: string) => void;
  /** Called with pgbranch once it runs, so that an interrupted soak can stop it. */
  started?: (proxy: PgbranchProcess) => void;
}

export interface RssSample {
  at: number;
  bytes: number;
  /**
   * From pgbranch's /metrics: V8's heap in use (what a leak of objects would grow), the heap V8
   * has taken from the system, and memory outside it (Buffers).
   */
  heap?: { used: number; total: number; external: number };
}

export interface SoakResult {
  durationMs: number;
  errors: ClassifiedError[];
  operations: BranchOperation[];
  restart: (RestartWindow & { restartedEvent: boolean }) | undefined;
  rss: RssSample[];
  /** pgbench transactions and tps per pool mode, summed over its runs. */
  pgbench: Record<PoolMode, { transactions: number; runs: number; secondsRun: number }>;
  /** Client sessions that did their work, by client. */
  sessions: Record<'psql' | 'node-postgres', number>;
  /** After the load: pgbranch's server connections and the server's client backends, when they agreed. */
  servers: { agreed: boolean; held: number; onServer: number };
  /** pgbranch's log lines of level warn and above. */
  logged: Record<string, unknown>[];
  /** The machine's load average at the start and at the end. */
  load: { start: number[]; end: number[] };
}

type PoolMode = 'session' | 'transaction';

/** The branches the lifecycle actor works on. `s` ones have session-mode clients too. */
const SESSION_BRANCHES = ['app@churn-s0', 'app@churn-s1'];
/**
 * Only transaction-mode clients: a restore point needs its branch quiet, which a session-mode
 * client prevents (55006, as documented), so restore points are taken of these.
 */
const TRANSACTION_BRANCHES = ['app@churn-t0', 'app@churn-t1'];
const POINT = 'soak-point';

/** What an operation does to a branch (looking it up aside). */
type Change = Exclude<BranchOperation['verb'], 'inspect'>;

/** Where the workers go: database and pool mode. The root `app` is a parent, so never in session mode. */
const TARGETS: { database: string; mode: PoolMode }[] = [
  { database: 'app@stable', mode: 'session' },
  { database: 'app@stable', mode: 'transaction' },
  { database: 'app', mode: 'transaction' },
  ...SESSION_BRANCHES.flatMap((database) => [
    { database, mode: 'session' as const },
    { database, mode: 'transaction' as const },
  ]),
  ...TRANSACTION_BRANCHES.map((database) => ({ database, mode: 'transaction' as const })),
];

const WORK_SQL =
  "begin; insert into items (note) values ('soak'); select count(*) from items; commit;";

export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const { progress } = options;
  const random = seeded(options.seed);
  progress(`starting pgbranch (${options.entry})`);
  const proxy = await startPgbranch({ entry: options.entry });
  options.started?.(proxy);
  const children = new Set<ChildProcess>();
  /** Set when the soak ends early (it failed): every loop stops at its next turn. */
  let stopping = false;
  try {
    await prepare(proxy, progress);
    const loadStart = Date.now();
    const now = () => Date.now() - loadStart;
    const done = () => stopping || now() >= options.durationMs;
    const raw: SoakError[] = [];
    const record = (error: SoakError) => {
      raw.push(error);
      progress(
        `error (${error.source}${error.database ? `, ${error.database}` : ''}): ${error.message.split('\n')[0]}`,
      );
    };
    // pgbranch itself must survive everything the soak does to it.
    proxy.child.once('exit', (code, signal) => {
      if (stopping) return;
      const stderr = proxy.stderr().trim().split('\n').slice(-20).join('\n');
      record({
        at: now(),
        source: 'pgbranch',
        message: `pgbranch exited (${code ?? signal}) in the middle of the soak:\n${stderr}`,
        unexpectedAlways: true,
      });
      stopping = true;
    });
    const operations: BranchOperation[] = [];
    const rss: RssSample[] = [];
    const sessions = { psql: 0, 'node-postgres': 0 };
    const pgbench: SoakResult['pgbench'] = {
      session: { transactions: 0, runs: 0, secondsRun: 0 },
      transaction: { transactions: 0, runs: 0, secondsRun: 0 },
    };
    let restart: SoakResult['restart'];
    const load = { start: loadAverage(), end: [] as number[] };

    const sampleRss = async () => {
      const at = now();
      const bytes = processMemory(proxy.child.pid!).rss;
      const heap = await heapOf(proxy);
      rss.push({ at, bytes, ...(heap === undefined ? {} : { heap }) });
      const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
      progress(
        `pgbranch RSS ${mib(bytes)}${heap ? `; heap ${mib(heap.used)} in use of ${mib(heap.total)}, external ${mib(heap.external)}` : ''}`,
      );
    };
    const rssLoop = (async () => {
      for (let next = options.rssEveryMs; next < options.durationMs; next += options.rssEveryMs) {
        await sleep(Math.max(0, next - now()));
        if (stopping) return;
        await sampleRss();
      }
    })();

    /** While the restart window is open, workers that failed wait for it to close before retrying. */
    const windowOpen = () => restart !== undefined && restart.end === undefined;

    const pgbenchLoop = async (mode: PoolMode) => {
      while (!done() && options.durationMs - now() >= 5_000) {
        const seconds = Math.min(60, Math.floor((options.durationMs - now()) / 1000));
        const run = await runPgbench(proxy, mode, options, seconds, children, (line) =>
          record({ at: now(), source: `pgbench ${mode}`, database: 'bench', message: line }),
        );
        pgbench[mode].runs++;
        pgbench[mode].transactions += run.transactions;
        pgbench[mode].secondsRun += run.seconds;
        if (!run.completed) {
          while (windowOpen() && !stopping) await sleep(100);
          await sleep(200);
        }
      }
    };

    const clientLoop = async (worker: number) => {
      const client = worker % 2 === 0 ? 'psql' : 'node-postgres';
      while (!done()) {
        const target = TARGETS[Math.floor(random() * TARGETS.length)]!;
        // A client that can't even start (spawn failing) is an error of the soak's like any other.
        const failure = await (
          client === 'psql' ? psqlSession(proxy, target) : pgSession(proxy, target)
        ).catch((error: Error) => ({ message: `${client} did not run: ${error.message}` }));
        if (failure) {
          record({ at: now(), source: client, database: target.database, ...failure });
          while (windowOpen() && !stopping) await sleep(100);
        } else sessions[client]++;
        await sleep(50 + random() * 100);
      }
    };

    const operationLoop = async () => {
      for (let n = 0; !done(); n++) {
        const started = now();
        const via =
          options.cliEvery > 0 && n % options.cliEvery === options.cliEvery - 1 ? 'cli' : 'api';
        const op = await branchOperation(proxy, random, via, now);
        operations.push(op);
        if (op.error !== undefined) {
          record({
            at: op.end,
            source: `lifecycle ${op.verb} (${op.via})`,
            database: op.branch,
            message: op.error,
          });
        }
        await sleep(Math.max(0, started + options.operationEveryMs - now()));
      }
    };

    const restartLoop = async () => {
      if (options.restartAtMs === undefined) return;
      await sleep(Math.max(0, options.restartAtMs - now()));
      if (done()) return;
      const pid = Number(
        fs.readFileSync(path.join(proxy.dataDir, 'pg', 'postmaster.pid'), 'utf8').split('\n')[0],
      );
      const before = proxy.events('embedded_server_restarted').length;
      restart = { start: now(), end: undefined, restartedEvent: false };
      progress(`killing the embedded PostgreSQL (pid ${pid}) with SIGKILL`);
      process.kill(pid, 'SIGKILL');
      // The window closes at the first query that succeeds through pgbranch after the kill.
      let served = false;
      while (!served && !done()) {
        try {
          await queryOnce(proxy.url('postgres'), 'select 1');
          served = true;
        } catch {
          await sleep(50);
        }
      }
      if (!served) return;
      restart.end = now();
      restart.restartedEvent = proxy.events('embedded_server_restarted').length > before;
      progress(
        `served again ${((restart.end - restart.start) / 1000).toFixed(2)} s after the kill`,
      );
    };

    progress(`load for ${options.durationMs / 1000} s`);
    await Promise.all([
      pgbenchLoop('session'),
      pgbenchLoop('transaction'),
      ...Array.from({ length: options.clientWorkers }, (_, w) => clientLoop(w)),
      operationLoop(),
      restartLoop(),
    ]);
    await sampleRss();
    load.end = loadAverage();
    await rssLoop;
    const servers =
      proxy.child.exitCode === null && proxy.child.signalCode === null
        ? await serversAgree(proxy)
        : { agreed: false, held: 0, onServer: 0 };
    if (!servers.agreed) {
      record({
        at: now(),
        source: 'leak check',
        message: `pgbranch holds ${servers.held} server connections, the server has ${servers.onServer} client backends besides pgbranch's own`,
      });
    }
    return {
      durationMs: options.durationMs,
      logged: proxy.logs.filter((line) => Number(line.level) >= 40),
      errors: raw.map((error) => classify(error, operations, restart)),
      operations,
      restart,
      rss,
      pgbench,
      sessions,
      servers,
      load,
    };
  } finally {
    stopping = true;
    for (const child of children) child.kill('SIGKILL');
    await proxy.stop();
  }
}

/** Tables for pgbench on `bench`, a table `items` on the root `app`, and the branch `app@stable`. */
async function prepare(proxy: PgbranchProcess, progress: (message: string) => void): Promise<void> {
  progress('preparing: pgbench -i on bench, table items on app, branch app@stable');
  for (const sql of ['create database bench', 'create database app']) {
    const result = await psql(proxy.url('postgres'), sql);
    if (result.code !== 0) throw new Error(`${sql}: ${result.stderr}`);
  }
  const init = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    execFile(
      'pgbench',
      ['-i', '-s', '5', '-q', '-d', proxy.url('bench')],
      { timeout: 300_000 },
      (error, _stdout, stderr) =>
        resolve({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stderr }),
    );
  });
  if (init.code !== 0) throw new Error(`pgbench -i: ${init.stderr}`);
  const app = await psql(
    proxy.url('app'),
    'create table items (id bigserial primary key, note text, at timestamptz default now())',
  );
  if (app.code !== 0) throw new Error(`create table items: ${app.stderr}`);
  await queryOnce(proxy.url('app@stable'), 'select count(*) from items');
}

/** One pgbench run: its transactions, how long it ran, whether it ran to its end. */
async function runPgbench(
  proxy: PgbranchProcess,
  mode: PoolMode,
  options: SoakOptions,
  seconds: number,
  children: Set<ChildProcess>,
  onError: (line: string) => void,
): Promise<{ transactions: number; seconds: number; completed: boolean }> {
  const started = Date.now();
  const child = spawn(
    'pgbench',
    [
      '-n',
      '-c',
      String(options.pgbenchClients),
      '-j',
      '2',
      '-T',
      String(seconds),
      ...(options.pgbenchRate > 0 ? ['-R', String(options.pgbenchRate)] : []),
      ...(mode === 'transaction' ? ['-M', 'prepared'] : []),
      '-d',
      proxy.url('bench'),
    ],
    {
      env: {
        ...process.env,
        ...(mode === 'transaction' ? { PGOPTIONS: '-c pgbranch.pool_mode=transaction' } : {}),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  children.add(child);
  let stdout = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  // Each error as it comes, so that it is timed: `pgbench: error: ...` starts one, and lines that
  // follow without a `pgbench:` prefix continue it. `Run was aborted` sums up errors already seen.
  readline.createInterface({ input: child.stderr! }).on('line', (line) => {
    if (line.startsWith('pgbench: error: ') && !/Run was aborted/.test(line)) onError(line);
  });
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  children.delete(child);
  const transactions = Number(
    /^number of transactions actually processed: (\d+)/m.exec(stdout)?.[1] ?? 0,
  );
  return { transactions, seconds: (Date.now() - started) / 1000, completed: code === 0 };
}

/** A psql session: connect, one transaction, leave. Its error, if it failed. */
async function psqlSession(
  proxy: PgbranchProcess,
  target: { database: string; mode: PoolMode },
): Promise<{ message: string } | undefined> {
  const result = await psql(proxy.url(target.database), WORK_SQL, {
    args: ['-v', 'VERBOSITY=verbose'],
    env: target.mode === 'transaction' ? { PGOPTIONS: '-c pgbranch.pool_mode=transaction' } : {},
  });
  if (result.code === 0) return undefined;
  // Notices (a branch made by this connect) come first on stderr; the error is what follows.
  const error = result.stderr
    .split('\n')
    .filter((line) => !line.startsWith('NOTICE:'))
    .join('\n');
  return { message: error || `psql exited ${result.code}` };
}

/** A node-postgres session: connect, one transaction in the extended protocol, leave. */
async function pgSession(
  proxy: PgbranchProcess,
  target: { database: string; mode: PoolMode },
): Promise<{ message: string; code?: string } | undefined> {
  const client = new pg.Client({
    ...proxy.config(target.database),
    ...(target.mode === 'transaction' ? { options: '-c pgbranch.pool_mode=transaction' } : {}),
    connectionTimeoutMillis: 60_000,
  });
  // An error between queries (the connection closed, with or without a FATAL) comes as an event;
  // the next query then fails with a message that only says the client is broken.
  let broken: { code?: string; message: string } | undefined;
  client.on('error', (error) => (broken ??= error as { code?: string; message: string }));
  try {
    await client.connect();
    await client.query('begin');
    await client.query('insert into items (note) values ($1)', ['soak']);
    await client.query('select count(*) from items where id > $1', [0]);
    await client.query('commit');
    return undefined;
  } catch (error) {
    const e = broken ?? (error as { code?: string; message: string });
    return { message: e.message, ...(e.code ? { code: e.code } : {}) };
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * One operation on a branch picked at random: create it when it does not exist (clients also make
 * branches by connecting), else reset or delete it, or for a transaction-only branch take or
 * restore its restore point.
 */
async function branchOperation(
  proxy: PgbranchProcess,
  random: () => number,
  via: 'api' | 'cli',
  now: () => number,
): Promise<BranchOperation> {
  const branches = [...SESSION_BRANCHES, ...TRANSACTION_BRANCHES];
  const branch = branches[Math.floor(random() * branches.length)]!;
  const looked = now();
  const info = await api(proxy, 'GET', `/v1/branches/${encodeURIComponent(branch)}`);
  if (info.status !== 200 && info.status !== 404) {
    return { verb: 'inspect', branch, via: 'api', start: looked, end: now(), error: failure(info) };
  }
  let verb: Change;
  if (info.status === 404) verb = 'create';
  else {
    const points = (info.body as { snapshots: { name: string }[] }).snapshots;
    const choices: Change[] = ['reset', 'delete'];
    if (TRANSACTION_BRANCHES.includes(branch)) {
      choices.push(points.some((p) => p.name === POINT) ? 'restore' : 'snapshot');
    }
    verb = choices[Math.floor(random() * choices.length)]!;
  }
  const start = now();
  const error =
    via === 'api' ? await viaApi(proxy, verb, branch) : await viaCli(proxy, verb, branch);
  return { verb, branch, via, start, end: now(), ...(error === undefined ? {} : { error }) };
}

async function viaApi(
  proxy: PgbranchProcess,
  verb: Change,
  branch: string,
): Promise<string | undefined> {
  const at = `/v1/branches/${encodeURIComponent(branch)}`;
  const answer =
    verb === 'create'
      ? await api(proxy, 'POST', '/v1/branches', { name: branch })
      : verb === 'reset'
        ? await api(proxy, 'POST', `${at}/reset`)
        : verb === 'snapshot'
          ? await api(proxy, 'POST', `${at}/snapshots`, { name: POINT })
          : verb === 'restore'
            ? await api(proxy, 'POST', `${at}/restore`, { snapshot: POINT })
            : await api(proxy, 'DELETE', at);
  return answer.status < 300 ? undefined : failure(answer);
}

/** What the admin API said went wrong: its SQLSTATE and message. */
function failure({ status, body }: { status: number; body: unknown }): string {
  const error = (body as { error?: { code: string; message: string } } | undefined)?.error;
  return error ? `${error.code}: ${error.message}` : `HTTP ${status}`;
}

function viaCli(proxy: PgbranchProcess, verb: Change, branch: string): Promise<string | undefined> {
  const args =
    verb === 'snapshot'
      ? ['branch', 'snapshot', branch, POINT]
      : verb === 'restore'
        ? ['branch', 'restore', branch, POINT]
        : ['branch', verb, branch];
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      {
        cwd: ROOT,
        env: { ...process.env, PGBRANCH_ADMIN_PORT: new URL(proxy.ready.adminUrl!).port },
        timeout: 120_000,
      },
      (error, _stdout, stderr) => resolve(error ? stderr.trim() || error.message : undefined),
    );
  });
}

async function api(
  proxy: PgbranchProcess,
  method: string,
  route: string,
  body?: unknown,
): Promise<{ status: number; body: unknown }> {
  try {
    const response = await fetch(proxy.ready.adminUrl + route, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, body: (await response.json()) as unknown };
  } catch (error) {
    // No answer, or one that is not JSON: an error of the soak's like any other.
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    const why = cause ? `: ${cause.code ?? ''} ${cause.message ?? ''}` : '';
    return {
      status: 0,
      body: { error: { code: 'HTTP', message: `${(error as Error).message}${why}` } },
    };
  }
}

/**
 * Waits (up to 30 s) until the console's SHOW SERVERS and the server's pg_stat_activity name the
 * same backends: a server connection pgbranch lost track of, or one it holds that the server
 * closed, is a leak.
 */
async function serversAgree(proxy: PgbranchProcess): Promise<SoakResult['servers']> {
  const console = await connect(proxy.url('pgbranch'));
  const direct = await connect(proxy.directUrl('postgres'));
  try {
    let held: number[] = [];
    let onServer: number[] = [];
    const deadline = Date.now() + 30_000;
    do {
      held = (await console.query<{ pid: string }>('SHOW SERVERS')).rows
        .map((row) => Number(row.pid))
        .sort();
      onServer = (
        await direct.query<{ pid: number }>(
          `select pid from pg_stat_activity
            where backend_type = 'client backend' and pid <> pg_backend_pid()
              and application_name is distinct from 'pgbranch'`,
        )
      ).rows
        .map((row) => row.pid)
        .sort();
      if (held.join() === onServer.join())
        return { agreed: true, held: held.length, onServer: onServer.length };
      await sleep(200);
    } while (Date.now() < deadline);
    return { agreed: false, held: held.length, onServer: onServer.length };
  } finally {
    await console.end();
    await direct.end();
  }
}

/** pgbranch's V8 heap and external memory, from its /metrics; undefined when they can't be read. */
async function heapOf(proxy: PgbranchProcess): Promise<RssSample['heap']> {
  try {
    const text = await (await fetch(proxy.ready.metricsUrl!)).text();
    const metric = (name: string) =>
      Number(new RegExp(`^pgbranch_nodejs_${name} (\\S+)$`, 'm').exec(text)?.[1]);
    const heap = {
      used: metric('heap_size_used_bytes'),
      total: metric('heap_size_total_bytes'),
      external: metric('external_memory_bytes'),
    };
    return Object.values(heap).every(Number.isFinite) ? heap : undefined;
  } catch {
    return undefined;
  }
}

function loadAverage(): number[] {
  return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);
}

/** mulberry32: a small seeded generator, so that a run's choices can be replayed. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}
