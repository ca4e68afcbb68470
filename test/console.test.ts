// The SQL admin console: psql and node-postgres connected to the database `pgbranch` through a real
// pgbranch, listing and changing branches, pools and clients while other clients use them.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connectEndedAfterEachTest, connectError, psql, queryOnce } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';
import {
  backendKey,
  fieldsOf,
  PROTOCOL_3_2,
  sendCancel,
  WireClient,
  type Message,
} from './support/wire-client.js';

let proxy: PgbranchProcess;
/** The configuration file, where admin.users is set (RELOAD reads it again). */
const configFile = path.join(tempDir('console-config'), 'pgbranch.yaml');
const connect = connectEndedAfterEachTest();

/** Settings that put a client in transaction mode whatever the configuration says. */
const TRANSACTION_MODE = { options: '-c pgbranch.pool_mode=transaction' };

beforeAll(async () => {
  fs.writeFileSync(configFile, 'admin:\n  users: operator, auditor\n');
  proxy = await startPgbranch({ args: ['--config', configFile] });
  await queryOnce(proxy.url('postgres'), 'create database app');
  await queryOnce(
    proxy.url('app'),
    "create table items (id int primary key, name text); insert into items values (1, 'root')",
  );
  await queryOnce(
    proxy.url('postgres'),
    "create role operator login password 'op-secret'; create role alice login password 'alice-secret' createdb",
  );
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  fs.rmSync(path.dirname(configFile), { recursive: true, force: true });
});

/** The console as node-postgres sees it, collecting the notices it sends. */
async function openConsole(user = 'postgres', password?: string) {
  const client = await connect(proxy.config('pgbranch', user, password));
  const notices: string[] = [];
  client.on('notice', (notice) => notices.push(notice.message ?? ''));
  return { client, notices };
}

/** The SQLSTATE (and message) a console command fails with. */
async function failure(client: pg.Client, sql: string): Promise<pg.DatabaseError> {
  try {
    await client.query(sql);
  } catch (error) {
    return error as pg.DatabaseError;
  }
  throw new Error(`succeeded: ${sql}`);
}

/** Resolves with the error a client is disconnected with. */
function disconnection(client: pg.Client): Promise<{ code?: string; message: string }> {
  return new Promise((resolve) => client.once('error', resolve));
}

/** A raw console session, logged in: the client and what its login brought. */
function openRawConsole(version?: number): Promise<{ client: WireClient; messages: Message[] }> {
  return WireClient.connect(proxy.port, {
    user: 'postgres',
    password: proxy.password,
    database: 'pgbranch',
    version,
  });
}

/** The cancel key node-postgres took from BackendKeyData. */
function keyOf(client: pg.Client): { processId: number; secret: number } {
  const c = client as unknown as { processID: number | null; secretKey: number | null };
  if (c.processID === null || c.secretKey === null) throw new Error('no BackendKeyData');
  return { processId: c.processID, secret: c.secretKey };
}

/**
 * A session on `database` straight to the server, bypassing the proxy: pgbranch cannot drain it, so
 * copying the database waits (up to branch.drain_timeout) until it ends.
 */
async function holdDirectly(database: string): Promise<pg.Client> {
  const holder = new pg.Client({ connectionString: proxy.directUrl(database) });
  holder.on('error', () => undefined);
  await holder.connect();
  return connect.track(holder);
}

/** Branch names of a database, as a fresh console session lists them. */
async function branchesOf(database: string): Promise<string[]> {
  const rows = await psqlRows(`SHOW BRANCHES ${database}`);
  return rows.map(([name]) => name!);
}

/** A FunctionCall message: call the function with this OID, no arguments, text result. */
function functionCall(oid: number): Buffer {
  const out = Buffer.alloc(15);
  out.write('F', 0, 'latin1');
  out.writeInt32BE(14, 1);
  out.writeInt32BE(oid, 5);
  // Argument formats, arguments, result format: none, none, text.
  out.writeInt16BE(0, 9);
  out.writeInt16BE(0, 11);
  out.writeInt16BE(0, 13);
  return out;
}

