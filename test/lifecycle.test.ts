// The branch lifecycle as the one service behind the CLI, the admin API and the console sees it:
// pgbranch runs in this process on a real embedded PostgreSQL, clients connect through it.
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import pg from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startPgbranch, type Running } from '../src/app.js';
import { configSchema, type Config } from '../src/config/schema.js';
import { pgClientConfig } from '../src/upstream/endpoint.js';
import { connect, connectError, psql, queryOnce } from './support/clients.js';
import { tempDir } from './support/pgbranch.js';

const PASSWORD = 'lifecycle-password';
const dataDir = tempDir('lifecycle');
const scriptDir = tempDir('scripts');
const logs: Record<string, unknown>[] = [];
let running: Running;

function settings(branch: Record<string, unknown> = {}): Config {
  return configSchema.parse({
    data_dir: dataDir,
    listen: { port: 0 },
    embedded: { password: PASSWORD },
    metrics: { enabled: false },
    admin: { enabled: false },
    pool: { transaction_mode_for: 'app@tx-*' },
    branch: {
      drain_timeout: '3s',
      sweep_interval: '1h',
      root_snapshot_interval: 0,
      ...branch,
    },
  });
}

async function start(config: Config): Promise<Running> {
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line));
      done();
    },
  });
  return startPgbranch(config, pino({ level: 'info' }, sink));
}

function url(database: string): string {
  return `postgres://postgres:${PASSWORD}@127.0.0.1:${running.port}/${database}`;
}

const events = (name: string) => logs.filter((l) => l.event === name);

async function failure(promise: Promise<unknown>): Promise<{ code?: string; message: string }> {
  try {
    await promise;
  } catch (error) {
    return error as { code?: string; message: string };
  }
  throw new Error('expected a failure');
}

beforeAll(async () => {
  running = await start(settings());
  await queryOnce(url('postgres'), 'create database app');
  await queryOnce(
    url('app'),
    "create table items (id int primary key, name text); insert into items values (1, 'root')",
  );
}, 120_000);

afterAll(async () => {
  await running?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
  fs.rmSync(scriptDir, { recursive: true, force: true });
});

