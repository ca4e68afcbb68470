// The lifecycle of instance branches through the admin API: list (state, size on disk), create
// (idempotent), reset, restore points and restore, protection, delete with cascade, schema diff,
// expiry and gc, on running and suspended instances alike.
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it, vi } from 'vitest';
import { instanceProxy } from './support/instance-proxy.js';

// Each test copies and starts PostgreSQL instances: on a loaded 2-core machine that takes a few
// times what it takes on a quiet one, and a test must not fail for that.
vi.setConfig({ testTimeout: 240_000 });

const instances = instanceProxy();
const { connect, leave } = instances;

describe('the lifecycle of instance branches, through the admin API', () => {
  // The tests read whatever the route answers; src/admin/schemas.ts says what it is.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  type Json = Record<string, any>;
  async function api(method: string, route: string, body?: unknown) {
    const response = await fetch(instances.proxy.ready.adminUrl + route, {
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
    expect(
      instances.proxy.events('branch_created').filter((e) => e.branch === 'api-made'),
    ).toHaveLength(1);
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
    while (!instances.proxy.events('branch_expired').some((e) => e.branch === 'short-lived')) {
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
