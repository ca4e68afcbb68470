// What `source.url` names: where the source is, who pgbranch logs in as, and how (TLS), read once
// from the URL so that pgbranch's own replication client and the standby's walreceiver (through
// primary_conninfo, a libpq connection string) reach the same server the same way.

export type SslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';

const SSL_MODES: readonly SslMode[] = [
  'disable',
  'allow',
  'prefer',
  'require',
  'verify-ca',
  'verify-full',
];

export interface SourceTarget {
  /** A host name or address, or (starting with `/`) a Unix socket directory. */
  host: string;
  port: number;
  user: string;
  password?: string;
  /** The database of the URL: where pgbranch's own sessions on the standby go. */
  database: string;
  /** As libpq reads it; `prefer` when the URL says nothing. */
  sslmode: SslMode;
  /**
   * PEM file of the CA that must have signed the source's certificate (verify-ca, verify-full),
   * or `system` for the machine's trusted CAs.
   */
  sslrootcert?: string;
  /** A client certificate and its key (PEM files), for a source that asks for one. */
  sslcert?: string;
  sslkey?: string;
  /** The URL's other libpq parameters, which the standby's primary_conninfo keeps as they are. */
  params: Record<string, string>;
}

/** Set by pgbranch in primary_conninfo, never taken from the URL's query. */
const OWN_KEYWORDS = new Set(['host', 'port', 'user', 'password', 'dbname', 'passfile']);

/** Reads `postgres://user:password@host:port/database?sslmode=...`; throws saying what is wrong. */
export function parseSourceUrl(url: string): SourceTarget {
  if (!URL.canParse(url)) {
    throw new Error('source.url is not a URL: write postgres://user:password@host:5432/postgres');
  }
  const parsed = new URL(url);
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    throw new Error(`source.url must be a postgres:// URL, not ${parsed.protocol}//`);
  }
  const params: Record<string, string> = {};
  for (const [key, value] of parsed.searchParams) params[key] = value;
  const host = params.host ?? decodeURIComponent(parsed.hostname).replace(/^\[(.*)\]$/, '$1');
  if (!host) throw new Error('source.url names no host: write postgres://user@host:5432/postgres');
  const user = decodeURIComponent(parsed.username);
  if (!user) {
    throw new Error(
      'source.url names no role: write postgres://replicator:password@host:5432/postgres with a role that has REPLICATION',
    );
  }
  const sslmode = (params.sslmode ?? 'prefer') as SslMode;
  if (!SSL_MODES.includes(sslmode)) {
    throw new Error(`source.url: sslmode=${sslmode} is not one of ${SSL_MODES.join(', ')}`);
  }
  if ((sslmode === 'verify-ca' || sslmode === 'verify-full') && !params.sslrootcert) {
    throw new Error(
      `source.url: sslmode=${sslmode} needs sslrootcert=<CA certificate file> (or sslrootcert=system for the machine's CAs)`,
    );
  }
  const port = Number(params.port ?? (parsed.port || 5432));
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new Error(`source.url: port ${params.port ?? parsed.port} is not a TCP port`);
  }
  const keep: Record<string, string> = {};
  for (const [key, value] of Object.entries(params)) {
    if (!OWN_KEYWORDS.has(key)) keep[key] = value;
  }
  return {
    host,
    port,
    user,
    password: parsed.password ? decodeURIComponent(parsed.password) : undefined,
    database: decodeURIComponent(parsed.pathname.slice(1)) || 'postgres',
    sslmode,
    sslrootcert: params.sslrootcert,
    sslcert: params.sslcert,
    sslkey: params.sslkey,
    params: keep,
  };
}

/** `replicator@db.prod:5432`, for log lines and messages: never the password. */
export function describeSource(target: SourceTarget): string {
  const at = target.host.startsWith('/')
    ? `${target.host}/.s.PGSQL.${target.port}`
    : `${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}`;
  return `${target.user}@${at}`;
}

/**
 * The libpq connection string the standby's walreceiver uses: the URL's host, port, role and TLS
 * parameters, and a password file instead of the password, so the password is in no setting. The
 * client certificate is named always: libpq would otherwise look in the home directory, which is
 * pgbranch's (root's, unreadable) when the standby runs as the postgres account, and fail.
 */
export function primaryConninfo(
  target: SourceTarget,
  files: { passfile: string; sslcert: string; sslkey: string },
  applicationName: string,
): string {
  const pairs: [string, string][] = [
    ['host', target.host],
    ['port', String(target.port)],
    ['user', target.user],
    ['dbname', target.database],
    ['passfile', files.passfile],
    ['application_name', applicationName],
    ['sslcert', files.sslcert],
    ['sslkey', files.sslkey],
    ...Object.entries(target.params).filter(
      ([key]) => !['application_name', 'sslcert', 'sslkey'].includes(key),
    ),
  ];
  return pairs.map(([key, value]) => `${key}=${conninfoValue(value)}`).join(' ');
}

/**
 * The line of the standby's password file: any host, port and database, since the file serves
 * only primary_conninfo (`:` and `\` escaped as libpq reads them).
 */
export function passfileLine(target: SourceTarget): string {
  const escape = (text: string) => text.replace(/[\\:]/g, (c) => `\\${c}`);
  return `*:*:*:${escape(target.user)}:${escape(target.password ?? '')}\n`;
}

function conninfoValue(value: string): string {
  return `'${value.replace(/[\\']/g, (c) => `\\${c}`)}'`;
}
