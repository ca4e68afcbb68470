// One client connection from first byte to last: startup packet, authentication, finding (or
// creating) its branch, a server connection from the pool, then the relay until either side leaves.
import type net from 'node:net';
import type { Logger } from 'pino';
import { authenticateClient, type AuthMethod } from '../auth/authenticate.js';
import type { RoleSource } from '../auth/roles.js';
import type { BranchManager } from '../branch/manager.js';
import { parseConnectTarget, type BranchTarget } from '../branch/names.js';
import { errors, PgError } from '../errors.js';
import type { PoolManager, ServerConnection } from '../pool/pool.js';
import { ServerError, type ServerLogin } from '../upstream/server-connection.js';
import {
  authenticationOk,
  backendKeyData,
  errorResponse,
  negotiateProtocolVersion,
  noticeResponse,
  parameterStatus,
  readyForQuery,
} from '../wire/backend.js';
import { ClientGone, MessageReader } from '../wire/message-reader.js';
import { parseStartupPacket } from '../wire/startup.js';
import type { CancelRegistry } from './cancel.js';
import { SessionRelay } from './relay.js';

/** Like PostgreSQL's authentication_timeout: a client must finish logging in within this. */
const STARTUP_TIMEOUT_MS = 60_000;
/** How long a departed client's leftovers (open transaction, COPY) may take to clean up. */
const RESET_TIMEOUT_MS = 5_000;

export interface ProxyContext {
  log: Logger;
  auth: AuthMethod;
  roles: RoleSource;
  branches: BranchManager;
  pools: PoolManager;
  cancels: CancelRegistry;
  maxClients: number;
  /** Clients connected now (all of them, in any phase). */
  clients: Set<net.Socket>;
  shuttingDown: boolean;
}

export async function serveClient(socket: net.Socket, ctx: ProxyContext): Promise<void> {
  socket.setNoDelay(true);
  socket.on('error', () => socket.destroy());
  const reader = new MessageReader(socket);
  const started = Date.now();
  // The whole login, however many packets it takes, as PostgreSQL's authentication_timeout.
  const loginTimer = setTimeout(() => socket.destroy(), STARTUP_TIMEOUT_MS);
  let label: { user?: string; database?: string } = {};
  let conn: ServerConnection | undefined;
  try {
    const packet = await readStartup(socket, reader, ctx);
    if (!packet) return;
    const user = packet.parameters.get('user')!;
    const requested = packet.parameters.get('database') || user;
    label = { user, database: requested };
    if (ctx.shuttingDown) throw errors.shuttingDown();
    if (ctx.clients.size > ctx.maxClients) throw errors.tooManyClients(ctx.maxClients);
    if (packet.minor > 0 || packet.protocolOptions.length > 0) {
      socket.write(negotiateProtocolVersion(0, packet.protocolOptions));
    }
    const { target, options } = parseConnectTarget(requested, packet.parameters.get('options'));
    const login = await authenticateClient({
      socket,
      reader,
      user,
      method: ctx.auth,
      roles: ctx.roles,
      timeoutMs: STARTUP_TIMEOUT_MS,
    });
    socket.write(authenticationOk());
    clearTimeout(loginTimer);

    const parameters = new Map(packet.parameters);
    parameters.delete('user');
    parameters.delete('database');
    if (options === undefined) parameters.delete('options');
    else parameters.set('options', options);

    const opened = await connectToBranch(ctx, target, user, parameters, login);
    conn = opened.conn;
    const session = conn.session;
    const secret = ctx.cancels.register(session.processId, session.secretKey);
    try {
      const greeting: Buffer[] = [];
      if (opened.created) {
        greeting.push(
          noticeResponse(
            `pgbranch: created branch "${target.branch}" of "${target.root}" from ${target.parent ?? 'main'}`,
          ),
        );
      }
      for (const [name, value] of session.parameters) greeting.push(parameterStatus(name, value));
      greeting.push(backendKeyData(session.processId, secret), readyForQuery('I'));
      socket.write(Buffer.concat(greeting));
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
      const relay = new SessionRelay(socket, session.socket, reader.detach());
      const end = await relay.ended;
      if (end.by === 'client') {
        const clean = await relay.resetForReuse(RESET_TIMEOUT_MS);
        ctx.pools.release(conn, clean);
        conn = undefined;
        socket.end();
      } else {
        ctx.pools.release(conn, false);
        conn = undefined;
        if (end.by === 'server' && end.atBoundary && end.lastType !== 0x45 /* E */) {
          socket.write(
            errorResponse(
              ctx.shuttingDown
                ? errors.shuttingDown()
                : errors.upstreamUnavailable('the server closed the connection unexpectedly'),
            ),
          );
        }
        socket.end();
      }
    } finally {
      ctx.cancels.unregister(session.processId, secret);
    }
  } catch (error) {
    if (conn) ctx.pools.release(conn, false);
    if (error instanceof ClientGone) {
      socket.destroy();
      return;
    }
    const pgError = toPgError(error, ctx.log);
    if (!socket.destroyed) {
      socket.end(errorResponse(pgError));
      setTimeout(() => socket.destroy(), 1000).unref();
    }
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
    reader.detach();
  }
  ctx.log.info(
    { event: 'client_disconnected', ...label, durationMs: Date.now() - started },
    `client ${label.user} disconnected from ${label.database}`,
  );
}

/** Reads until a StartupMessage, answering encryption requests and forwarding cancels on the way. */
async function readStartup(socket: net.Socket, reader: MessageReader, ctx: ProxyContext) {
  const refused = new Set<'ssl' | 'gssenc'>();
  for (;;) {
    const packet = parseStartupPacket(await reader.nextStartupPacket(STARTUP_TIMEOUT_MS));
    switch (packet.kind) {
      case 'ssl':
      case 'gssenc':
        // PostgreSQL answers each kind once; a client that keeps asking only holds the slot.
        if (refused.has(packet.kind)) {
          throw errors.protocolViolation(
            `second ${packet.kind === 'ssl' ? 'SSLRequest' : 'GSSENCRequest'} on one connection`,
          );
        }
        refused.add(packet.kind);
        // TLS and GSS encryption are not offered yet; clients fall back to plain text (or stop,
        // if they require encryption).
        socket.write('N');
        continue;
      case 'cancel':
        ctx.cancels.cancel(packet.processId, packet.secret);
        socket.end();
        return undefined;
      case 'startup':
        return packet;
    }
  }
}

async function connectToBranch(
  ctx: ProxyContext,
  target: BranchTarget,
  user: string,
  parameters: Map<string, string>,
  login: ServerLogin,
): Promise<{ conn: ServerConnection; database: string; created: boolean }> {
  for (let attempt = 0; ; attempt++) {
    const { database, created } = await ctx.branches.resolve(target, user);
    try {
      const conn = await ctx.pools.acquire({ database, user, parameters, login });
      return { conn, database, created };
    } catch (error) {
      // A branch dropped behind pgbranch's back: forget it and make it again, once.
      if (
        error instanceof ServerError &&
        error.code === '3D000' &&
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
  if (typeof e.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code)) {
    return new PgError(e.code, e.message ?? 'server error', e.detail, e.hint);
  }
  if (typeof e.code === 'string' && e.code.startsWith('E')) {
    return errors.upstreamUnavailable(`${e.code}: ${e.message ?? ''}`);
  }
  log.error({ err: error }, 'unexpected error while serving a client');
  return new PgError(
    'XX000',
    `pgbranch internal error: ${error instanceof Error ? error.message : String(error)}`,
  );
}
