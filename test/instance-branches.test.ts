// Instance branches (branch.provider instance): a branch is a PostgreSQL instance of its own on a
// copy of its parent taken while the parent runs, so a parent in use by sessions that pgbranch
// can't pause (through pgbranch, or straight to the server) and under write load branches all the
// same, with every row committed before the connect. Idle instances are suspended and resumed on
// connect; at most branch.max_running run at once.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect as connectClient, psql } from './support/clients.js';
import { connectDirect } from './support/observe.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';
import { mountReflinkXfs, type XfsMount } from './support/xfs.js';

const MAX_RUNNING = 12;

// Each test copies and starts PostgreSQL instances: on a loaded 2-core machine that takes a few
// times what it takes on a quiet one, and a test must not fail for that.
vi.setConfig({ testTimeout: 240_000 });

let proxy: PgbranchProcess;
let direct: pg.Client;
const opened = new Set<pg.Client>();

async function connect(database: string, options?: string): Promise<pg.Client> {
  const client = await connectClient({
    ...proxy.config(database),
    ...(options ? { options } : {}),
  });
  client.on('error', () => undefined);
  opened.add(client);
  return client;
}

async function leave(client: pg.Client): Promise<void> {
  opened.delete(client);
  await client.end();
}

afterEach(async () => {
  await Promise.all([...opened].map((c) => c.end().catch(() => undefined)));
  opened.clear();
});

/** branch.scripts of the main pgbranch: masking for app@masked-*, a failing one for app@broken-*. */
const scripts = tempDir('instance-scripts');
fs.writeFileSync(path.join(scripts, 'mask.sql'), "update notes set body = 'masked'");
fs.writeFileSync(path.join(scripts, 'broken.sql'), 'select 1 / 0');

/**
 * The main pgbranch's data directory: on a reflink XFS where the machine allows one (as root),
 * where copies are clones, as instance branches are meant to run; the copy path under the backup
 * API is the same, warm standbys are off. Elsewhere byte copies (slower, the same tests).
 */
let mount: XfsMount | undefined;

beforeAll(async () => {
  mount = await mountReflinkXfs(2048);
  let dataDir: string | undefined;
  if ('skipped' in mount) console.warn(`byte copies: ${mount.skipped}`);
  else {
    dataDir = fs.mkdtempSync(path.join(mount.dir, 'instances-'));
    fs.chmodSync(dataDir, 0o755);
  }
  proxy = await startPgbranch({
    ...(dataDir ? { dataDir } : {}),
    args: [
      '--branch-warm-spare',
      'off',
      '--branch-scripts',
      `app@masked-*=${path.join(scripts, 'mask.sql')}, app@broken-*=${path.join(scripts, 'broken.sql')}`,
      '--branch-provider',
      'instance',
      '--branch-max-running',
      String(MAX_RUNNING),
      '--branch-suspend-after',
      '2s',
      '--branch-sweep-interval',
      '1s',
    ],
  });
  expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
  expect(
    await psql(
      proxy.url('app'),
      'create table counter (id int primary key); create table notes (id serial primary key, body text)',
    ),
  ).toMatchObject({ code: 0 });
  expect(await psql(proxy.url('postgres'), 'create database billing')).toMatchObject({ code: 0 });
  expect(await psql(proxy.url('billing'), 'create table invoices (n int)')).toMatchObject({
    code: 0,
  });
  direct = await connectDirect(proxy);
});

afterAll(async () => {
  await direct?.end();
  await proxy?.stop();
  fs.rmSync(scripts, { recursive: true, force: true });
  if (mount && !('skipped' in mount)) await mount.unmount();
});

/** Running instances' postmasters: processes whose data directory is under instances/. */
function runningInstances(): string[] {
  const instancesDir = path.join(proxy.dataDir, 'instances');
  if (!fs.existsSync(instancesDir)) return [];
  return fs
    .readdirSync(instancesDir)
    .filter((id) => fs.existsSync(path.join(instancesDir, id, 'pg', 'postmaster.pid')))
    .filter((id) => {
      const pid = Number(
        fs.readFileSync(path.join(instancesDir, id, 'pg', 'postmaster.pid'), 'utf8').split('\n')[0],
      );
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    });
}

/**
 * Inserts 1, 2, 3, ... into app.counter one autocommit transaction at a time, straight to the
 * server, until stopped; `committed()` is the highest id known committed.
 */
