// Prometheus metrics of one running pgbranch, on a registry of its own (so that several can run in
// one process), served over HTTP or HTTPS at /metrics. Nothing here runs per query: counters move when a
// client connects or is refused and when a branch is created or changed; gauges are read when scraped.
import type net from 'node:net';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { CopyMethod } from './branch/provider.js';
import { hostInUrl, reachableHost } from './config/load.js';
import { createServer, renewCertificate, type HttpsCertificate } from './https.js';
import type { Operation } from './lifecycle/service.js';

const PREFIX = 'pgbranch_';

/** A scrape waits this long for the branch counts before it answers without new ones. */
const CENSUS_TIMEOUT_MS = 2_000;

/** Branch creations take from ~10 ms (a clone) to a minute (a large copy, or a drain that waits). */
const CREATION_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** What the pools report, as PoolManager.stats() returns it. */
export interface PoolStats {
  pools: number;
  open: number;
  idle: number;
  active: number;
  waiting: number;
  /** Server connections the pools may hold together (pool.max_server_connections, or auto). */
  budget: number;
}

export interface MetricsSources {
  /** Client connections open now, in any phase. */
  clients(): number;
  pools(): PoolStats;
  /** The pools of each running branch instance, a server with a budget of its own. */
  instancePools?(): Iterable<{ branch: string; stats: PoolStats }>;
  /** Clients in a session now, by pool mode, and how many transaction-mode ones are pinned. */
  sessions?(): { session: number; transaction: number; pinned: number };
  /** Branches per database (roots not counted) and restore points, read from the server. */
  census?(): Promise<{ branches: Map<string, number>; restorePoints: number }>;
  /** With a source: its standby's health, read when scraped. */
  source?(): Promise<SourceGauges>;
}

export interface SourceGauges {
  /** `replicator@db.prod:5432`, the gauges' label. */
  source: string;
  /** Streaming from the source, and able to follow it. */
  connected: boolean;
  /** null while the source can't be reached. */
  lagBytes: number | null;
  lagSeconds: number | null;
}

type Mode = CopyMethod['mode'];

const OPERATIONS: readonly Operation[] = [
  'reset',
  'restore',
  'snapshot',
  'auto_snapshot',
  'delete',
  'expire',
  'gc',
];

export class Metrics {
  readonly registry = new Registry();
  private readonly connections: Counter;
  private readonly refusals: Counter<'code'>;
  private readonly creations: Counter<'mode' | 'result'>;
  private readonly creationSeconds: Histogram<'mode' | 'result'>;
  private readonly operations: Counter<'operation' | 'result'>;