describe('create and list', () => {
  it('creates a branch, and creating it again with the same parent is a success', async () => {
    const first = await running.lifecycle.create({ name: 'app@made', ttlMs: 86_400_000 });
    expect(first).toMatchObject({ created: true, branch: { name: 'app@made', parent: 'app' } });
    const again = await running.lifecycle.create({ name: 'app@made', parent: 'main' });
    expect(again.created).toBe(false);
    const other = await failure(running.lifecycle.create({ name: 'app@made', parent: 'made' }));
    expect(other).toMatchObject({ code: '42P04' });
    expect(await queryOnce(url('app@made'), 'select name from items')).toEqual([{ name: 'root' }]);
  });

  it('lists every branch with parent, times, size, clients, protection and expiry', async () => {
    // pgbranch counts a client until it has reset and pooled its server connection, which is after
    // the client's end() resolved: wait until the last test's clients of app@made are gone.
    await vi.waitFor(
      async () => expect((await running.lifecycle.get('app@made')).clients).toBe(0),
      {
        timeout: 10_000,
        interval: 20,
      },
    );
    const client = await connect(url('app@made'));
    try {
      const list = await running.lifecycle.list('app');
      const made = list.find((b) => b.name === 'app@made')!;
      expect(made).toMatchObject({
        database: 'app',
        branch: 'made',
        parent: 'app',
        clients: 1,
        protected: false,
        ttlMs: 86_400_000,
        origin: 'pgbranch',
        clone: running.copyMethod.mode === 'clone',
      });
      expect(made.sizeBytes).toBeGreaterThan(1_000_000);
      expect(Date.parse(made.createdAt!)).toBeLessThanOrEqual(Date.now());
      expect(Date.parse(made.lastConnectedAt!)).toBeGreaterThan(Date.now() - 60_000);
      expect(Date.parse(made.expiresBy!)).toBeGreaterThan(Date.now() + 86_000_000);
      const root = list.find((b) => b.name === 'app')!;
      expect(root).toMatchObject({ branch: 'main', parent: null, protected: true });
    } finally {
      await client.end();
    }
  });

  it('names parents in full, as clients write them, in what it answers and in its refusals', async () => {
    await running.lifecycle.create({ name: 'app@develop' });
    const child = await running.lifecycle.create({ name: 'app@on-develop', parent: 'app@develop' });
    expect(child.branch.parent).toBe('app@develop');
    expect(
      await failure(running.lifecycle.create({ name: 'app@on-develop', parent: 'app' })),
    ).toMatchObject({
      code: '42P04',
      message: 'branch "app@on-develop" already exists, made from "app@develop"',
      hint: 'Delete it first, or use it as it is: it was not made from "app".',
    });
    expect(
      await failure(running.lifecycle.create({ name: 'app@orphan', parent: 'nowhere' })),
    ).toMatchObject({
      code: '3D000',
      message: 'cannot create branch "app@orphan": its parent "app@nowhere" does not exist',
    });
    // Where the database itself is missing, that is what the refusal names.
    expect(await failure(running.lifecycle.create({ name: 'nosuchdb@feature-x' }))).toMatchObject({
      code: '3D000',
      message: 'database "nosuchdb" does not exist',
      hint: 'Create the database first (CREATE DATABASE "nosuchdb"); nosuchdb@feature-x is then made from it.',
    });
    expect(events('branch_created')).toContainEqual(
      expect.objectContaining({ branch: 'on-develop', parent: 'app@develop' }),
    );
    await running.lifecycle.delete('app@develop', { cascade: true });
  });

  it('refuses to branch pgbranch’s own database and the templates with 0A000, saying why', async () => {
    expect(await failure(running.lifecycle.create({ name: 'postgres@x' }))).toMatchObject({
      code: '0A000',
      message: `cannot branch "postgres": it is pgbranch's own database, which its administrative connections use`,
    });
    for (const template of ['template0', 'template1']) {
      expect(await failure(running.lifecycle.create({ name: `${template}@x` }))).toMatchObject({
        code: '0A000',
        message: expect.stringContaining(`cannot branch "${template}": it is a template database`),
      });
    }
  });

  it('finds branches made with plain CREATE DATABASE, and loses ones dropped outside pgbranch', async () => {
    await queryOnce(url('postgres'), 'create database "app@by-hand" template app');
    const byHand = await running.lifecycle.get('app@by-hand');
    expect(byHand).toMatchObject({ origin: 'external', parent: null, database: 'app' });
    await queryOnce(url('postgres'), 'drop database "app@by-hand"');
    expect(await failure(running.lifecycle.get('app@by-hand'))).toMatchObject({ code: '3D000' });
  });

  it('drops a copy that an interrupted reset left aside, and never lists it', async () => {
    await queryOnce(
      url('postgres'),
      'create database pgbranch_aside_0123456789abcdef template app',
    );
    await queryOnce(
      url('postgres'),
      `comment on database pgbranch_aside_0123456789abcdef is 'pgbranch:{"kind":"branch","root":"app","branch":"made","parent":"main","createdAt":"2026-01-01T00:00:00Z"}'`,
    );
    expect((await running.lifecycle.get('app@made')).physical).toBe('app@made');
    await running.lifecycle.sweep();
    const names = await queryOnce(url('postgres'), 'select datname from pg_database');
    expect(names.map((r) => r.datname)).not.toContain('pgbranch_aside_0123456789abcdef');
  });

  it('shows the schema difference between two branches', async () => {
    await running.lifecycle.create({ name: 'app@schema' });
    await queryOnce(url('app@schema'), 'alter table items add column price numeric default 0');
    const { diff, text } = await running.lifecycle.diff('app', 'app@schema');
    expect(diff.added).toContainEqual(
      expect.objectContaining({ kind: 'column', name: 'public.items.price' }),
    );
    expect(text).toContain('+ column public.items.price');
  });

  it('shows what a migration changed since a restore point, which stays closed to connections', async () => {
    await running.lifecycle.create({ name: 'app@migration' });
    await running.lifecycle.snapshot('app@migration', 'before');
    await queryOnce(
      url('app@migration'),
      'create table orders (id int primary key); alter table items drop column name',
    );
    const { from, diff, text } = await running.lifecycle.diff(
      'app@migration:before',
      'app@migration',
    );
    expect(from).toBe('app@migration:before');
    expect(diff.added).toContainEqual(
      expect.objectContaining({ kind: 'table', name: 'public.orders' }),
    );
    expect(diff.removed).toContainEqual(
      expect.objectContaining({ kind: 'column', name: 'public.items.name' }),
    );
    expect(text).toContain('+ table public.orders');
    const allowed = await queryOnce(
      url('postgres'),
      "select datallowconn from pg_database where datname = 'app@migration:before'",
    );
    expect(allowed).toEqual([{ datallowconn: false }]);
    expect(await failure(running.lifecycle.diff('app@migration:after', 'app'))).toMatchObject({
      code: '42704',
    });
  });
});

