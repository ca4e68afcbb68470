// Opens one server connection: startup, authentication on the client's behalf, and the
// ParameterStatus/BackendKeyData the server announces. After that the socket belongs to the relay.
// pgbranch asks every server for protocol 3.2, for PostgreSQL 18's long cancel keys; older servers
// answer NegotiateProtocolVersion in the same flight as their authentication request, so asking
// costs nothing, and the connection goes on at the version they offer. When the upstream URL asks
// for TLS (sslmode), the SSLRequest and the handshake come first (server-tls.ts).
import type net from 'node:net';
import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { serialize } from 'pg-protocol';
import { ScramClientExchange, type ScramKeys } from '../auth/scram.js';
import { md5Response } from '../auth/md5.js';
import { errors, PgError } from '../errors.js';
import { startupMessage } from '../wire/frontend.js';
import { NEWEST_MINOR_VERSION } from '../wire/startup.js';
import { connectSocket, describeEndpoint, type Endpoint } from './endpoint.js';
import { asksForTls, startServerTls, type UpstreamTls } from './server-tls.js';

/** How to answer the server's authentication request without the user's password. */
export type ServerLogin =
  { method: 'none' } | { method: 'scram'; keys: ScramKeys } | { method: 'md5'; storedHash: string };

export interface ServerConnectOptions {
  endpoint: Endpoint;
  user: string;
  database: string;
  /** Startup parameters besides user and database, exactly as the client sent them. */
  parameters: ReadonlyMap<string, string>;
  login: ServerLogin;
  timeoutMs: number;
}

export interface ServerSession {
  socket: net.Socket;
  processId: number;
  /** The server's own cancel key: 4 bytes in protocol 3.0, up to 256 in 3.2 (PostgreSQL 18: 32). */
  secretKey: Buffer;
  /** Every ParameterStatus the server sent during startup, in order. */
  parameters: Map<string, string>;
}

/** A server's ErrorResponse, kept whole so the client sees the server's own words and code. */
export class ServerError extends PgError {
  constructor(fields: {
    code?: string;
    message: string;
    detail?: string;
    hint?: string;
    severity?: string;
  }) {
    super(
      fields.code ?? 'XX000',
      fields.message,
      fields.detail,
      fields.hint,
      fields.severity === 'ERROR' ? 'ERROR' : 'FATAL',
    );
  }
}

const NEGOTIATE_PROTOCOL_VERSION = 0x76; // 'v'
const BACKEND_KEY_DATA = 0x4b; // 'K'
/** The longest cancel key protocol 3.2 allows. */
const MAX_CANCEL_KEY = 256;

export async function openServerSession(options: ServerConnectOptions): Promise<ServerSession> {
  const settings = 'host' in options.endpoint ? options.endpoint.tls : undefined;
  if (settings?.mode !== 'allow') return startSession(options, settings);
  // As libpq's allow: plain text first, and TLS (unverified) when the server refuses that.
  try {
    return await startSession(options, undefined);
  } catch (error) {
    if (!(error instanceof ServerError && error.code === '28000')) throw error;
    return startSession(options, { ...settings, mode: 'require' });
  }
}