function countUp(): { committed: () => number; stop: () => Promise<number> } {
  let committed = 0;
  let running = true;
  const done = (async () => {
    const client = await connectClient(proxy.directUrl('app'));
    try {
      while (running) {
        await client.query('insert into counter values ($1)', [committed + 1]);
        committed++;
      }
    } finally {
      await client.end();
    }
    return committed;
  })();
  return {
    committed: () => committed,
    stop: async () => {
      running = false;
      return done;
    },
  };
}

/** pgbench writing to the root through pgbranch until stopped; resolves with its exit and output. */
function pgbenchOnRoot(): { stop: () => Promise<{ code: number | null; output: string }> } {
  const child = spawn('pgbench', ['-n', '-c', '2', '-T', '600', '-f', '-', proxy.url('app')], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  child.stdin.end("insert into notes (body) values ('from pgbench');\n");
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  return {
    stop: async () => {
      child.kill('SIGINT');
      return { code: await exited, output };
    },
  };
}

describe('branching a busy parent', () => {
  it('makes 20 branches one after another and 10 at once while the parent has sessions and writers, each with every row committed before its connect', async () => {
    // Held open all along: a session through pgbranch, one straight to the server, and writers.
    const held = await connect('app');
    await held.query('begin');
    await held.query('select count(*) from counter');
    const heldDirect = await connectClient(proxy.directUrl('app'));
    const counter = countUp();
    const bench = pgbenchOnRoot();
    try {
      while (counter.committed() < 10) await sleep(10);
      for (let i = 0; i < 20; i++) {
        const before = counter.committed();
        const branch = await connect(`app@seq-${i}`);
        const { rows } = await branch.query<{ n: number }>(
          'select count(*)::int as n from counter where id <= $1',
          [before],
        );
        expect(rows[0]!.n).toBe(before);
        await leave(branch);
      }
      const before = counter.committed();
      const together = await Promise.all(
        Array.from({ length: 10 }, async (_, i) => {
          const branch = await connect(`app@par-${i}`);
          const { rows } = await branch.query<{ n: number }>(
            'select count(*)::int as n from counter where id <= $1',
            [before],
          );
          await leave(branch);
          return rows[0]!.n;
        }),
      );
      expect(together).toEqual(Array(10).fill(before));
    } finally {
      const written = await counter.stop();
      const { code, output } = await bench.stop();
      // The parent's own clients saw no error.
      expect(written).toBeGreaterThan(10);
      expect(output).not.toMatch(/error|abort/i);
      expect(code === 0 || code === null, output).toBe(true);
      expect((await held.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
      await held.query('commit');
      await heldDirect.end();
    }
    expect(proxy.events('branch_created').length).toBeGreaterThanOrEqual(30);
  });

  it('holds every database of the parent: app@x and billing@x are one instance', async () => {
    const app = await connect('app@both');
    await app.query("insert into notes (body) values ('only in both')");
    const billing = await connect('billing@both');
    expect((await billing.query('select count(*)::int as n from invoices')).rows).toEqual([
      { n: 0 },
    ]);
    const [a, b] = await Promise.all(
      [app, billing].map(
        async (c) => (await c.query('show data_directory')).rows[0].data_directory,
      ),
    );
    expect(a).toBe(b);
    expect(proxy.events('branch_created').filter((e) => e.branch === 'both')).toHaveLength(1);
  });

  it('keeps a branch and its parent apart, both ways', async () => {
    const branch = await connect('app@isolated');
    await branch.query("insert into notes (body) values ('branch only')");
    const root = await connect('app');
    expect(
      (await root.query("select count(*)::int as n from notes where body = 'branch only'")).rows,
    ).toEqual([{ n: 0 }]);
    await root.query("insert into notes (body) values ('root after')");
    expect(
      (await branch.query("select count(*)::int as n from notes where body = 'root after'")).rows,
    ).toEqual([{ n: 0 }]);
  });

  it('makes a branch of a branch (pgbranch.parent), with the parent branch’s rows', async () => {
    const parent = await connect('app@develop');
    await parent.query("insert into notes (body) values ('on develop')");
    const child = await connect('app@feature-on-develop', '-c pgbranch.parent=develop');
    expect(
      (await child.query("select count(*)::int as n from notes where body = 'on develop'")).rows,
    ).toEqual([{ n: 1 }]);
  });
});

describe('branch.scripts', () => {
  it('runs a masking script in the new instance before any client sees it', async () => {
    const root = await connect('app');
    await root.query("insert into notes (body) values ('alice@example.com')");
    const branch = await connect('app@masked-1');
    const bodies = (await branch.query<{ body: string }>('select distinct body from notes')).rows;
    expect(bodies).toEqual([{ body: 'masked' }]);
    expect(
      (await root.query("select count(*)::int as n from notes where body = 'alice@example.com'"))
        .rows,
    ).toEqual([{ n: 1 }]);
  });

  it('fails the creation with the script’s SQLSTATE and name, leaving nothing behind', async () => {
    await expect(connect('app@broken-1')).rejects.toMatchObject({
      code: '22012',
      message: expect.stringContaining('broken.sql'),
    });
    const staging = fs
      .readdirSync(path.join(proxy.dataDir, 'instances'))
      .filter((d) => d.startsWith('.'));
    expect(staging).toEqual([]);
    await expect(connect('app@broken-1')).rejects.toMatchObject({ code: '22012' });
  });
});

describe('suspend and resume', () => {
  it('shuts an idle instance down and starts it again on the next connect, data intact', async () => {
    const client = await connect('app@sleepy');
    await client.query("insert into notes (body) values ('before sleep')");
    await leave(client);
    // Suspended after branch.suspend_after (2 s) with no clients.
    while (!proxy.events('instance_suspended').some((e) => e.branch === 'sleepy')) {
      await sleep(50);
    }
    const again = await connect('app@sleepy');
    expect(
      (await again.query("select count(*)::int as n from notes where body = 'before sleep'")).rows,
    ).toEqual([{ n: 1 }]);
    expect(
      proxy.events('instance_started').filter((e) => e.branch === 'sleepy').length,
    ).toBeGreaterThanOrEqual(2);
  });

  it(`runs at most ${MAX_RUNNING} instances, suspending the least recently used idle one, and says so when all are busy`, async () => {
    const clients: pg.Client[] = [];
    for (let i = 0; i < MAX_RUNNING; i++) clients.push(await connect(`app@busy-${i}`));
    expect(runningInstances().length).toBeLessThanOrEqual(MAX_RUNNING);
    await expect(connect('app@one-too-many')).rejects.toMatchObject({ code: '53300' });
    await leave(clients.pop()!);
    const last = await connect('app@one-too-many');
    expect((await last.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
    expect(runningInstances().length).toBeLessThanOrEqual(MAX_RUNNING);
  });
});

describe('a pgbranch killed mid-creation', () => {
  it('leaves no half branch: the next start removes the unfinished copy and stops what it left running', async () => {
    const dataDir = tempDir('instance-kill');
    const first = await startPgbranch({
      dataDir,
      args: ['--branch-provider', 'instance'],
    });
    try {
      await psql(first.url('postgres'), 'create database app');
      await connectClient(first.config('app@kept')).then((c) => c.end());
      // A parent large enough that its copy takes a while, so the kill lands in the middle.
      expect(
        await psql(
          first.url('app'),
          "create table bulk as select g, repeat('x', 500) as pad from generate_series(1, 400000) g",
        ),
      ).toMatchObject({ code: 0 });
      const creating = connectClient(first.config('app@half')).catch(() => undefined);
      const staging = path.join(dataDir, 'instances');
      const copying = () => fs.readdirSync(staging).filter((d) => d.startsWith('.creating-'));
      while (copying().length === 0) await sleep(5);
      first.child.kill('SIGKILL');
      await creating;
      // Killed mid-copy: the half-made copy is still there for the next start to remove.
      expect(copying().length).toBeGreaterThan(0);
    } finally {
      await first.stop();
    }
    const second = await startPgbranch({ dataDir, args: ['--branch-provider', 'instance'] });
    try {
      expect(fs.readdirSync(path.join(dataDir, 'instances')).some((d) => d.startsWith('.'))).toBe(
        false,
      );
      const kept = await connectClient(second.config('app@kept'));
      expect((await kept.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
      await kept.end();
      const half = await connectClient(second.config('app@half'));
      expect((await half.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
      await half.end();
    } finally {
      await second.stop();
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('the lifecycle of instance branches, through the admin API', () => {
  // The tests read whatever the route answers; src/admin/schemas.ts says what it is.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  type Json = Record<string, any>;
  async function api(method: string, route: string, body?: unknown) {
    const response = await fetch(proxy.ready.adminUrl + route, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, body: (await response.json()) as Json };
  }
  const branchPath = (name: string, rest = '') => `/v1/branches/${encodeURIComponent(name)}${rest}`;

  it('lists the root instance and every instance branch, with its state and size on disk', async () => {
    await leave(await connect('app@listed'));
    const { status, body } = await api('GET', '/v1/branches');
    expect(status).toBe(200);
    const byName = new Map<string, Json>(body.branches.map((b: Json) => [b.name, b]));
    expect(byName.get('main')).toMatchObject({ protected: true, state: 'running' });
    expect(byName.get('listed')).toMatchObject({
      parent: 'main',
      state: 'running',
      origin: 'pgbranch',
    });
    expect(byName.get('listed')!.sizeBytes).toBeGreaterThan(1024 * 1024);
    expect(byName.get('listed')!.createdAt).toEqual(expect.any(String));
    while ((await api('GET', branchPath('listed'))).body.state !== 'suspended') await sleep(100);
  });

  it('creates a branch (idempotent, 409 with another parent) that clients then connect to', async () => {
    const made = await api('POST', '/v1/branches', { name: 'app@api-made' });
    expect(made).toMatchObject({
      status: 201,
      body: { created: true, branch: { name: 'api-made' } },
    });
    expect((await api('POST', '/v1/branches', { name: 'billing@api-made' })).body).toMatchObject({
      created: false,
    });
    await leave(await connect('app@api-parent'));
    const other = await api('POST', '/v1/branches', { name: 'api-made', parent: 'api-parent' });
    expect(other).toMatchObject({ status: 409, body: { error: { code: '42P04' } } });
    const client = await connect('app@api-made');
    expect((await client.query('select count(*)::int as n from counter')).rows[0].n).toEqual(
      expect.any(Number),
    );
    expect(proxy.events('branch_created').filter((e) => e.branch === 'api-made')).toHaveLength(1);
    // No copy runs for it now: the CLI's progress bar asks this while one does.
    expect(await api('GET', branchPath('api-made', '/copy'))).toMatchObject({
      status: 200,
      body: { copying: null },
    });
  });

  it('resets a branch to a new copy of its parent: its writes are gone, its clients told 57P01', async () => {
    const client = await connect('app@to-reset');
    await client.query("insert into notes (body) values ('before reset')");
    const gone = new Promise<unknown>((resolve) => client.once('error', resolve));
    const reset = await api('POST', branchPath('app@to-reset', '/reset'));
    expect(reset).toMatchObject({ status: 200, body: { name: 'to-reset' } });
    expect(await gone).toMatchObject({ code: '57P01' });
    const again = await connect('app@to-reset');
    expect(
      (await again.query("select count(*)::int as n from notes where body = 'before reset'")).rows,
    ).toEqual([{ n: 0 }]);
  });

  it('resets, restores and deletes a suspended branch as well', async () => {
    const client = await connect('app@asleep');
    await client.query("insert into notes (body) values ('asleep')");
    await leave(client);
    const suspended = async () => {
      while ((await api('GET', branchPath('asleep'))).body.state !== 'suspended') await sleep(100);
    };
    await suspended();
    expect((await api('POST', branchPath('asleep', '/snapshots'), { name: 'p' })).status).toBe(201);
    expect((await api('POST', branchPath('asleep', '/reset'))).status).toBe(200);
    const again = await connect('app@asleep');
    expect(
      (await again.query("select count(*)::int as n from notes where body = 'asleep'")).rows,
    ).toEqual([{ n: 0 }]);
    await leave(again);
    await suspended();
    expect(
      (await api('POST', branchPath('asleep', '/restore'), { snapshot: 'p' })).body,
    ).toMatchObject({ restoredFrom: 'p' });
    const restored = await connect('app@asleep');
    expect(
      (await restored.query("select count(*)::int as n from notes where body = 'asleep'")).rows,
    ).toEqual([{ n: 1 }]);
    await leave(restored);
    await suspended();
    expect((await api('DELETE', branchPath('asleep'))).body).toMatchObject({
      deleted: ['asleep'],
    });
  });

  it('protects, refuses to delete a protected branch or one with children, deletes with cascade', async () => {
    await leave(await connect('app@family'));
    await leave(await connect('app@family-child', '-c pgbranch.parent=family'));
    expect((await api('PUT', branchPath('family', '/protection'))).body).toMatchObject({
      protected: true,
    });
    expect(await api('DELETE', branchPath('family'))).toMatchObject({
      status: 403,
      body: { error: { code: '42501' } },
    });
    await api('DELETE', branchPath('family', '/protection'));
    expect(await api('DELETE', branchPath('family'))).toMatchObject({
      status: 409,
      body: { error: { code: '2BP01' } },
    });
    expect(await api('DELETE', `${branchPath('family')}?cascade=true`)).toMatchObject({
      status: 200,
      body: { deleted: ['family-child', 'family'] },
    });
    expect((await api('GET', branchPath('family'))).status).toBe(404);
    expect(await api('DELETE', branchPath('main'))).toMatchObject({
      status: 403,
      body: { error: { code: '42501' } },
    });
  });

  it('takes a restore point, restores to it (a migration rolled back), branches from it, deletes it', async () => {
    const client = await connect('app@migrating');
    await client.query("insert into notes (body) values ('kept')");
    const point = await api('POST', branchPath('app@migrating', '/snapshots'), { name: 'before' });
    expect(point).toMatchObject({ status: 201, body: { name: 'before', of: 'migrating' } });
    await client.query('alter table notes add column extra int');
    await client.query("insert into notes (body) values ('after the point')");
    const gone = new Promise<unknown>((resolve) => client.once('error', resolve));
    const restored = await api('POST', branchPath('migrating', '/restore'), { snapshot: 'before' });
    expect(restored).toMatchObject({ status: 200, body: { restoredFrom: 'before' } });
    expect(await gone).toMatchObject({ code: '57P01' });
    const again = await connect('app@migrating');
    const notes = await again.query<{ body: string }>('select body from notes where id > 0');
    expect(notes.rows.map((r) => r.body)).toContain('kept');
    expect(notes.rows.map((r) => r.body)).not.toContain('after the point');
    expect(notes.fields.map((f) => f.name)).not.toContain('extra');
    const fromPoint = await api('POST', '/v1/branches', {
      name: 'from-point',
      parent: 'migrating',
      snapshot: 'before',
    });
    expect(fromPoint).toMatchObject({ status: 201, body: { branch: { fromSnapshot: 'before' } } });
    const child = await connect('app@from-point');
    expect(
      (await child.query("select count(*)::int as n from notes where body = 'kept'")).rows,
    ).toEqual([{ n: 1 }]);
    expect(
      (await api('DELETE', branchPath('migrating', '/snapshots/before'))).body.deleted,
    ).toEqual(['migrating:before']);
    expect((await api('GET', branchPath('migrating'))).body.snapshots).toEqual([]);
  });

  it('shows the schema difference of a database between the root, a branch and its restore point', async () => {
    const branch = await connect('app@diffed');
    expect((await api('POST', branchPath('diffed', '/snapshots'), { name: 'p0' })).status).toBe(
      201,
    );
    await branch.query('create table only_here (id int primary key)');
    const diff = (from: string, to: string) =>
      api('GET', `/v1/diff?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`);
    const fromRoot = await diff('app', 'app@diffed');
    expect(fromRoot.status).toBe(200);
    expect(fromRoot.body.text).toContain('only_here');
    const fromPoint = await diff('app@diffed:p0', 'app@diffed');
    expect(fromPoint.status).toBe(200);
    expect(fromPoint.body.text).toContain('only_here');
    expect((await diff('app', 'app@diffed:p0')).body.text).not.toContain('only_here');
    expect(await diff('app@diffed:nope', 'app@diffed')).toMatchObject({
      status: 404,
      body: { error: { code: '42704' } },
    });
  });

  it('deletes an expired branch with the sweeper, and gc deletes branches no git branch has', async () => {
    await leave(await connect('app@short-lived'));
    await api('PATCH', branchPath('short-lived'), {
      expiresAt: new Date(Date.now() - 1000).toISOString(),
    });
    while (!proxy.events('branch_expired').some((e) => e.branch === 'short-lived')) {
      await sleep(100);
    }
    expect((await api('GET', branchPath('short-lived'))).status).toBe(404);

    await leave(await connect('app@gc-live'));
    await leave(await connect('app@gc-dead'));
    const dry = await api('POST', '/v1/gc', { keep: ['gc-live'], patterns: ['gc-*'] });
    expect(dry.body).toMatchObject({ deleted: ['gc-dead'], applied: false });
    const applied = await api('POST', '/v1/gc', {
      keep: ['gc-live'],
      patterns: ['gc-*'],
      apply: true,
    });
    expect(applied.body).toMatchObject({ deleted: ['gc-dead'], applied: true });
    expect((await api('GET', branchPath('gc-dead'))).status).toBe(404);
    expect((await api('GET', branchPath('gc-live'))).status).toBe(200);
  });
});