describe('reset', () => {
  it('disconnects session clients with 57P01 saying the branch was reset; the name now holds the parent’s data', async () => {
    await running.lifecycle.create({ name: 'app@reset-me' });
    await queryOnce(url('app@reset-me'), "insert into items values (2, 'mine')");
    const client = await connect(url('app@reset-me'));
    const gone = new Promise<{ code?: string; message: string }>((resolve) =>
      client.on('error', (error) => resolve(error as { code?: string; message: string })),
    );
    await running.lifecycle.reset('app@reset-me');
    expect(await gone).toMatchObject({
      code: '57P01',
      message: 'terminating connection because branch "app@reset-me" was reset',
    });
    expect(await queryOnce(url('app@reset-me'), 'select name from items order by id')).toEqual([
      { name: 'root' },
    ]);
    expect(events('branch_reset')).toContainEqual(
      expect.objectContaining({ branch: 'app@reset-me' }),
    );
  });

  it('makes transaction-mode clients pause, not fail, and they read the new data after', async () => {
    await running.lifecycle.create({ name: 'app@tx-reset' });
    await queryOnce(url('app@tx-reset'), "insert into items values (3, 'tx')");
    const client = await connect(url('app@tx-reset'));
    try {
      expect((await client.query('select count(*)::int as n from items')).rows).toEqual([{ n: 2 }]);
      // A transaction in flight when the reset starts: the reset waits for it to end.
      await client.query('begin');
      await client.query('select 1');
      const reset = running.lifecycle.reset('app@tx-reset');
      await new Promise((r) => setTimeout(r, 300));
      await client.query('commit');
      await reset;
      const after = await client.query('select count(*)::int as n from items');
      expect(after.rows).toEqual([{ n: 1 }]);
    } finally {
      await client.end();
    }
  });

  it('refuses to reset a root or a protected branch with 42501, and leaves it as it was', async () => {
    expect(await failure(running.lifecycle.reset('app'))).toMatchObject({ code: '42501' });
    await running.lifecycle.create({ name: 'app@keep' });
    await queryOnce(url('app@keep'), "insert into items values (4, 'kept')");
    await running.lifecycle.protect('app@keep', true);
    const refused = await failure(running.lifecycle.reset('app@keep'));
    expect(refused).toMatchObject({ code: '42501', message: expect.stringContaining('protected') });
    expect(await queryOnce(url('app@keep'), 'select count(*)::int as n from items')).toEqual([
      { n: 2 },
    ]);
    await running.lifecycle.protect('app@keep', false);
  });
});

describe('restore points', () => {
  it('round trip: write, snapshot, break, restore, and the data is as it was', async () => {
    await running.lifecycle.create({ name: 'app@migrate' });
    await queryOnce(url('app@migrate'), "insert into items values (5, 'before')");
    const point = await running.lifecycle.snapshot('app@migrate', 'before-migration');
    expect(point).toMatchObject({ name: 'before-migration', of: 'app@migrate', auto: false });
    await queryOnce(url('app@migrate'), 'drop table items');
    await running.lifecycle.restore('app@migrate', 'before-migration');
    const rows = await queryOnce(url('app@migrate'), 'select name from items order by id');
    expect(rows).toEqual([{ name: 'root' }, { name: 'before' }]);
    const info = await running.lifecycle.get('app@migrate');
    expect(info).toMatchObject({ restoredFrom: 'before-migration', fromSnapshot: null });
    expect(info.snapshots.map((s) => s.name)).toEqual(['before-migration']);
  });

  it('keeps restore points read-only: nobody can connect to one', async () => {
    const { physical } = (await running.lifecycle.get('app@migrate')).snapshots[0]!;
    const error = await connectError({
      host: '127.0.0.1',
      port: running.port,
      user: 'postgres',
      password: PASSWORD,
      database: physical,
    });
    expect(error).toMatchObject({
      code: '55000',
      message:
        '"app@migrate:before-migration" is restore point "before-migration" of app@migrate, and restore points take no connections',
    });
    // Nor can a branch be made whose name would be a restore point's.
    await expect(
      running.lifecycle.create({ name: 'app@migrate:before-migration' }),
    ).rejects.toMatchObject({ code: '42602' });
  });

  it('creates a branch from a restore point', async () => {
    await running.lifecycle.create({
      name: 'app@from-point',
      parent: 'migrate',
      snapshot: 'before-migration',
    });
    const rows = await queryOnce(url('app@from-point'), 'select count(*)::int as n from items');
    expect(rows).toEqual([{ n: 2 }]);
    expect(await running.lifecycle.get('app@from-point')).toMatchObject({
      parent: 'app@migrate',
      fromSnapshot: 'before-migration',
    });
    const missing = await failure(running.lifecycle.restore('app@migrate', 'nope'));
    expect(missing).toMatchObject({ code: '42704' });
  });
});

