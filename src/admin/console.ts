// The SQL admin console: a client that logs in to the database `pgbranch` talks to pgbranch itself,
// in the spirit of PgBouncer's console. After login this owns the client's socket: it reads
// messages, runs console commands from simple Query messages, and answers in the real protocol.
import type net from 'node:net';
import type { Logger } from 'pino';
import { branchName, parseConnectTarget, physicalName, ROOT_BRANCH } from '../branch/names.js';
import { errors, sqlstateOf, statementError, type PgError } from '../errors.js';
import type { Lifecycle } from '../lifecycle/model.js';
import type { PoolManager } from '../pool/pool.js';
import type { CancelRegistry, ServerKey } from '../proxy/cancel.js';
import type { ClientRegistry } from '../proxy/clients.js';
import type { SourceControl } from '../source/health.js';
import {
  backendKeyData,
  commandComplete,
  dataRow,
  emptyQueryResponse,
  errorResponse,
  noticeResponse,
  parameterStatus,
  readyForQuery,
  rowDescription,
} from '../wire/backend.js';
import { ClientGone, MessageReader } from '../wire/message-reader.js';
import { parseCommands, type ConsoleCommand } from './console-commands.js';
import {
  branchesTable,
  clientsTable,
  helpTable,
  poolsTable,
  serversTable,
  snapshotsTable,
  sourceTable,
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
  /** The pools of each running branch instance, a server of its own (SHOW POOLS). */
  instancePools?(): Iterable<{ branch: string; pools: PoolManager }>;
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
  /** The source followed (source.url); undefined without one. */
  source?: SourceControl | undefined;
}

/** Where the session's cancel key comes from, as for every client: in its protocol's length. */
export interface ConsoleCancelKeys {
  registry: CancelRegistry;
  secretLength: number;
}

/**
 * Serves a logged-in client (AuthenticationOk already sent) as the console until it leaves.
 * `login` is the reader that read the login: it holds what came after it, and keeps reading while
 * the role is looked up, until the console's own reader takes over. Throws a FATAL 42501 PgError, before
 * anything else is written, when the role may not use the console. The client gets a
 * BackendKeyData, and a CancelRequest with it stops the wait for the command running then.
 */
export async function serveConsole(
  socket: net.Socket,
  login: MessageReader,
  user: string,
  deps: ConsoleDeps,
  cancelKeys: ConsoleCancelKeys,
): Promise<void> {
  if (!(await mayUseConsole(user, deps))) throw errors.consoleDenied(user);
  const session = new ConsoleSession(socket, user, deps);
  const cancelKey = cancelKeys.registry.registerOwn(
    () => session.cancel(),
    cancelKeys.secretLength,
  );
  socket.write(greeting(deps.serverVersion, cancelKey));
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
    await serveCommands(socket, login.detach(), session);
  } finally {
    cancelKeys.registry.unregister(cancelKey);
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
  session: ConsoleSession,
): Promise<void> {
  const reader = new MessageReader(socket, { pending, maxMessage: MAX_MESSAGE });
  /** After an error in an extended-protocol batch, everything up to its Sync is skipped. */
  let skipToSync = false;
  try {
    for (;;) {
      const { type, body } = await reader.nextMessage(Infinity);
      const letter = String.fromCharCode(type);
      if (letter === 'X') {
        socket.end();
        return;
      } else if (letter === 'S') {
        skipToSync = false;
        session.write(readyForQuery('I'));
      } else if (skipToSync) {
        continue;
      } else if (letter === 'Q') {
        // As PostgreSQL reads a Query (pq_getmsgstring, pq_getmsgend): the text ends at its first
        // zero byte, which must be the message's last. Bytes after it would end up quoted in a
        // syntax error, whose zero bytes would cut the ErrorResponse's fields apart.
        const end = body.indexOf(0);
        if (end === body.length - 1) {
          await session.query(body.toString('utf8', 0, end));
        } else {
          const why = end < 0 ? 'invalid string in message' : 'invalid message format';
          session.write(errorResponse(statementError(errors.protocolViolation(why))));
        }
        session.write(readyForQuery('I'));
      } else if ('PBDECH'.includes(letter)) {
        if (letter === 'H') continue;
        session.write(errorResponse(errors.consoleUnsupported('the extended query protocol')));
        skipToSync = true;
      } else if (letter === 'F') {
        // A function call is a cycle of its own, as PostgreSQL answers it: no Sync follows.
        session.write(
          errorResponse(errors.consoleUnsupported('function calls')),
          readyForQuery('I'),
        );
      } else if ('dcf'.includes(letter)) {
        // COPY data outside a COPY, as PostgreSQL does: ignored.
        continue;
      } else {
        throw errors.protocolViolation(`invalid frontend message type ${type}`);
      }
    }
  } catch (error) {
    if (!(error instanceof ClientGone)) throw error;
    socket.end();
  } finally {
    reader.detach();
  }
}