/** psql's unaligned rows of a console command, split into fields (tab-separated: help has `|`). */
async function psqlRows(sql: string): Promise<string[][]> {
  const result = await psql(proxy.url('pgbranch'), sql, { args: ['-F', '\t'] });
  expect(result.stderr).toBe('');
  expect(result.code).toBe(0);
  return result.stdout === '' ? [] : result.stdout.split('\n').map((line) => line.split('\t'));
}

describe('logging in', () => {
  it('refuses a role that is neither a superuser nor in admin.users with 42501 naming admin.users', async () => {
    const error = await connectError(proxy.config('pgbranch', 'alice', 'alice-secret'));
    expect(error?.code).toBe('42501');
    expect(error?.message).toBe(
      'permission denied for the pgbranch console: role "alice" is neither a superuser nor listed in admin.users',
    );
    await vi.waitFor(() =>
      expect(proxy.events('client_refused').at(-1)).toMatchObject({
        code: '42501',
        user: 'alice',
        database: 'pgbranch',
      }),
    );
  });

  it('lets in a role listed in admin.users, and a superuser', async () => {
    const { client } = await openConsole('operator', 'op-secret');
    expect((await client.query('SHOW VERSION')).rows).toEqual([
      { version: expect.stringMatching(/^pgbranch \d+\.\d+\.\d+/) },
    ]);
    const result = await psql(proxy.url('pgbranch'), 'show version');
    expect(result.stdout).toMatch(/^pgbranch /);
  });

  it('still authenticates: a wrong password is 28P01 as anywhere else', async () => {
    const error = await connectError(proxy.config('pgbranch', 'operator', 'wrong'));
    expect(error?.code).toBe('28P01');
  });
});

