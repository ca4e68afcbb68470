// Roles without passwords. pgbranch checks each client's password against its role's verifier on
// the server, so behind a server that trusts its clients instead (a fresh Debian cluster: trust or
// peer, and no role with a password) nobody gets in. pgbranch says so at start, and to clients
// only what holds for every role name alike, so that a refusal never tells who exists.
import type pg from 'pg';

export interface PasswordCensus {
  /** The role pgbranch logs in to the server as (the upstream URL's). */
  role: string;
  /** That role has a password verifier. */
  roleHasPassword: boolean;
  /** Some role that may log in has one. */
  anyRoleHasPassword: boolean;
}

/** Which roles have passwords; undefined when pgbranch's role may not read pg_authid. */
export async function passwordCensus(admin: pg.Pool): Promise<PasswordCensus | undefined> {
  try {
    const { rows } = await admin.query<PasswordCensus>(
      `SELECT current_user AS role,
              coalesce(bool_or(rolname = current_user AND rolpassword IS NOT NULL), false)
                AS "roleHasPassword",
              coalesce(bool_or(rolcanlogin AND rolpassword IS NOT NULL), false)
                AS "anyRoleHasPassword"
         FROM pg_authid`,
    );
    return rows[0];
  } catch {
    return undefined;
  }
}

/**
 * What to tell the operator at start when the role in pgbranch's own connection string can't log
 * in through it: undefined when it can.
 */
export function passwordWarning(
  census: PasswordCensus,
  server: string,
  auth: string,
): { problem: string; remedy: string } | undefined {
  if (census.roleHasPassword) return undefined;
  const role = `"${census.role}"`;
  return {
    problem: census.anyRoleHasPassword
      ? `role ${role} has no password on ${server}, and pgbranch checks passwords (auth ${auth}): nobody can log in as ${role}`
      : `no role on ${server} has a password, and pgbranch checks passwords (auth ${auth}): nobody can log in`,
    remedy: `give ${role} one on the server (ALTER ROLE ${quoteIdent(census.role)} PASSWORD '...'), or restart pgbranch with --auth trust (loopback only)`,
  };
}

/** The hint a refused client gets when nobody can log in with a password: the same for every role. */
export const NO_PASSWORDS_HINT =
  'No role of the server behind pgbranch has a password, and pgbranch checks passwords: give the role one (ALTER ROLE ... PASSWORD), or start pgbranch with --auth trust (loopback only).';

/**
 * The hint for a client whose password was refused (28P01). It is given only while no role that
 * may log in has a password: then it holds for every role name, existing or not, and says nothing
 * of which roles exist (a hint for "this role has no password" would, as PostgreSQL knows: it says
 * only "password authentication failed"). The server is asked at each refusal, so the hint goes
 * as soon as a role gets a password; refusals that come while it is being asked share the answer.
 */
export class PasswordlessHint {
  private asking: Promise<string | undefined> | undefined;

  constructor(private readonly admin: pg.Pool) {}

  hint(): Promise<string | undefined> {
    this.asking ??= this.ask().finally(() => (this.asking = undefined));
    return this.asking;
  }

  private async ask(): Promise<string | undefined> {
    try {
      const { rows } = await this.admin.query<{ any: boolean }>(
        'SELECT EXISTS (SELECT 1 FROM pg_authid WHERE rolcanlogin AND rolpassword IS NOT NULL) AS any',
      );
      return rows[0]?.any === false ? NO_PASSWORDS_HINT : undefined;
    } catch {
      return undefined;
    }
  }
}

function quoteIdent(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}
