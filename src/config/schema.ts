// The one schema for pgbranch's configuration: file, environment and flags all land here.
import { z } from 'zod';

/**
 * Durations are written as `500ms`, `30s`, `5m`, `2h`, `7d`, or a bare number of seconds, and held
 * in milliseconds. zod 4 hands out a .default() value without transforming it: defaults are in ms.
 */
export const duration = z.union([z.number().nonnegative(), z.string()]).transform((value, ctx) => {
  if (typeof value === 'number') return value * 1000;
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(value);
  if (!match) {
    ctx.addIssue({
      code: 'custom',
      message: `"${value}" is not a duration: write e.g. 500ms, 30s, 5m, 2h or 7d`,
    });
    return z.NEVER;
  }
  const unit = match[2] ?? 's';
  const factor = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[unit] ?? 1000;
  return Math.round(Number(match[1]) * factor);
});

/** Yes or no: true or false in the file; true/false, yes/no, on/off or 1/0 as a flag or variable. */
export const boolean = z.union([z.boolean(), z.string()]).transform((value, ctx) => {
  if (typeof value === 'boolean') return value;
  const word = value.trim().toLowerCase();
  if (['true', 'yes', 'on', '1'].includes(word)) return true;
  if (['false', 'no', 'off', '0'].includes(word)) return false;
  ctx.addIssue({ code: 'custom', message: `"${value}" is not a yes or no: write true or false` });
  return z.NEVER;
});

const port = z.coerce.number().int().min(0).max(65535);

/** The items of a comma-separated setting (`ci-*, pr-*`), trimmed, empty ones dropped. */
export function commaList(text: string): string[] {
  return text
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item.length > 0);
}

/**
 * `pattern=value, pattern=value`, where a pattern is a branch name with `*` for anything and the
 * value a duration or a file path. Kept as text; lifecycle/policy.ts reads it.
 */
const patternList = (value: 'duration' | 'file') =>
  z.string().superRefine((text, ctx) => {
    for (const item of commaList(text)) {
      const eq = item.indexOf('=');
      if (eq <= 0 || eq === item.length - 1) {
        ctx.addIssue({
          code: 'custom',
          message: `"${item}" is not pattern=${value === 'duration' ? 'duration' : 'path'}: write e.g. ${value === 'duration' ? 'ci-*=2h' : 'pr-*=config/mask.sql'}`,
        });
      } else if (value === 'duration' && !duration.safeParse(item.slice(eq + 1)).success) {
        ctx.addIssue({
          code: 'custom',
          message: `"${item.slice(eq + 1)}" in "${item}" is not a duration: write e.g. 2h or 14d`,
        });
      }
    }
  });
const positiveInt = z.coerce.number().int().positive();

/** `auto` (taken from the server's max_connections) or a positive number of connections. */
export const autoOrCount = z.union([z.number(), z.string()]).transform((value, ctx) => {
  if (value === 'auto') return 'auto' as const;
  const n = Number(value);
  if (Number.isInteger(n) && n > 0) return n;
  ctx.addIssue({ code: 'custom', message: `"${value}" is not auto or a positive integer` });
  return z.NEVER;
});

/** A number of connections, or a percentage of the server's max_connections: `5`, `10%`. */
export const connectionMargin = z.union([z.number(), z.string()]).transform((value, ctx) => {
  const text = String(value).trim();
  if (/^\d+(\.\d+)?%$/.test(text) && Number(text.slice(0, -1)) <= 100) {
    return text as `${number}%`;
  }
  const n = Number(text);
  if (text !== '' && Number.isInteger(n) && n >= 0) return n;
  ctx.addIssue({
    code: 'custom',
    message: `"${value}" is not a number of connections or a percentage: write e.g. 5 or 10%`,
  });
  return z.NEVER;
});
/** A number of connections or attempts, where 0 turns the feature off. */
const count = (max: number) => z.coerce.number().int().min(0).max(max);

