// What each SHOW of the SQL console answers: its columns and rows, built from the lifecycle's
// branches, the pools and the connected clients. Times are timestamptz in UTC, counts int8.
import type { BranchInfo, SnapshotInfo } from '../lifecycle/model.js';
import type { ServerBudget } from '../pool/budget.js';
import type { Pool } from '../pool/pool.js';
import type { ConnectedClient } from '../proxy/clients.js';
import type { SourceStatus } from '../source/health.js';
import { version } from '../version.js';
import type { Column } from '../wire/backend.js';
import { COMMANDS } from './console-commands.js';

export interface Table {
  columns: Column[];
  rows: (string | null)[][];
}

export function branchesTable(branches: readonly BranchInfo[]): Table {
  return {
    columns: [
      { name: 'name', type: 'text' },
      { name: 'parent', type: 'text' },
      { name: 'from_snapshot', type: 'text' },
      { name: 'created', type: 'timestamptz' },
      { name: 'last_connection', type: 'timestamptz' },
      { name: 'size', type: 'text' },
      { name: 'clone', type: 'bool' },
      { name: 'clients', type: 'int8' },
      { name: 'protected', type: 'bool' },
      { name: 'expires', type: 'timestamptz' },
      { name: 'snapshots', type: 'int8' },
      { name: 'database', type: 'text' },
      { name: 'state', type: 'text' },
    ],
    rows: branches.map((b) => [
      b.name,
      b.parent,
      b.fromSnapshot,
      timestamp(b.createdAt),
      timestamp(b.lastConnectedAt),
      sizePretty(b.sizeBytes),
      bool(b.clone),
      String(b.clients),
      bool(b.protected),
      timestamp(b.expiresBy),
      String(b.snapshots.length),
      b.physical,
      b.state,
    ]),
  };
}

export function snapshotsTable(snapshots: readonly SnapshotInfo[]): Table {
  return {
    columns: [
      { name: 'branch', type: 'text' },
      { name: 'name', type: 'text' },
      { name: 'created', type: 'timestamptz' },
      { name: 'size', type: 'text' },
      { name: 'auto', type: 'bool' },
      { name: 'database', type: 'text' },
    ],
    rows: snapshots.map((s) => [
      s.of,
      s.name,
      timestamp(s.createdAt),
      sizePretty(s.sizeBytes),
      bool(s.auto),
      s.physical,
    ]),
  };
}

/** The pools of one server: the main server, or a branch instance (a postmaster of its own). */
export interface ServerPools {
  /** The instance's branch; undefined for the main server. */
  branch?: string | undefined;
  pools: Iterable<Pool>;
  paused: ReadonlySet<string>;
  budget: ServerBudget;
}

/**
 * For each server, the main one first: one row per pool (a database, a role, a pool mode and, in
 * session mode, a set of startup parameters); one for each paused database that has no pool (yet,
 * or any more), so that a pause shows; then one for the server's connection budget (`mode` budget):
 * what its pools hold together, and in `parameters` the budget and how it was derived. A branch
 * instance's databases read `app@feature-x`.
 */
export function poolsTable(servers: readonly ServerPools[]): Table {
  return {
    columns: [
      { name: 'database', type: 'text' },
      { name: 'user', type: 'text' },
      { name: 'mode', type: 'text' },
      { name: 'active', type: 'int8' },
      { name: 'idle', type: 'int8' },
      { name: 'opening', type: 'int8' },
      { name: 'waiting', type: 'int8' },
      { name: 'paused', type: 'bool' },
      { name: 'parameters', type: 'text' },
    ],
    rows: servers.flatMap(serverRows),
  };
}

function serverRows({ branch, pools, paused, budget }: ServerPools): (string | null)[][] {
  const listed = [...pools];
  const sum = (count: (pool: Pool) => number) =>
    String(listed.reduce((n, pool) => n + count(pool), 0));
  const named = (database: string) => (branch === undefined ? database : `${database}@${branch}`);
  const pooled = new Set(listed.map((pool) => pool.database));
  const pausedOnly = [...paused].filter((database) => !pooled.has(database));
  return [
    ...listed.map((pool) => [
      named(pool.database),
      pool.user,
      pool.request.mode ?? 'session',
      String(pool.active),
      String(pool.idle.length),
      String(pool.opening),
      String(pool.waiters.length),
      bool(paused.has(pool.database)),
      [...pool.request.parameters].map(([k, v]) => `${k}=${v}`).join(' '),
    ]),
    ...pausedOnly.map((database) => [named(database), null, null, '0', '0', '0', '0', 't', null]),
    [
      null,
      null,
      'budget',
      sum((pool) => pool.active),
      sum((pool) => pool.idle.length),
      sum((pool) => pool.opening),
      sum((pool) => pool.waiters.length),
      null,
      `${budget.max}: ${budget.derivation}`,
    ],
  ];
}

/**
 * One row per client past login. `state` is `active` while it holds a server connection (always,
 * in session mode; and console sessions), `waiting` while it waits for one (pool full or database
 * paused), `idle` while a transaction-mode client is between transactions.
 */
