// The SQL admin console: a client that logs in to the database `pgbranch` talks to pgbranch itself,
// in the spirit of PgBouncer's console. After login this owns the client's socket: it reads
// frames, runs console commands from simple Query messages, and answers in the real protocol.
import { parentName } from '../lifecycle/model.js';
import type net from 'node:net';
import type { Logger } from 'pino';
import { branchName, parseConnectTarget, physicalName, ROOT_BRANCH } from '../branch/names.js';
import { PgError, sqlstateOf } from '../errors.js';
import type { Lifecycle } from '../lifecycle/model.js';
import type { PoolManager } from '../pool/pool.js';
import type { ClientRegistry } from '../proxy/clients.js';
import {
  commandComplete,
  dataRow,
  emptyQueryResponse,
  errorResponse,
  noticeResponse,
  parameterStatus,
  readyForQuery,
  rowDescription,
} from '../wire/backend.js';
import { TERMINATE } from '../wire/frames.js';
import { parseCommands, type ConsoleCommand } from './console-commands.js';
import {
  branchesTable,
  clientsTable,
  helpTable,
  poolsTable,
  serversTable,
  snapshotsTable,
  versionTable,
  type Table,
} from './console-rows.js';

/** The database name that reaches the console instead of a branch. */
export const CONSOLE_DATABASE = 'pgbranch';

/** A query string longer than this is no console command. */
const MAX_MESSAGE = 1024 * 1024;
/** A command running longer than this tells the client it is still at work. */
const PROGRESS_AFTER_MS = 1000;

export interface ConsoleDeps {
  lifecycle: Lifecycle;
  pools: PoolManager;
  clients: ClientRegistry;
  log: Logger;
  /** Roles besides superusers that may use the console (admin.users), as configured now. */
  adminUsers(): ReadonlySet<string>;
  /** Whether a role is a superuser on the server; superusers may always use the console. */
  isSuperuser(user: string): Promise<boolean>;
  /** Reads the configuration again and applies what can be applied while running. */
  reload(): Promise<{ applied: string[]; needRestart: string[] }>;
  /** Reported to clients as server_version: psql and drivers read it. */
  serverVersion: string;
  /** How long PAUSE waits for server connections in use to come back (branch.drain_timeout). */
  pauseTimeoutMs(): number;
}

/**
 * Serves a logged-in client (AuthenticationOk already sent) as the console until it leaves.
 * `pending` is what arrived after the last login message. Throws a FATAL 42501 PgError, before
 * anything else is written, when the role may not use the console.
 */
export async function serveConsole(
  socket: net.Socket,
  pending: Buffer,
  user: string,
  deps: ConsoleDeps,
): Promise<void> {
  if (!(await mayUseConsole(user, deps))) {
    throw new PgError(
      '42501',
      `permission denied for the pgbranch console: role "${user}" is neither a superuser nor listed in admin.users`,
      undefined,
      'Connect as a superuser, or add the role to admin.users (PGBRANCH_ADMIN_USERS) and RELOAD.',
    );
  }
  socket.write(greeting(deps.serverVersion));
  const started = Date.now();
  // Listed in SHOW CLIENTS like everyone else; it holds no branch, so no drain ever reaches it.
  const client = deps.clients.add(socket, {
    user,
    requested: CONSOLE_DATABASE,
    database: CONSOLE_DATABASE,
    mode: 'console',
    pinned: () => false,
    serverPid: () => undefined,
    serverOpenedAt: () => undefined,
    waiting: () => false,
    terminate: (error) => socket.end(errorResponse(error)),
  });
  deps.log.info(
    { event: 'client_connected', user, branch: CONSOLE_DATABASE, console: true },
    `client ${user} connected to the console`,
  );
  try {
    await serveCommands(socket, pending, user, deps);
  } finally {
    deps.clients.delete(client);
    deps.log.info(
      {
        event: 'client_disconnected',
        user,
        database: CONSOLE_DATABASE,
        durationMs: Date.now() - started,
      },
      `client ${user} disconnected from the console`,
    );
  }
}