async function mayUseConsole(user: string, deps: ConsoleDeps): Promise<boolean> {
  return deps.adminUsers().has(user) || (await deps.isSuperuser(user));
}

/** The parameters psql and drivers expect at login, and the cancel key. */
function greeting(serverVersion: string, cancelKey: ServerKey): Buffer {
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
    backendKeyData(cancelKey.processId, cancelKey.secret),
    readyForQuery('I'),
  ]);
}

class ConsoleSession {
  /** Stops the wait for the command running now; undefined while none runs. */
  private waiting: AbortController | undefined;

  constructor(
    private readonly socket: net.Socket,
    private readonly user: string,
    private readonly deps: ConsoleDeps,
  ) {}

  write(...messages: Buffer[]): void {
    // A client that left while a command ran: the command finished anyway, nobody to tell.
    if (this.socket.writable) this.socket.write(Buffer.concat(messages));
  }

  /**
   * A CancelRequest: the client stops waiting for the command running now, which runs on, since
   * half a branch operation is worse than one nobody waits for. False when nothing runs.
   */
  cancel(): boolean {
    if (!this.waiting || this.waiting.signal.aborted) return false;
    this.waiting.abort();
    return true;
  }

  /** Runs a Query message's commands in order, up to the first that fails or is canceled. */
  async query(text: string): Promise<void> {
    let commands: ConsoleCommand[];
    try {
      commands = parseCommands(text);
    } catch (error) {
      this.write(errorResponse(this.asError(error)));
      return;
    }
    if (commands.length === 0) {
      this.write(emptyQueryResponse());
      return;
    }
    for (const command of commands) {
      try {
        this.write(...(await this.answer(command)));
      } catch (error) {
        this.write(errorResponse(this.asError(error)));
        return;
      }
    }
  }

  /** A command's answer, unless a cancel ends the wait for it first (57014). */
  private async answer(command: ConsoleCommand): Promise<Buffer[]> {
    const { tag, target, seeWith } = describeCommand(command);
    if (command.kind !== 'show') this.audit(tag, target);
    const waiting = new AbortController();
    const running =
      command.kind === 'show'
        ? this.run(command, tag)
        : this.slow(tag, target, waiting.signal, () => this.run(command, tag), slowHint(command));
    const canceled = new Promise<never>((_, reject) =>
      waiting.signal.addEventListener('abort', () =>
        reject(
          command.kind === 'show'
            ? errors.queryCanceled()
            : errors.consoleCanceled(target ? `${tag} "${target}"` : tag, seeWith),
        ),
      ),
    );
    this.waiting = waiting;
    try {
      return await Promise.race([running, canceled]);
    } finally {
      this.waiting = undefined;
      if (waiting.signal.aborted) {
        running.catch((error: unknown) => this.unheard(tag, target, error));
      }
    }
  }