describe('SHOW', () => {
  it('SHOW HELP lists every command with its syntax', async () => {
    const rows = await psqlRows('SHOW HELP');
    const syntax = rows.map(([command]) => command);
    for (const command of [
      'SHOW BRANCHES [database | branch]',
      'SHOW POOLS',
      'SHOW CLIENTS',
      'SHOW SERVERS',
      'CREATE BRANCH db@name [FROM parent [SNAPSHOT s]] [TTL 7d] [EXPIRES 2026-12-01]',
      'RESET BRANCH db@name',
      'DROP BRANCH db@name [CASCADE]',
      'SNAPSHOT BRANCH db@name AS s',
      'RESTORE BRANCH db@name TO s',
      'PAUSE [db@name]',
      'RESUME [db@name]',
      'RELOAD',
    ]) {
      expect(syntax).toContain(command);
    }
  });

  it('SHOW BRANCHES lists a root and the branch a client made, with parent and clients', async () => {
    const user = await connect(proxy.config('app@show-me'));
    const rows = await psqlRows('show branches app');
    const byName = new Map(rows.map((row) => [row[0], row]));
    // name|parent|from_snapshot|created|last_connection|size|clone|clients|protected|expires|snapshots|database
    expect(byName.get('app')).toMatchObject({ 1: '', 8: 't' });
    const branch = byName.get('app@show-me')!;
    expect(branch[1]).toBe('app');
    expect(branch[3]).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00$/);
    expect(branch[5]).toMatch(/^\d+ (bytes|kB|MB)$/);
    expect(branch[7]).toBe('1');
    expect(branch[8]).toBe('f');
    expect(branch[11]).toBe('app@show-me');

    const { client } = await openConsole();
    const { rows: typed, fields } = await client.query('SHOW BRANCHES');
    expect(fields.find((f) => f.name === 'clients')?.dataTypeID).toBe(20);
    expect(typed.find((b) => b.name === 'app@show-me')).toMatchObject({
      parent: 'app',
      protected: false,
      clients: '1',
      created: expect.any(Date),
    });
    const one = await client.query('SHOW BRANCHES app@show-me');
    expect(one.rows.map((r) => r.name)).toEqual(['app@show-me']);
    expect((await failure(client, 'SHOW BRANCHES app@nowhere')).code).toBe('3D000');
    await user.end();
  });

  it('SHOW CLIENTS shows each client with the database it asked for, and says which is pinned', async () => {
    const pinned = await connect({ ...proxy.config('app@pinned'), ...TRANSACTION_MODE });
    const loose = await connect({ ...proxy.config('app@pinned'), ...TRANSACTION_MODE });
    // After the branch exists: a session on its parent would keep it from being made.
    const session = await connect(proxy.config('app'));
    await pinned.query('select pg_advisory_lock(42)');
    const pinnedPid = (await pinned.query('select pg_backend_pid() as pid')).rows[0].pid as number;
    const sessionPid = (await session.query('select pg_backend_pid() as pid')).rows[0]
      .pid as number;
    await loose.query('select 1');

    const { client } = await openConsole();
    const { rows } = await client.query('SHOW CLIENTS');
    const onPinned = rows.filter((r) => r.database === 'app@pinned');
    expect(onPinned).toHaveLength(2);
    expect(onPinned).toContainEqual(
      expect.objectContaining({
        user: 'postgres',
        served_from: 'app@pinned',
        mode: 'transaction',
        pinned: true,
        state: 'active',
        server_pid: String(pinnedPid),
        address: '127.0.0.1',
        connected_since: expect.any(Date),
      }),
    );
    expect(onPinned).toContainEqual(
      expect.objectContaining({ pinned: false, state: 'idle', server_pid: null }),
    );
    expect(rows).toContainEqual(
      expect.objectContaining({
        database: 'app',
        mode: 'session',
        pinned: false,
        server_pid: String(sessionPid),
      }),
    );
    // The console session asking is a client too.
    expect(rows).toContainEqual(
      expect.objectContaining({ database: 'pgbranch', mode: 'console', state: 'active' }),
    );

    const lines = await psqlRows('show clients');
    expect(lines.find((l) => l[7] === String(pinnedPid))?.slice(2, 7)).toEqual([
      'app@pinned',
      'app@pinned',
      'transaction',
      't',
      'active',
    ]);
  });

  it('SHOW POOLS and SHOW SERVERS show server connections in use and idle', async () => {
    const user = await connect({ ...proxy.config('app@servers'), application_name: 'servers' });
    const pid = (await user.query('select pg_backend_pid() as pid')).rows[0].pid as number;
    const { client } = await openConsole();

    const inUse = (await client.query('SHOW SERVERS')).rows.find((r) => r.pid === String(pid));
    expect(inUse).toMatchObject({
      database: 'app@servers',
      user: 'postgres',
      state: 'active',
      opened: expect.any(Date),
    });
    const pool = (await client.query('SHOW POOLS')).rows.find((r) => r.database === 'app@servers');
    expect(pool).toMatchObject({
      user: 'postgres',
      mode: 'session',
      active: '1',
      idle: '0',
      waiting: '0',
      paused: false,
      parameters: expect.stringContaining('application_name=servers'),
    });

    await user.end();
    await vi.waitFor(
      async () => {
        const idle = (await client.query('SHOW SERVERS')).rows.find((r) => r.pid === String(pid));
        expect(idle).toMatchObject({ state: 'idle', idle_since: expect.any(Date) });
      },
      { timeout: 10_000, interval: 50 },
    );
    const rows = await psqlRows('show pools');
    expect(rows.find((r) => r[0] === 'app@servers')?.slice(1, 5)).toEqual([
      'postgres',
      'session',
      '0',
      '1',
    ]);
  });
});

