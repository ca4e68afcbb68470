// Many clients, one creation; a parent in use is drained, or the creation fails cleanly.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { connect, connectError, psql, queryOnce } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

let proxy: PgbranchProcess;

beforeAll(async () => {
  proxy = await startPgbranch({ args: ['--pool-size', '60', '--branch-drain-timeout', '1s'] });
  expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
  await queryOnce(
    proxy.url('app'),
    'create table t as select g as id, repeat(md5(g::text), 8) as pad from generate_series(1, 200000) g',
  );
});

afterAll(async () => {
  await proxy?.stop();
});

async function branchExists(name: string): Promise<boolean> {
  const rows = await queryOnce(
    proxy.url('postgres'),
    'select 1 from pg_database where datname = $1',
    [name],
  );
  return rows.length === 1;
}

describe('concurrent first connects', () => {
  it('turns 50 clients connecting at once to a new branch into one creation and 50 sessions', async () => {
    const before = proxy.events('branch_created').length;
    const clients = await Promise.all(
      Array.from({ length: 50 }, () => connect(proxy.config('app@stampede'))),
    );
    try {
      const counts = await Promise.all(
        clients.map(
          async (c) => (await c.query<{ n: string }>('select count(*) as n from t')).rows[0]!.n,
        ),
      );
      expect(counts).toEqual(Array(50).fill('200000'));
      const pids = new Set(clients.map((c) => (c as unknown as { processID: number }).processID));
      expect(pids.size).toBe(50);
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
    const created = proxy.events('branch_created').slice(before);
    expect(created.filter((e) => e.branch === 'stampede')).toHaveLength(1);
  });
});

describe('draining the parent', () => {
  it('closes its own idle pooled connections to the parent before cloning', async () => {
    // Leave idle server connections to app in the pool.
    await Promise.all(Array.from({ length: 5 }, () => queryOnce(proxy.url('app'), 'select 1')));
    const result = await psql(proxy.url('app@after-idle'), 'select count(*) from t');
    expect(result).toMatchObject({ code: 0, stdout: '200000' });
  });

  it('makes new clients of the parent wait during the clone: a pause, not an error', async () => {
    const watcher = new pg.Client({ connectionString: proxy.directUrl('postgres') });
    await watcher.connect();
    try {
      const creating = queryOnce(proxy.url('app@paused'), 'select count(*)::int as n from t');
      // Wait until the clone is running on the server, then ask for the parent.
      for (;;) {
        const { rows } = await watcher.query(
          "select 1 from pg_stat_activity where query like 'CREATE DATABASE \"app@paused\"%' and state = 'active'",
        );
        if (rows.length > 0) break;
        await new Promise((r) => setTimeout(r, 2));
      }
      const meanwhile = queryOnce<{ at: Date }>(proxy.url('app'), 'select clock_timestamp() as at');
      const [branchRows, rootRows] = await Promise.all([creating, meanwhile]);
      expect(branchRows).toEqual([{ n: 200000 }]);
      const created = proxy.events('branch_created').find((e) => e.branch === 'paused')!;
      // The parent's client got its server connection only once the clone was done.
      expect(rootRows[0]!.at.getTime()).toBeGreaterThanOrEqual((created.time as number) - 20);
    } finally {
      await watcher.end();
    }
  });

  it('fails with 55006 after the bound when a client holds a session on the parent, and harms nobody', async () => {
    const holder = await connect(proxy.url('app'));
    try {
      const started = Date.now();
      const error = await connectError(proxy.config('app@blocked'));
      expect(error?.code).toBe('55006');
      expect(error?.message).toMatch(/1 other session still connected to it/);
      expect(Date.now() - started).toBeGreaterThanOrEqual(900);
      expect(await branchExists('app@blocked')).toBe(false);
      expect((await holder.query('select count(*)::int as n from t')).rows).toEqual([
        { n: 200000 },
      ]);
    } finally {
      await holder.end();
    }
    // The next connect tries again, and now the parent is free.
    const result = await psql(proxy.url('app@blocked'), 'select count(*) from t');
    expect(result).toMatchObject({ code: 0, stdout: '200000' });
  });

  it('fails with 55006 when a connection that bypasses the proxy holds the parent, saying what to do', async () => {
    const direct = new pg.Client({ connectionString: proxy.directUrl('app') });
    await direct.connect();
    try {
      const result = await psql(proxy.url('app@bypassed'), 'select 1');
      expect(result.code).not.toBe(0);
      expect(result.stderr).toMatch(/cannot branch "app": 1 other session still connected/);
      expect(result.stderr).toMatch(/pg_stat_activity/);
      expect(await branchExists('app@bypassed')).toBe(false);
      expect((await direct.query('select 1 as ok')).rows).toEqual([{ ok: 1 }]);
    } finally {
      await direct.end();
    }
    expect(await psql(proxy.url('app@bypassed'), 'select 1')).toMatchObject({
      code: 0,
      stdout: '1',
    });
  });
});
