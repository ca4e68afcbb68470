// Authenticates a client against its role's verifier before anything else happens, and returns
// what the proxy needs to log in to the server as that role (SCRAM pass-through, or the md5 hash),
// with the exchange's last words to the client, which the caller sends once the client is in.
import type net from 'node:net';
import { createHash } from 'node:crypto';
import { errors, PgError } from '../errors.js';
import {
  authenticationMd5,
  authenticationOk,
  authenticationSasl,
  authenticationSaslContinue,
  authenticationSaslFinal,
} from '../wire/backend.js';
import type { MessageReader } from '../wire/message-reader.js';
import type { ServerLogin } from '../upstream/server-connection.js';
import {
  parseScramVerifier,
  SCRAM_MECHANISM,
  SCRAM_PLUS_MECHANISM,
  ScramProtocolError,
  ScramServerExchange,
  type ScramVerifier,
} from './scram.js';
import { isMd5Hash, md5Verify } from './md5.js';
import { randomBytes } from './random.js';
import type { RoleSource } from './roles.js';

export type AuthMethod = 'scram-sha-256' | 'md5' | 'trust';

export interface AuthContext {
  socket: net.Socket;
  reader: MessageReader;
  user: string;
  method: AuthMethod;
  roles: RoleSource;
  timeoutMs: number;
  /**
   * tls-server-end-point data of the client's TLS connection: SCRAM-SHA-256-PLUS is offered with
   * it; undefined without TLS.
   */
  channelBinding?: Buffer | undefined;
}

export interface Authenticated {
  login: ServerLogin;
  /**
   * What ends the exchange for the client: SCRAM's server-final message (if SCRAM), then
   * AuthenticationOk. Not sent yet: the caller sends it, with the greeting when it can.
   */
  answer: Buffer;
}

export async function authenticateClient(ctx: AuthContext): Promise<Authenticated> {
  if (ctx.method === 'trust') {
    const role = await ctx.roles.lookup(ctx.user);
    if (!role) throw new PgError('28000', `role "${ctx.user}" does not exist`);
    if (!role.canLogin) throw errors.cannotLogin(ctx.user);
    return { login: { method: 'none' }, answer: authenticationOk() };
  }
  const role = await ctx.roles.lookup(ctx.user);
  const stored = role?.password ?? null;
  let login: ServerLogin | undefined;
  let answer = authenticationOk();
  if (stored !== null && isMd5Hash(stored)) {
    login = (await md5Exchange(ctx, stored)) ? { method: 'md5', storedHash: stored } : undefined;
  } else if (ctx.method === 'md5' && (stored === null || !parseScramVerifier(stored))) {
    // As PostgreSQL's md5 method: roles without a usable verifier get the md5 challenge too.
    await md5Exchange(ctx, MOCK_MD5);
  } else {
    // Unknown roles and roles without a password go through the same exchange with a verifier
    // nobody knows, so that a failure does not tell an attacker which roles exist.
    const verifier = (stored !== null && parseScramVerifier(stored)) || mockVerifier(ctx.user);
    const result = await scramExchange(ctx, verifier);
    if (result && stored !== null) {
      login = { method: 'scram', keys: result.keys };
      answer = Buffer.concat([authenticationSaslFinal(result.serverFinal), answer]);
    }
  }
  if (!role) throw errors.roleMissing(ctx.user);
  if (stored === null) throw errors.noPassword(ctx.user);
  if (!login) throw errors.authFailed(ctx.user);
  if (role.expired) throw errors.authFailed(ctx.user);
  if (!role.canLogin) throw errors.cannotLogin(ctx.user);
  return { login, answer };
}

async function md5Exchange(ctx: AuthContext, storedHash: string): Promise<boolean> {
  const salt = randomBytes(4);
  ctx.socket.write(authenticationMd5(salt));
  const { body } = await ctx.reader.nextMessage(ctx.timeoutMs, 'p');
  const response = body.subarray(0, Math.max(0, body.indexOf(0))).toString('utf8');
  return md5Verify(storedHash, salt, response);
}

async function scramExchange(ctx: AuthContext, verifier: ScramVerifier) {
  // As PostgreSQL: the bound mechanism first where the connection can bind.
  ctx.socket.write(
    authenticationSasl(
      ctx.channelBinding ? [SCRAM_PLUS_MECHANISM, SCRAM_MECHANISM] : [SCRAM_MECHANISM],
    ),
  );
  const initial = await ctx.reader.nextMessage(ctx.timeoutMs, 'p');
  const nameEnd = initial.body.indexOf(0);
  if (nameEnd < 0 || initial.body.length < nameEnd + 5) {
    throw errors.protocolViolation('malformed SASLInitialResponse message');
  }
  const mechanism = initial.body.subarray(0, nameEnd).toString('utf8');
  const plus = mechanism === SCRAM_PLUS_MECHANISM && ctx.channelBinding !== undefined;
  if (mechanism !== SCRAM_MECHANISM && !plus) {
    throw errors.protocolViolation(
      `client selected an invalid SASL authentication mechanism "${mechanism}"`,
    );
  }
  const length = initial.body.readInt32BE(nameEnd + 1);
  const data = initial.body.subarray(nameEnd + 5);
  if (length !== data.length)
    throw errors.protocolViolation('malformed SASLInitialResponse message');
  const exchange = new ScramServerExchange(verifier, undefined, {
    binding: ctx.channelBinding,
    plus,
  });
  try {
    ctx.socket.write(authenticationSaslContinue(exchange.first(data)));
    const response = await ctx.reader.nextMessage(ctx.timeoutMs, 'p');
    const result = exchange.final(response.body);
    return result.ok ? result : undefined;
  } catch (error) {
    if (error instanceof ScramProtocolError) {
      throw errors.protocolViolation(`malformed SCRAM message: ${error.message}`);
    }
    throw error;
  }
}

/** An md5 hash no password produces in practice: the exchange runs, and always fails. */
const MOCK_MD5 = `md5${randomBytes(16).toString('hex')}`;

/** A stable, secret-looking verifier for roles that have none, like PostgreSQL's mock salt. */
const mockSecret = randomBytes(32);
function mockVerifier(user: string): ScramVerifier {
  const seed = createHash('sha256').update(mockSecret).update(user).digest();
  return {
    iterations: 4096,
    salt: seed.subarray(0, 16),
    storedKey: randomBytes(32),
    serverKey: randomBytes(32),
  };
}
