import { afterEach, describe, expect, it } from 'vitest';
import { Metrics, serveMetrics, type MetricsServer, type PoolStats } from './metrics.js';

const pools: PoolStats = { pools: 2, open: 5, idle: 3, active: 2, waiting: 1, budget: 19 };
const servers: MetricsServer[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) await server.close();
});

async function served(metrics: Metrics): Promise<MetricsServer> {
  const server = await serveMetrics(metrics.registry, '127.0.0.1', 0);
  servers.push(server);
  return server;
}

describe('Metrics', () => {
  it('keeps each instance on its own registry, so several run in one process', async () => {
    const a = new Metrics({ clients: () => 1, pools: () => pools }, 'clone');
    const b = new Metrics({ clients: () => 7, pools: () => pools }, 'copy');
    a.clientConnected();
    const textA = await a.registry.metrics();
    const textB = await b.registry.metrics();
    expect(textA).toContain('pgbranch_clients_connected 1\n');
    expect(textA).toContain('pgbranch_client_connections_total 1\n');
    expect(textB).toContain('pgbranch_clients_connected 7\n');
    expect(textB).toContain('pgbranch_client_connections_total 0\n');
  });

  it('reads the pool gauges when scraped', async () => {
    const text = await new Metrics(
      { clients: () => 0, pools: () => pools },
      'copy',
    ).registry.metrics();
    expect(text).toContain('pgbranch_server_connections_budget 19\n');
    expect(text).toContain('pgbranch_server_connections_open 5\n');
    expect(text).toContain('pgbranch_server_connections_idle 3\n');
    expect(text).toContain('pgbranch_server_connections_active 2\n');
    expect(text).toContain('pgbranch_clients_waiting 1\n');
    expect(text).toContain('pgbranch_pools 2\n');
  });

  it('counts refused clients by SQLSTATE', async () => {
    const metrics = new Metrics({ clients: () => 0, pools: () => pools }, 'copy');
    metrics.clientRefused('28P01');
    metrics.clientRefused('28P01');
    metrics.clientRefused('53300');
    const text = await metrics.registry.metrics();
    expect(text).toContain('pgbranch_client_connections_refused_total{code="28P01"} 2\n');
    expect(text).toContain('pgbranch_client_connections_refused_total{code="53300"} 1\n');
  });

  it('puts a branch creation into the bucket of its duration', async () => {
    const metrics = new Metrics({ clients: () => 0, pools: () => pools }, 'clone');
    metrics.branchCreated('clone', 80, true);
    const text = await metrics.registry.metrics();
    const bucket = (le: string) =>
      `pgbranch_branch_creation_duration_seconds_bucket{le="${le}",mode="clone",result="ok"}`;
    expect(text).toContain(`${bucket('0.05')} 0\n`);
    expect(text).toContain(`${bucket('0.1')} 1\n`);
    expect(text).toContain('pgbranch_branch_creations_total{mode="clone",result="ok"} 1\n');
    expect(text).toContain('pgbranch_branch_creations_total{mode="clone",result="error"} 0\n');
  });
});

describe('serveMetrics', () => {
  it('serves GET and HEAD /metrics, 405 for other methods there and 404 elsewhere', async () => {
    const server = await served(new Metrics({ clients: () => 0, pools: () => pools }, 'copy'));
    const get = await fetch(server.url);
    expect(get.status).toBe(200);
    expect(await get.text()).toContain('# TYPE pgbranch_pools gauge');
    expect((await fetch(server.url, { method: 'HEAD' })).status).toBe(200);
    expect((await fetch(server.url, { method: 'POST' })).status).toBe(405);
    expect((await fetch(new URL('/', server.url))).status).toBe(404);
  });

  it('says what to do when the port is taken', async () => {
    const metrics = new Metrics({ clients: () => 0, pools: () => pools }, 'copy');
    const taken = Number(new URL((await served(metrics)).url).port);
    await expect(serveMetrics(metrics.registry, '127.0.0.1', taken)).rejects.toThrow(
      `metrics port ${taken} on 127.0.0.1 is already in use: pick another with --metrics-port (0 picks a free one) or turn metrics off with --metrics-enabled false`,
    );
  });
});