  constructor(sources: MetricsSources, copyMode: Mode) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: PREFIX });

    new Gauge({
      name: `${PREFIX}clients_connected`,
      help: 'Client connections open now: logging in, waiting for a branch or a server connection, or in a session.',
      registers,
      collect() {
        this.set(sources.clients());
      },
    });
    if (sources.sessions) {
      const sessions = sources.sessions;
      new Gauge({
        name: `${PREFIX}client_sessions`,
        help: 'Clients past login, by pool mode; pinned: transaction-mode clients held to one server connection (LISTEN, session advisory lock, WITH HOLD cursor).',
        labelNames: ['mode'],
        registers,
        collect() {
          const now = sessions();
          this.set({ mode: 'session' }, now.session);
          this.set({ mode: 'transaction' }, now.transaction);
          this.set({ mode: 'pinned' }, now.pinned);
        },
      });
    }
    this.connections = new Counter({
      name: `${PREFIX}client_connections_total`,
      help: 'Client connections accepted, including ones later refused and cancel requests.',
      registers,
    });
    this.refusals = new Counter({
      name: `${PREFIX}client_connections_refused_total`,
      help: 'Client connections refused with an error, by SQLSTATE (28P01 bad password, 53300 too many, ...).',
      labelNames: ['code'],
      registers,
    });

    const fromPools = (name: string, help: string, read: (stats: PoolStats) => number) =>
      new Gauge({
        name: `${PREFIX}${name}`,
        help,
        registers,
        collect() {
          this.set(read(sources.pools()));
        },
      });
    fromPools(
      'server_connections_budget',
      "Server connections pgbranch's pools may hold together on the main server (branch instances: pgbranch_instance_server_connections_budget): pool.max_server_connections, or with auto the server's max_connections less reserved slots, pgbranch's own and pool.server_margin.",
      (s) => s.budget,
    );
    fromPools(
      'server_connections_open',
      'Server connections open or being opened on the main server, in all its pools.',
      (s) => s.open,
    );
    fromPools(
      'server_connections_idle',
      'Server connections idle in a pool, ready for the next client.',
      (s) => s.idle,
    );
    fromPools(
      'server_connections_active',
      'Server connections in use by a client.',
      (s) => s.active,
    );
    fromPools(
      'clients_waiting',
      'Clients waiting for a server connection (pool full, or the server cap reached).',
      (s) => s.waiting,
    );
    fromPools('pools', 'Pools: one per database, user and startup parameters.', (s) => s.pools);
    if (sources.instancePools) {
      const instancePools = sources.instancePools;
      const perInstance = (name: string, help: string, read: (stats: PoolStats) => number) =>
        new Gauge({
          name: `${PREFIX}${name}`,
          help,
          labelNames: ['branch'],
          registers,
          collect() {
            // Instances come and go (suspended, deleted): only the running ones have series.
            this.reset();
            for (const { branch, stats } of instancePools()) this.set({ branch }, read(stats));
          },
        });
      perInstance(
        'instance_server_connections_budget',
        "Server connections the pools of a running branch instance may hold on it: its own max_connections less reserved slots, pgbranch's own and pool.server_margin (capped by a number in pool.max_server_connections).",
        (s) => s.budget,
      );
      perInstance(
        'instance_server_connections_open',
        'Server connections open or being opened on a running branch instance, in all its pools.',
        (s) => s.open,
      );
    }

    this.creations = new Counter({
      name: `${PREFIX}branch_creations_total`,
      help: 'Branch creations by how the branch was made (clone or copy) and result (ok or error).',
      labelNames: ['mode', 'result'],
      registers,
    });
    this.creationSeconds = new Histogram({
      name: `${PREFIX}branch_creation_duration_seconds`,
      help: 'Time to create a branch, from draining the parent to the branch existing.',
      labelNames: ['mode', 'result'],
      buckets: CREATION_BUCKETS,
      registers,
    });
    this.operations = new Counter({
      name: `${PREFIX}branch_operations_total`,
      help: 'Lifecycle changes other than creation, by operation (reset, restore, snapshot, auto_snapshot, delete, expire, gc; a branch dropped counts once, a cascade once per branch) and result (ok or error).',
      labelNames: ['operation', 'result'],
      registers,
    });
    // Series that exist from the start, so that rate() and alerts see a 0 before the first one.
    for (const result of ['ok', 'error']) {
      this.creations.inc({ mode: copyMode, result }, 0);
      this.creationSeconds.zero({ mode: copyMode, result });
      for (const operation of OPERATIONS) this.operations.inc({ operation, result }, 0);
    }

    if (sources.census) {
      // Both gauges come from one query: a scrape collects them at once, and they share it. When
      // the server can't be asked, or takes longer than CENSUS_TIMEOUT_MS, they keep their last
      // values and the rest is served as usual.
      const read = sharedRead(sources.census);
      new Gauge({
        name: `${PREFIX}branches`,
        help: 'Branches per database, its root not counted; read from the server when scraped.',
        labelNames: ['database'],
        registers,
        async collect() {
          const now = await read();
          if (!now) return;
          this.reset();
          for (const [database, n] of now.branches) this.set({ database }, n);
        },
      });
      new Gauge({
        name: `${PREFIX}restore_points`,
        help: 'Restore points of all branches, automatic ones of roots included; read from the server when scraped.',
        registers,
        async collect() {
          const now = await read();
          if (now) this.set(now.restorePoints);
        },
      });
    }
    if (sources.source) this.sourceGauges(sources.source, registers);
  }

  /**
   * The three gauges of a source, from one status read per scrape. A lag that can't be known (the
   * source unreachable, the standby down for a resync's swap) has no sample.
   */
  private sourceGauges(source: () => Promise<SourceGauges>, registers: Registry[]): void {
    const read = sharedRead(source);
    let label: string | undefined;
    const gauge = (name: string, help: string, value: (now: SourceGauges) => number | null) =>
      new Gauge({
        name: `${PREFIX}${name}`,
        help,
        labelNames: ['source'],
        registers,
        async collect() {
          const now = await read();
          this.reset();
          if (now) label = now.source;
          const sample = now ? value(now) : name === 'source_connected' ? 0 : null;
          if (sample !== null && label !== undefined) this.set({ source: label }, sample);
        },
      });
    gauge(
      'source_connected',
      'Whether the standby streams from the source and can follow it: 0 while the source is unreachable, or was failed over or re-initialised (pgbranch source resync).',
      (now) => (now.connected ? 1 : 0),
    );
    gauge(
      'source_lag_bytes',
      "Bytes of WAL the source has written that the standby has not replayed; absent while the source can't be reached.",
      (now) => now.lagBytes,
    );
    gauge(
      'source_lag_seconds',
      'Age of the newest transaction the standby replayed while behind (0 when caught up); with the source unreachable, time since the standby last heard from it.',
      (now) => now.lagSeconds,
    );
  }

  branchOperation(operation: Operation, ok: boolean): void {
    this.operations.inc({ operation, result: ok ? 'ok' : 'error' });
  }

  clientConnected(): void {
    this.connections.inc();
  }

  clientRefused(code: string): void {
    this.refusals.inc({ code });
  }

  branchCreated(mode: Mode, ms: number, ok: boolean): void {
    const labels = { mode, result: ok ? 'ok' : 'error' };
    this.creations.inc(labels);
    this.creationSeconds.observe(labels, ms / 1000);
  }
}