  /** `tag` is the command's, as describeCommand() names it. */
  private async run(command: ConsoleCommand, tag: string): Promise<Buffer[]> {
    const { lifecycle } = this.deps;
    switch (command.kind) {
      case 'show':
        if (command.what === 'source' && !this.deps.source) {
          return [
            noticeResponse(`pgbranch: ${errors.noSource().message}`),
            ...table(sourceTable([])),
          ];
        }
        return table(await this.show(command));
      case 'create': {
        const { name, parent, snapshot, ttlMs, expiresAt } = command;
        const result = await lifecycle.create({ name, parent, snapshot, ttlMs, expiresAt });
        const b = result.branch;
        const from = `${b.parent ?? 'its parent'}${b.fromSnapshot ? ` (restore point "${b.fromSnapshot}")` : ''}`;
        return done(
          tag,
          result.created
            ? `created branch "${b.name}" from ${from} in ${result.ms} ms (${b.clone ? 'clone' : 'copy'})`
            : `branch "${b.name}" exists already, made from ${from}`,
        );
      }
      case 'reset': {
        const b = await lifecycle.reset(command.name);
        return done(tag, `branch "${b.name}" is a fresh copy of ${b.parent ?? 'its parent'}`);
      }
      case 'drop': {
        const result = await lifecycle.delete(command.name, { cascade: command.cascade });
        return done(tag, `dropped ${result.deleted.map((n) => `"${n}"`).join(', ')}`);
      }
      case 'snapshot': {
        const s = await lifecycle.snapshot(command.name, command.snapshot);
        return done(tag, `saved "${s.of}" as restore point "${s.name}"`);
      }
      case 'restore': {
        const b = await lifecycle.restore(command.name, command.snapshot);
        return done(tag, `branch "${b.name}" is as it was at "${command.snapshot}"`);
      }
      case 'drop-snapshot': {
        await lifecycle.deleteSnapshot(command.name, command.snapshot);
        return done(tag, `dropped restore point "${command.snapshot}" of "${command.name}"`);
      }
      case 'protect': {
        const b = await lifecycle.protect(command.name, command.on);
        return done(tag, `branch "${b.name}" is ${b.protected ? 'protected' : 'not protected'}`);
      }
      case 'pause':
        return this.pause(command.database);
      case 'resume':
        return this.resume(command.database);
      case 'resync': {
        if (!this.deps.source) throw errors.noSource();
        const status = await this.deps.source.resync();
        return done(
          tag,
          `the standby of ${status.source} was made again (system identifier ${status.systemId}) and streams from it`,
        );
      }
      case 'reload': {
        const { applied, needRestart } = await this.deps.reload();
        return done(
          tag,
          `configuration reloaded: ${applied.length > 0 ? `applied ${applied.join(', ')}` : 'nothing changed that applies while running'}${needRestart.length > 0 ? `; restart pgbranch for ${needRestart.join(', ')}` : ''}`,
        );
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
        return poolsTable(
          [{ branch: undefined, pools }, ...(this.deps.instancePools?.() ?? [])].map((server) => ({
            branch: server.branch,
            pools: server.pools.list(),
            paused: new Set(server.pools.pausedDatabases()),
            budget: server.pools.serverBudget(),
          })),
        );
      case 'clients':
        return clientsTable(clients.all());
      case 'servers':
        return serversTable(pools.list(), clients.all());
      case 'source':
        return sourceTable([await this.deps.source!.status()]);
      case 'help':
        return helpTable();
      case 'version':
        return versionTable();
    }
  }

  /**
   * Waits for a command that changes something (most drain clients first), with a notice once it
   * has taken a second, unless the client has stopped waiting by then.
   */
  private async slow<T>(
    tag: string,
    name: string | undefined,
    signal: AbortSignal,
    work: () => Promise<T>,
    hint: string,
  ): Promise<T> {
    const timer = setTimeout(
      () =>
        this.write(
          noticeResponse(
            `pgbranch: ${tag}${name === undefined ? '' : ` "${name}"`} is still running`,
            hint,
          ),
        ),
      PROGRESS_AFTER_MS,
    );
    const stop = () => clearTimeout(timer);
    signal.addEventListener('abort', stop);
    try {
      return await work();
    } finally {
      stop();
      signal.removeEventListener('abort', stop);
    }
  }

  private audit(command: string, target: string | undefined): void {
    this.deps.log.info(
      { event: 'console_command', user: this.user, command, target },
      `console: ${this.user} ran ${command}${target ? ` ${target}` : ''}`,
    );
  }

  /** A command that failed after its client stopped waiting: only the log can tell. */
  private unheard(command: string, target: string | undefined, error: unknown): void {
    const e = this.asError(error);
    this.deps.log.warn(
      { event: 'console_command_failed', user: this.user, command, target, code: e.code },
      `console: ${command}${target ? ` ${target}` : ''} of ${this.user} failed after the client stopped waiting: ${e.message}`,
    );
  }

  /** Every failure of a command reaches the client as an ERROR: the session goes on. */
  private asError(error: unknown): PgError {
    if (sqlstateOf(error) === undefined) {
      this.deps.log.error({ err: error }, 'console command failed unexpectedly');
    }
    return statementError(error);
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
  private async pause(name: string | undefined): Promise<Buffer[]> {
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
    return [...notices, commandComplete('PAUSE')];
  }

  private resume(name: string | undefined): Buffer[] {
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
    return [...notices, commandComplete('RESUME')];
  }
}

function table({ columns, rows }: Table): Buffer[] {
  return [rowDescription(columns), ...rows.map(dataRow), commandComplete(`SHOW ${rows.length}`)];
}

/** A command that changed something: what happened as a notice, and its tag. */
function done(tag: string, what: string): Buffer[] {
  return [noticeResponse(`pgbranch: ${what}`), commandComplete(tag)];
}

/**
 * A command as the log and a cancel name it: its tag, what it acts on, and the console command
 * that shows its outcome.
 */
function describeCommand(command: ConsoleCommand): {
  tag: string;
  target?: string | undefined;
  seeWith?: string;
} {
  switch (command.kind) {
    case 'show':
      return { tag: `SHOW ${command.what.toUpperCase()}` };
    case 'create':
      return { tag: 'CREATE BRANCH', target: command.name, seeWith: 'SHOW BRANCHES' };
    case 'reset':
      return { tag: 'RESET BRANCH', target: command.name, seeWith: 'SHOW BRANCHES' };
    case 'drop':
      return { tag: 'DROP BRANCH', target: command.name, seeWith: 'SHOW BRANCHES' };
    case 'snapshot':
      return { tag: 'SNAPSHOT BRANCH', target: command.name, seeWith: 'SHOW SNAPSHOTS' };
    case 'restore':
      return { tag: 'RESTORE BRANCH', target: command.name, seeWith: 'SHOW BRANCHES' };
    case 'drop-snapshot':
      return { tag: 'DROP SNAPSHOT', target: command.name, seeWith: 'SHOW SNAPSHOTS' };
    case 'protect':
      return {
        tag: command.on ? 'PROTECT BRANCH' : 'UNPROTECT BRANCH',
        target: command.name,
        seeWith: 'SHOW BRANCHES',
      };
    case 'pause':
      return { tag: 'PAUSE', target: command.database, seeWith: 'SHOW POOLS' };
    case 'resume':
      return { tag: 'RESUME', target: command.database, seeWith: 'SHOW POOLS' };
    case 'reload':
      return { tag: 'RELOAD' };
    case 'resync':
      return { tag: 'RESYNC SOURCE', seeWith: 'SHOW SOURCE' };
  }
}

/** What a command taking over a second is busy with, and that it completes regardless. */
function slowHint(command: ConsoleCommand): string {
  return command.kind === 'resync'
    ? 'It makes a new base backup of the source (SHOW SOURCE shows how far); it completes even if this session ends.'
    : 'It drains the clients involved first; it completes even if this session ends.';
}

/** The server database a name as clients write it (`app@feature-x`) is served from. */
function databaseOf(name: string): string {
  const { target } = parseConnectTarget(name);
  return physicalName(target.root, target.branch);
}