describe('delete', () => {
  it('refuses roots, protected branches, and parents unless asked to cascade', async () => {
    expect(await failure(running.lifecycle.delete('app'))).toMatchObject({ code: '42501' });
    await running.lifecycle.create({ name: 'app@parent' });
    await running.lifecycle.create({ name: 'app@child', parent: 'parent' });
    await running.lifecycle.snapshot('app@child', 'p1');
    const refused = await failure(running.lifecycle.delete('app@parent'));
    expect(refused).toMatchObject({ code: '2BP01' });
    await running.lifecycle.protect('app@child', true);
    expect(await failure(running.lifecycle.delete('app@parent', { cascade: true }))).toMatchObject({
      code: '42501',
    });
    await running.lifecycle.protect('app@child', false);
    const client = await connect(url('app@child'));
    const gone = new Promise<{ code?: string; message: string }>((resolve) =>
      client.on('error', (error) => resolve(error as { code?: string; message: string })),
    );
    const { deleted } = await running.lifecycle.delete('app@parent', { cascade: true });
    expect(deleted).toEqual(['app@child', 'app@child:p1', 'app@parent']);
    expect(await gone).toMatchObject({
      code: '57P01',
      message: expect.stringContaining('deleted'),
    });
    const names = (await running.lifecycle.list('app')).map((b) => b.name);
    expect(names).not.toContain('app@parent');
    expect(names).not.toContain('app@child');
  });

  it('deletes a transaction-mode branch whose clients are connected', async () => {
    await running.lifecycle.create({ name: 'app@tx-doomed' });
    const client = await connect(url('app@tx-doomed'));
    client.on('error', () => undefined);
    await client.query('select 1');
    expect((await running.lifecycle.delete('app@tx-doomed')).deleted).toEqual(['app@tx-doomed']);
    await client.end().catch(() => undefined);
    expect(await failure(running.lifecycle.get('app@tx-doomed'))).toMatchObject({ code: '3D000' });
  });
});

describe('gc', () => {
  it('deletes branches with no live git branch: a dry run first, never protected ones', async () => {
    for (const name of ['pr-1', 'pr-2', 'pr-3'])
      await running.lifecycle.create({ name: `app@${name}` });
    await running.lifecycle.protect('app@pr-3', true);
    const live = ['0123456789abcdef0123456789abcdef01234567\trefs/heads/pr-1'];
    const dry = await running.lifecycle.gc({ keep: live, patterns: ['pr-*'] });
    expect(dry).toMatchObject({ applied: false, deleted: ['app@pr-2'] });
    expect(dry.kept).toEqual([{ name: 'app@pr-3', reason: 'protected' }]);
    expect((await running.lifecycle.list('app')).map((b) => b.name)).toContain('app@pr-2');
    const applied = await running.lifecycle.gc({ keep: live, patterns: ['pr-*'], apply: true });
    expect(applied.deleted).toEqual(['app@pr-2']);
    const names = (await running.lifecycle.list('app')).map((b) => b.name);
    expect(names).toEqual(expect.arrayContaining(['app@pr-1', 'app@pr-3']));
    expect(names).not.toContain('app@pr-2');
  });
});