describe('changing branches', () => {
  it('CREATE BRANCH, RESET BRANCH and DROP BRANCH work while clients are connected', async () => {
    const { client, notices } = await openConsole();
    const created = await client.query('CREATE BRANCH app@sql-made FROM app');
    expect(created.command).toBe('CREATE');
    expect(notices.at(-1)).toMatch(/^pgbranch: created branch "app@sql-made" from app in \d+ ms/);
    // Creating it again from the same parent is a success that says so.
    await client.query('create branch app@sql-made from app@main');
    expect(notices.at(-1)).toBe('pgbranch: branch "app@sql-made" exists already, made from app');

    const session = await connect(proxy.config('app@sql-made'));
    const transaction = await connect({ ...proxy.config('app@sql-made'), ...TRANSACTION_MODE });
    await session.query("insert into items values (2, 'branch only')");
    const sessionEnded = disconnection(session);

    await client.query('RESET BRANCH "app@sql-made"');
    expect(notices.at(-1)).toBe('pgbranch: branch "app@sql-made" is a fresh copy of app');
    expect(await sessionEnded).toMatchObject({ code: '57P01' });
    // The transaction-mode client only paused; it sees the parent's state now.
    expect((await transaction.query('select id from items order by id')).rows).toEqual([{ id: 1 }]);

    const transactionEnded = disconnection(transaction);
    await client.query('DROP BRANCH app@sql-made');
    expect(notices.at(-1)).toBe('pgbranch: dropped "app@sql-made"');
    expect(await transactionEnded).toMatchObject({ code: '57P01' });
    expect((await client.query('SHOW BRANCHES app')).rows.map((r) => r.name)).not.toContain(
      'app@sql-made',
    );
  });

  it('refuses to drop or reset a root or a protected branch with 42501', async () => {
    const { client } = await openConsole();
    const root = await failure(client, 'DROP BRANCH app');
    expect(root.code).toBe('42501');
    expect(root.severity).toBe('ERROR');
    expect((await failure(client, 'RESET BRANCH app')).code).toBe('42501');

    await client.query('CREATE BRANCH app@keep; PROTECT BRANCH app@keep');
    const protectedDrop = await failure(client, 'DROP BRANCH app@keep');
    expect(protectedDrop.code).toBe('42501');
    expect(protectedDrop.message).toContain('protected');
    expect(
      (await client.query('SHOW BRANCHES app')).rows.find((r) => r.name === 'app@keep'),
    ).toMatchObject({ protected: true });
    await client.query('UNPROTECT BRANCH app@keep; DROP BRANCH app@keep');
  });

  it('creates a branch with an idle or an absolute expiry that SHOW BRANCHES shows', async () => {
    const { client } = await openConsole();
    await client.query(
      "CREATE BRANCH app@ci-1 TTL 2h; CREATE BRANCH app@ci-2 EXPIRES '2030-01-01'",
    );
    const rows = (await client.query('SHOW BRANCHES app')).rows;
    const idle = rows.find((r) => r.name === 'app@ci-1')!.expires as Date;
    expect(Math.abs(idle.getTime() - (Date.now() + 7_200_000))).toBeLessThan(60_000);
    const absolute = rows.find((r) => r.name === 'app@ci-2')!.expires as Date;
    expect(absolute.toISOString()).toMatch(/^2030-01-01T/);
    expect((await failure(client, 'CREATE BRANCH app@ci-3 TTL soon')).code).toBe('22023');
    await client.query('DROP BRANCH app@ci-1; DROP BRANCH app@ci-2');
  });

  it('drops a branch with children only with CASCADE', async () => {
    const { client, notices } = await openConsole();
    await client.query('CREATE BRANCH app@parent; CREATE BRANCH app@child FROM parent');
    expect((await failure(client, 'DROP BRANCH app@parent')).code).toBe('2BP01');
    await client.query('DROP BRANCH app@parent CASCADE');
    expect(notices.at(-1)).toBe('pgbranch: dropped "app@child", "app@parent"');
  });

  it('saves a restore point and restores it, and makes a branch from it', async () => {
    const { client } = await openConsole();
    await client.query('CREATE BRANCH "app@feature/migration"');
    const url = proxy.url('app@feature/migration');
    await queryOnce(url, "insert into items values (2, 'before')");
    await client.query('SNAPSHOT BRANCH "app@feature/migration" AS before');
    await queryOnce(url, 'drop table items');

    expect((await client.query('SHOW SNAPSHOTS "app@feature/migration"')).rows).toEqual([
      expect.objectContaining({ branch: 'app@feature/migration', name: 'before', auto: false }),
    ]);
    // A whole database; the root's own; a branch whose name holds "@" and ends like the root's.
    await client.query('SNAPSHOT BRANCH app AS nightly; CREATE BRANCH "app@release@main"');
    const names = async (sql: string) => (await client.query(sql)).rows.map((r) => r.name);
    expect((await names('SHOW SNAPSHOTS app')).sort()).toEqual(['before', 'nightly']);
    expect(await names('SHOW SNAPSHOTS app@main')).toEqual(['nightly']);
    expect(await names('SHOW SNAPSHOTS "app@release@main"')).toEqual([]);
    await client.query('DROP BRANCH "app@release@main"; DROP SNAPSHOT nightly OF app');
    await client.query('RESTORE BRANCH "app@feature/migration" TO before');
    const user = await connect(proxy.config('app@feature/migration'));
    expect((await user.query('select id from items order by id')).rows).toEqual([
      { id: 1 },
      { id: 2 },
    ]);
    await user.end();

    await client.query('CREATE BRANCH app@from-point FROM "feature/migration" SNAPSHOT before');
    const fromPoint = await connect(proxy.config('app@from-point'));
    expect((await fromPoint.query('select count(*)::int as n from items')).rows).toEqual([
      { n: 2 },
    ]);
    await fromPoint.end();
    await client.query(
      'DROP BRANCH app@from-point; DROP SNAPSHOT before OF "app@feature/migration"; DROP BRANCH "app@feature/migration"',
    );
  });
});

