// One client connection from first byte to last: startup packet, authentication, finding (or
// creating) its branch, a server connection from the pool, then the relay until either side leaves.
import type net from 'node:net';
import { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { CONSOLE_DATABASE, serveConsole, type ConsoleDeps } from '../admin/console.js';
import { authenticateClient, type AuthMethod } from '../auth/authenticate.js';
import { tlsServerEndPoint } from '../auth/channel-binding.js';
import { clientAddress, type LoginFailures } from '../auth/failures.js';
import type { RoleSource } from '../auth/roles.js';
import type { BranchResolver } from '../branch/manager.js';
import type { Endpoint } from '../upstream/endpoint.js';
import {
  branchName,
  parseConnectTarget,
  ROOT_BRANCH,
  type BranchTarget,
  type PoolMode,
} from '../branch/names.js';
import { CommError, errors, PgError, sqlstateOf, UnsupportedProtocol } from '../errors.js';
import type { PoolManager, PoolRequest, ServerConnection } from '../pool/pool.js';
import { ServerError, type ServerLogin } from '../upstream/server-connection.js';
import {
  backendKeyData,
  errorResponse,
  legacyErrorResponse,
  negotiateProtocolVersion,
  noticeResponse,
  parameterStatus,
  readyForQuery,
} from '../wire/backend.js';
import { ClientGone, MessageReader } from '../wire/message-reader.js';
import {
  NEWEST_MINOR_VERSION,
  parseStartupPacket,
  type EncryptionRequest,
} from '../wire/startup.js';
import { secretLengthFor, type CancelRegistry, type ServerKey } from './cancel.js';
import type { ClientQuotas } from './client-quotas.js';
import type { ClientRegistry } from './clients.js';
import { SessionRelay } from './relay.js';
import { ClientState, serverState } from './client-state.js';
import { prepareServer, TransactionRelay } from './transaction-relay.js';
import { ALPN_POSTGRESQL, startTls, TLS_HANDSHAKE_BYTE, type ServerTls } from './tls.js';

/** How long a departed client's leftovers (open transaction, COPY) may take to clean up. */
const RESET_TIMEOUT_MS = 5_000;
/** How long a refused client has to read its error and close before it is cut off. */
const LINGER_MS = 5_000;

export interface ProxyContext {
  log: Logger;
  auth: AuthMethod;
  /** TLS on the proxy port (replaced on reload); undefined without a certificate. */
  tls: ServerTls | undefined;
  /** Like PostgreSQL's authentication_timeout (auth_timeout): the whole login must fit in it. */
  loginTimeoutMs: number;
  /** Failed logins by client address (auth_max_failures). */
  loginFailures: LoginFailures;
  roles: RoleSource;
  /** A hint for clients whose password was refused (28P01): the same for every role name. */
  loginHint?: (() => Promise<string | undefined>) | undefined;
  branches: BranchResolver;
  /** The pools of the main server. */
  pools: PoolManager;
  /**
   * The pools of a branch instance's endpoint (the main server's for undefined), under that
   * server's own budget; `branch` names the instance in SHOW POOLS and the metrics.
   */
  poolsFor: (endpoint: Endpoint | undefined, branch?: string) => PoolManager;
  cancels: CancelRegistry;
  maxClients: number;
  /** Clients per branch and per role (pool.max_client_connections_per_branch, _per_role). */
  clientQuotas: ClientQuotas;
  /** Clients connected now (all of them, in any phase). */
  clients: Set<net.Socket>;
  /** Clients past login, for the admin side and for draining a branch. */
  registry: ClientRegistry;
  /** What the SQL console (the database `pgbranch`) works with. */
  console: ConsoleDeps;
  shuttingDown: boolean;
  /** Clients past login now, by pool mode, and pinned transaction-mode clients (for metrics). */
  sessions: { session: number; transaction: number; pinned: number };
  /** Called with the SQLSTATE of every refused client (for metrics). */
  onRefused?: ((code: string) => void) | undefined;
  /** The pool mode for a database name as the client wrote it, from the configuration. */
  poolModeFor: (database: string) => PoolMode;
  /** Transaction mode: how long a client may sit idle inside a transaction (0: no limit). */
  idleInTransactionTimeoutMs: number;
  /** Transaction mode: prepared statements kept per server connection. */
  maxPreparedStatements: number;
}

/** Where a client connects from, as tls.mode judges it. */
export interface ClientOrigin {
  /** On loopback or the Unix socket: tls.mode require lets it in without TLS. */
  local: boolean;
}

/** The client's connection: its socket and reader are replaced when it starts TLS. */
interface ClientLink {
  socket: net.Socket;
  reader: MessageReader;
  /** Set once TLS is on: SSLRequest was answered 'S', or the client started with TLS. */
  tls: 'requested' | 'direct' | undefined;
}

/**
 * Sends the error and closes. The socket is cut off only after LINGER_MS, or when the client has
 * closed it: closing a socket with unread bytes makes the kernel send a reset, and a client that
 * had not yet read the error (one that floods, on a busy machine) would lose it. A client that the
 * login's reader paused for sending too much stays paused, so its flood costs kernel buffers, not
 * CPU (and its close goes unseen until LINGER_MS); any other is read and dropped until it closes.
 */
function refuse(socket: net.Socket, error: PgError): void {
  const linger = setTimeout(() => socket.destroy(), LINGER_MS);
  linger.unref();
  socket.on('close', () => clearTimeout(linger));
  socket.end(
    error instanceof UnsupportedProtocol && error.major < 3
      ? legacyErrorResponse(error)
      : errorResponse(error),
  );
}

export async function serveClient(
  raw: net.Socket,
  ctx: ProxyContext,
  origin: ClientOrigin,
): Promise<void> {
  raw.setNoDelay(true);
  raw.on('error', () => raw.destroy());
  const link: ClientLink = { socket: raw, reader: new MessageReader(raw), tls: undefined };
  const started = Date.now();
  // The whole login, however many packets it takes, as PostgreSQL's authentication_timeout: the
  // connection is cut without a word, and (as PostgreSQL) without a line in the log either.
  let timedOut = false;
  const loginTimer = setTimeout(() => {
    timedOut = true;
    link.socket.destroy();
    raw.destroy();
  }, ctx.loginTimeoutMs);
  let label: { user?: string; database?: string } = {};
  let conn: ServerConnection | undefined;
  try {
    const packet = await readStartup(link, ctx, origin);
    if (!packet) return;
    // From here on the session runs on the TLS socket if the client started TLS.
    const { socket, reader } = link;
    const user = packet.parameters.get('user')!;
    const requested = packet.parameters.get('database') || user;
    label = { user, database: requested };
    if (ctx.shuttingDown) throw errors.shuttingDown();
    if (ctx.clients.size > ctx.maxClients) throw errors.tooManyClients(ctx.maxClients);
    // As PostgreSQL 18: a newer minor version than ours, or `_pq_.` options (we know none), are
    // answered with the version we serve; a client that asked for 3.0 to 3.2 gets what it asked for.
    const minor = Math.min(packet.minor, NEWEST_MINOR_VERSION);
    if (minor < packet.minor || packet.protocolOptions.length > 0) {
      socket.write(negotiateProtocolVersion(minor, packet.protocolOptions));
    }
    const { target, options, poolMode } = parseConnectTarget(
      requested,
      packet.parameters.get('options'),
    );
    // Refused without a word in the log: LoginFailures logs a blocked address once a minute.
    const address = clientAddress(socket.remoteAddress);
    const blocked = ctx.loginFailures.blocked(address);
    if (blocked) {
      refuse(socket, blocked);
      ctx.onRefused?.(blocked.code);
      return;
    }
    const { login, answer } = await authenticateClient({
      socket,
      reader,
      user,
      method: ctx.auth,
      roles: ctx.roles,
      channelBinding: channelBindingOf(socket),
      timeoutMs: ctx.loginTimeoutMs,
    }).catch((error: unknown) => {
      if (error instanceof PgError && error.code.startsWith('28')) {
        ctx.loginFailures.failed(address);
      }
      throw error;
    });
    clearTimeout(loginTimer);
    // The exchange's end (server-final message, AuthenticationOk) waits for the end of this turn
    // of the event loop: when a server connection is at hand, the greeting joins it in one write
    // (each write is a system call and wakes the client up); a client that must wait for one (a
    // full pool, a new branch) gets it alone, as before.
    socket.cork();
    socket.write(answer);
    setImmediate(() => socket.uncork());
    if (requested === CONSOLE_DATABASE) {
      await serveConsole(socket, reader, user, ctx.console, {
        registry: ctx.cancels,
        secretLength: secretLengthFor(minor),
      });
      return;
    }

    const parameters = new Map(packet.parameters);
    parameters.delete('user');
    parameters.delete('database');
    if (options === undefined) parameters.delete('options');
    else parameters.set('options', options);

    const mode: PoolMode = parameters.has('replication')
      ? 'session'
      : (poolMode ?? ctx.poolModeFor(requested));
    const run = mode === 'transaction' ? serveTransactions : serveSession;
    const release = ctx.clientQuotas.admit(
      branchName(target.root, target.branch ?? ROOT_BRANCH),
      user,
    );
    try {
      await run(
        ctx,
        socket,
        reader,
        { target, user, requested, parameters, login, secretLength: secretLengthFor(minor) },
        (c) => (conn = c),
      );
    } finally {
      release();
    }
    conn = undefined;
  } catch (error) {
    if (conn) conn.pool.manager.release(conn, false);
    const socket = link.socket;
    if (error instanceof ClientGone) {
      socket.destroy();
      return;
    }
    if (error instanceof CommError) {
      // As PostgreSQL's COMMERROR: the client broke the framing (or never spoke the protocol,
      // like node-postgres's Terminate sent before its startup packet), so it gets no answer.
      socket.destroy();
      if (!timedOut) {
        ctx.log.info(
          { event: 'client_dropped', code: error.code, reason: error.reason ?? error.message },
          `closed a connection without an answer: ${error.reason ?? error.message}`,
        );
      }
      return;
    }
    let pgError = toPgError(error, ctx.log);
    const hint = pgError.code === '28P01' && !pgError.hint ? await ctx.loginHint?.() : undefined;
    if (hint) {
      const { code, message, detail, severity, reason } = pgError;
      pgError = new PgError(code, message, detail, hint, severity, reason);
    }
    if (!socket.destroyed) refuse(socket, pgError);
    ctx.onRefused?.(pgError.code);
    ctx.log.info(
      {
        event: 'client_refused',
        ...label,
        code: pgError.code,
        reason: pgError.reason ?? pgError.message,
      },
      `refused ${label.user ?? 'client'}: ${pgError.message}`,
    );
    return;
  } finally {
    clearTimeout(loginTimer);
    link.reader.detach();
  }
  ctx.log.info(
    { event: 'client_disconnected', ...label, durationMs: Date.now() - started },
    `client ${label.user} disconnected from ${label.database}`,
  );
}

/**
 * While pgbranch can't serve yet (its source's standby is being made): the client's startup is
 * read as usual (TLS offered, cancels passed on), then refused with `refusal()`, as a server
 * that is starting up answers 57P03 before authentication.
 */
export async function refuseClient(
  raw: net.Socket,
  ctx: StartupContext & { log: Logger },
  origin: ClientOrigin,
  refusal: () => PgError,
): Promise<void> {
  raw.setNoDelay(true);
  raw.on('error', () => raw.destroy());
  const link: ClientLink = { socket: raw, reader: new MessageReader(raw), tls: undefined };
  const loginTimer = setTimeout(() => {
    link.socket.destroy();
    raw.destroy();
  }, ctx.loginTimeoutMs);
  try {
    const packet = await readStartup(link, ctx, origin);
    if (packet) refuse(link.socket, refusal());
  } catch (error) {
    if (error instanceof CommError) link.socket.destroy();
    else if (!link.socket.destroyed) refuse(link.socket, toPgError(error, ctx.log));
  } finally {
    clearTimeout(loginTimer);
    link.reader.detach();
  }
}

interface Admitted {
  target: BranchTarget;
  user: string;
  /** The database name as the client wrote it (app@feature-x). */
  requested: string;
  /** Startup parameters for the server (user, database and pgbranch's own settings removed). */
  parameters: Map<string, string>;
  login: ServerLogin;
  /** The cancel secret's length in the client's protocol version. */
  secretLength: number;
}

/** Session mode: one server connection for the whole session, reset and pooled afterwards. */
async function serveSession(
  ctx: ProxyContext,
  socket: net.Socket,
  reader: MessageReader,
  { target, user, requested, parameters, login, secretLength }: Admitted,
  /** Tells the caller which server connection to release if this throws. */
  hold: (conn: ServerConnection | undefined) => void,
): Promise<void> {
  const opened = await connectToBranch(ctx, target, user, parameters, login, 'session', (message) =>
    socket.write(noticeResponse(message)),
  );
  const conn = opened.conn;
  hold(conn);
  const session = conn.session;
  const cancelKey = ctx.cancels.register(
    session.processId,
    () => ({ processId: session.processId, secret: session.secretKey, endpoint: opened.endpoint }),
    secretLength,
  );
  let terminated: PgError | undefined;
  let relay: SessionRelay | undefined;
  const client = ctx.registry.add(socket, {
    user,
    requested,
    database: opened.database,
    mode: 'session',
    pinned: () => false,
    serverPid: () => session.processId,
    serverOpenedAt: () => conn.openedAt,
    waiting: () => false,
    terminate: (error) => {
      terminated = error;
      // The relay ends as if the server left; what the client is told is decided below.
      session.socket.destroy();
    },
    terminateWhenIdle: (error) =>
      relay ? relay.whenIdle(() => client.terminate(error)) : client.terminate(error),
  });
  try {
    socket.write(greeting(target, opened, session.parameters, cancelKey));
    ctx.log.info(
      {
        event: 'client_connected',
        user,
        branch: requested,
        database: opened.database,
        serverPid: session.processId,
      },
      `client ${user} connected to ${requested}`,
    );
    relay = new SessionRelay(socket, session.socket, reader.detach(), (database) =>
      keepOff(ctx, opened.pools, database),
    );
    ctx.sessions.session++;
    const end = await relay.ended.finally(() => ctx.sessions.session--);
    if (end.by === 'client') {
      const clean = await relay.resetForReuse(RESET_TIMEOUT_MS);
      hold(undefined);
      opened.pools.release(conn, clean);
      socket.end();
    } else {
      hold(undefined);
      opened.pools.release(conn, false);
      if (end.by === 'server' && end.atBoundary && (terminated || end.lastType !== 0x45) /* E */) {
        socket.write(
          errorResponse(
            terminated ??
              (ctx.shuttingDown
                ? errors.shuttingDown()
                : errors.upstreamUnavailable('the server closed the connection unexpectedly')),
          ),
        );
      }
      socket.end();
    }
  } finally {
    ctx.registry.delete(client);
    ctx.cancels.unregister(cancelKey);
    opened.leave?.();
  }
}

/**
 * Transaction mode: a server connection only while a transaction runs. The client's startup
 * parameters become settings that follow it from server connection to server connection.
 */
async function serveTransactions(
  ctx: ProxyContext,
  socket: net.Socket,
  reader: MessageReader,
  { target, user, requested, parameters, login, secretLength }: Admitted,
  hold: (conn: ServerConnection | undefined) => void,
): Promise<void> {
  const state = new ClientState(parameters);
  const opened = await connectToBranch(
    ctx,
    target,
    user,
    new Map(),
    login,
    'transaction',
    (message) => socket.write(noticeResponse(message)),
  );
  hold(opened.conn);
  // The greeting shows the client's own settings: apply them to the first server connection.
  await prepareServer(opened.conn, state);
  const reported = serverState(opened.conn).reported;
  for (const [name, value] of reported) state.reported.set(name, value);
  hold(undefined);
  opened.pools.release(opened.conn, true);

  let current: ServerConnection | undefined;
  const cancelKey = ctx.cancels.register(
    undefined,
    () =>
      current
        ? {
            processId: current.session.processId,
            secret: current.session.secretKey,
            endpoint: opened.endpoint,
          }
        : undefined,
    secretLength,
  );
  let relay: TransactionRelay | undefined;
  const client = ctx.registry.add(socket, {
    user,
    requested,
    database: opened.database,
    mode: 'transaction',
    pinned: () => state.pinned !== undefined,
    serverPid: () => current?.session.processId,
    serverOpenedAt: () => current?.openedAt,
    waiting: () => relay?.waiting() ?? false,
    terminate: (error) => relay?.terminate(error),
    terminateWhenIdle: (error) =>
      relay ? relay.terminateWhenIdle(error) : client.terminate(error),
  });
  try {
    socket.write(greeting(target, opened, reported, cancelKey));
    ctx.log.info(
      {
        event: 'client_connected',
        user,
        branch: requested,
        database: opened.database,
        mode: 'transaction',
      },
      `client ${user} connected to ${requested} (transaction mode)`,
    );
    relay = new TransactionRelay({
      client: socket,
      pools: opened.pools,
      request: opened.request,
      state,
      pending: reader.detach(),
      resetTimeoutMs: RESET_TIMEOUT_MS,
      idleInTransactionTimeoutMs: ctx.idleInTransactionTimeoutMs,
      maxPreparedStatements: ctx.maxPreparedStatements,
      onDatabaseNeeded: (database) => keepOff(ctx, opened.pools, database),
      onServer: (conn) => (current = conn),
      onPinned: (reason) => {
        ctx.sessions.pinned++;
        ctx.log.info(
          { event: 'client_pinned', user, branch: requested, reason },
          `client ${user} on ${requested} holds ${reason}: it keeps its server connection until it disconnects`,
        );
      },
    });
    ctx.sessions.transaction++;
    await relay.ended;
    ctx.sessions.transaction--;
    if (state.pinned) ctx.sessions.pinned--;
    socket.end();
  } finally {
    ctx.registry.delete(client);
    ctx.cancels.unregister(cancelKey);
    opened.leave?.();
  }
}

/**
 * A client's statement needs `database` to itself (DROP DATABASE, ALTER DATABASE ... RENAME,
 * CREATE DATABASE ... TEMPLATE): pgbranch closes its idle pooled connections to it, so that only
 * sessions really in use can make the statement fail, and holds new ones back until the returned
 * function is called, when the statement is done.
 */
function keepOff(ctx: ProxyContext, pools: PoolManager, database: string): () => void {
  void pools.pause(database, 0);
  ctx.log.info(
    { event: 'database_released', database },
    `closed pgbranch's idle connections to ${database} for a client's DROP, RENAME or TEMPLATE of it`,
  );
  return () => pools.resume(database);
}

/**
 * What a client sees once it is in: a notice if its branch was just made, the server's parameters,
 * its cancel key, and ReadyForQuery.
 */
function greeting(
  target: BranchTarget,
  { created, notice }: { created: boolean; notice?: string | undefined },
  parameters: ReadonlyMap<string, string>,
  cancelKey: ServerKey,
): Buffer {
  const parts: Buffer[] = [];
  if (created) {
    parts.push(
      noticeResponse(
        notice ??
          `pgbranch: created branch "${target.branch}" of "${target.root}" from ${branchName(target.root, target.parent ?? ROOT_BRANCH)}`,
      ),
    );
  }
  for (const [name, value] of parameters) parts.push(parameterStatus(name, value));
  parts.push(backendKeyData(cancelKey.processId, cancelKey.secret), readyForQuery('I'));
  return Buffer.concat(parts);
}

/**
 * Reads until a StartupMessage, answering encryption requests (starting TLS where it is on) and
 * forwarding cancels on the way, as PostgreSQL's ProcessStartupPacket does.
 */
/** What reading a startup packet needs: TLS to offer, the login's time, cancels to pass on. */
type StartupContext = Pick<ProxyContext, 'tls' | 'loginTimeoutMs'> & {
  cancels: Pick<CancelRegistry, 'cancel'>;
};

async function readStartup(link: ClientLink, ctx: StartupContext, origin: ClientOrigin) {
  const answered = new Set<EncryptionRequest>();
  const tls = ctx.tls;
  if (tls && (await link.reader.peekByte(ctx.loginTimeoutMs)) === TLS_HANDSHAKE_BYTE) {
    // Direct TLS: no SSLRequest, the ClientHello comes first (already read, so handed over).
    await upgrade(link, tls, 'direct', ctx.loginTimeoutMs);
    if (link.socket instanceof TLSSocket && link.socket.alpnProtocol !== ALPN_POSTGRESQL) {
      throw errors.directTlsWithoutAlpn();
    }
    answered.add('ssl');
  }
  for (;;) {
    const { socket, reader } = link;
    let bytes: Buffer;
    try {
      bytes = await reader.nextStartupPacket(ctx.loginTimeoutMs);
    } catch (error) {
      // A client that leaves without a byte is not worth a line in the log (monitors and port
      // scanners do it), nor one that leaves inside a length word after an encryption request
      // was refused (it did not like the answer); PostgreSQL logs any other cut-off packet.
      const received = reader.buffered;
      if (error instanceof ClientGone && (received >= 4 || (received > 0 && answered.size === 0))) {
        throw errors.incompleteStartupPacket(received);
      }
      throw error;
    }
    const packet = parseStartupPacket(bytes, answered);
    switch (packet.kind) {
      case 'ssl':
      case 'gssenc': {
        answered.add(packet.kind);
        // GSS encryption is not offered: clients fall back to TLS or plain text (or stop, if
        // they require it).
        const yes = packet.kind === 'ssl' && tls !== undefined;
        socket.write(yes ? 'S' : 'N');
        // Bytes sent before the answer would have been taken as encrypted had it been yes: a
        // client bug, or someone in the middle. PostgreSQL refuses them either way.
        if (reader.buffered > 0) {
          throw errors.unencryptedDataAfter(
            packet.kind === 'ssl' ? 'SSL request' : 'GSSAPI encryption request',
          );
        }
        if (yes) await upgrade(link, tls, 'requested', ctx.loginTimeoutMs);
        continue;
      }
      case 'cancel':
        // Answered once the server has the cancel, as PostgreSQL does: a query the client sends
        // after that must not be the one canceled.
        await ctx.cancels.cancel(packet.processId, packet.secret);
        socket.end();
        return undefined;
      case 'startup':
        if (tls?.mode === 'require' && !link.tls && !origin.local) {
          throw errors.tlsRequired(socket.remoteAddress ?? 'the client');
        }
        return packet;
    }
  }
}

/** tls-server-end-point data for SCRAM-SHA-256-PLUS: of the certificate this client's TLS uses. */
function channelBindingOf(socket: net.Socket): Buffer | undefined {
  if (!(socket instanceof TLSSocket)) return undefined;
  const own = socket.getCertificate();
  return own && 'raw' in own ? tlsServerEndPoint(own.raw) : undefined;
}

/** Moves the client onto TLS: the TLS socket and a reader on it replace the plain ones. */
async function upgrade(
  link: ClientLink,
  tls: ServerTls,
  how: 'requested' | 'direct',
  timeoutMs: number,
): Promise<void> {
  const pending = link.reader.detach();
  try {
    link.socket = await startTls(link.socket, tls, pending, timeoutMs);
  } catch (error) {
    throw errors.tlsHandshakeFailed((error as Error).message);
  }
  link.reader = new MessageReader(link.socket);
  link.tls = how;
}

async function connectToBranch(
  ctx: ProxyContext,
  target: BranchTarget,
  user: string,
  parameters: Map<string, string>,
  login: ServerLogin,
  mode: PoolMode,
  /** Tells the client something while it waits (a long creation's progress). */
  notify: (message: string) => void,
): Promise<{
  conn: ServerConnection;
  request: PoolRequest;
  database: string;
  created: boolean;
  notice?: string | undefined;
  /** The pools of the server the branch is on, which its connections go back to. */
  pools: PoolManager;
  /** A branch instance's endpoint, or undefined for the main server. */
  endpoint: Endpoint | undefined;
  /** To call once the client is gone. */
  leave: (() => void) | undefined;
}> {
  for (let attempt = 0; ; attempt++) {
    const { database, created, notice, endpoint, leave } = await ctx.branches.resolve(
      target,
      user,
      notify,
    );
    const pools = ctx.poolsFor(endpoint, target.branch);
    try {
      const request: PoolRequest = { database, user, parameters, login, mode };
      const conn = await pools.acquire(request);
      return { conn, request, database, created, notice, pools, endpoint, leave };
    } catch (error) {
      leave?.();
      // A branch dropped behind pgbranch's back (3D000), or left invalid by a DROP DATABASE the
      // server died in (55000): forget it and look again, once; the catalog then says whether it
      // is to be made again (a branch refused for another reason is refused again).
      if (
        error instanceof ServerError &&
        (error.code === '3D000' || error.code === '55000') &&
        target.branch &&
        attempt === 0
      ) {
        ctx.branches.forget(database);
        continue;
      }
      throw error;
    }
  }
}

function toPgError(error: unknown, log: Logger): PgError {
  if (error instanceof PgError) return error;
  const e = error as { code?: string; message?: string; detail?: string; hint?: string };
  const code = sqlstateOf(error);
  if (code !== undefined) return new PgError(code, e.message ?? 'server error', e.detail, e.hint);
  if (typeof e.code === 'string' && e.code.startsWith('E')) {
    return errors.upstreamUnavailable(`${e.code}: ${e.message ?? ''}`);
  }
  // node-postgres (pgbranch's administrative queries) when the server went away under a query.
  if (e.message?.startsWith('Connection terminated')) {
    return errors.upstreamUnavailable(e.message);
  }
  log.error({ err: error }, 'unexpected error while serving a client');
  return errors.internal(error);
}
