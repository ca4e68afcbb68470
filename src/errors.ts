// Errors that reach a client are values with a SQLSTATE and a message a person can act on.
// Every one the proxy raises is built here, so wording and codes stay consistent.

export type Severity = 'ERROR' | 'FATAL';

export class PgError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly detail?: string,
    readonly hint?: string,
    readonly severity: Severity = 'FATAL',
    /** Why, for the log only: what a client must not learn (e.g. that a role exists). */
    readonly reason?: string,
  ) {
    super(message);
    this.name = 'PgError';
  }
}

/**
 * What PostgreSQL reports with COMMERROR: a client that broke the startup framing, or sent a cancel
 * request of an impossible length, is closed without an answer it could not read as one; only the
 * log says why.
 */
export class CommError extends PgError {
  constructor(message: string, reason?: string) {
    super('08P01', message, undefined, undefined, 'FATAL', reason);
    this.name = 'CommError';
  }
}

/**
 * A startup packet asking for a protocol version other than 3.x. A client that asked for one
 * older than 3 gets the error in protocol 2's form, as PostgreSQL sends it.
 */
export class UnsupportedProtocol extends PgError {
  constructor(
    readonly major: number,
    readonly minor: number,
    newestMinor: number,
  ) {
    super(
      '0A000',
      `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.${newestMinor}`,
    );
    this.name = 'UnsupportedProtocol';
  }
}

/** Fields of an ErrorResponse a server sent us, kept so a client sees the server's own words. */
export interface ServerErrorFields {
  severity?: string;
  code?: string;
  message?: string;
  detail?: string;
  hint?: string;
}