async function serveCommands(
  socket: net.Socket,
  pending: Buffer,
  user: string,
  deps: ConsoleDeps,
): Promise<void> {
  const frames = new FrameReader(socket, pending);
  const session = new ConsoleSession(socket, user, deps);
  /** After an error in an extended-protocol batch, everything up to its Sync is skipped. */
  let skipToSync = false;
  for (;;) {
    const frame = await frames.next();
    if (!frame || frame.type === TERMINATE) {
      socket.end();
      return;
    }
    const type = String.fromCharCode(frame.type);
    if (type === 'S') {
      skipToSync = false;
      session.write(readyForQuery('I'));
    } else if (skipToSync) {
      continue;
    } else if (type === 'Q') {
      await session.query(frame.body.toString('utf8', 0, Math.max(0, frame.body.length - 1)));
      session.write(readyForQuery('I'));
    } else if ('PBDECH'.includes(type)) {
      if (type === 'H') continue;
      session.write(errorResponse(notSupported('the extended query protocol')));
      skipToSync = true;
    } else if (type === 'F') {
      session.write(errorResponse(notSupported('function calls')), readyForQuery('I'));
    } else if ('dcf'.includes(type)) {
      // COPY data outside a COPY, as PostgreSQL does: ignored.
      continue;
    } else {
      throw new PgError('08P01', `invalid frontend message type ${frame.type}`);
    }
  }
}

async function mayUseConsole(user: string, deps: ConsoleDeps): Promise<boolean> {
  return deps.adminUsers().has(user) || (await deps.isSuperuser(user));
}

/** The parameters psql and drivers expect at login. No BackendKeyData: nothing here to cancel. */
function greeting(serverVersion: string): Buffer {
  const parameters: [string, string][] = [
    ['server_version', serverVersion],
    ['server_encoding', 'UTF8'],
    ['client_encoding', 'UTF8'],
    ['DateStyle', 'ISO, MDY'],
    ['TimeZone', 'UTC'],
    ['integer_datetimes', 'on'],
    ['standard_conforming_strings', 'on'],
    ['application_name', ''],
  ];
  return Buffer.concat([
    ...parameters.map(([name, value]) => parameterStatus(name, value)),
    readyForQuery('I'),
  ]);
}

class ConsoleSession {
  constructor(
    private readonly socket: net.Socket,
    private readonly user: string,
    private readonly deps: ConsoleDeps,
  ) {}

  write(...messages: Buffer[]): void {
    // A client that left while a command ran: the command finished anyway, nobody to tell.
    if (this.socket.writable) this.socket.write(Buffer.concat(messages));
  }

  /** Runs a Query message's commands in order, up to the first that fails. */
  async query(text: string): Promise<void> {
    let commands: ConsoleCommand[];
    try {
      commands = parseCommands(text);
    } catch (error) {
      this.write(errorResponse(asError(error, this.deps.log)));
      return;
    }
    if (commands.length === 0) {
      this.write(emptyQueryResponse());
      return;
    }
    for (const command of commands) {
      try {
        await this.run(command);
      } catch (error) {
        this.write(errorResponse(asError(error, this.deps.log)));
        return;
      }
    }
  }