describe('expiry', () => {
  it('deletes a branch idle past its pattern’s ttl, and one past its absolute expiry, and logs each', async () => {
    running.reload(settings({ ttl: 'ci-*=2s', sweep_interval: '200ms' }));
    await running.lifecycle.create({
      name: 'app@dated',
      expiresAt: new Date(Date.now() + 1500).toISOString(),
    });
    const { branch } = await running.lifecycle.create({ name: 'app@ci-42' });
    expect(branch.ttlMs).toBe(2000);
    const busy = await connect(url('app@ci-busy'));
    try {
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline && events('branch_expired').length < 2) {
        await new Promise((r) => setTimeout(r, 200));
      }
      const expired = events('branch_expired').map((e) => e.branch);
      expect(expired).toEqual(expect.arrayContaining(['app@ci-42', 'app@dated']));
      // In use all along: connected clients keep an idle expiry from running out.
      expect(expired).not.toContain('app@ci-busy');
      expect((await busy.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
    } finally {
      await busy.end();
      running.reload(settings());
    }
  });
});

describe('policies', () => {
  it('creates on connect only the names the configuration allows', async () => {
    running.reload(settings({ create_on_connect: 'feature-*' }));
    try {
      expect(await connectError(url('app@random'))).toMatchObject({ code: '3D000' });
      expect(await connectError(url('app@feature-ok'))).toBeUndefined();
      // Through the CLI, API or console it can still be made.
      await running.lifecycle.create({ name: 'app@random' });
    } finally {
      running.reload(settings());
    }
  });

  it('caps the branches of a database with 53400', async () => {
    const count = (await running.lifecycle.list('app')).length - 1;
    running.reload(settings({ max_per_database: count }));
    try {
      expect(await connectError(url('app@one-too-many'))).toMatchObject({ code: '53400' });
      expect(await failure(running.lifecycle.create({ name: 'app@one-too-many' }))).toMatchObject({
        code: '53400',
      });
    } finally {
      running.reload(settings());
    }
  });

  it('runs scripts in a new branch before any client sees it, and a failing one fails cleanly', async () => {
    await queryOnce(
      url('app'),
      "create table people (id int, email text); insert into people values (1, 'ann@example.com')",
    );
    const mask = path.join(scriptDir, 'mask.sql');
    fs.writeFileSync(mask, "update people set email = 'user' || id || '@masked.invalid';");
    const broken = path.join(scriptDir, 'broken.sql');
    fs.writeFileSync(broken, 'update no_such_table set x = 1;');
    running.reload(settings({ scripts: `masked-*=${mask}, broken-*=${broken}` }));
    try {
      const rows = await queryOnce(url('app@masked-1'), 'select email from people');
      expect(rows).toEqual([{ email: 'user1@masked.invalid' }]);
      const error = await connectError(url('app@broken-1'));
      expect(error).toMatchObject({
        code: '42P01',
        message: expect.stringContaining('broken.sql'),
      });
      const names = (await queryOnce(url('postgres'), 'select datname from pg_database')).map(
        (r) => r.datname as string,
      );
      expect(names.filter((n) => n.includes('broken'))).toEqual([]);
    } finally {
      running.reload(settings());
    }
  });

  it('makes a branch of a busy root from its newest automatic restore point, and says how old', async () => {
    // Where branches are copies (no reflink filesystem), automatic restore points are asked for.
    running.reload(
      settings({
        root_snapshot_interval: '1s',
        root_snapshot_copies: true,
        use_root_snapshot: true,
      }),
    );
    try {
      await running.lifecycle.sweep();
      const root = await running.lifecycle.get('app');
      expect(root.snapshots.filter((s) => s.auto)).toHaveLength(1);
      // A session that bypasses the proxy: the root can't be drained.
      const direct = new pg.Client({
        ...pgClientConfig(running.embedded!.endpoint),
        user: running.embedded!.superuser,
        password: PASSWORD,
        database: 'app',
      });
      await direct.connect();
      try {
        const result = await psql(url('app@while-busy'), 'select count(*) from items');
        expect(result).toMatchObject({ code: 0, stdout: '1' });
        expect(result.stderr).toMatch(
          /made from its restore point auto-\d{8}T\d{6}Z: the data is .* old/,
        );
      } finally {
        await direct.end();
      }
    } finally {
      running.reload(settings());
    }
  });
});

describe('after a restart', () => {
  it('keeps every branch’s parent, protection and expiry', async () => {
    await running.lifecycle.create({ name: 'app@durable', ttlMs: 3_600_000 });
    await running.lifecycle.protect('app@durable', true);
    await connect(url('app@durable')).then((c) => c.end());
    const before = await running.lifecycle.get('app@durable');
    await running.stop();
    running = await start(settings());
    const after = await running.lifecycle.get('app@durable');
    expect(after).toMatchObject({
      parent: 'app',
      protected: true,
      ttlMs: 3_600_000,
      createdAt: before.createdAt,
      lastConnectedAt: before.lastConnectedAt,
      snapshots: [],
    });
    expect((await running.lifecycle.get('app@migrate')).snapshots.map((s) => s.name)).toEqual([
      'before-migration',
    ]);
  });
});
