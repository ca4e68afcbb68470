// Reads what pgbranch needs to authenticate a role from the server's catalog, as PgBouncer's
// auth_query does: the password verifier, whether it may log in, and until when.
import type pg from 'pg';

export interface RoleSecret {
  name: string;
  /** pg_authid.rolpassword: a SCRAM verifier, an md5 hash, or null. */
  password: string | null;
  canLogin: boolean;
  /**
   * VALID UNTIL has passed, by the server's clock as PostgreSQL itself judges it. Decided in SQL:
   * node-postgres reads 'infinity' as the number Infinity, not a Date.
   */
  expired: boolean;
}

export interface RoleSource {
  lookup(user: string): Promise<RoleSecret | undefined>;
}

export class CatalogRoleSource implements RoleSource {
  constructor(private readonly admin: pg.Pool) {}

  async lookup(user: string): Promise<RoleSecret | undefined> {
    const { rows } = await this.admin.query<{
      rolpassword: string | null;
      rolcanlogin: boolean;
      expired: boolean;
    }>({
      // Prepared once per administrative connection: every login asks, and parsing and planning
      // the query each time was half of what it cost, on the server and in node-postgres.
      name: 'pgbranch_role_secret',
      text: `SELECT rolpassword, rolcanlogin,
                    coalesce(rolvaliduntil < clock_timestamp(), false) AS expired
               FROM pg_authid WHERE rolname = $1`,
      values: [user],
    });
    const row = rows[0];
    if (!row) return undefined;
    return {
      name: user,
      password: row.rolpassword,
      canLogin: row.rolcanlogin,
      expired: row.expired,
    };
  }
}
