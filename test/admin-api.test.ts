// The HTTP admin API of a real pgbranch process, with a token, asked with fetch as any client would.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sharedSchemas } from '../src/admin/schemas.js';
import { queryOnce } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess, PGBRANCH_BIN } from './support/pgbranch.js';

const branchInfoKeys = sharedSchemas.find((s) => s.$id === 'BranchInfo')!.required;

const TOKEN = 'admin-api-test-token';
let proxy: PgbranchProcess;

beforeAll(async () => {
  proxy = await startPgbranch({ env: { PGBRANCH_ADMIN_TOKEN: TOKEN } });
  await queryOnce(proxy.url('postgres'), 'create database app');
  await queryOnce(proxy.url('postgres'), 'create database shop');
  await queryOnce(
    proxy.url('app'),
    "create table items (name text); insert into items values ('root')",
  );
});

afterAll(async () => {
  await proxy?.stop();
});

interface Answer {
  status: number;
  // The tests read whatever the route answers; the schemas in src/admin/schemas.ts say what it is.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

async function api(
  method: string,
  route: string,
  body?: unknown,
  /** null sends no Authorization header. */
  token: string | null = TOKEN,
): Promise<Answer> {
  const response = await fetch(proxy.ready.adminUrl + route, {
    method,
    headers: {
      ...(token === null ? {} : { authorization: `Bearer ${token}` }),
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  expect(response.headers.get('content-type')).toMatch(/^application\/json/);
  return { status: response.status, body: await response.json() };
}

const branchPath = (name: string, rest = '') => `/v1/branches/${encodeURIComponent(name)}${rest}`;
const create = (name: string, more: Record<string, unknown> = {}) =>
  api('POST', '/v1/branches', { name, ...more });
const rows = async (database: string) =>
  (
    await queryOnce<{ name: string }>(proxy.url(database), 'select name from items order by name')
  ).map((r) => r.name);

describe('the admin API', () => {
  it('is announced in the ready log line and the banner', () => {
    expect(proxy.ready.adminUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(proxy.ready.adminUrl).not.toContain(':9931');
    expect(proxy.stderr()).toContain(`admin:     ${proxy.ready.adminUrl}`);
  });

  it('answers 401 with 28000 without the token or with a wrong one, except /healthz and /openapi.json', async () => {
    for (const token of [null, 'wrong']) {
      const answer = await api('GET', '/v1/branches', undefined, token);
      expect(answer).toMatchObject({ status: 401, body: { error: { code: '28000' } } });
      // A route that does not exist looks the same: nothing is learnt without the token.
      expect((await api('GET', '/v2/nothing', undefined, token)).status).toBe(401);
      expect((await api('DELETE', branchPath('app@x'), undefined, token)).status).toBe(401);
    }
    expect(await api('GET', '/healthz', undefined, null)).toEqual({
      status: 200,
      body: { status: 'ok' },
    });
    expect((await api('GET', '/openapi.json', undefined, null)).status).toBe(200);
    expect((await api('GET', '/v2/nothing')).body.error).toMatchObject({
      code: '0A000',
      message: 'no route GET /v2/nothing',
    });
  });

  it('answers copying: null for a database branch, whose copies report no progress', async () => {
    expect(await api('GET', branchPath('app@anything', '/copy'))).toEqual({
      status: 200,
      body: { copying: null },
    });
  });

  it('serves an OpenAPI 3.1 document that lists every route, with the bearer scheme', async () => {
    const { body: document } = await api('GET', '/openapi.json', undefined, null);
    expect(document.openapi).toBe('3.1.0');
    expect(document.security).toEqual([{ bearer: [] }]);
    const routes = Object.entries(document.paths as Record<string, object>).flatMap(
      ([route, methods]) =>
        Object.keys(methods).map((method) => `${method.toUpperCase()} ${route}`),
    );
    expect(routes.sort()).toEqual(
      [
        'GET /healthz',
        'GET /readyz',
        'GET /v1/branches',
        'POST /v1/branches',
        'GET /v1/branches/{name}',
        'PATCH /v1/branches/{name}',
        'DELETE /v1/branches/{name}',
        'GET /v1/branches/{name}/copy',
        'POST /v1/branches/{name}/reset',
        'POST /v1/branches/{name}/snapshots',
        'DELETE /v1/branches/{name}/snapshots/{snapshot}',
        'POST /v1/branches/{name}/restore',
        'PUT /v1/branches/{name}/protection',
        'DELETE /v1/branches/{name}/protection',
        'POST /v1/gc',
        'GET /v1/diff',
        'GET /v1/events',
        'GET /v1/connection',
        'GET /v1/source',
        'POST /v1/source/resync',
      ].sort(),
    );
    expect(Object.keys(document.components.schemas)).toEqual(
      expect.arrayContaining([
        'BranchInfo',
        'SnapshotInfo',
        'CreateResult',
        'GcResult',
        'SourceStatus',
        'Error',
      ]),
    );
    expect(document.paths['/v1/branches/{name}'].get.responses['200'].content).toEqual({
      'application/json': { schema: { $ref: '#/components/schemas/BranchInfo' } },
    });
  });
});

describe('branches', () => {
  it('creates a branch: 201 when made, 200 when it existed with the same parent, 409 with another', async () => {
    const made = await create('app@api-made', { ttl: '7d' });
    expect(made.status).toBe(201);
    expect(made.body).toMatchObject({
      created: true,
      branch: { name: 'app@api-made', parent: 'app', ttlMs: 7 * 86_400_000, origin: 'pgbranch' },
    });
    expect(await create('app@api-made')).toMatchObject({ status: 200, body: { created: false } });
    // The parent written in full names the same branch.
    expect(await create('app@api-made', { parent: 'app' })).toMatchObject({ status: 200 });
    expect(await create('app@api-child', { parent: 'app@api-made' })).toMatchObject({
      status: 201,
      body: { branch: { parent: 'app@api-made' } },
    });
    await api('DELETE', branchPath('app@api-child'));
    expect(await create('app@api-made', { parent: 'other' })).toMatchObject({
      status: 409,
      body: {
        error: {
          code: '42P04',
          message: 'branch "app@api-made" already exists, made from "app"',
          hint: 'Delete it first, or use it as it is: it was not made from "app@other".',
        },
      },
    });
    expect(await create('app@api-x', { parent: 'missing' })).toMatchObject({
      status: 404,
      body: {
        error: {
          code: '3D000',
          message: 'cannot create branch "app@api-x": its parent "app@missing" does not exist',
        },
      },
    });
    expect(await create('nosuchdb@api-x')).toMatchObject({
      status: 404,
      body: { error: { code: '3D000', message: 'database "nosuchdb" does not exist' } },
    });
  });

  it('refuses to branch pgbranch’s own database or a template with 400 and 0A000', async () => {
    for (const name of ['postgres@x', 'template0@x', 'template1@x']) {
      expect(await create(name)).toMatchObject({
        status: 400,
        body: { error: { code: '0A000', message: expect.stringMatching(/^cannot branch "/) } },
      });
    }
  });

  it('refuses a body that does not match the schema with 400 and 22023, naming the problem', async () => {
    expect(await create('app@api-typo', { expires: '2026-12-01' })).toMatchObject({
      status: 400,
      body: {
        error: { code: '22023', message: 'body must NOT have additional properties: "expires"' },
      },
    });
    expect((await api('POST', '/v1/branches', {})).body.error.message).toBe(
      "body must have required property 'name'",
    );
    expect(await create('app@api-typo', { ttl: 'soon' })).toMatchObject({
      status: 400,
      body: { error: { code: '22023', message: 'invalid ttl "soon": not a duration' } },
    });
    expect(await create('app@api-\u0001')).toMatchObject({
      status: 400,
      body: { error: { code: '42602' } },
    });
  });

  it('lists branches of every database or of one, and gets one by its URL-encoded name', async () => {
    await create('app@feature/login?v2');
    await create('shop@api-list');
    const all = await api('GET', '/v1/branches');
    expect(all.status).toBe(200);
    const names = all.body.branches.map((b: { name: string }) => b.name);
    expect(names).toEqual(
      expect.arrayContaining(['app', 'app@feature/login?v2', 'shop', 'shop@api-list']),
    );
    const app = await api('GET', '/v1/branches?database=app');
    expect(app.body.branches.every((b: { database: string }) => b.database === 'app')).toBe(true);

    const one = await api('GET', branchPath('app@feature/login?v2'));
    expect(one).toMatchObject({
      status: 200,
      body: {
        name: 'app@feature/login?v2',
        database: 'app',
        branch: 'feature/login?v2',
        parent: 'app',
      },
    });
    // Every field the model has (the schema is checked against it at compile time) reaches JSON.
    expect(Object.keys(one.body).sort()).toEqual([...branchInfoKeys].sort());
    expect(await api('GET', branchPath('app@nowhere'))).toMatchObject({
      status: 404,
      body: { error: { code: '3D000' } },
    });
  });

  it('resets a branch to its parent’s current state', async () => {
    await create('app@api-reset');
    await queryOnce(proxy.url('app@api-reset'), "insert into items values ('branch')");
    await queryOnce(proxy.url('app'), "insert into items values ('root later')");
    const reset = await api('POST', branchPath('app@api-reset', '/reset'));
    expect(reset).toMatchObject({ status: 200, body: { name: 'app@api-reset' } });
    expect(await rows('app@api-reset')).toEqual(['root', 'root later']);
    await queryOnce(proxy.url('app'), "delete from items where name = 'root later'");
    expect(await api('POST', branchPath('app', '/reset'))).toMatchObject({
      status: 403,
      body: { error: { code: '42501' } },
    });
  });

  it('saves a restore point, restores it after a break, creates from it, and deletes it', async () => {
    await create('app@api-points');
    const saved = await api('POST', branchPath('app@api-points', '/snapshots'), { name: 'before' });
    expect(saved).toMatchObject({
      status: 201,
      body: { name: 'before', of: 'app@api-points', auto: false },
    });
    expect(
      (await api('POST', branchPath('app@api-points', '/snapshots'), { name: 'before' })).status,
    ).toBe(409);
    await queryOnce(proxy.url('app@api-points'), 'drop table items');
    // What the break did, against the restore point.
    const since = await api(
      'GET',
      `/v1/diff?from=${encodeURIComponent('app@api-points:before')}&to=${encodeURIComponent('app@api-points')}`,
    );
    expect(since).toMatchObject({
      status: 200,
      body: { from: 'app@api-points:before', diff: { removed: [{ name: 'public.items' }] } },
    });
    const restored = await api('POST', branchPath('app@api-points', '/restore'), {
      snapshot: 'before',
    });
    expect(restored).toMatchObject({
      status: 200,
      body: { restoredFrom: 'before', fromSnapshot: null },
    });
    expect(await rows('app@api-points')).toEqual(['root']);
    expect(
      await api('POST', branchPath('app@api-points', '/restore'), { snapshot: 'never-taken' }),
    ).toMatchObject({ status: 404, body: { error: { code: '42704' } } });

    expect(
      await create('app@api-from-point', { parent: 'api-points', snapshot: 'before' }),
    ).toMatchObject({
      status: 201,
      body: { branch: { fromSnapshot: 'before', parent: 'app@api-points' } },
    });
    await api('DELETE', branchPath('app@api-from-point'));

    const dropped = await api('DELETE', branchPath('app@api-points', '/snapshots/before'));
    expect(dropped).toMatchObject({ status: 200, body: { deleted: ['app@api-points:before'] } });
    expect((await api('GET', branchPath('app@api-points'))).body.snapshots).toEqual([]);
  });

  it('deletes a branch; one with children only with cascade=true, children first', async () => {
    await create('app@api-parent');
    await create('app@api-child', { parent: 'api-parent' });
    expect(await api('DELETE', branchPath('app@api-parent'))).toMatchObject({
      status: 409,
      body: { error: { code: '2BP01' } },
    });
    expect(await api('DELETE', `${branchPath('app@api-parent')}?cascade=true`)).toEqual({
      status: 200,
      body: { deleted: ['app@api-child', 'app@api-parent'] },
    });
    expect((await api('GET', branchPath('app@api-child'))).status).toBe(404);
    expect(await api('DELETE', branchPath('app'))).toMatchObject({
      status: 403,
      body: { error: { code: '42501' } },
    });
  });

  it('protects a branch from delete and reset, and unprotects it', async () => {
    await create('app@api-kept');
    expect(await api('PUT', branchPath('app@api-kept', '/protection'))).toMatchObject({
      status: 200,
      body: { protected: true },
    });
    expect(await api('DELETE', branchPath('app@api-kept'))).toMatchObject({
      status: 403,
      body: { error: { code: '42501' } },
    });
    expect(await api('DELETE', branchPath('app@api-kept', '/protection'))).toMatchObject({
      status: 200,
      body: { protected: false },
    });
    expect((await api('DELETE', branchPath('app@api-kept'))).status).toBe(200);
  });

  it('sets and clears expiries with PATCH; null clears, and bad values are 400', async () => {
    await create('app@api-expiry');
    const set = await api('PATCH', branchPath('app@api-expiry'), {
      expiresAt: '2030-12-01',
      ttl: 3_600_000,
    });
    expect(set).toMatchObject({
      status: 200,
      body: { expiresAt: '2030-12-01T00:00:00.000Z', ttlMs: 3_600_000 },
    });
    expect(Date.parse(set.body.expiresBy)).toBeLessThanOrEqual(Date.now() + 3_600_000);
    const cleared = await api('PATCH', branchPath('app@api-expiry'), {
      expiresAt: null,
      ttl: null,
    });
    expect(cleared.body).toMatchObject({ expiresAt: null, ttlMs: null, expiresBy: null });
    expect(
      await api('PATCH', branchPath('app@api-expiry'), { expiresAt: 'someday' }),
    ).toMatchObject({
      status: 400,
      body: { error: { code: '22007' } },
    });
    expect(await api('PATCH', branchPath('app@api-expiry'), {})).toMatchObject({ status: 400 });
  });

  it('shows the schema difference between two branches', async () => {
    await create('app@api-diff');
    await queryOnce(proxy.url('app@api-diff'), 'alter table items add column price numeric');
    const diff = await api('GET', `/v1/diff?from=app&to=${encodeURIComponent('app@api-diff')}`);
    expect(diff).toMatchObject({
      status: 200,
      body: {
        from: 'app',
        to: 'app@api-diff',
        diff: { added: [{ kind: 'column', name: 'public.items.price' }], removed: [], changed: [] },
      },
    });
    expect(diff.body.text).toContain('+ column public.items.price');
    expect((await api('GET', '/v1/diff?from=app')).status).toBe(400);
  });
});

describe('gc', () => {
  it('reports what a list of live git branches leaves behind, then deletes it with apply', async () => {
    await create('shop@pr-1');
    await create('shop@pr-2');
    await create('shop@pr-3');
    await api('PUT', branchPath('shop@pr-3', '/protection'));
    const keep = [
      'bb2c1d1bdcc0a1e50e4c6f0c8c0e0f1fb4d34a9e\trefs/heads/main',
      'b2a3e8d4d0a7c6e5f4a3b2c1d0e9f8a7b6c5d4e3\trefs/heads/pr-2',
    ];
    const body = { keep, patterns: ['pr-*'], database: 'shop' };
    const dry = await api('POST', '/v1/gc', body);
    expect(dry).toEqual({
      status: 200,
      body: {
        deleted: ['shop@pr-1'],
        kept: [{ name: 'shop@pr-3', reason: 'protected' }],
        applied: false,
      },
    });
    expect((await api('GET', branchPath('shop@pr-1'))).status).toBe(200);
    const applied = await api('POST', '/v1/gc', { ...body, apply: true });
    expect(applied.body).toMatchObject({ deleted: ['shop@pr-1'], applied: true });
    expect((await api('GET', branchPath('shop@pr-1'))).status).toBe(404);
    expect((await api('GET', branchPath('shop@pr-2'))).status).toBe(200);
  });
});

describe('start-up', () => {
  it('refuses to serve the admin API beyond loopback without a token', async () => {
    const dataDir = tempDir('admin-open');
    const child = spawn(
      process.execPath,
      [
        PGBRANCH_BIN,
        '--port',
        '0',
        '--metrics-port',
        '0',
        '--data-dir',
        dataDir,
        '--admin-host',
        '0.0.0.0',
        '--admin-port',
        '0',
        '--log-format',
        'json',
      ],
      { env: { ...process.env, PGBRANCH_PASSWORD: 'pw', PGBRANCH_ADMIN_TOKEN: '' }, stdio: 'pipe' },
    );
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    fs.rmSync(dataDir, { recursive: true, force: true });
    // Refused as a bad configuration, before anything is started.
    expect(code).toBe(2);
    expect(stderr).toContain('admin API may only listen on 0.0.0.0 with a token');
    expect(stderr).toContain('admin.token (PGBRANCH_ADMIN_TOKEN');
  }, 120_000);
});