export const errors = {
  protocolViolation: (message: string) => new PgError('08P01', message),
  incompleteMessage: (timeoutMs: number) =>
    new PgError('08006', `client sent no complete message within ${timeoutMs} ms`),
  // The startup packet, answered in PostgreSQL's words (ProcessStartupPacket) so that clients and
  // log readers see what a server would say. `reason` adds what PostgreSQL leaves out.
  invalidStartupLength: (length: number) =>
    new CommError(
      'invalid length of startup packet',
      `invalid length of startup packet: ${length}`,
    ),
  incompleteStartupPacket: (received: number) =>
    new CommError(
      'incomplete startup packet',
      `incomplete startup packet: the client closed the connection after ${received} byte${received === 1 ? '' : 's'} of it`,
    ),
  invalidCancelLength: (length: number) =>
    new CommError(
      'invalid length of cancel request packet',
      `invalid length of cancel request packet: ${length}`,
    ),
  invalidCancelKeyLength: (keyLength: number) =>
    new CommError(
      'invalid length of cancel key in cancel request packet',
      `invalid length of cancel key in cancel request packet: ${keyLength} bytes`,
    ),
  unsupportedProtocol: (major: number, minor: number, newestMinor: number) =>
    new UnsupportedProtocol(major, minor, newestMinor),
  startupLayout: (reason: string) =>
    new PgError(
      '08P01',
      'invalid startup packet layout: expected terminator as last byte',
      undefined,
      undefined,
      'FATAL',
      `invalid startup packet layout: ${reason}`,
    ),
  invalidReplicationValue: (value: string) =>
    new PgError(
      '22023',
      `invalid value for parameter "replication": "${printable(value)}"`,
      undefined,
      'Valid values are: "false", 0, "true", 1, "database".',
    ),
  tlsRequired: (address: string) =>
    new PgError(
      '28000',
      `connection from ${address} without TLS refused: pgbranch requires TLS from clients not on this machine; use sslmode=require`,
    ),
  /** As PostgreSQL 17+: direct TLS is only for clients that name the protocol. */
  directTlsWithoutAlpn: () =>
    new CommError(
      'direct TLS without ALPN',
      'received direct SSL connection request without ALPN protocol negotiation extension',
    ),
  tlsHandshakeFailed: (reason: string) =>
    new CommError('TLS handshake failed', `TLS handshake failed: ${reason}`),
  unencryptedDataAfter: (request: 'SSL request' | 'GSSAPI encryption request') =>
    new PgError(
      '08P01',
      `received unencrypted data after ${request}`,
      'This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.',
    ),
  invalidBranchName: (name: string, rule: string) =>
    new PgError(
      '42602',
      `invalid branch name "${printable(name)}": ${rule}`,
      undefined,
      'A branch name is 1 to 255 characters without control characters or ":", as git branch names are.',
    ),
  conflictingBranchNames: (root: string, fromName: string, fromOption: string) =>
    new PgError(
      '42602',
      `conflicting branch names: the database name asks for branch "${printable(fromName)}" but options ask for "${printable(fromOption)}"`,
      undefined,
      `Name the branch in one place: ${printable(root)}@${printable(fromName)}, or ${printable(root)} with -c pgbranch.branch=${printable(fromOption)}.`,
    ),
  restorePointConnect: (branch: string, point: string) => {
    const root = branch.slice(0, branch.indexOf('@'));
    return new PgError(
      '55000',
      `"${printable(`${branch}:${point}`)}" is restore point "${printable(point)}" of ${printable(branch)}, and restore points take no connections`,
      'A restore point stays as it was saved, so that restoring it is predictable.',
      `Make a branch from it and connect to that: CREATE BRANCH ${printable(root)}@try FROM ${printable(branch)} SNAPSHOT ${printable(point)} in the pgbranch console, or npx pgbranch branch create ${printable(root)}@try --from ${printable(branch)} --snapshot ${printable(point)}`,
    );
  },
  invalidDatabaseName: (name: string, rule: string) =>
    new PgError('3D000', `invalid database name "${printable(name)}": ${rule}`),
  /** A branch asked of a database that is not there: the database is what is missing. */
  databaseMissing: (database: string, branch: string) =>
    new PgError(
      '3D000',
      `database "${printable(database)}" does not exist`,
      undefined,
      `Create the database first (CREATE DATABASE "${printable(database)}"); ${printable(branch)} is then made from it.`,
    ),
  /** The database is there but the branch to make one from is not; names are in full (app@develop). */
  parentMissing: (parent: string, action: string) =>
    new PgError(
      '3D000',
      `cannot ${action}: its parent "${printable(parent)}" does not exist`,
      undefined,
      `Create ${printable(parent)} first (connect to it, or: npx pgbranch branch create ${printable(parent)}), or pick another parent.`,
    ),
  parentBusy: (parent: string, sessions: number, waitedMs: number) =>
    new PgError(
      '55006',
      `cannot branch "${parent}": ${sessions} other session${sessions === 1 ? '' : 's'} still connected to it after waiting ${waitedMs} ms`,
      'PostgreSQL clones only a database that nobody is connected to. pgbranch paused its own pooled connections, but these sessions are held by clients in session mode or bypass the proxy.',
      `Disconnect them (see SELECT pid, usename, application_name FROM pg_stat_activity WHERE datname = '${parent}'), then connect again.`,
    ),
  mayNotCreateBranch: (user: string, branch: string, parent: string) =>
    new PgError(
      '42501',
      `permission denied to create branch "${branch}" of "${parent}": role "${user}" may not create databases`,
      'Creating a branch needs SUPERUSER, CREATEDB, or ownership of the parent database. Existing branches can be used without it.',
      `Ask an administrator to create the branch, or to run: ALTER ROLE "${user}" CREATEDB`,
    ),
  authFailed: (user: string) =>
    new PgError('28P01', `password authentication failed for user "${user}"`),
  noPassword: (user: string) =>
    new PgError(
      '28P01',
      `password authentication failed for user "${user}"`,
      undefined,
      undefined,
      'FATAL',
      `role "${user}" has no password; set one with ALTER ROLE, or use --auth trust on loopback`,
    ),
  cannotLogin: (user: string) => new PgError('28000', `role "${user}" is not permitted to log in`),
  roleMissing: (user: string) =>
    new PgError(
      '28P01',
      `password authentication failed for user "${user}"`,
      undefined,
      undefined,
      'FATAL',
      `role "${user}" does not exist`,
    ),
  tooManyLoginFailures: (address: string, seconds: number) =>
    new PgError(
      '28000',
      `too many failed logins from ${address}; try again in ${seconds} s`,
      undefined,
      'pgbranch refuses logins from an address that failed auth_max_failures times in a minute.',
    ),
  tooManyClients: (max: number) =>
    new PgError(
      '53300',
      `sorry, too many clients already: pgbranch serves at most ${max} client connections`,
      undefined,
      'Raise pool.max_client_connections, or close idle connections.',
    ),
  tooManyBranchClients: (branch: string, max: number) =>
    new PgError(
      '53300',
      `too many connections to branch "${printable(branch)}": pool.max_client_connections_per_branch is ${max}`,
      undefined,
      'Close idle connections to the branch, or raise pool.max_client_connections_per_branch.',
    ),
  tooManyRoleClients: (role: string, max: number) =>
    new PgError(
      '53300',
      `too many connections for role "${role}": pool.max_client_connections_per_role is ${max}`,
      undefined,
      'Close idle connections of the role, or raise pool.max_client_connections_per_role.',
    ),
  poolTimeout: (pool: string, waitedMs: number) =>
    new PgError(
      '53300',
      `no server connection for pool ${pool} became free within ${waitedMs} ms`,
      undefined,
      'Raise pool.size or pool.max_server_connections, or pool.wait_timeout, or close idle sessions.',
    ),
  budgetSpent: (
    pool: string,
    waitedMs: number,
    budget: { max: number; derivation: string },
    holders: string,
  ) =>
    new PgError(
      '53300',
      `no server connection for pool ${pool} became free within ${waitedMs} ms: all ${budget.max} server connections of pgbranch's budget (${budget.derivation}) are in use, by ${holders}`,
      undefined,
      "Close idle sessions, raise the server's max_connections, or lower pool.server_margin; with pool.max_server_connections: auto, RELOAD reads the server again.",
    ),
  serverFull: (
    triedMs: number,
    reason: string,
    budget: { max: number; derivation: string },
    holders: string,
  ) =>
    new PgError(
      '53300',
      `the PostgreSQL server refused connections for lack of slots for ${triedMs} ms (${reason}), with no idle connection of pgbranch's left to close; pgbranch holds ${holders || 'none'} of its budget of ${budget.max} (${budget.derivation})`,
      undefined,
      "Sessions that bypass pgbranch hold the rest: close some, raise pool.server_margin, or raise the server's max_connections.",
    ),
  upstreamUnavailable: (reason: string) =>
    new PgError(
      '08006',
      `pgbranch could not reach the PostgreSQL server: ${reason}`,
      undefined,
      'Check that the upstream server is running and reachable, then connect again.',
    ),
  upstreamTls: (reason: string, hint: string) =>
    new PgError(
      '08006',
      `pgbranch could not reach the PostgreSQL server over TLS: ${reason}`,
      undefined,
      hint,
    ),
  branchCreationFailed: (branch: string, reason: string) =>
    new PgError('58000', `could not create branch "${branch}": ${reason}`),
  idleInTransactionTimeout: (timeoutMs: number) =>
    new PgError(
      '25P03',
      'terminating connection due to idle-in-transaction timeout',
      `The client held a server connection inside a transaction and sent nothing for ${timeoutMs} ms; the transaction was rolled back.`,
      'End transactions promptly, or raise pool.idle_in_transaction_timeout.',
    ),
  branchMissing: (name: string) =>
    new PgError(
      '3D000',
      `branch "${printable(name)}" does not exist`,
      undefined,
      'See the branches with: npx pgbranch branch list (or SHOW BRANCHES in the console).',
      'ERROR',
    ),
  /** pgbranch.at (or --at) that is no moment. */
  invalidMoment: (value: string) =>
    new PgError(
      '22007',
      `invalid value for parameter "pgbranch.at": "${printable(value)}"`,
      undefined,
      'Write a moment in ISO 8601 with its zone (2026-12-06T09:30:00Z, 2026-12-06T10:30:00+01:00), or back from now (-90s, -30m, -1h, -2d).',
    ),
  /** A past moment asked of a pgbranch that keeps no history (no source, or source.retention 0). */
  noSourceHistory: (why: string) =>
    new PgError(
      '0A000',
      `pgbranch.at: no branch at a past moment here: ${why}`,
      undefined,
      'Branches at past moments are of a source (--source postgres://...) with source.retention above 0.',
    ),
  /** A past moment outside what the restore points and the WAL kept cover. */
  momentOutsideWindow: (at: Date, why: string, window: { from: Date; to: Date } | null) =>
    new PgError(
      '22023',
      `no branch of the source at ${utc(at)}: ${why}; ${window ? `branches can be made at moments from ${utc(window.from)} to ${utc(window.to)}` : 'there is no restore point of the source yet (the first is being taken)'}`,
      undefined,
      'Restore points are kept for source.retention; the newest moment is what the standby has replayed.',
    ),
  snapshotMissing: (name: string, snapshot: string) =>
    new PgError(
      '42704',
      `branch "${printable(name)}" has no restore point "${printable(snapshot)}"`,
      undefined,
      `See its restore points with: npx pgbranch branch list --json, or SHOW SNAPSHOTS in the console.`,
      'ERROR',
    ),
  rootImmutable: (name: string, action: string) =>
    new PgError(
      '42501',
      `cannot ${action} "${printable(name)}": it is a root database, not a branch`,
      'Roots hold the data branches are made from; pgbranch never changes or drops them.',
      'Use a branch (name@branch), or change the root directly with SQL.',
      'ERROR',
    ),
  branchProtected: (name: string, action: string) =>
    new PgError(
      '42501',
      `cannot ${action} "${printable(name)}": the branch is protected`,
      undefined,
      `Unprotect it first: npx pgbranch branch unprotect ${name}`,
      'ERROR',
    ),
  branchHasChildren: (name: string, children: string[]) =>
    new PgError(
      '2BP01',
      `cannot delete "${printable(name)}": branches were made from it`,
      `Its branches: ${children.map(printable).join(', ')}.`,
      'Delete them too with --cascade (DROP BRANCH ... CASCADE in the console).',
      'ERROR',
    ),
  branchLimit: (root: string, max: number) =>
    new PgError(
      '53400',
      `cannot create another branch of "${printable(root)}": it has ${max} branches, the most branch.max_per_database allows`,
      undefined,
      'Delete branches that are no longer used (npx pgbranch gc, npx pgbranch branch delete), or raise branch.max_per_database.',
    ),
  roleBranchLimit: (role: string, max: number) =>
    new PgError(
      '53400',
      `role "${role}" may not create another branch: it has made ${max}, the most branch.max_per_role allows`,
      undefined,
      'Delete branches it no longer uses (npx pgbranch branch delete), or raise branch.max_per_role.',
    ),
  creationRateLimit: (role: string, max: number, seconds: number) =>
    new PgError(
      '53400',
      `role "${role}" may not create another branch for ${seconds} s: it created ${max} in the last minute, the most branch.max_creations_per_minute allows`,
      undefined,
      'Connect to branches that exist, wait, or raise branch.max_creations_per_minute.',
    ),
  branchTerminated: (name: string, verb: 'reset' | 'restored' | 'deleted') =>
    new PgError(
      '57P01',
      `terminating connection because branch "${printable(name)}" was ${verb}`,
      undefined,
      verb === 'deleted'
        ? 'The branch no longer exists; connecting to it creates it again where the configuration allows.'
        : 'Connect again: the branch has the same name and connection string.',
    ),
  shuttingDown: () =>
    new PgError('57P01', 'terminating connection because pgbranch is shutting down'),
  internal: (error: unknown, severity: Severity = 'FATAL') =>
    new PgError(
      'XX000',
      `pgbranch internal error: ${error instanceof Error ? error.message : String(error)}`,
      undefined,
      undefined,
      severity,
    ),
  invalidTtl: (value: string) =>
    new PgError(
      '22023',
      `invalid ttl "${printable(value)}": not a duration`,
      undefined,
      'Write a duration such as 30m, 2h or 7d.',
      'ERROR',
    ),

  // The SQL console's own errors. All but the refusal at login end one command, not the session.
  consoleDenied: (user: string) =>
    new PgError(
      '42501',
      `permission denied for the pgbranch console: role "${user}" is neither a superuser nor listed in admin.users`,
      undefined,
      'Connect as a superuser, or add the role to admin.users (PGBRANCH_ADMIN_USERS) and RELOAD.',
    ),
  consoleUnsupported: (what: string) =>
    new PgError(
      '0A000',
      `pgbranch's console does not support ${what}`,
      undefined,
      'Send console commands as simple queries (psql does; node-postgres does for queries without parameters).',
      'ERROR',
    ),
  consoleSyntax: (message: string, hint: string) =>
    new PgError('42601', message, undefined, hint, 'ERROR'),
  /** A cancel of a console command that changes something: the client stops waiting, pgbranch does not. */
  consoleCanceled: (operation: string, seeWith: string | undefined) =>
    new PgError(
      '57014',
      `canceled waiting for ${operation}: the operation itself goes on in pgbranch`,
      'A console command that has started runs to its end, whether or not its session waits for it.',
      seeWith && `${seeWith} shows when it is done.`,
      'ERROR',
    ),
  queryCanceled: () =>
    new PgError('57014', 'canceling statement due to user request', undefined, undefined, 'ERROR'),
  // A source (source.url) pgbranch can't follow: each says what to change on the source.
  sourceTooOld: (source: string, version: string) =>
    new PgError(
      '0A000',
      `the source ${source} runs PostgreSQL ${version}, and pgbranch follows PostgreSQL 15 or newer`,
      "pgbranch's base backups use PostgreSQL 15's replication commands (BASE_BACKUP options, READ_REPLICATION_SLOT).",
      'Upgrade the source to PostgreSQL 15 or newer, or give pgbranch a copy of it as upstream instead.',
    ),
  sourceNoReplication: (source: string, role: string) =>
    new PgError(
      '42501',
      `role "${printable(role)}" may not replicate from the source ${source}: it lacks the REPLICATION attribute`,
      undefined,
      `On the source, as a superuser: ALTER ROLE ${quoteIdent(role)} REPLICATION;`,
    ),
  sourceHbaRefuses: (source: string, line: string, serverMessage: string) =>
    new PgError(
      '28000',
      `the source ${source} refuses replication connections from this host (${serverMessage})`,
      undefined,
      `Add this line to the source's pg_hba.conf, above any line that would match first, then reload it (SELECT pg_reload_conf()): ${line}`,
    ),
  sourceLoginFailed: (source: string, role: string, serverMessage: string) =>
    new PgError(
      '28P01',
      `pgbranch could not log in to the source ${source} as "${printable(role)}": ${serverMessage}`,
      undefined,
      'Check the role and password in source.url (PGBRANCH_SOURCE).',
    ),
  sourceUnreachable: (source: string, reason: string) =>
    new PgError(
      '08001',
      `pgbranch could not reach the source ${source}: ${reason}`,
      undefined,
      'Check that the source runs and that this host can reach it (address, port, firewall).',
    ),
  standbyBeingMade: (source: string, howFar: string) =>
    new PgError(
      '57P03',
      `pgbranch is making its standby of the source ${source}: ${howFar}`,
      undefined,
      'It takes clients once the standby runs; connect again then. `pgbranch source status` shows how far it is.',
    ),
  sourceResyncing: (source: string) =>
    new PgError(
      '57P03',
      `the standby of the source ${source} is being replaced by a new one (pgbranch source resync)`,
      undefined,
      'Connect again in a moment; branches are not affected.',
    ),
  resyncRunning: (source: string) =>
    new PgError(
      '55006',
      `a resync of the standby of ${source} is running already`,
      undefined,
      undefined,
      'ERROR',
    ),
  noSource: () =>
    new PgError(
      '42704',
      'this pgbranch follows no source: it was started without source.url (--source, PGBRANCH_SOURCE)',
    ),
  sourceChanged: (source: string, standbyDir: string, standbyId: string, sourceId: string) =>
    new PgError(
      '55000',
      `the standby in ${standbyDir} follows the cluster with system identifier ${standbyId}, and the source ${source} is now ${sourceId}: it was re-initialised, or source.url names another server`,
      undefined,
      `If source.url is right, remove ${standbyDir} and start pgbranch again to make a new standby of it.`,
    ),
};

