// Protocol 3.2 (PostgreSQL 18): a client that asks for it is served it, with a 32-byte cancel
// secret, exactly as PostgreSQL 18 itself answers; pgbranch asks its servers for 3.2 too, keeps
// their long cancel keys, and goes on at 3.0 with a server that offers only that (PostgreSQL 15).
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { afterAll, beforeAll, describe, expect, it, vi, type TestContext } from 'vitest';
import { openServerSession, type ServerSession } from '../src/upstream/server-connection.js';
import type { Endpoint } from '../src/upstream/endpoint.js';
import { psql } from './support/clients.js';
import { connectDirect } from './support/observe.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';
import {
  backendKey,
  fieldsOf,
  PROTOCOL_3_0,
  PROTOCOL_3_2,
  sendCancel,
  WireClient,
  type Message,
} from './support/wire-client.js';

const UPSTREAM = 'postgres://postgres@127.0.0.1:5432/postgres';
const suffix = randomBytes(4).toString('hex');
/** What this file makes on the shared PostgreSQL 15 carries the suffix, and is dropped afterwards. */
const ROLE = `pgb32_user_${suffix}`;
const ROLE_PASSWORD = `secret-${suffix}`;

let proxy: PgbranchProcess;
/** pgbranch in front of the machine's PostgreSQL 15, when there is one. */
let proxy15: PgbranchProcess | undefined;
let unavailable: string | undefined;

beforeAll(async () => {
  const started = startPgbranch();
  try {
    const admin = new pg.Client({ connectionString: UPSTREAM, connectionTimeoutMillis: 5000 });
    await admin.connect();
    try {
      const { rows } = await admin.query<{ num: string }>(
        "select current_setting('server_version_num') as num",
      );
      if (Number(rows[0]!.num) >= 180000) {
        unavailable = `the server on 127.0.0.1:5432 is ${rows[0]!.num}, not older than 18`;
      } else {
        await admin.query("set password_encryption = 'scram-sha-256'");
        await admin.query(`create role ${ROLE} login password '${ROLE_PASSWORD}'`);
      }
    } finally {
      await admin.end();
    }
  } catch (error) {
    unavailable = `no PostgreSQL on 127.0.0.1:5432: ${(error as Error).message}`;
  }
  if (unavailable === undefined) proxy15 = await startPgbranch({ args: ['--upstream', UPSTREAM] });
  proxy = await started;
  expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
});

afterAll(async () => {
  await Promise.all([proxy?.stop(), proxy15?.stop()]);
  if (unavailable !== undefined) return;
  const admin = new pg.Client({ connectionString: UPSTREAM });
  await admin.connect();
  await admin.query(`drop role if exists ${ROLE}`);
  await admin.end();
});

function requireUpstream(ctx: TestContext): void {
  if (unavailable === undefined) return;
  console.warn(`skipped "${ctx.task.name}": ${unavailable}`);
  ctx.skip(unavailable);
}

/** Logs in with raw protocol at `version`; the client and what came up to ReadyForQuery. */
function login(
  port: number,
  version: number,
  options: { user?: string; password?: string; parameters?: Record<string, string> } = {},
) {
  return WireClient.connect(port, {
    user: options.user ?? 'postgres',
    password: options.password ?? proxy.password,
    database: 'app',
    version,
    parameters: options.parameters,
  });
}

interface Key {
  processId: number;
  secret: Buffer;
}

/** What NegotiateProtocolVersion said, if it came: the version offered and the options refused. */
function negotiation(messages: Message[]): { version: string; options: string[] } | undefined {
  const message = messages.find((m) => m.type === 'v');
  if (!message) return undefined;
  const version = message.body.readInt32BE(0);
  const count = message.body.readInt32BE(4);
  const options = message.body.toString('utf8', 8).split('\0').slice(0, count);
  return { version: `${version >>> 16}.${version & 0xffff}`, options };
}

/**
 * Starts a long query, waits until `server` (a direct connection) sees it run, cancels it with
 * `key` through pgbranch, and returns the SQLSTATE the query ended with.
 */
async function cancelled(
  port: number,
  client: WireClient,
  key: Key,
  server: pg.Client,
): Promise<string | undefined> {
  const sql = `select pg_sleep(30) -- ${randomBytes(4).toString('hex')}`;
  client.write(serialize.query(sql));
  await vi.waitFor(
    async () => {
      const { rows } = await server.query(
        "select 1 from pg_stat_activity where query = $1 and state = 'active'",
        [sql],
      );
      expect(rows).toHaveLength(1);
    },
    { timeout: 10_000, interval: 20 },
  );
  await sendCancel(port, key.processId, key.secret);
  const reply = await client.until('Z', 1, 5000);
  const error = reply.find((m) => m.type === 'E');
  return error && fieldsOf(error).C;
}

/** The embedded server behind `proxy`, over its TCP port with the superuser's password. */
function embeddedPort(): number {
  return Number(new URL(proxy.directUrl('postgres')).port);
}

