// /readyz on the admin port: ready while pgbranch takes clients and its server answers, 503 with
// the reason otherwise; /healthz (liveness) answers all the while.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect } from './support/clients.js';
import { ownServer, type OwnServer } from './support/own-server.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

let server: OwnServer;
let proxy: PgbranchProcess;

beforeAll(async () => {
  server = await ownServer();
  proxy = await startPgbranch({
    args: ['--upstream', server.url(), '--admin-token', 'secret-token'],
  });
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  await server?.remove();
});

async function get(path: string): Promise<{ status: number; body: unknown }> {
  const response = await fetch(`${proxy.ready.adminUrl}${path}`);
  return { status: response.status, body: await response.json() };
}

describe('/readyz', () => {
  it('answers 200 without a token while pgbranch listens and its server answers', async () => {
    expect(await get('/readyz')).toEqual({ status: 200, body: { status: 'ready' } });
  });

  it('answers 503 with the reason while the server is stopped, and 200 again once it is back', async () => {
    await server.stop();
    const down = await get('/readyz');
    expect(down.status).toBe(503);
    expect(down.body).toMatchObject({
      status: 'not ready',
      reason: expect.stringMatching(/^the PostgreSQL server does not answer: /),
    });
    expect(await get('/healthz')).toEqual({ status: 200, body: { status: 'ok' } });

    await server.start();
    await vi.waitFor(async () => expect((await get('/readyz')).status).toBe(200), {
      timeout: 20_000,
      interval: 100,
    });
  }, 60_000);

  it('answers 503 while a SIGTERM lets clients finish', async () => {
    // In a transaction, it keeps pgbranch draining until it commits.
    const client = await connect(proxy.url('postgres', 'postgres', server.password));
    client.on('error', () => undefined);
    await client.query('begin');
    proxy.child.kill('SIGTERM');
    await vi.waitFor(() => expect(proxy.events('draining')).toHaveLength(1), {
      timeout: 10_000,
      interval: 20,
    });
    expect(await get('/readyz')).toEqual({
      status: 503,
      body: { status: 'not ready', reason: 'pgbranch is shutting down' },
    });
    expect((await get('/healthz')).status).toBe(200);
    await client.query('commit');
    await client.end().catch(() => undefined);
    expect(await proxy.stop()).toBe(0);
  }, 60_000);
});
