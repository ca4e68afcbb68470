// The default provider: a branch is a database in the same cluster, made with
// CREATE DATABASE ... TEMPLATE parent STRATEGY FILE_COPY (a metadata-only clone on PostgreSQL 18
// with file_copy_method = clone on a copy-on-write filesystem, a file copy otherwise).
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import type {
  BranchProvider,
  BranchRecord,
  CopyMethod,
  CreateOptions,
  DatabaseEntry,
} from './provider.js';
import { detectCloneSupport } from './copy-on-write.js';
import { withCopyMethodSetting } from './provider.js';
import { TEMPLATE_DATABASES } from './names.js';

/** Comments on branch databases start with this, followed by the branch's record as JSON. */
export const RECORD_PREFIX = 'pgbranch:';
/** pg_database.datconnlimit of a database a DROP DATABASE began and did not finish. */
const INVALID_CONNLIMIT = -2;

export class DatabaseProvider implements BranchProvider {
  private constructor(
    private readonly admin: pg.Pool,
    /** An administrative connection to another database of the server (scripts, diffs). */
    readonly connectTo: (database: string) => pg.Client,
    private readonly maintenanceDatabase: string,
    readonly copyMethod: CopyMethod,
    readonly serverVersion: string,
  ) {}

  /**
   * Detects how branches will be made. `localDataDir` is the server's data directory when pgbranch
   * can see it (the embedded server, or an upstream on this machine); clone is only claimed after a
   * real clone in it succeeded.
   */
  static async open(
    admin: pg.Pool,
    connectTo: (database: string) => pg.Client,
    maintenanceDatabase: string,
    localDataDir: string | undefined,
    wanted: 'auto' | 'clone' | 'copy' = 'auto',
  ): Promise<DatabaseProvider> {
    const { rows } = await admin.query<{
      num: string;
      version: string;
      method: string | null;
      dir: string | null;
    }>(
      `SELECT current_setting('server_version_num') AS num,
              current_setting('server_version') AS version,
              current_setting('file_copy_method', true) AS method,
              (SELECT setting FROM pg_settings WHERE name = 'data_directory') AS dir`,
    );
    const row = rows[0]!;
    const version = Number(row.num);
    const dataDir = localDataDir ?? row.dir ?? undefined;
    let copyMethod: CopyMethod;
    if (version < 180000) {
      copyMethod = {
        mode: 'copy',
        reason: `PostgreSQL ${row.version} copies files; cloning needs PostgreSQL 18 (file_copy_method = clone)`,
      };
    } else if (!dataDir || !fs.existsSync(path.join(dataDir, 'base'))) {
      copyMethod = {
        mode: 'copy',
        reason: `the server's data directory is not visible from here, so copy-on-write can't be verified; branches are copied`,
      };
    } else {
      const support = detectCloneSupport(path.join(dataDir, 'base'));
      copyMethod = support.supported
        ? {
            mode: 'clone',
            reason: `PostgreSQL ${row.version} with file_copy_method = clone; ${support.detail}`,
          }
        : { mode: 'copy', reason: support.detail };
    }
    copyMethod = withCopyMethodSetting(copyMethod, wanted);
    return new DatabaseProvider(admin, connectTo, maintenanceDatabase, copyMethod, row.version);
  }

  /**
   * Whether `physical` exists. A database a DROP DATABASE left invalid (the server died during a
   * delete or a reset: PostgreSQL marks it datconnlimit -2 first, and refuses every connection to
   * it after with 55000) does not: the next connect or create makes the branch again.
   */
  async exists(physical: string): Promise<boolean> {
    const { rowCount } = await this.admin.query(
      `SELECT 1 FROM pg_database WHERE datname = $1 AND datconnlimit <> ${INVALID_CONNLIMIT}`,
      [physical],
    );
    return rowCount === 1;
  }

  async sessionsOn(physical: string): Promise<number> {
    const { rows } = await this.admin.query<{ n: string }>(
      "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
      [physical],
    );
    return Number(rows[0]!.n);
  }

  async mayCreate(user: string, parentPhysical: string): Promise<boolean> {
    const { rows } = await this.admin.query<{ ok: boolean }>(
      `SELECT r.rolsuper OR r.rolcreatedb OR d.datdba = r.oid AS ok
         FROM pg_roles r LEFT JOIN pg_database d ON d.datname = $2
        WHERE r.rolname = $1`,
      [user, parentPhysical],
    );
    return rows[0]?.ok === true;
  }

  async create(
    physical: string,
    parentPhysical: string,
    record: BranchRecord,
    options: CreateOptions = {},
  ): Promise<void> {
    const client = await this.admin.connect();
    // A client checked out of a pool has no 'error' listener of the pool's: without this one, the
    // server going away mid-creation (killed, restarted) would be an unhandled 'error' event and
    // end pgbranch. The creation fails through its query instead.
    const lost = () => undefined;
    client.on('error', lost);
    try {
      // What an interrupted DROP DATABASE left of an earlier branch of this name goes first.
      const leftover = await client.query(
        `SELECT 1 FROM pg_database WHERE datname = $1 AND datconnlimit = ${INVALID_CONNLIMIT}`,
        [physical],
      );
      if (leftover.rowCount === 1) {
        await client.query(`DROP DATABASE IF EXISTS ${quoteIdent(physical)} WITH (FORCE)`);
      }
      await client.query(`SET file_copy_method = ${this.copyMethod.mode}`).catch(() => undefined);
      const owner = await client.query<{ owner: string }>(
        'SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = $1',
        [parentPhysical],
      );
      const ownerClause = owner.rows[0] ? ` OWNER ${quoteIdent(owner.rows[0].owner)}` : '';
      // Closed to connections until it has its parent's privileges: CREATE DATABASE gives a new
      // database PostgreSQL's default ones, under which everybody may connect.
      await client.query(
        `CREATE DATABASE ${quoteIdent(physical)} TEMPLATE ${quoteIdent(parentPhysical)} STRATEGY FILE_COPY${ownerClause} ALLOW_CONNECTIONS false`,
      );
      try {
        await copyDatabasePrivileges(client, parentPhysical, physical);
        await this.allowConnections(physical, !options.readOnly);
        for (const script of options.scripts ?? []) await this.runScript(physical, script);
        await client.query(
          `COMMENT ON DATABASE ${quoteIdent(physical)} IS ${quoteLiteral(RECORD_PREFIX + JSON.stringify(record))}`,
        );
      } catch (error) {
        // A branch without its record would look like a stranger's database: all or nothing.
        await this.drop(physical).catch(() => undefined);
        throw error;
      }
    } finally {
      client.removeListener('error', lost);
      client.release();
    }
  }