  private async run(command: ConsoleCommand): Promise<void> {
    const { lifecycle } = this.deps;
    switch (command.kind) {
      case 'show':
        return this.table(await this.show(command));
      case 'create': {
        const { name, parent, snapshot, ttlMs, expiresAt } = command;
        const result = await this.slow('CREATE BRANCH', name, () =>
          lifecycle.create({ name, parent, snapshot, ttlMs, expiresAt }),
        );
        const b = result.branch;
        const from = `${parentName(b) ?? 'its parent'}${b.fromSnapshot ? ` (restore point "${b.fromSnapshot}")` : ''}`;
        this.done(
          'CREATE BRANCH',
          result.created
            ? `created branch "${b.name}" from ${from} in ${result.ms} ms (${b.clone ? 'clone' : 'copy'})`
            : `branch "${b.name}" exists already, made from ${from}`,
        );
        return;
      }
      case 'reset': {
        const b = await this.slow('RESET BRANCH', command.name, () =>
          lifecycle.reset(command.name),
        );
        this.done(
          'RESET BRANCH',
          `branch "${b.name}" is a fresh copy of ${parentName(b) ?? 'its parent'}`,
        );
        return;
      }
      case 'drop': {
        const result = await this.slow('DROP BRANCH', command.name, () =>
          lifecycle.delete(command.name, { cascade: command.cascade }),
        );
        this.done('DROP BRANCH', `dropped ${result.deleted.map((n) => `"${n}"`).join(', ')}`);
        return;
      }
      case 'snapshot': {
        const s = await this.slow('SNAPSHOT BRANCH', command.name, () =>
          lifecycle.snapshot(command.name, command.snapshot),
        );
        this.done('SNAPSHOT BRANCH', `saved "${s.of}" as restore point "${s.name}"`);
        return;
      }
      case 'restore': {
        const b = await this.slow('RESTORE BRANCH', command.name, () =>
          lifecycle.restore(command.name, command.snapshot),
        );
        this.done('RESTORE BRANCH', `branch "${b.name}" is as it was at "${command.snapshot}"`);
        return;
      }
      case 'drop-snapshot': {
        await this.slow('DROP SNAPSHOT', command.name, () =>
          lifecycle.deleteSnapshot(command.name, command.snapshot),
        );
        this.done(
          'DROP SNAPSHOT',
          `dropped restore point "${command.snapshot}" of "${command.name}"`,
        );
        return;
      }
      case 'protect': {
        const tag = command.on ? 'PROTECT BRANCH' : 'UNPROTECT BRANCH';
        const b = await lifecycle.protect(command.name, command.on);
        this.done(tag, `branch "${b.name}" is ${b.protected ? 'protected' : 'not protected'}`);
        return;
      }
      case 'pause':
        return this.pause(command.database);
      case 'resume':
        return this.resume(command.database);
      case 'reload': {
        this.audit('RELOAD');
        const { applied, needRestart } = await this.deps.reload();
        this.done(
          'RELOAD',
          `configuration reloaded: ${applied.length > 0 ? `applied ${applied.join(', ')}` : 'nothing changed that applies while running'}${needRestart.length > 0 ? `; restart pgbranch for ${needRestart.join(', ')}` : ''}`,
        );
        return;
      }
    }
  }

  private async show(command: Extract<ConsoleCommand, { kind: 'show' }>): Promise<Table> {
    const { lifecycle, pools, clients } = this.deps;
    switch (command.what) {
      case 'branches':
        // `app@x` is one branch (3D000 if it does not exist); `app` every branch of app.
        return branchesTable(
          command.of?.includes('@')
            ? [await lifecycle.get(command.of)]
            : await lifecycle.list(command.of),
        );
      case 'snapshots':
        return snapshotsTable(await this.snapshots(command.of));
      case 'pools':
        return poolsTable(pools.list(), new Set(pools.pausedDatabases()));
      case 'clients':
        return clientsTable(clients.all());
      case 'servers':
        return serversTable(pools.list(), clients.all());
      case 'help':
        return helpTable();
      case 'version':
        return versionTable();
    }
  }

  private table({ columns, rows }: Table): void {
    this.write(
      rowDescription(columns),
      ...rows.map(dataRow),
      commandComplete(`SHOW ${rows.length}`),
    );
  }

  /** A command that changed something: what happened as a notice, and its tag. */
  private done(tag: string, what: string): void {
    this.write(noticeResponse(`pgbranch: ${what}`), commandComplete(tag));
  }

  /** Runs a lifecycle operation, logged with who asked, with a notice if it takes a while. */
  private async slow<T>(tag: string, name: string, work: () => Promise<T>): Promise<T> {
    this.audit(tag, name);
    const timer = setTimeout(
      () =>
        this.write(
          noticeResponse(
            `pgbranch: ${tag} "${name}" is still running`,
            'It drains the clients involved first; it completes even if this session ends.',
          ),
        ),
      PROGRESS_AFTER_MS,
    );
    try {
      return await work();
    } finally {
      clearTimeout(timer);
    }
  }

  private audit(command: string, target?: string): void {
    this.deps.log.info(
      { event: 'console_command', user: this.user, command, target },
      `console: ${this.user} ran ${command}${target ? ` ${target}` : ''}`,
    );
  }

  /** Restore points of every branch, of one database (`app`), or of one branch (`app@x`). */
  private async snapshots(of: string | undefined) {
    if (of === undefined) return (await this.deps.lifecycle.list()).flatMap((b) => b.snapshots);
    const { target } = parseConnectTarget(of);
    const all = (await this.deps.lifecycle.list(target.root)).flatMap((b) => b.snapshots);
    // `app` alone means the whole database; `app@main` the root's own restore points.
    if (!of.includes('@')) return all;
    const name = branchName(target.root, target.branch ?? ROOT_BRANCH);
    return all.filter((s) => s.of === name);
  }

