// /metrics as Prometheus scrapes it, from a real pgbranch process after real clients used it.
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, connectError, psql } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

let proxy: PgbranchProcess;

beforeAll(async () => {
  proxy = await startPgbranch();
});

afterAll(async () => {
  await proxy?.stop();
});

async function scrape(url = proxy.ready.metricsUrl!): Promise<string> {
  const response = await fetch(url);
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return response.text();
}

/** The value of the first series named `name` that has all of `labels`, from exposition text. */
function sample(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const found = new Map(
      [...(match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]),
    );
    if (Object.entries(labels).every(([key, value]) => found.get(key) === value)) {
      return Number(match[3]);
    }
  }
  return undefined;
}

const metric = async (name: string, labels: Record<string, string> = {}) =>
  sample(await scrape(), name, labels);

describe('GET /metrics', () => {
  it('is announced in the ready log line and the banner', () => {
    expect(proxy.ready.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    expect(proxy.ready.metricsUrl).not.toContain(':9930/');
    expect(proxy.stderr()).toContain(`metrics:   ${proxy.ready.metricsUrl}`);
  });

  it('counts a branch creation by mode and result, and times it', async () => {
    const mode = proxy.ready.copyMode;
    const before = await scrape();
    expect(sample(before, 'pgbranch_branch_creations_total', { mode, result: 'ok' })).toBe(0);

    expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
    const branch = await psql(proxy.url('app@feature-x'), 'select current_database()');
    expect(branch).toMatchObject({ code: 0, stdout: 'app@feature-x' });

    const text = await scrape();
    const ok = { mode, result: 'ok' };
    expect(sample(text, 'pgbranch_branch_creations_total', ok)).toBe(1);
    expect(sample(text, 'pgbranch_branch_creations_total', { mode, result: 'error' })).toBe(0);
    expect(sample(text, 'pgbranch_branch_creation_duration_seconds_count', ok)).toBe(1);
    expect(sample(text, 'pgbranch_branch_creation_duration_seconds_sum', ok)).toBeGreaterThan(0);
    expect(
      sample(text, 'pgbranch_branch_creation_duration_seconds_bucket', { ...ok, le: '60' }),
    ).toBe(1);
    const other = mode === 'clone' ? 'copy' : 'clone';
    expect(sample(text, 'pgbranch_branch_creations_total', { mode: other })).toBeUndefined();
  });

  it('counts branches per database, restore points, and lifecycle changes by operation and result', async () => {
    const admin = async (method: string, path: string, body?: unknown) => {
      const response = await fetch(`${proxy.ready.adminUrl!}${path}`, {
        method,
        ...(body === undefined
          ? {}
          : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
      });
      expect(response.status, `${method} ${path}`).toBeLessThan(300);
    };
    const before = await scrape();
    expect(
      sample(before, 'pgbranch_branch_operations_total', { operation: 'reset', result: 'ok' }),
    ).toBe(0);

    expect(await psql(proxy.url('postgres'), 'create database shop')).toMatchObject({ code: 0 });
    await admin('POST', '/v1/branches', { name: 'shop@counted' });
    await admin('POST', '/v1/branches', { name: 'shop@counted-child', parent: 'counted' });
    await admin('POST', `/v1/branches/${encodeURIComponent('shop@counted')}/snapshots`, {
      name: 'before',
    });
    await admin('POST', `/v1/branches/${encodeURIComponent('shop@counted-child')}/reset`);
    let text = await scrape();
    expect(sample(text, 'pgbranch_branches', { database: 'shop' })).toBe(2);
    expect(sample(text, 'pgbranch_restore_points')).toBe(1);
    const ops = (operation: string, result = 'ok') =>
      sample(text, 'pgbranch_branch_operations_total', { operation, result });
    expect(ops('snapshot')).toBe(1);
    expect(ops('reset')).toBe(1);
    // Refused before it began: a root can't be reset. Not counted.
    const refused = await fetch(`${proxy.ready.adminUrl!}/v1/branches/shop/reset`, {
      method: 'POST',
    });
    expect(refused.status).toBe(403);
    text = await scrape();
    expect(ops('reset', 'error')).toBe(0);

    await admin('DELETE', `/v1/branches/${encodeURIComponent('shop@counted')}?cascade=true`);
    text = await scrape();
    // A cascade counts each branch it drops.
    expect(ops('delete')).toBe(2);
    expect(ops('delete', 'error')).toBe(0);
    // The database stays, with no branches.
    expect(sample(text, 'pgbranch_branches', { database: 'shop' })).toBe(0);
    expect(sample(text, 'pgbranch_restore_points')).toBe(0);
  });

  it('shows server connections as the pools hold them: active while a client is in a session', async () => {
    // The earlier sessions' server connections go back to their pools once reset.
    await expect.poll(() => metric('pgbranch_server_connections_active')).toBe(0);
    await expect.poll(() => metric('pgbranch_clients_connected')).toBe(0);
    const idleBefore = (await metric('pgbranch_server_connections_idle'))!;

    // Startup parameters of its own: a new pool, so no idle connection is reused.
    const client = await connect(proxy.url('app'), { application_name: 'metrics-test' });
    try {
      const text = await scrape();
      expect(sample(text, 'pgbranch_server_connections_active')).toBe(1);
      expect(sample(text, 'pgbranch_clients_connected')).toBe(1);
      expect(sample(text, 'pgbranch_clients_waiting')).toBe(0);
      expect(sample(text, 'pgbranch_server_connections_open')).toBe(
        sample(text, 'pgbranch_server_connections_idle')! + 1,
      );
      expect(sample(text, 'pgbranch_pools')).toBeGreaterThanOrEqual(1);
    } finally {
      await client.end();
    }

    await expect.poll(() => metric('pgbranch_server_connections_active')).toBe(0);
    await expect.poll(() => metric('pgbranch_clients_connected')).toBe(0);
    const text = await scrape();
    expect(sample(text, 'pgbranch_server_connections_idle')).toBe(idleBefore + 1);
    expect(sample(text, 'pgbranch_server_connections_open')).toBe(idleBefore + 1);
  });

  it('counts sessions by pool mode, and transaction-mode clients that are pinned', async () => {
    const session = await connect(proxy.url('app'));
    const transaction = await connect(proxy.url('app'), {
      options: '-c pgbranch.pool_mode=transaction',
    });
    const pinned = await connect(proxy.url('app'), {
      options: '-c pgbranch.pool_mode=transaction',
    });
    try {
      await pinned.query('select pg_advisory_lock(42)');
      const text = await scrape();
      expect(sample(text, 'pgbranch_client_sessions', { mode: 'session' })).toBe(1);
      expect(sample(text, 'pgbranch_client_sessions', { mode: 'transaction' })).toBe(2);
      expect(sample(text, 'pgbranch_client_sessions', { mode: 'pinned' })).toBe(1);
    } finally {
      await Promise.all([session.end(), transaction.end(), pinned.end()]);
    }
    await expect.poll(() => metric('pgbranch_client_sessions', { mode: 'transaction' })).toBe(0);
    expect(await metric('pgbranch_client_sessions', { mode: 'pinned' })).toBe(0);
    expect(await metric('pgbranch_client_sessions', { mode: 'session' })).toBe(0);
  });

  it('counts client connections, and refusals by SQLSTATE', async () => {
    const before = await scrape();
    const accepted = sample(before, 'pgbranch_client_connections_total')!;
    expect(sample(before, 'pgbranch_client_connections_refused_total', { code: '28P01' })).toBe(
      undefined,
    );

    const refused = await connectError(proxy.url('app', 'postgres', 'wrong password'));
    expect(refused?.code).toBe('28P01');
    expect(await psql(proxy.url('app'), 'select 1')).toMatchObject({ code: 0 });

    const text = await scrape();
    expect(sample(text, 'pgbranch_client_connections_total')).toBe(accepted + 2);
    expect(sample(text, 'pgbranch_client_connections_refused_total', { code: '28P01' })).toBe(1);
  });

  it('includes process metrics, with the pgbranch_ prefix', async () => {
    const text = await scrape();
    expect(sample(text, 'pgbranch_process_cpu_seconds_total')).toBeGreaterThan(0);
    expect(sample(text, 'pgbranch_nodejs_heap_size_used_bytes')).toBeGreaterThan(0);
    expect(text).not.toMatch(/^process_/m);
  });

  it('answers 404 on every other path', async () => {
    const base = new URL(proxy.ready.metricsUrl!);
    for (const path of ['/', '/metric', '/metrics/x', '/health']) {
      const response = await fetch(new URL(path, base));
      expect(response.status, path).toBe(404);
    }
  });
});

describe('with --metrics-enabled false', () => {
  it('serves nothing and does not announce metrics', async () => {
    const port = await freePort();
    const quiet = await startPgbranch({
      args: ['--metrics-enabled', 'false', '--metrics-port', String(port)],
    });
    try {
      expect(quiet.ready.metricsUrl).toBeUndefined();
      expect(quiet.stderr()).not.toContain('metrics:');
      expect(await psql(quiet.url('postgres'), 'select 1')).toMatchObject({ code: 0 });
      await expect(fetch(`http://127.0.0.1:${port}/metrics`)).rejects.toThrow();
    } finally {
      await quiet.stop();
    }
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
