import { describe, expect, it } from 'vitest';
import {
  databaseNeeded,
  DEALLOCATES,
  deallocateTarget,
  dropsAllStatements,
  NEEDS_CHECK,
  READ_TEXT,
  RUNS_CODE,
  statementEffects,
} from './statement-effects.js';

function effects(sql: string): number {
  const bytes = Buffer.from(sql);
  return statementEffects(bytes, 0, bytes.length);
}

describe('statementEffects', () => {
  it('lets plain reads and transaction control pass without a look at the server', () => {
    for (const sql of [
      'SELECT abalance FROM pgbench_accounts WHERE aid = 42;',
      'begin',
      'COMMIT',
      'select count(*), max(x) from t where id in (1, 2) and (a = 1 or b = 2)',
      'SELECT "t"."id" FROM "public"."t" WHERE ("t"."id" = $1) LIMIT $2',
      'select x::numeric(10, 2) from t',
      'set search_path = a, b; show search_path',
    ]) {
      expect(effects(sql) & NEEDS_CHECK, sql).toBe(0);
    }
  });

  it('asks the server after anything that may create temporary objects or prepare with SQL', () => {
    for (const sql of [
      'create temp table x (a int)',
      'CREATE TEMPORARY TABLE x (a int) ON COMMIT DELETE ROWS',
      'select 1 as x into temp y',
      'select * from pg_temp.y',
      'do $$ begin perform 1; end $$',
      'call p()',
      'prepare p as select 1',
      'select 1; create table t (x int)',
      'create function f() returns void language sql as $$ select 1 $$',
    ]) {
      expect(effects(sql) & NEEDS_CHECK, sql).toBe(NEEDS_CHECK);
    }
  });

  it('asks after writes and calls of the database’s own functions only where those could', () => {
    for (const sql of [
      'select make_scratch()',
      'select public.count(x) from t',
      'select "MyFunc"(1)',
      'insert into t values (1)',
      'update t set a = 1',
      'with x as (delete from t returning *) select * from x',
    ]) {
      expect(effects(sql) & (NEEDS_CHECK | RUNS_CODE), sql).toBe(RUNS_CODE);
    }
  });

  it('marks DEALLOCATE and DISCARD, which change the prepared statements a server connection has', () => {
    expect(effects('DEALLOCATE ALL') & DEALLOCATES).toBe(DEALLOCATES);
    expect(effects('  discard all;') & DEALLOCATES).toBe(DEALLOCATES);
    expect(effects('select 1; deallocate p') & DEALLOCATES).toBe(DEALLOCATES);
    expect(effects('select deallocate from t') & DEALLOCATES).toBe(0);
  });
});

describe('deallocateTarget', () => {
  it('reads the name as the server would fold it, or ALL', () => {
    expect(deallocateTarget('DEALLOCATE _pg3_0')).toEqual({ name: '_pg3_0' });
    expect(deallocateTarget('deallocate prepare "MyStmt";')).toEqual({ name: 'MyStmt' });
    expect(deallocateTarget('DEALLOCATE Foo')).toEqual({ name: 'foo' });
    expect(deallocateTarget('DEALLOCATE "a""b"')).toEqual({ name: 'a"b' });
    expect(deallocateTarget('deallocate all')).toEqual({ all: true });
    expect(deallocateTarget('deallocate p; select 1')).toBeUndefined();
  });

  it('knows the statements that drop every prepared statement', () => {
    expect(dropsAllStatements('DISCARD ALL')).toBe(true);
    expect(dropsAllStatements('deallocate prepare all;')).toBe(true);
    expect(dropsAllStatements('discard plans')).toBe(false);
  });
});

describe('databaseNeeded', () => {
  it('names the database of DROP, RENAME, SET TABLESPACE and CREATE ... TEMPLATE, as the server folds it', () => {
    expect(databaseNeeded('DROP DATABASE Old')).toBe('old');
    expect(databaseNeeded('drop database if exists "app@feature-x" with (force)')).toBe(
      'app@feature-x',
    );
    expect(databaseNeeded('ALTER DATABASE "a""b" RENAME TO c')).toBe('a"b');
    expect(databaseNeeded('alter database x set tablespace t')).toBe('x');
    expect(databaseNeeded('CREATE DATABASE copy TEMPLATE app')).toBe('app');
    expect(databaseNeeded('create database copy with owner = me template = "App"')).toBe('App');
    expect(databaseNeeded('alter database x set work_mem = 1')).toBeUndefined();
    expect(databaseNeeded('create database fresh')).toBeUndefined();
    expect(databaseNeeded('drop table database')).toBeUndefined();
  });
});

describe('READ_TEXT', () => {
  it('marks the texts whose words decide settings, pinning, DDL or DEALLOCATE, and no others', () => {
    for (const sql of [
      'SET search_path = a',
      'select 1; reset all',
      "select set_config('a.b', '1', false)",
      'LISTEN jobs',
      'select pg_advisory_lock(1)',
      'declare c cursor with hold for select 1',
      'drop database x',
      'DEALLOCATE ALL',
    ]) {
      expect(effects(sql) & READ_TEXT, sql).toBe(READ_TEXT);
    }
    expect(effects('SELECT abalance FROM pgbench_accounts WHERE aid = 42;') & READ_TEXT).toBe(0);
    expect(effects('insert into t values (1)') & READ_TEXT).toBe(0);
  });
});