  /**
   * New checkouts of the database wait; running transactions get pauseTimeoutMs to finish. Server
   * connections held for whole sessions stay in use, and the notice says how many.
   */
  private async pause(name: string | undefined): Promise<void> {
    this.audit('PAUSE', name);
    const { pools } = this.deps;
    const databases =
      name === undefined
        ? [...new Set([...pools.list()].map((p) => p.database))]
        : [databaseOf(name)];
    const timeoutMs = this.deps.pauseTimeoutMs();
    const busy = await Promise.all(databases.map((db) => pools.pauseByOperator(db, timeoutMs)));
    const notices = databases.map((db, i) =>
      noticeResponse(
        busy[i] === undefined
          ? `pgbranch: "${db}" was paused already`
          : busy[i] === 0
            ? `pgbranch: paused "${db}"`
            : `pgbranch: paused "${db}"; ${busy[i]} server connection${busy[i] === 1 ? ' is' : 's are'} still in use after ${timeoutMs} ms`,
        !busy[i]
          ? undefined
          : 'Session-mode clients hold theirs until they disconnect; new transactions wait until RESUME.',
      ),
    );
    if (databases.length === 0) notices.push(noticeResponse('pgbranch: no pools to pause'));
    this.write(...notices, commandComplete('PAUSE'));
  }

  private resume(name: string | undefined): void {
    this.audit('RESUME', name);
    const { pools } = this.deps;
    const databases = name === undefined ? [...pools.operatorPaused()] : [databaseOf(name)];
    const notices: Buffer[] = [];
    for (const db of databases) {
      notices.push(
        noticeResponse(
          pools.resumeByOperator(db)
            ? `pgbranch: resumed "${db}"`
            : `pgbranch: "${db}" was not paused with PAUSE`,
        ),
      );
    }
    if (databases.length === 0) notices.push(noticeResponse('pgbranch: nothing was paused'));
    this.write(...notices, commandComplete('RESUME'));
  }
}

/** The server database a name as clients write it (`app@feature-x`) is served from. */
function databaseOf(name: string): string {
  const { target } = parseConnectTarget(name);
  return physicalName(target.root, target.branch);
}

function notSupported(what: string): PgError {
  return new PgError(
    '0A000',
    `pgbranch's console does not support ${what}`,
    undefined,
    'Send console commands as simple queries (psql does; node-postgres does for queries without parameters).',
    'ERROR',
  );
}

/** Every failure of a command reaches the client as an ERROR: the session goes on. */
function asError(error: unknown, log: Logger): PgError {
  const e = error as { message?: string; detail?: string; hint?: string };
  const code = sqlstateOf(error);
  if (code !== undefined) return new PgError(code, e.message ?? 'error', e.detail, e.hint, 'ERROR');
  log.error({ err: error }, 'console command failed unexpectedly');
  return new PgError(
    'XX000',
    `pgbranch internal error: ${error instanceof Error ? error.message : String(error)}`,
    undefined,
    undefined,
    'ERROR',
  );
}

/** Typed messages from the client's socket, in order, with bounded buffering. */
class FrameReader {
  private buffer: Buffer;
  private wake: (() => void) | undefined;
  private ended = false;

  constructor(
    private readonly socket: net.Socket,
    pending: Buffer,
  ) {
    this.buffer = pending;
    socket.on('data', (chunk: Buffer) => {
      this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
      // Commands run one at a time: a client that pipelines a lot waits for them.
      if (this.buffer.length > MAX_MESSAGE + 5) socket.pause();
      this.wake?.();
    });
    const end = () => {
      this.ended = true;
      this.wake?.();
    };
    socket.on('close', end);
    socket.on('end', end);
    // The login reader may have left it paused.
    socket.resume();
  }

  /** The next message, or undefined once the client has gone. */
  async next(): Promise<{ type: number; body: Buffer } | undefined> {
    for (;;) {
      if (this.buffer.length >= 5) {
        const length = this.buffer.readInt32BE(1);
        if (length < 4 || length > MAX_MESSAGE) {
          throw new PgError('08P01', `invalid message length ${length}`);
        }
        if (this.buffer.length >= length + 1) {
          const type = this.buffer[0]!;
          const body = this.buffer.subarray(5, length + 1);
          this.buffer = this.buffer.subarray(length + 1);
          if (this.socket.isPaused() && this.buffer.length <= MAX_MESSAGE) this.socket.resume();
          return { type, body };
        }
      }
      if (this.ended) return undefined;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}