export function clientsTable(clients: Iterable<ConnectedClient>): Table {
  return {
    columns: [
      { name: 'id', type: 'int8' },
      { name: 'user', type: 'text' },
      { name: 'database', type: 'text' },
      { name: 'served_from', type: 'text' },
      { name: 'mode', type: 'text' },
      { name: 'pinned', type: 'bool' },
      { name: 'state', type: 'text' },
      { name: 'server_pid', type: 'int8' },
      { name: 'address', type: 'text' },
      { name: 'port', type: 'int8' },
      { name: 'connected_since', type: 'timestamptz' },
    ],
    rows: [...clients].map((c) => {
      const pid = c.serverPid();
      return [
        String(c.id),
        c.user,
        c.requested,
        c.database,
        c.mode,
        bool(c.pinned()),
        c.waiting() ? 'waiting' : c.mode === 'console' || pid !== undefined ? 'active' : 'idle',
        pid === undefined ? null : String(pid),
        c.address,
        String(c.port),
        timestamp(c.connectedAt),
      ];
    }),
  };
}

/**
 * Server connections: idle ones from the pools, and those in use from the clients that hold them.
 * Connections in use by no client (being reset after a client left) are not listed.
 */
export function serversTable(pools: Iterable<Pool>, clients: Iterable<ConnectedClient>): Table {
  const rows: (string | null)[][] = [];
  for (const pool of pools) {
    for (const conn of pool.idle) {
      rows.push([
        String(conn.processId),
        pool.database,
        pool.user,
        'idle',
        pool.request.mode ?? 'session',
        null,
        timestamp(new Date(conn.openedAt)),
        timestamp(new Date(conn.idleSince)),
      ]);
    }
  }
  for (const client of clients) {
    const pid = client.serverPid();
    if (pid === undefined) continue;
    const opened = client.serverOpenedAt();
    rows.push([
      String(pid),
      client.database,
      client.user,
      'active',
      client.mode,
      String(client.id),
      opened === undefined ? null : timestamp(new Date(opened)),
      null,
    ]);
  }
  return {
    columns: [
      { name: 'pid', type: 'int8' },
      { name: 'database', type: 'text' },
      { name: 'user', type: 'text' },
      { name: 'state', type: 'text' },
      { name: 'mode', type: 'text' },
      { name: 'client', type: 'int8' },
      { name: 'opened', type: 'timestamptz' },
      { name: 'idle_since', type: 'timestamptz' },
    ],
    rows,
  };
}

/**
 * The source and its standby: one row, none without a source. `resync` says how far a resync
 * under way is; `problem` why the standby can't follow the source, and what to run.
 */
export function sourceTable(statuses: readonly SourceStatus[]): Table {
  return {
    columns: [
      { name: 'source', type: 'text' },
      { name: 'version', type: 'text' },
      { name: 'system_identifier', type: 'text' },
      { name: 'connected', type: 'bool' },
      { name: 'receive_lsn', type: 'text' },
      { name: 'replay_lsn', type: 'text' },
      { name: 'source_lsn', type: 'text' },
      { name: 'lag_bytes', type: 'int8' },
      { name: 'lag_seconds', type: 'float8' },
      { name: 'data_dir', type: 'text' },
      { name: 'disk', type: 'text' },
      { name: 'window_from', type: 'timestamptz' },
      { name: 'window_to', type: 'timestamptz' },
      { name: 'resync', type: 'text' },
      { name: 'problem', type: 'text' },
    ],
    rows: statuses.map((s) => [
      s.source,
      s.version,
      s.systemId,
      bool(s.connected),
      s.receiveLsn,
      s.replayLsn,
      s.sourceLsn,
      s.lagBytes === null ? null : String(s.lagBytes),
      s.lagSeconds === null ? null : String(s.lagSeconds),
      s.dataDir,
      sizePretty(s.diskBytes),
      timestamp(s.window?.from ?? null),
      timestamp(s.window?.to ?? null),
      s.resync &&
        `${s.resync.phase}: ${sizePretty(s.resync.bytes)}${s.resync.totalBytes === null ? '' : ` of ${sizePretty(s.resync.totalBytes)}`}`,
      s.problem,
    ]),
  };
}

export function helpTable(): Table {
  return {
    columns: [
      { name: 'command', type: 'text' },
      { name: 'description', type: 'text' },
    ],
    rows: COMMANDS.map((c) => [c.syntax, c.description]),
  };
}

export function versionTable(): Table {
  return { columns: [{ name: 'version', type: 'text' }], rows: [[`pgbranch ${version}`]] };
}

/** timestamptz as PostgreSQL prints it with DateStyle ISO and TimeZone UTC. */
function timestamp(time: string | Date | null): string | null {
  if (time === null) return null;
  const iso = (typeof time === 'string' ? new Date(time) : time).toISOString();
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)}+00`;
}

function bool(value: boolean): string {
  return value ? 't' : 'f';
}

/** As pg_size_pretty: whole numbers, the unit stepping up at 10240 of the one below. */
function sizePretty(bytes: number): string {
  const units = ['bytes', 'kB', 'MB', 'GB', 'TB', 'PB'];
  let size = bytes;
  let unit = 0;
  while (Math.abs(size) >= 10 * 1024 && unit < units.length - 1) {
    size /= 1024;
    unit++;
  }
  return `${Math.round(size)} ${units[unit]}`;
}
