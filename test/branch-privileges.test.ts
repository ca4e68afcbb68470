// A branch has its parent's database-level privileges (GRANT/REVOKE ... ON DATABASE), which
// PostgreSQL's CREATE DATABASE does not copy: a parent closed to PUBLIC must not have branches
// every role may connect to and read. Real pgbranch, node-postgres, roles with and without CREATEDB.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

let proxy: PgbranchProcess;

beforeAll(async () => {
  proxy = await startPgbranch();
  const admin = await connect(proxy.url('postgres'));
  try {
    await admin.query('create database app');
    await admin.query('create database open');
    // bob may create databases but not connect to app; dave may connect; carol may do neither.
    await admin.query(`create role bob login createdb password 'bob-pw'`);
    await admin.query(`create role carol login password 'carol-pw'`);
    await admin.query(`create role dave login password 'dave-pw'`);
    await admin.query('revoke connect on database app from public');
    await admin.query('grant connect on database app to dave');
  } finally {
    await admin.end();
  }
  const app = await connect(proxy.url('app'));
  try {
    await app.query(`create table secret (x text); insert into secret values ('payroll')`);
    await app.query('grant select on secret to bob, carol, dave');
  } finally {
    await app.end();
  }
});

afterAll(async () => {
  await proxy?.stop();
});

/** What `user` gets reading the secret in `database`: its rows, or the error's SQLSTATE. */
async function readAs(user: string, database: string): Promise<string> {
  const client = new pg.Client(proxy.config(database, user, `${user}-pw`));
  try {
    await client.connect();
    const { rows } = await client.query<{ x: string }>('select x from secret');
    return rows.map((row) => row.x).join();
  } catch (error) {
    return `${(error as { code?: string }).code}: ${(error as Error).message}`;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** A database's privileges as (grantee, privilege, grantable) rows, in a stable order. */
async function privilegesOf(database: string): Promise<unknown[]> {
  const admin = await connect(proxy.url('postgres'));
  try {
    const { rows } = await admin.query(
      `select a.grantee::regrole::text as grantee, a.privilege_type, a.is_grantable
         from pg_database d, aclexplode(d.datacl) a where d.datname = $1 order by 1, 2`,
      [database],
    );
    return rows;
  } finally {
    await admin.end();
  }
}

describe('a branch of a database closed to PUBLIC (REVOKE CONNECT ... FROM PUBLIC)', () => {
  it("has its parent's database privileges: only the roles the parent lets in may connect", async () => {
    // The superuser makes the branch by connecting to it.
    await (await connect(proxy.url('app@audit'))).end();
    expect(await privilegesOf('app@audit')).toEqual(await privilegesOf('app'));
    expect(await readAs('dave', 'app@audit')).toBe('payroll');
    expect(await readAs('carol', 'app@audit')).toBe(
      '42501: permission denied for database "app@audit"',
    );
  });

  it('is closed to a role with CREATEDB that may not connect to the parent, even one it made by connecting', async () => {
    expect(await readAs('bob', 'app')).toBe('42501: permission denied for database "app"');
    expect(await readAs('bob', 'app@bobs')).toBe(
      '42501: permission denied for database "app@bobs"',
    );
  });

  it('keeps PostgreSQL’s defaults where the parent has them', async () => {
    await (await connect(proxy.url('open@x'))).end();
    expect(await privilegesOf('open')).toEqual([]);
    expect(await privilegesOf('open@x')).toEqual([]);
  });
});