describe('PAUSE and RESUME', () => {
  it("holds a transaction-mode client's next transaction until RESUME", async () => {
    const user = await connect({ ...proxy.config('app@paused'), ...TRANSACTION_MODE });
    await user.query('select 1');
    const { client, notices } = await openConsole();

    await client.query('PAUSE app@paused');
    expect(notices.at(-1)).toBe('pgbranch: paused "app@paused"');
    expect(
      (await client.query('SHOW POOLS')).rows.find((r) => r.database === 'app@paused'),
    ).toMatchObject({ paused: true });

    // A branch made from the paused database pauses it too, and ends only its own pause.
    await client.query('CREATE BRANCH app@child-of-paused FROM app@paused');
    await client.query('PAUSE app@paused');
    expect(notices.at(-1)).toBe('pgbranch: "app@paused" was paused already');

    let answered = false;
    const query = user.query('select 2 as n').then((result) => {
      answered = true;
      return result;
    });
    await sleep(500);
    expect(answered).toBe(false);
    const waiting = (await client.query('SHOW CLIENTS')).rows.filter(
      (r) => r.database === 'app@paused',
    );
    expect(waiting).toContainEqual(expect.objectContaining({ state: 'waiting' }));

    await client.query('RESUME app@paused');
    expect(notices.at(-1)).toBe('pgbranch: resumed "app@paused"');
    expect((await query).rows).toEqual([{ n: 2 }]);
    await client.query('DROP BRANCH app@child-of-paused');
  });

  it('PAUSE and RESUME without a name cover every database that has a pool', async () => {
    const user = await connect({ ...proxy.config('app@paused'), ...TRANSACTION_MODE });
    await user.query('select 1');
    const { client, notices } = await openConsole();

    await client.query('PAUSE');
    expect(notices).toContain('pgbranch: paused "app@paused"');
    const paused = (await client.query('SHOW POOLS')).rows.filter((r) => r.paused);
    expect(paused.map((r) => r.database)).toContain('app@paused');

    await client.query('RESUME');
    expect(notices).toContain('pgbranch: resumed "app@paused"');
    expect((await client.query('SHOW POOLS')).rows.filter((r) => r.paused)).toEqual([]);
    expect((await user.query('select 3 as n')).rows).toEqual([{ n: 3 }]);
  });

  it('a PAUSE waiting for a session client blocks neither other consoles nor other clients', async () => {
    const session = await connect(proxy.config('app@held'));
    const other = await connect(proxy.config('app'));
    const { client: first, notices } = await openConsole();
    const { client: second } = await openConsole();

    const started = Date.now();
    const pausing = first.query('PAUSE app@held');
    await sleep(200);
    const clients = await second.query('SHOW CLIENTS');
    expect(clients.rows.map((r) => r.database)).toContain('app@held');
    expect((await other.query('select 1 as n')).rows).toEqual([{ n: 1 }]);
    expect(Date.now() - started).toBeLessThan(4000);

    // The session holds its server connection: PAUSE gives up waiting after branch.drain_timeout.
    await pausing;
    expect(Date.now() - started).toBeGreaterThanOrEqual(5000);
    expect(notices.at(-1)).toBe(
      'pgbranch: paused "app@held"; 1 server connection is still in use after 5000 ms',
    );
    expect((await session.query('select 2 as n')).rows).toEqual([{ n: 2 }]);
    await second.query('RESUME app@held');
  });

  it('RESUME of a database that is not paused says so and succeeds', async () => {
    const { client, notices } = await openConsole();
    expect((await client.query('RESUME app@never-paused')).command).toBe('RESUME');
    expect(notices.at(-1)).toBe('pgbranch: "app@never-paused" was not paused with PAUSE');
  });
});

