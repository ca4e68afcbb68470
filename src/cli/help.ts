// The text of `pgbranch branch --help`, `pgbranch gc --help` and `pgbranch source --help`.

const FINDING = `Where pgbranch is: its admin API, found through the same settings the server reads (the
config file, PGBRANCH_* variables, flags): admin.host and admin.port, 127.0.0.1:9931 by default,
and admin.token when the server requires one. Flags: --admin-host HOST, --admin-port PORT,
--admin-token TOKEN (prefer PGBRANCH_ADMIN_TOKEN: flags show in ps), --config FILE.`;

export const EXIT_CODES = `Exit codes:
  0  done (gc: also a dry run)
  1  pgbranch refused or failed; the message carries the SQLSTATE
  2  usage: a bad command, option or setting
  3  pgbranch cannot be reached: nothing answers at the admin URL, the admin API is turned off
     (admin.enabled), or the token is missing or wrong
  4  not found: no such database, branch or restore point (3D000, 42704)`;

export function branchHelp(): string {
  return `Usage: npx pgbranch branch COMMAND [options]

Works with the branches of a running pgbranch. NAME is database@branch: app@feature-x, or app
for the root of database app.

Commands:
  list [--database DB] [--tree]    every branch: parent, age, last connection, size, clients,
                                   expiry; --tree draws parents above their children
  show NAME                        one branch and its restore points
  create NAME [--from BRANCH] [--snapshot POINT] [--at TIME] [--expires DATE] [--ttl DURATION]
                                   make it now from BRANCH (default the root), or from a
                                   restore point of it; with a source, --at makes it of the
                                   source as it was at TIME (2026-12-06T09:30:00Z, -1h);
                                   creating an existing branch with the same parent succeeds
  reset NAME                       make it a fresh copy of its parent's current state; its
                                   clients are drained first
  snapshot NAME POINT              save its current state as the restore point POINT
  restore NAME POINT               reset it to the restore point POINT
  delete NAME [--cascade]          drop it and its restore points; a branch with children
                                   needs --cascade, which drops them too
  delete NAME --snapshot POINT     drop one restore point
  protect NAME, unprotect NAME     protected branches can't be reset, deleted, expired or
                                   collected by gc
  expire NAME --expires DATE       delete it at DATE (2026-12-01, or an ISO date-time)
  expire NAME --ttl DURATION       delete it DURATION (2h, 7d) after its last connection
  expire NAME --never              clear both
  diff FROM TO                     the schema difference between two branches

Options:
  --json      print the admin API's JSON instead (on failure: its error object, on stdout)
  -h, --help  this text

Anything that takes over a second shows progress on stderr: a ticker on a terminal, one line
otherwise.

${FINDING}

${EXIT_CODES}

Examples:
  npx pgbranch branch list --tree
  npx pgbranch branch create app@pr-1234 --from develop --ttl 14d
  npx pgbranch branch snapshot app@feature-x before-migration
  npx pgbranch branch restore app@feature-x before-migration
  PGBRANCH_ADMIN_PORT=7931 npx pgbranch branch delete app@feature-x --cascade --json
`;
}

export function gcHelp(): string {
  return `Usage: npx pgbranch gc --keep-from FILE [--pattern PATTERN ...] [--database DB] [--apply]

Deletes the branches whose git branch is gone: every branch (of DB, matching a PATTERN, with *
for anything) whose name is not in FILE. Roots and protected branches are never deleted, nor a
branch with children that are kept. Without --apply it is a dry run: it prints what it would
delete and deletes nothing.

FILE (- for standard input) holds live git branch names, a line each, or what
git ls-remote --heads prints:

  git ls-remote --heads origin | npx pgbranch gc --keep-from - --pattern 'pr-*' --apply

Options:
  --keep-from FILE    the live branch names; - reads standard input
  --pattern PATTERN   only branches matching it (repeat, or separate with commas)
  --database DB       only branches of database DB
  --apply             delete them (default: a dry run)
  --json              print the admin API's JSON instead

${FINDING}

${EXIT_CODES}
`;
}

export function sourceHelp(): string {
  return `Usage: npx pgbranch source COMMAND [--json]

Works with the source a running pgbranch follows (source.url, --source): the production server
whose local standby is the read-only root, and whose branches are instances of that standby.

Commands:
  status    the source (user@host:port), its version and system identifier, whether the
            standby streams, the positions received, replayed and the source's own, the lag in
            bytes and seconds, the standby's directory and disk, and a problem when the standby
            can't follow the source (failed over, re-initialised, WAL or slot gone)
  resync    rebuild the standby: a new base backup beside the old one (which serves meanwhile),
            then a swap of a few seconds; branches keep running. Connections to the read-only
            root during the swap wait, and past pool.connect_timeout get 57P03

Options:
  --json      print the admin API's JSON instead
  -h, --help  this text

${FINDING}

${EXIT_CODES}
  A pgbranch that follows no source: exit 4, one line saying so.
`;
}
