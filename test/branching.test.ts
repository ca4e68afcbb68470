// The core promise: connect to app@feature-x and get a branch of app, made on first connect.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, connectError, psql, queryOnce } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

let proxy: PgbranchProcess;

beforeAll(async () => {
  proxy = await startPgbranch();
  const created = await psql(proxy.url('postgres'), 'create database app');
  expect(created).toMatchObject({ code: 0 });
  const root = await connect(proxy.url('app'));
  await root.query('create table items (id int primary key, name text)');
  await root.query("insert into items values (1, 'from app')");
  await root.end();
});

afterAll(async () => {
  await proxy?.stop();
});

describe('connecting to app@branch', () => {
  it('creates the branch on first connect, and the session runs in it with the parent’s data', async () => {
    const result = await psql(
      proxy.url('app@feature-x'),
      'select current_database(), name from items',
    );
    expect(result).toMatchObject({ code: 0, stdout: 'app@feature-x|from app' });
    expect(result.stderr).toContain('created branch "feature-x" of "app" from app');
    expect(proxy.events('branch_created')).toContainEqual(
      expect.objectContaining({
        root: 'app',
        branch: 'feature-x',
        parent: 'app',
        mode: proxy.ready.copyMode,
      }),
    );
  });

  it('keeps what a branch writes in that branch', async () => {
    await queryOnce(proxy.url('app@isolated'), "insert into items values (2, 'only in branch')");
    const inBranch = await queryOnce(
      proxy.url('app@isolated'),
      'select name from items order by id',
    );
    const inRoot = await queryOnce(proxy.url('app'), 'select name from items order by id');
    expect(inBranch.map((r) => r.name)).toEqual(['from app', 'only in branch']);
    expect(inRoot.map((r) => r.name)).toEqual(['from app']);
  });

  it('reaches the same branch on the next connect, without creating it again', async () => {
    await queryOnce(proxy.url('app@again'), 'create table marker (x int)');
    const before = proxy.events('branch_created').length;
    const rows = await queryOnce(
      proxy.url('app@again'),
      "select to_regclass('marker') is not null as found",
    );
    expect(rows).toEqual([{ found: true }]);
    expect(proxy.events('branch_created').length).toBe(before);
  });

  it('treats app and app@main as the same root', async () => {
    const rows = await queryOnce(proxy.url('app@main'), 'select current_database() as db');
    expect(rows).toEqual([{ db: 'app' }]);
  });

  it.each(['postgres', 'template0', 'template1'])(
    'refuses to branch %s with 0A000, saying why, and makes nothing',
    async (database) => {
      const result = await psql(proxy.url(`${database}@x`), 'select 1');
      expect(result.code).not.toBe(0);
      expect(result.stderr).toMatch(
        database === 'postgres'
          ? /FATAL: {2}cannot branch "postgres": it is pgbranch's own database/
          : new RegExp(`FATAL: {2}cannot branch "${database}": it is a template database`),
      );
      expect(result.stderr).toContain('HINT:  Create a database for your project');
      expect(await connectError(proxy.config(`${database}@x`))).toMatchObject({ code: '0A000' });
      const made = await queryOnce(
        proxy.url('postgres'),
        'select datname from pg_database where datname = $1',
        [`${database}@x`],
      );
      expect(made).toEqual([]);
    },
  );

  it('makes a branch again that a DROP DATABASE the server died in left invalid, instead of 55000', async () => {
    await queryOnce(proxy.url('app@half-dropped'), "insert into items values (3, 'lost')");
    // What PostgreSQL leaves of a database whose DROP DATABASE it died in (its first step marks
    // the database invalid: datconnlimit -2), after which it refuses connections with 55000.
    await queryOnce(
      proxy.url('postgres'),
      "update pg_database set datconnlimit = -2 where datname = 'app@half-dropped'",
    );
    const result = await psql(proxy.url('app@half-dropped'), 'select name from items order by id');
    expect(result).toMatchObject({ code: 0, stdout: 'from app' });
    expect(result.stderr).toContain('created branch "half-dropped" of "app" from app');
  });

  it('refuses to branch a database that does not exist, naming it', async () => {
    const result = await psql(proxy.url('nosuch@feature'), 'select 1');
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('FATAL:  database "nosuch" does not exist');
    expect(result.stderr).toContain(
      'HINT:  Create the database first (CREATE DATABASE "nosuch"); nosuch@feature is then made from it.',
    );
  });
});