describe('the protocol', () => {
  it('answers a syntax error with 42601 and a hint, and the session goes on', async () => {
    const { client } = await openConsole();
    const error = await failure(client, 'SHOW BRANCHS');
    expect(error.code).toBe('42601');
    expect(error.message).toBe('syntax error at or near "BRANCHS"');
    expect(error.hint).toContain('SHOW BRANCHES | SNAPSHOTS | POOLS');
    expect((await failure(client, 'SELECT 1')).hint).toContain('SHOW HELP describes them');
    expect((await client.query('show pools')).command).toBe('SHOW');

    const result = await psql(proxy.url('pgbranch'), 'DROP BRANCH');
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('ERROR:  syntax error at end of input');
    expect(result.stderr).toContain('HINT:  Write: DROP BRANCH db@name [CASCADE]');
  });

  it('runs several commands of one query in order, none of them after a syntax error', async () => {
    const { client } = await openConsole();
    const results = (await client.query('SHOW VERSION; show help;')) as unknown as pg.QueryResult[];
    expect(results.map((r) => r.command)).toEqual(['SHOW', 'SHOW']);
    expect((await failure(client, 'CREATE BRANCH app@never; DROP BRANCH')).code).toBe('42601');
    expect((await client.query('SHOW BRANCHES app')).rows.map((r) => r.name)).not.toContain(
      'app@never',
    );
  });

  it('refuses the extended query protocol with 0A000, answers Sync, and stays usable', async () => {
    const { client } = await openConsole();
    const error = await failure(client, { text: 'SHOW POOLS', values: [1] } as never);
    expect(error.code).toBe('0A000');
    expect((await client.query('SHOW POOLS')).command).toBe('SHOW');

    const { client: raw } = await WireClient.connect(proxy.port, {
      user: 'postgres',
      password: proxy.password,
      database: 'pgbranch',
    });
    // Parse, Bind, Execute, Sync: one error for the batch, then ReadyForQuery.
    raw.write(
      Buffer.concat([
        serialize.parse({ text: 'SHOW POOLS' }),
        serialize.bind({}),
        serialize.execute({}),
        serialize.sync(),
      ]),
    );
    const answer = await raw.until('Z');
    expect(answer.map((m) => m.type)).toEqual(['E', 'Z']);
    expect(fieldsOf(answer[0]!)).toMatchObject({ S: 'ERROR', C: '0A000' });
    raw.write(serialize.query('SHOW VERSION'));
    expect((await raw.until('Z')).map((m) => m.type)).toEqual(['T', 'D', 'C', 'Z']);
    raw.write(serialize.end());
    await raw.closed;
  });

  it('refuses a function call with 0A000 and ReadyForQuery at once, as no Sync follows one', async () => {
    const { client: raw } = await openRawConsole();
    // 1598: random(), were there a server to run it.
    raw.write(functionCall(1598));
    const answer = await raw.until('Z');
    expect(answer.map((m) => m.type)).toEqual(['E', 'Z']);
    expect(fieldsOf(answer[0]!)).toMatchObject({
      S: 'ERROR',
      C: '0A000',
      M: "pgbranch's console does not support function calls",
    });
    raw.write(serialize.query('SHOW VERSION'));
    expect((await raw.until('Z')).map((m) => m.type)).toEqual(['T', 'D', 'C', 'Z']);
    raw.write(serialize.end());
    await raw.closed;
  });
});

describe('pipelining', () => {
  it('answers a query sent the moment login succeeds, before the console greeted the client', async () => {
    // The query arrives while pgbranch looks up whether the role may use the console, before the
    // console's reader takes over from the login's. Several sessions, since it is a matter of timing.
    await Promise.all(
      Array.from({ length: 10 }, async () => {
        const raw = await WireClient.open(proxy.port);
        await raw.authenticate({
          user: 'postgres',
          password: proxy.password,
          database: 'pgbranch',
        });
        raw.write(serialize.query('SHOW VERSION'));
        const answer = await raw.until('Z', 2);
        expect(answer.map((m) => m.type).slice(-5)).toEqual(['Z', 'T', 'D', 'C', 'Z']);
        raw.write(serialize.end());
        await raw.closed;
      }),
    );
  });
});