/**
 * One read for the gauges of a scrape that come from it: `read`'s result, or undefined when it
 * fails or takes longer than CENSUS_TIMEOUT_MS.
 */
function sharedRead<T>(read: () => Promise<T>): () => Promise<T | undefined> {
  let reading: Promise<T | undefined> | undefined;
  return () =>
    (reading ??= withinTime(read(), CENSUS_TIMEOUT_MS)
      .catch(() => undefined)
      .finally(() => {
        reading = undefined;
      }));
}

/** `work`'s result, or undefined once `ms` have passed without one. */
function withinTime<T>(work: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

export interface MetricsServer {
  /** Where to scrape, e.g. http://127.0.0.1:9930/metrics. */
  url: string;
  /** Over HTTPS: the certificate for new connections (after SIGHUP or RELOAD). */
  renewCertificate(pem: HttpsCertificate): void;
  close(): Promise<void>;
}

/** Serves the registry at GET /metrics (over HTTPS with `https`); every other path is 404. */
export async function serveMetrics(
  registry: Registry,
  host: string,
  port: number,
  https?: HttpsCertificate,
): Promise<MetricsServer> {
  const server = createServer(https, (request, response) => {
    const path = new URL(request.url ?? '/', 'http://localhost').pathname;
    if (path !== '/metrics') {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found; try /metrics\n');
      return;
    }
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end();
      return;
    }
    registry.metrics().then(
      (text) => {
        response.writeHead(200, { 'content-type': registry.contentType });
        response.end(request.method === 'HEAD' ? undefined : text);
      },
      (error: unknown) => {
        response.writeHead(500, { 'content-type': 'text/plain' });
        response.end(`${error instanceof Error ? error.message : String(error)}\n`);
      },
    );
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, resolve);
    });
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    throw new Error(
      e.code === 'EADDRINUSE'
        ? `metrics port ${port} on ${host} is already in use: pick another with --metrics-port (0 picks a free one) or turn metrics off with --metrics-enabled false`
        : `cannot serve metrics on ${host}:${port}: ${e.message}`,
      { cause: error },
    );
  }
  const bound = (server.address() as net.AddressInfo).port;
  return {
    url: `${https ? 'https' : 'http'}://${hostInUrl(reachableHost(host))}:${bound}/metrics`,
    renewCertificate: (pem) => renewCertificate(server, pem),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