function quoteIdent(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}

/**
 * An error as the ERROR that ends one statement while the session goes on: one that carries a
 * SQLSTATE keeps its code and words, anything else is an internal error.
 */
export function statementError(error: unknown): PgError {
  const code = sqlstateOf(error);
  if (code === undefined) return errors.internal(error, 'ERROR');
  const e = error as { message?: string; detail?: string; hint?: string };
  return new PgError(code, e.message ?? 'error', e.detail, e.hint, 'ERROR');
}

/**
 * The SQLSTATE an error carries (a server's, or one pgbranch set), or undefined. Node's errno codes
 * (EPIPE, EBUSY, EXDEV) have the same shape but start with E, which no SQLSTATE class does.
 */
export function sqlstateOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' && /^[0-9A-DF-Z][0-9A-Z]{4}$/.test(code) ? code : undefined;
}

/** Control characters would garble a terminal: show them escaped. */
export function printable(text: string): string {
  return text.replace(
    // eslint-disable-next-line no-control-regex -- control characters are what this looks for
    /[\u0000-\u001f\u007f]/g,
    (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
  );
}

/** `2026-12-06 09:30:00 UTC`, with milliseconds where there are any. */
export function utc(date: Date): string {
  const text = date.toISOString().replace('T', ' ').replace('Z', '');
  return `${text.endsWith('.000') ? text.slice(0, -4) : text} UTC`;
}
