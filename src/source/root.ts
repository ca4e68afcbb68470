// A source as what pgbranch stands on: its standby is the server behind the proxy (the read-only
// root, `app` is production's data) and the root instance that instance branches are made from.
import path from 'node:path';
import pg from 'pg';
import type { Logger } from 'pino';
import type { RootInstanceSetup } from '../branch/instance/setup.js';
import { socketConninfo } from '../branch/instance/spares.js';
import type { Config } from '../config/schema.js';
import { PgError } from '../errors.js';
import { hideInLogs, passwordIn } from '../log.js';
import { CannotStart } from '../preflight.js';
import { pgClientConfig } from '../upstream/endpoint.js';
import { serverOwner } from '../branch/instance/postmaster.js';
import { SourceHistory } from './history.js';
import { formatLsn } from './lsn.js';
import type { StandbyMaking } from './making.js';
import { startStandby, type Standby } from './standby.js';
import { ARCHIVE_DIR } from './wal-archive.js';

/**
 * Starts (making it first if need be) the standby of source.url. A source pgbranch can't follow
 * is refused with CannotStart, whose one line says what to change on the source.
 */
export async function openSource(
  config: Config,
  log: Logger,
  /** Told each step and the base backup's progress, for whoever asks meanwhile. */
  making?: StandbyMaking,
): Promise<Standby> {
  const url = config.source.url!;
  hideInLogs(log, passwordIn(url));
  // A base backup can take hours: Ctrl-C or SIGTERM stops it, rather than waiting for its end.
  const interrupted = new AbortController();
  const stop = () => interrupted.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    return await startStandby({
      url,
      binDir: config.source.bin_dir,
      dataDir: config.data_dir,
      maxRateKbps: config.source.max_rate,
      signal: interrupted.signal,
      onStep: making && ((step) => making.stepped(step)),
      onProgress: making && ((progress) => making.progressed(progress)),
      archiveDir:
        config.source.retention > 0 ? path.join(sourceDir(config), ARCHIVE_DIR) : undefined,
      log,
    });
  } catch (error) {
    if (error instanceof PgError) {
      throw new CannotStart(`${error.message}. ${error.hint ?? ''}`.trim(), { cause: error });
    }
    throw error;
  } finally {
    process.removeListener('SIGINT', stop);
    process.removeListener('SIGTERM', stop);
  }
}

/**
 * The source's history (branches at past moments), unless source.retention is 0: restore points
 * of the standby every source.snapshot_interval, from now on, in the background.
 */
export function openHistory(
  config: Config,
  standby: Standby,
  /** A session on the standby (waiting through a resync's swap). */
  connect: () => Promise<pg.Client>,
  clone: boolean,
  log: Logger,
): SourceHistory | undefined {
  if (config.source.retention === 0) return undefined;
  if (!clone) {
    log.warn(
      { event: 'source_points_copied' },
      `restore points of the standby are full copies here (no reflink clones): one every ${config.source.snapshot_interval / 1000} s kept for ${config.source.retention / 1000} s; raise source.snapshot_interval or lower source.retention if the disk can't hold them`,
    );
  }
  return SourceHistory.open({
    root: sourceDir(config),
    standby: {
      pgDataDir: standby.pgDataDir,
      superuser: standby.superuser,
      // A resync may make it a standby of another cluster.
      get systemId() {
        return standby.systemId;
      },
      connect,
    },
    sourceLsn: () => standby.currentLsn(),
    retentionMs: config.source.retention,
    intervalMs: config.source.snapshot_interval,
    maxWaitMs: config.source.max_wait,
    clone,
    owner: serverOwner(),
    log,
  });
}

function sourceDir(config: Config): string {
  return path.join(path.resolve(config.data_dir), 'source');
}

/**
 * The standby as the root instance: copies of it become writable branches of the source.
 * `running` resolves when the standby takes connections (not during a resync's swap).
 */
export function standbyRoot(
  standby: Standby,
  maxWaitMs: number,
  running: () => Promise<void>,
  /** source.warm_standbys */
  warmSpares: number,
): RootInstanceSetup {
  return {
    warmSpares,
    upstream: {
      // Notices name the server, not the role: `db.prod:5432`.
      name: standby.source.replace(/^[^@]*@/, ''),
      position: async () => formatLsn(await standby.currentLsn()),
      maxWaitMs,
    },
    pgDataDir: standby.pgDataDir,
    superuser: standby.superuser,
    binary: standby.binaries.postgres,
    // Warm spares of the root are cascading standbys of it, on its private socket.
    replicationConninfo: socketConninfo(
      standby.endpoint.socketDir,
      standby.endpoint.port,
      standby.superuser,
    ),
    connect: async () => {
      await running();
      const client = new pg.Client({
        ...pgClientConfig(standby.endpoint),
        ssl: false,
        user: standby.superuser,
        database: standby.database,
        application_name: 'pgbranch',
      });
      await client.connect();
      return client;
    },
  };
}
