// A source as what pgbranch stands on: its standby is the server behind the proxy (the read-only
// root, `app` is production's data) and the root instance that instance branches are made from.
import pg from 'pg';
import type { Logger } from 'pino';
import type { RootInstanceSetup } from '../branch/instance/setup.js';
import { socketConninfo } from '../branch/instance/spares.js';
import type { Config } from '../config/schema.js';
import { PgError } from '../errors.js';
import { hideInLogs, passwordIn } from '../log.js';
import { CannotStart } from '../preflight.js';
import { pgClientConfig } from '../upstream/endpoint.js';
import { formatLsn } from './lsn.js';
import { startStandby, type Standby } from './standby.js';

/**
 * Starts (making it first if need be) the standby of source.url. A source pgbranch can't follow
 * is refused with CannotStart, whose one line says what to change on the source.
 */
export async function openSource(config: Config, log: Logger): Promise<Standby> {
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
 * The standby as the root instance: copies of it become writable branches of the source.
 * `running` resolves when the standby takes connections (not during a resync's swap).
 */
export function standbyRoot(
  standby: Standby,
  maxWaitMs: number,
  running: () => Promise<void>,
): RootInstanceSetup {
  return {
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