  private async runScript(physical: string, script: { name: string; sql: string }): Promise<void> {
    const client = this.connectTo(physical);
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.query(script.sql);
    } catch (error) {
      const e = error as { code?: string; message?: string; position?: string };
      throw Object.assign(
        new Error(`script ${script.name} failed: ${e.message ?? String(error)}`),
        { code: e.code ?? '58000', script: script.name },
      );
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  async drop(physical: string): Promise<void> {
    await this.admin.query(`DROP DATABASE IF EXISTS ${quoteIdent(physical)} WITH (FORCE)`);
  }

  async allowConnections(physical: string, allow: boolean): Promise<void> {
    await this.admin.query(
      `ALTER DATABASE ${quoteIdent(physical)} WITH ALLOW_CONNECTIONS ${allow ? 'true' : 'false'}`,
    );
  }

  async list(sizes: 'all' | readonly string[] = 'all'): Promise<DatabaseEntry[]> {
    // pg_database_size walks a database's files: only for the databases that are asked about.
    const { rows } = await this.admin.query<{ name: string; comment: string | null; size: string }>(
      `SELECT datname AS name, shobj_description(oid, 'pg_database') AS comment,
              CASE WHEN $2 OR datname = ANY($3) THEN pg_database_size(oid) ELSE 0 END AS size
         FROM pg_database
        WHERE datname <> $1 AND datname <> ALL($4) AND datconnlimit <> ${INVALID_CONNLIMIT}
        ORDER BY datname`,
      [this.maintenanceDatabase, sizes === 'all', sizes === 'all' ? [] : sizes, TEMPLATE_DATABASES],
    );
    return rows.map((row) => ({
      physical: row.name,
      record: parseRecord(row.comment),
      sizeBytes: Number(row.size),
    }));
  }

  async record(physical: string): Promise<BranchRecord | null> {
    const { rows } = await this.admin.query<{ comment: string | null }>(
      `SELECT shobj_description(oid, 'pg_database') AS comment FROM pg_database WHERE datname = $1`,
      [physical],
    );
    return parseRecord(rows[0]?.comment ?? null);
  }

  async setRecord(physical: string, record: BranchRecord): Promise<void> {
    await this.admin.query(
      `COMMENT ON DATABASE ${quoteIdent(physical)} IS ${quoteLiteral(RECORD_PREFIX + JSON.stringify(record))}`,
    );
  }

  async replace(physical: string, replacement: string): Promise<void> {
    await this.drop(physical);
    await this.admin.query(
      `ALTER DATABASE ${quoteIdent(replacement)} RENAME TO ${quoteIdent(physical)}`,
    );
  }
}

/**
 * Gives `physical` the database-level privileges of `parent` (GRANT/REVOKE ... ON DATABASE: CONNECT,
 * CREATE, TEMPORARY), which CREATE DATABASE does not copy: without this, a parent closed to PUBLIC
 * (REVOKE CONNECT ON DATABASE app FROM PUBLIC) would have branches every role may connect to.
 */
async function copyDatabasePrivileges(
  client: pg.PoolClient,
  parent: string,
  physical: string,
): Promise<void> {
  const acl = await client.query<{ owner: string; defaults: boolean }>(
    `SELECT quote_ident(pg_get_userbyid(datdba)) AS owner, datacl IS NULL AS defaults
       FROM pg_database WHERE datname = $1`,
    [parent],
  );
  // A parent with no ACL of its own has PostgreSQL's defaults, as the branch has already.
  if (acl.rows[0]?.defaults !== false) return;
  const { rows } = await client.query<{ grantee: string; privilege: string; grantable: boolean }>(
    `SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS grantee,
            a.privilege_type AS privilege, a.is_grantable AS grantable
       FROM pg_database d, aclexplode(d.datacl) a
      WHERE d.datname = $1`,
    [parent],
  );
  const branch = quoteIdent(physical);
  await client.query(`REVOKE ALL ON DATABASE ${branch} FROM PUBLIC, ${acl.rows[0].owner}`);
  for (const { grantee, privilege, grantable } of rows) {
    await client.query(
      `GRANT ${privilege} ON DATABASE ${branch} TO ${grantee}${grantable ? ' WITH GRANT OPTION' : ''}`,
    );
  }
}

/** A database comment as pgbranch's record, or null when it is not one (or not valid). */
export function parseRecord(comment: string | null): BranchRecord | null {
  if (!comment?.startsWith(RECORD_PREFIX)) return null;
  try {
    const record = JSON.parse(comment.slice(RECORD_PREFIX.length)) as BranchRecord;
    return typeof record.root === 'string' && typeof record.branch === 'string' ? record : null;
  } catch {
    return null;
  }
}

export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

export function quoteLiteral(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}