export const configSchema = z
  .object({
    listen: z
      .object({
        host: z.string().min(1).default('127.0.0.1'),
        port: port.default(6432),
        /**
         * A directory to listen in on a Unix socket too, `.s.PGSQL.<port>` as PostgreSQL names
         * its own (`psql -h DIR`); unset: TCP only.
         */
        socket_dir: z.string().min(1).optional(),
      })
      .strict()
      .default({ host: '127.0.0.1', port: 6432 }),
    /** TLS on the proxy port: SSLRequest is answered yes, and direct TLS accepted. */
    tls: z
      .object({
        /** PEM certificate (the server's first, then any intermediates); unset: no TLS. */
        cert: z.string().min(1).optional(),
        /** PEM private key of the certificate. */
        key: z.string().min(1).optional(),
        /**
         * `allow`: TLS for clients that ask; `require`: every client not on loopback or the Unix
         * socket must use TLS.
         */
        mode: z.enum(['allow', 'require']).default('allow'),
      })
      .strict()
      .default({ mode: 'allow' }),
    /** Where pgbranch keeps its embedded PostgreSQL and its own state. */
    data_dir: z.string().min(1).default('.pgbranch'),
    /**
     * An existing server to branch on instead of the embedded one: a postgres:// URL with the
     * credentials of a role that may create databases (superuser, or CREATEDB and read access to
     * pg_authid for client authentication).
     */
    upstream: z
      .string()
      .regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL')
      .optional(),
    /**
     * A production (or staging) server to follow: pgbranch keeps a physical standby of it on its
     * data directory, which becomes the read-only root that instance branches are made from.
     */
    source: z
      .object({
        /** postgres:// URL of a role with REPLICATION on a PostgreSQL 15 or newer server. */
        url: z
          .string()
          .regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL')
          .optional(),
        /** A directory holding `postgres` of the source's major version; found or installed when unset. */
        bin_dir: z.string().min(1).optional(),
        /** The base backup's rate limit in kB/s (BASE_BACKUP MAX_RATE, 32 or more); 0 for none. */
        max_rate: z.coerce
          .number()
          .int()
          .min(0)
          .max(1_048_576)
          .refine((n) => n === 0 || n >= 32, 'is below 32 kB/s, the least PostgreSQL allows')
          .default(0),
        /**
         * How long a new branch waits for the standby to replay what the source had committed when
         * the branch was asked for; past it the branch holds what was replayed, and says so.
         */
        max_wait: duration.default(5_000),
        /**
         * Warm standbys of the source's standby kept ready, each a new branch in a second: more
         * serve branches asked for in quick succession (each is made after the one before, and
         * each replays the source's stream all along).
         */
        warm_standbys: z.coerce.number().int().min(1).max(16).default(1),
        /**
         * How far back branches at past moments (pgbranch.at) can go: restore points of the standby
         * and its WAL are kept this long. 0: none are kept.
         */
        retention: duration.default(86_400_000),
        /** How often a restore point of the standby is taken. */
        snapshot_interval: duration.refine((ms) => ms >= 1000, 'is below 1s').default(900_000),
      })
      .strict()
      .default({
        max_rate: 0,
        max_wait: 5_000,
        warm_standbys: 1,
        retention: 86_400_000,
        snapshot_interval: 900_000,
      }),
    /** How clients authenticate to the proxy. `trust` is refused unless listen.host is loopback. */
    auth: z.enum(['scram-sha-256', 'md5', 'trust']).default('scram-sha-256'),
    /**
     * Failed logins a client address may have in a minute before its logins are refused (28000)
     * until the oldest is a minute old; Unix socket clients are one address. 0: no limit.
     */
    auth_max_failures: count(1_000_000).default(20),
    /** Like PostgreSQL's authentication_timeout: a client must finish logging in within this. */
    auth_timeout: duration.default(60_000),
    /**
     * On SIGTERM, how long clients may go on: each is closed (57P01) at the end of its transaction,
     * and whoever is left after this is closed too.
     */
    shutdown_timeout: duration.default(30_000),
    embedded: z
      .object({
        /** Superuser password of the embedded server; generated and kept in data_dir when unset. */
        password: z.string().min(1).optional(),
        /** TCP port of the embedded server on 127.0.0.1 (0 picks a free one). */
        port: port.default(0),
        /**
         * The embedded server's max_connections; unset: 100 with pool.max_server_connections
         * auto, else that number plus 20.
         */
        max_connections: positiveInt.optional(),
      })
      .strict()
      .default({ port: 0 }),
    pool: z
      .object({
        /**
         * session: a server connection per client session. transaction: a server connection per
         * transaction, shared by many clients. A client can choose with options=-c pgbranch.pool_mode=.
         */
        mode: z.enum(['session', 'transaction']).default('session'),
        /** Comma-separated database name patterns (`*` matches anything) that use transaction mode. */
        transaction_mode_for: z.string().default(''),
        /** Server connections per (branch, user, startup parameters) pool. */
        size: positiveInt.default(20),
        /** Idle server connections a pool keeps open once it exists, reopened by the janitor. */
        min_idle: count(10_000).default(0),
        /** Extra server connections a pool may open for a client that waited reserve_timeout. */
        reserve_size: count(10_000).default(0),
        reserve_timeout: duration.default(5_000),
        /**
         * Server connections in all pools together. `auto`: the server's max_connections less its
         * reserved slots, pgbranch's own administrative connections and server_margin.
         */
        max_server_connections: autoOrCount.default('auto'),
        /**
         * With max_server_connections auto: slots left for sessions that bypass pgbranch (an
         * operator's psql, migrations, monitoring), as a number or a percentage of max_connections.
         */
        server_margin: connectionMargin.default('10%'),
        max_client_connections: positiveInt.default(5000),
        /** Client connections to one branch at once (53300 past it); 0 for no limit. */
        max_client_connections_per_branch: count(1_000_000).default(0),
        /** Client connections of one role at once (53300 past it); 0 for no limit. */
        max_client_connections_per_role: count(1_000_000).default(0),
        /** Idle pooled server connections are closed after this long. */
        idle_timeout: duration.default(600_000),
        /** Server connections older than this are closed when given back or idle; 0 keeps them. */
        server_lifetime: duration.default(3_600_000),
        /** A client waiting for a server connection longer than this gets 53300. */
        wait_timeout: duration.default(30_000),
        /** Time allowed to open and authenticate one server connection. */
        connect_timeout: duration.default(10_000),
        /** Times a server connect that failed for a passing reason is tried again, with backoff. */
        connect_retries: count(100).default(2),
        /**
         * Transaction mode: a client that keeps a server connection idle inside a transaction this
         * long is disconnected (25P03) and its transaction rolled back; 0 never.
         */
        idle_in_transaction_timeout: duration.default(0),
        /**
         * Transaction mode: prepared statements one server connection keeps for clients (as
         * PgBouncer's max_prepared_statements); the least recently prepared is closed past this.
         */
        max_prepared_statements: positiveInt.default(200),
      })
      .strict()
      .default({
        mode: 'session',
        transaction_mode_for: '',
        size: 20,
        min_idle: 0,
        reserve_size: 0,
        reserve_timeout: 5_000,
        max_server_connections: 'auto',
        server_margin: '10%',
        max_client_connections: 5000,
        max_client_connections_per_branch: 0,
        max_client_connections_per_role: 0,
        idle_timeout: 600_000,
        server_lifetime: 3_600_000,
        wait_timeout: 30_000,
        connect_timeout: 10_000,
        connect_retries: 2,
        idle_in_transaction_timeout: 0,
        max_prepared_statements: 200,
      }),
    branch: z
      .object({
        /** How long in-flight work on a parent may take to finish before a clone gives up. */
        drain_timeout: duration.default(5_000),
        /**
         * `auto` clones where the server and filesystem can (detected at start) and copies
         * elsewhere; `copy` always copies; `clone` refuses to start where cloning is impossible.
         */
        copy_method: z.enum(['auto', 'clone', 'copy']).default('auto'),
        /** Comma-separated branch name patterns that connecting may create; '' lets only admins create. */
        create_on_connect: z.string().default('*'),
        /** Branches one root database may have (restore points not counted); 0 for no limit. */
        max_per_database: count(1_000_000).default(0),
        /** Branches one role may have made by connecting (and not yet deleted); 0 for no limit. */
        max_per_role: count(1_000_000).default(0),
        /** Branches one role may make by connecting in a minute; 0 for no limit. */
        max_creations_per_minute: count(1_000_000).default(60),
        /** Idle expiry by branch name pattern: `ci-*=2h, pr-*=14d`. */
        ttl: patternList('duration').default(''),
        /** SQL files run in a new branch before any client sees it, by pattern: `pr-*=mask.sql`. */
        scripts: patternList('file').default(''),
        /** How often expired branches are looked for. */
        sweep_interval: duration.default(60_000),
        /**
         * How often roots with branches get an automatic restore point when quiet (the first one
         * this long after a root's first branch); 0 never.
         */
        root_snapshot_interval: duration.default(3_600_000),
        /**
         * Automatic restore points where they are full copies (no copy-on-write): each is as large
         * as its root, so only when asked for. Where branches are clones they are taken anyway.
         */
        root_snapshot_copies: boolean.default(false),
        /**
         * When a root can't be drained for a connect-time clone, clone its newest automatic
         * restore point instead, and tell the client how old the data is.
         */
        use_root_snapshot: boolean.default(false),
        /**
         * `database`: a branch is a database cloned in the same cluster, which needs the parent
         * quiet; `instance`: a branch is a PostgreSQL instance of its own, on a copy-on-write copy
         * of the parent instance taken while it runs (every database of it, nobody paused).
         */
        provider: z.enum(['database', 'instance']).default('database'),
        /** Instance branches: one with no clients this long is shut down; a connect starts it. */
        suspend_after: duration.default(300_000),
        /** Instance branches that may run at once; 0 sizes it from the machine's memory. */
        max_running: count(10_000).default(0),
        /**
         * Instance branches: settings of every instance over pgbranch's small defaults, as
         * `shared_buffers=32MB, max_connections=50`.
         */
        instance_settings: z.string().default(''),
        /**
         * Instance branches: keep a standby of each parent being branched (the root always)
         * streaming and replayed, so that a new branch is that standby promoted (tenths of a
         * second, no checkpoint or copy on the parent meanwhile) and a new standby is made behind
         * it. Off: every branch is a copy under the backup API, as the first one of a branch is.
         * auto: on where instances are reflink clones (a spare costs no disk), off where every
         * copy is a full one (a spare would hold a whole copy of its parent's data).
         */
        warm_spare: z.enum(['auto', 'on', 'off']).default('auto'),
      })
      .strict()
      .default({
        drain_timeout: 5000,
        copy_method: 'auto',
        create_on_connect: '*',
        max_per_database: 0,
        max_per_role: 0,
        max_creations_per_minute: 60,
        ttl: '',
        scripts: '',
        sweep_interval: 60_000,
        root_snapshot_interval: 3_600_000,
        root_snapshot_copies: false,
        use_root_snapshot: false,
        provider: 'database',
        suspend_after: 300_000,
        max_running: 0,
        instance_settings: '',
        warm_spare: 'auto',
      }),
    /** The HTTP admin API (JSON, with an OpenAPI description) that the CLI talks to. */
    admin: z
      .object({
        enabled: boolean.default(true),
        /** Anything but loopback needs a token. */
        host: z.string().min(1).default('127.0.0.1'),
        /** 0 picks a free port. */
        port: port.default(9931),
        /** Bearer token required on every request when set (PGBRANCH_ADMIN_TOKEN). */
        token: z.string().min(1).optional(),
        /** Comma-separated roles, besides superusers, that may use the SQL console (database pgbranch). */
        users: z.string().default(''),
        /**
         * HTTPS with tls.cert and tls.key; unset: HTTPS when tls.cert is set and host is not
         * loopback (a token must not cross a network in clear).
         */
        tls: boolean.optional(),
        /**
         * The CA the CLI checks the admin API's certificate with; unset: ca.crt beside tls.cert
         * when there is one (as `pgbranch tls init` writes them), else the system's CAs.
         */
        cacert: z.string().min(1).optional(),
      })
      .strict()
      .default({ enabled: true, host: '127.0.0.1', port: 9931, users: '' }),
    /** Several proxies in front of one server: they pause and drain together through Redis. */
    redis: z
      .object({
        /** redis://[user:password@]host:port[/db]; unset, this proxy coordinates with nobody. */
        url: z
          .string()
          .regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL')
          .optional(),
      })
      .strict()
      .default({}),
    /** Prometheus metrics over HTTP at /metrics. */
    metrics: z
      .object({
        enabled: boolean.default(true),
        host: z.string().min(1).default('127.0.0.1'),
        /** 0 picks a free port; the ready log line says which. */
        port: port.default(9930),
        /** HTTPS with tls.cert and tls.key; unset: HTTPS when tls.cert is set and host is not loopback. */
        tls: boolean.optional(),
      })
      .strict()
      .default({ enabled: true, host: '127.0.0.1', port: 9930 }),
    log: z
      .object({
        level: z
          .enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'])
          .default('info'),
        /** `auto` is pretty on a terminal and JSON otherwise. */
        format: z.enum(['auto', 'json', 'pretty']).default('auto'),
      })
      .strict()
      .default({ level: 'info', format: 'auto' }),
  })
  .strict();

export type Config = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