describe('clients of protocol 3.2', () => {
  it('are served 3.2: no NegotiateProtocolVersion, and a 32-byte cancel secret', async () => {
    const { client, messages } = await login(proxy.port, PROTOCOL_3_2);
    expect(negotiation(messages)).toBeUndefined();
    expect(backendKey(messages).secret).toHaveLength(32);
    client.write(serialize.query('select 1'));
    expect((await client.until('Z')).map((m) => m.type).join('')).toBe('TDCZ');
    client.destroy();
  });

  it('leave clients of protocol 3.0 their 4-byte secret', async () => {
    const { client, messages } = await login(proxy.port, PROTOCOL_3_0);
    expect(negotiation(messages)).toBeUndefined();
    expect(backendKey(messages).secret).toHaveLength(4);
    client.destroy();
  });

  it.each([
    ['3.0', PROTOCOL_3_0, {}],
    ['3.1', (3 << 16) | 1, {}],
    ['3.2', PROTOCOL_3_2, {}],
    ['3.3', (3 << 16) | 3, {}],
    ['3.65535', (3 << 16) | 0xffff, {}],
    ['3.0 with a _pq_ option', PROTOCOL_3_0, { '_pq_.test_extension': 'on' }],
    ['3.2 with _pq_ options', PROTOCOL_3_2, { '_pq_.one': 'on', '_pq_.two': 'x' }],
    ['3.7 with a _pq_ option', (3 << 16) | 7, { '_pq_.test_extension': 'on' }],
  ])('answer a request for %s exactly as PostgreSQL 18 itself does', async (_, version, extra) => {
    const answer = async (port: number) => {
      const { client, messages } = await login(port, version, { parameters: extra });
      client.destroy();
      return {
        negotiated: negotiation(messages),
        secretLength: backendKey(messages).secret.length,
      };
    };
    const fromServer = await answer(embeddedPort());
    expect(await answer(proxy.port)).toEqual(fromServer);
  });

  it.each([
    ['session', {}],
    ['transaction', { options: '-c pgbranch.pool_mode=transaction' }],
  ])('cancel a query with their 32-byte secret in %s mode', async (_, parameters) => {
    const { client, messages } = await login(proxy.port, PROTOCOL_3_2, { parameters });
    const key = backendKey(messages);
    const direct = await connectDirect(proxy);
    try {
      expect(await cancelled(proxy.port, client, key, direct)).toBe('57014');
    } finally {
      await direct.end();
    }
    // The session goes on.
    client.write(serialize.query('select 1'));
    expect((await client.until('Z')).map((m) => m.type).join('')).toBe('TDCZ');
    client.destroy();
  });

  it('cancel nothing with only the first 4 bytes of their secret', async () => {
    const { client, messages } = await login(proxy.port, PROTOCOL_3_2);
    const key = backendKey(messages);
    client.write(serialize.query('select pg_sleep(0.7)'));
    await sendCancel(proxy.port, key.processId, key.secret.subarray(0, 4));
    const reply = await client.until('Z');
    expect(reply.map((m) => m.type).join('')).toBe('TDCZ');
    client.destroy();
  });
});

describe('server connections', () => {
  const open = (endpoint: Endpoint, user: string): Promise<ServerSession> =>
    openServerSession({
      endpoint,
      user,
      database: 'postgres',
      parameters: new Map(),
      login: { method: 'none' },
      timeoutMs: 10_000,
    });

  it('are opened at 3.2 with PostgreSQL 18, whose 32-byte cancel key pgbranch keeps', async () => {
    // The private socket pgbranch itself uses, which trusts its peer (the tests run as root).
    const session = await open(
      { socketDir: path.join(proxy.dataDir, 'run'), port: embeddedPort() },
      'postgres',
    );
    expect(session.secretKey).toHaveLength(32);
    session.socket.destroy();
  });

  it('go on at 3.0 with a server that offers only that (PostgreSQL 15), keeping its 4-byte key', async (ctx) => {
    requireUpstream(ctx);
    const session = await open({ host: '127.0.0.1', port: 5432 }, 'postgres');
    expect(session.secretKey).toHaveLength(4);
    expect(session.parameters.get('server_version')).toMatch(/^15\./);
    session.socket.destroy();
  });

  it('to PostgreSQL 15 serve a 3.2 client, whose long-secret cancel reaches the server', async (ctx) => {
    requireUpstream(ctx);
    const credentials = { user: ROLE, password: ROLE_PASSWORD };
    const { client, messages } = await WireClient.connect(proxy15!.port, {
      ...credentials,
      database: 'postgres',
      version: PROTOCOL_3_2,
    });
    expect(negotiation(messages)).toBeUndefined();
    const key = backendKey(messages);
    expect(key.secret).toHaveLength(32);
    client.write(serialize.query("select current_setting('server_version') as v"));
    const reply = await client.until('Z');
    expect(reply[1]!.body.toString('utf8', 6)).toMatch(/^15\./);
    const admin = new pg.Client({ connectionString: UPSTREAM });
    await admin.connect();
    try {
      expect(await cancelled(proxy15!.port, client, key, admin)).toBe('57014');
    } finally {
      await admin.end();
    }
    client.write(serialize.query('select 1'));
    expect((await client.until('Z')).map((m) => m.type).join('')).toBe('TDCZ');
    client.destroy();
  });
});