describe('operations that take a while', () => {
  /** A root database whose copies wait while a direct session holds it. */
  const HELD = 'held';

  beforeAll(async () => {
    await queryOnce(proxy.url('postgres'), `create database ${HELD}`);
  });

  it('sends a NOTICE that an operation is still running once it has taken a second', async () => {
    const holder = await holdDirectly(HELD);
    const { client, notices } = await openConsole();
    const started = Date.now();
    const creating = client.query(`CREATE BRANCH ${HELD}@slow`);
    await vi.waitFor(
      () => expect(notices).toContain(`pgbranch: CREATE BRANCH "${HELD}@slow" is still running`),
      { timeout: 4000, interval: 20 },
    );
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
    await holder.end();
    expect((await creating).command).toBe('CREATE');
    expect(notices.at(-1)).toMatch(/^pgbranch: created branch "held@slow" from held in \d+ ms/);
  });

  it('completes an operation even when its console session ends before it does', async () => {
    const holder = await holdDirectly(HELD);
    const { client: raw } = await openRawConsole();
    raw.write(serialize.query(`CREATE BRANCH ${HELD}@orphan`));
    const [notice] = await raw.until('N');
    expect(fieldsOf(notice!).M).toBe(`pgbranch: CREATE BRANCH "${HELD}@orphan" is still running`);
    raw.destroy();
    await holder.end();
    await vi.waitFor(async () => expect(await branchesOf(HELD)).toContain(`${HELD}@orphan`), {
      timeout: 10_000,
      interval: 100,
    });
  });

  it('Ctrl-C in psql stops the wait with 57014, and the operation goes on in pgbranch', async () => {
    const holder = await holdDirectly(HELD);
    const child = spawn(
      'psql',
      ['-X', '-d', proxy.url('pgbranch'), '-c', `CREATE BRANCH ${HELD}@ctrl-c`],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
    await vi.waitFor(() => expect(stderr).toContain('is still running'), {
      timeout: 4000,
      interval: 20,
    });
    child.kill('SIGINT');
    expect(await exited).toBe(1);
    expect(stderr).toContain(
      `ERROR:  canceled waiting for CREATE BRANCH "${HELD}@ctrl-c": the operation itself goes on in pgbranch`,
    );
    expect(stderr).toContain('HINT:  SHOW BRANCHES shows when it is done.');
    expect(await branchesOf(HELD)).not.toContain(`${HELD}@ctrl-c`);

    await holder.end();
    await vi.waitFor(async () => expect(await branchesOf(HELD)).toContain(`${HELD}@ctrl-c`), {
      timeout: 10_000,
      interval: 100,
    });
  });

  it('a cancel with the key from BackendKeyData releases the client, whose session goes on', async () => {
    const holder = await holdDirectly(HELD);
    const { client, notices } = await openConsole();
    const creating = client.query(`CREATE BRANCH ${HELD}@canceled`).then(
      () => undefined,
      (error: pg.DatabaseError) => error,
    );
    await vi.waitFor(() => expect(notices.join('\n')).toContain('is still running'), {
      timeout: 4000,
      interval: 20,
    });
    const { processId, secret } = keyOf(client);
    await sendCancel(proxy.port, processId, secret);
    expect(await creating).toMatchObject({
      code: '57014',
      severity: 'ERROR',
      message: `canceled waiting for CREATE BRANCH "${HELD}@canceled": the operation itself goes on in pgbranch`,
      hint: 'SHOW BRANCHES shows when it is done.',
    });
    expect((await client.query('SHOW VERSION')).command).toBe('SHOW');

    await holder.end();
    // Done once the service has logged it; the command's answer would come right after.
    await vi.waitFor(
      () =>
        expect(proxy.events('branch_created')).toContainEqual(
          expect.objectContaining({ branch: 'canceled', root: HELD }),
        ),
      { timeout: 10_000, interval: 50 },
    );
    await sleep(200);
    expect((await client.query('SHOW VERSION')).rows).toHaveLength(1);
    expect((await client.query(`SHOW BRANCHES ${HELD}`)).rows.map((r) => r.name)).toContain(
      `${HELD}@canceled`,
    );
    // The canceled command's own answer never reaches the session that stopped waiting for it.
    expect(notices.filter((n) => n.includes('created branch'))).toEqual([]);
  });

  it('a cancel while no command runs does nothing, not even to the next command', async () => {
    const { client } = await openConsole();
    const { processId, secret } = keyOf(client);
    for (let i = 0; i < 3; i++) {
      await sendCancel(proxy.port, processId, secret);
      expect((await client.query('RESUME app@never-paused')).command).toBe('RESUME');
    }
  });

  it('gives a console session a cancel key as long as its protocol version makes them', async () => {
    const { client: v30, messages: login30 } = await openRawConsole();
    const { client: v32, messages: login32 } = await openRawConsole(PROTOCOL_3_2);
    expect(backendKey(login30).secret).toHaveLength(4);
    expect(backendKey(login32).secret).toHaveLength(32);
    expect(backendKey(login30).processId).not.toBe(backendKey(login32).processId);
    v30.destroy();
    v32.destroy();
  });
});

describe('the log', () => {
  it('logs each command that changes something as console_command, with the role that ran it', async () => {
    const { client } = await openConsole('operator', 'op-secret');
    await client.query('CREATE BRANCH app@logged TTL 1d');
    await client.query('PROTECT BRANCH app@logged; UNPROTECT BRANCH app@logged');
    await client.query('SNAPSHOT BRANCH app@logged AS s1; RESTORE BRANCH app@logged TO s1');
    await client.query('DROP SNAPSHOT s1 OF app@logged; RESET BRANCH app@logged');
    await client.query('PAUSE app@logged; RESUME app@logged; RELOAD');
    await client.query('SHOW BRANCHES app; SHOW POOLS');
    await client.query('DROP BRANCH app@logged');
    await vi.waitFor(() =>
      expect(
        proxy
          .events('console_command')
          .filter((e) => e.user === 'operator')
          .map((e) => [e.command, e.target]),
      ).toEqual([
        ['CREATE BRANCH', 'app@logged'],
        ['PROTECT BRANCH', 'app@logged'],
        ['UNPROTECT BRANCH', 'app@logged'],
        ['SNAPSHOT BRANCH', 'app@logged'],
        ['RESTORE BRANCH', 'app@logged'],
        ['DROP SNAPSHOT', 'app@logged'],
        ['RESET BRANCH', 'app@logged'],
        ['PAUSE', 'app@logged'],
        ['RESUME', 'app@logged'],
        ['RELOAD', undefined],
        ['DROP BRANCH', 'app@logged'],
      ]),
    );
  });
});

describe('RELOAD', () => {
  it('reads the configuration file again: a role added to admin.users may log in', async () => {
    const { client, notices } = await openConsole();
    expect((await client.query('RELOAD')).command).toBe('RELOAD');
    expect(notices.at(-1)).toBe(
      'pgbranch: configuration reloaded: nothing changed that applies while running',
    );
    expect((await connectError(proxy.config('pgbranch', 'alice', 'alice-secret')))?.code).toBe(
      '42501',
    );

    fs.writeFileSync(configFile, 'admin:\n  users: operator, auditor, alice\n');
    try {
      await client.query('reload;');
      expect(notices.at(-1)).toBe('pgbranch: configuration reloaded: applied admin.users');
      const { client: alice } = await openConsole('alice', 'alice-secret');
      expect((await alice.query('SHOW POOLS')).command).toBe('SHOW');
    } finally {
      fs.writeFileSync(configFile, 'admin:\n  users: operator, auditor\n');
      await client.query('RELOAD');
    }
  });

  it('keeps the running configuration when the file is broken, and says why', async () => {
    const { client } = await openConsole();
    fs.writeFileSync(configFile, 'admin:\n  userz: alice\n');
    try {
      const error = await failure(client, 'RELOAD');
      expect(error.code).toBe('F0000');
      expect(error.message).toContain('configuration not reloaded');
      expect(error.message).toContain('admin.userz');
    } finally {
      fs.writeFileSync(configFile, 'admin:\n  users: operator, auditor\n');
    }
    expect((await client.query('SHOW VERSION')).command).toBe('SHOW');
  });
});
