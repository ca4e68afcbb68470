// Why a source can't be followed, in words that say what to change on the source: the server's
// own refusals (a role without REPLICATION, pg_hba.conf, a wrong password) turned into pgbranch's
// errors, and the version check.
import { errors, PgError } from '../errors.js';
import { ServerError } from '../upstream/server-connection.js';
import { describeSource, type SourceTarget } from './source-url.js';

/** The oldest major version pgbranch follows: BASE_BACKUP's option syntax and READ_REPLICATION_SLOT. */
export const OLDEST_MAJOR = 15;

/** The major of a server_version such as "15.8 (Debian 15.8-1.pgdg120+1)" or "18beta1". */
export function majorOf(serverVersion: string): number {
  return Number(/^(\d+)/.exec(serverVersion)?.[1] ?? NaN);
}

/** Throws sourceTooOld for a source older than 15 (or whose version can't be read). */
export function checkSourceVersion(target: SourceTarget, serverVersion: string): number {
  const major = majorOf(serverVersion);
  if (!(major >= OLDEST_MAJOR)) {
    throw errors.sourceTooOld(describeSource(target), serverVersion);
  }
  return major;
}

/** An error opening a replication connection, as what to change on the source. */
export function explainConnectError(error: unknown, target: SourceTarget): Error {
  const source = describeSource(target);
  if (error instanceof ServerError) {
    // PostgreSQL 15: "must be superuser or replication role to start walsender"; 16 and newer:
    // "permission denied to start WAL sender".
    if (error.code === '42501') return errors.sourceNoReplication(source, target.user);
    if (error.code === '28000' && /pg_hba\.conf/.test(error.message)) {
      return errors.sourceHbaRefuses(source, hbaLine(error.message, target), error.message);
    }
    if (error.code === '28P01' || error.code === '28000') {
      return errors.sourceLoginFailed(source, target.user, error.message);
    }
    return error;
  }
  if (error instanceof PgError) return error;
  return errors.sourceUnreachable(source, (error as Error).message);
}

/**
 * The pg_hba.conf line that lets this host replicate: the address the source saw is in its
 * message (`... from host "10.0.0.5", user "replicator", no encryption`).
 */
function hbaLine(message: string, target: SourceTarget): string {
  const address = /host "([^"]+)"/.exec(message)?.[1];
  const type = /SSL encryption/.test(message) ? 'hostssl' : 'host';
  const user = /^[a-z_][a-z0-9_]*$/.test(target.user) ? target.user : `"${target.user}"`;
  if (address === undefined || target.host.startsWith('/')) {
    return `local replication ${user} scram-sha-256`;
  }
  const mask = address.includes(':') ? '128' : '32';
  return `${type} replication ${user} ${address}/${mask} scram-sha-256`;
}