function startSession(
  options: ServerConnectOptions,
  tlsSettings: UpstreamTls | undefined,
): Promise<ServerSession> {
  return new Promise((resolve, reject) => {
    const raw = connectSocket(options.endpoint);
    /** The socket the protocol runs on: raw, or the TLS socket over it. */
    let socket: net.Socket = raw;
    const parser = new Parser();
    const parameters = new Map<string, string>();
    let processId = 0;
    let secretKey = Buffer.alloc(0);
    let scram: ScramClientExchange | undefined;
    let settled = false;

    const fail = (error: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      raw.destroy();
      reject(error);
    };
    const timer = setTimeout(
      () =>
        fail(
          errors.upstreamUnavailable(
            `no answer from ${describeEndpoint(options.endpoint)} within ${options.timeoutMs} ms`,
          ),
        ),
      options.timeoutMs,
    );

    const onMessage = (msg: BackendMessage) => {
      switch (msg.name) {
        case 'authenticationOk':
          return;
        case 'authenticationMD5Password': {
          if (options.login.method !== 'md5') return fail(loginImpossible(options, 'md5'));
          const salt = (msg as unknown as { salt: Buffer }).salt;
          socket.write(serialize.password(md5Response(options.login.storedHash, salt)));
          return;
        }
        case 'authenticationSASL': {
          const mechanisms = (msg as unknown as { mechanisms: string[] }).mechanisms;
          if (options.login.method !== 'scram' || !mechanisms.includes('SCRAM-SHA-256')) {
            return fail(loginImpossible(options, mechanisms.join(', ')));
          }
          scram = new ScramClientExchange(options.login.keys);
          socket.write(
            serialize.sendSASLInitialResponseMessage(
              'SCRAM-SHA-256',
              scram.initialResponse().toString('utf8'),
            ),
          );
          return;
        }
        case 'authenticationSASLContinue': {
          const data = (msg as unknown as { data: string }).data;
          try {
            socket.write(
              serialize.sendSCRAMClientFinalMessage(
                scram!.continue(Buffer.from(data)).toString('utf8'),
              ),
            );
          } catch (error) {
            fail(staleKeys(options, error));
          }
          return;
        }
        case 'authenticationSASLFinal': {
          const data = (msg as unknown as { data: string }).data;
          try {
            scram!.finish(Buffer.from(data));
          } catch (error) {
            fail(errors.upstreamUnavailable(`server failed SCRAM verification: ${String(error)}`));
          }
          return;
        }
        case 'authenticationCleartextPassword':
          return fail(loginImpossible(options, 'password'));
        case 'parameterStatus': {
          const p = msg as unknown as { parameterName: string; parameterValue: string };
          parameters.set(p.parameterName, p.parameterValue);
          return;
        }
        case 'notice':
          return;
        case 'readyForQuery':
          settled = true;
          clearTimeout(timer);
          for (const on of new Set([raw, socket])) {
            on.removeListener('data', onData);
            on.removeListener('error', onError);
            on.removeListener('close', onClose);
          }
          resolve({ socket, processId, secretKey, parameters });
          return;
        case 'error': {
          const e = msg as unknown as {
            code?: string;
            message: string;
            detail?: string;
            hint?: string;
            severity?: string;
          };
          fail(new ServerError(e));
          return;
        }
        default:
          fail(
            errors.protocolViolation(`unexpected message ${msg.name} from server during startup`),
          );
      }
    };
    // pg-protocol's parser knows neither NegotiateProtocolVersion nor a cancel key longer than 4
    // bytes: those two are read here, every other message is handed to it whole.
    let unread: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      unread = unread.length === 0 ? chunk : Buffer.concat([unread, chunk]);
      while (!settled && unread.length >= 5) {
        const length = unread.readInt32BE(1);
        if (length < 4) {
          return fail(errors.protocolViolation(`invalid message length ${length} from server`));
        }
        if (unread.length < 1 + length) return;
        const frame = unread.subarray(0, 1 + length);
        unread = unread.subarray(1 + length);
        const body = frame.subarray(5);
        if (frame[0] === NEGOTIATE_PROTOCOL_VERSION) {
          // The server speaks an older 3.x and says which; our startup packet had no `_pq_.`
          // options for it to refuse.
          const version = body.length >= 4 ? body.readInt32BE(0) : 0;
          if (version >>> 16 !== 3 || (version & 0xffff) > NEWEST_MINOR_VERSION) {
            return fail(
              errors.protocolViolation(
                `server offered protocol ${version >>> 16}.${version & 0xffff} instead of 3.${NEWEST_MINOR_VERSION}`,
              ),
            );
          }
        } else if (frame[0] === BACKEND_KEY_DATA) {
          if (body.length < 8 || body.length > 4 + MAX_CANCEL_KEY) {
            return fail(errors.protocolViolation('invalid BackendKeyData from server'));
          }
          processId = body.readInt32BE(0);
          secretKey = Buffer.from(body.subarray(4));
        } else {
          parser.parse(frame, onMessage);
        }
      }
    };
    const onError = (error: Error) =>
      fail(errors.upstreamUnavailable(`${describeEndpoint(options.endpoint)}: ${error.message}`));
    const onClose = () =>
      fail(
        errors.upstreamUnavailable(`${describeEndpoint(options.endpoint)} closed the connection`),
      );

    const start = (on: net.Socket) => {
      if (settled) return void on.destroy();
      socket = on;
      if (on !== raw) {
        on.on('error', onError);
        on.on('close', onClose);
      }
      on.on('data', onData);
      on.write(
        startupMessage(
          [['user', options.user], ['database', options.database], ...options.parameters],
          NEWEST_MINOR_VERSION,
        ),
      );
    };
    raw.on('error', onError);
    raw.on('close', onClose);
    raw.once('connect', () => {
      if (!asksForTls(tlsSettings)) return start(raw);
      // The negotiation watches the socket itself, and says better what went wrong.
      raw.removeListener('error', onError);
      raw.removeListener('close', onClose);
      startServerTls(raw, tlsSettings!, describeEndpoint(options.endpoint)).then((on) => {
        if (on === raw) {
          raw.on('error', onError);
          raw.on('close', onClose);
        }
        start(on);
      }, fail);
    });
  });
}

function loginImpossible(options: ServerConnectOptions, asked: string): PgError {
  return new PgError(
    '28000',
    `pgbranch cannot log in to the server as "${options.user}": the server asks for ${asked}`,
    options.login.method === 'none'
      ? 'pgbranch has no keys for this role: clients authenticated with trust, so no password exchange took place.'
      : `pgbranch has ${options.login.method} keys for this role from the client's login, which that method cannot use.`,
    'Configure the server to use scram-sha-256 (or md5) for connections from pgbranch, or trust them.',
  );
}

function staleKeys(options: ServerConnectOptions, error: unknown): PgError {
  return new PgError(
    '28P01',
    `pgbranch cannot log in to the server as "${options.user}": ${error instanceof Error ? error.message : String(error)}`,
    undefined,
    'The password may have changed on the server since this client logged in; connect again.',
  );
}
