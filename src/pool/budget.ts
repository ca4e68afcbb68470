// The server connection budget: how many server connections pgbranch's pools may hold together on
// one server, taken from the server's own limit (pool.max_server_connections: auto) or given as a
// number. Each branch instance is a server of its own, with a budget of its own.

/** Server connections in all pools together, and how that number was reached, for people. */
export interface ServerBudget {
  max: number;
  /** `max_connections 30 - 3 reserved - 5 pgbranch's own - 3 margin = 19`, or the key it came from. */
  derivation: string;
}

/** The server's connection slots, as its settings say. */
export interface ServerSlots {
  maxConnections: number;
  /** superuser_reserved_connections. */
  superuserReserved: number;
  /** reserved_connections (PostgreSQL 16 and later; 0 before). */
  reserved: number;
}

/** A margin of connections, or a percentage of max_connections (`10%`). */
export type Margin = number | `${number}%`;

/** What reads the server's settings: a query on an administrative connection. */
export type SettingsQuery = (sql: string) => Promise<{ rows: { name: string; setting: string }[] }>;

/** Reads max_connections and the reserved slots; a setting the server lacks counts as 0. */
export async function readServerSlots(query: SettingsQuery): Promise<ServerSlots> {
  const { rows } = await query(
    `SELECT name, setting FROM pg_settings
      WHERE name IN ('max_connections', 'superuser_reserved_connections', 'reserved_connections')`,
  );
  const setting = (name: string) => Number(rows.find((row) => row.name === name)?.setting ?? 0);
  return {
    maxConnections: setting('max_connections'),
    superuserReserved: setting('superuser_reserved_connections'),
    reserved: setting('reserved_connections'),
  };
}

/** The margin as a number of connections: a percentage is of max_connections, rounded up. */
export function marginOf(margin: Margin, maxConnections: number): number {
  if (typeof margin === 'number') return margin;
  return Math.ceil((maxConnections * Number(margin.slice(0, -1))) / 100);
}

/**
 * What is left for the pools once the server's reserved slots, pgbranch's own administrative
 * connections and the margin for connections that bypass pgbranch are taken from max_connections.
 * At least 1: a server too small for the rest still serves one client at a time.
 */
export function deriveBudget(slots: ServerSlots, own: number, margin: Margin): ServerBudget {
  const reserved = slots.superuserReserved + slots.reserved;
  const spare = marginOf(margin, slots.maxConnections);
  const left = slots.maxConnections - reserved - own - spare;
  const max = Math.max(1, left);
  return {
    max,
    derivation: `max_connections ${slots.maxConnections} - ${reserved} reserved - ${own} pgbranch's own - ${spare} margin = ${left}${left < 1 ? ', raised to 1' : ''}`,
  };
}

/** A budget given as a number. */
export function fixedBudget(max: number): ServerBudget {
  return { max, derivation: `pool.max_server_connections = ${max}` };
}

/** The budget for pool.max_server_connections: that number, or with `auto` read from the server. */
export async function serverBudget(
  setting: number | 'auto',
  margin: Margin,
  own: number,
  query: SettingsQuery,
): Promise<ServerBudget> {
  if (setting !== 'auto') return fixedBudget(setting);
  return deriveBudget(await readServerSlots(query), own, margin);
}

/**
 * pgbranch's own sessions on a branch instance besides its pools: the one that reads its budget,
 * and one for a backup (a restore point or a child branch copied while it runs) or a schema diff.
 * They are superuser sessions, which may also use the reserved slots when more run at once.
 */
export const INSTANCE_OWN_CONNECTIONS = 2;

/**
 * The budget of a branch instance, read from it: with `auto` as for any server; a number caps it,
 * since an instance (max_connections 30 by default) is often smaller than the server the number
 * was chosen for.
 */
export async function instanceBudget(
  branch: string,
  setting: number | 'auto',
  margin: Margin,
  query: SettingsQuery,
): Promise<ServerBudget> {
  return ofInstance(
    branch,
    capped(deriveBudget(await readServerSlots(query), INSTANCE_OWN_CONNECTIONS, margin), setting),
  );
}

/**
 * An instance's budget before (or without) reading it: from the max_connections it was started
 * with (branch.instance_settings), PostgreSQL's default 3 superuser slots, and the margin.
 */
export function configuredInstanceBudget(
  branch: string,
  maxConnections: number,
  setting: number | 'auto',
  margin: Margin,
): ServerBudget {
  const derived = deriveBudget(
    { maxConnections, superuserReserved: 3, reserved: 0 },
    INSTANCE_OWN_CONNECTIONS,
    margin,
  );
  return ofInstance(branch, capped(derived, setting), ' (as configured: not read from it)');
}

function capped(budget: ServerBudget, setting: number | 'auto'): ServerBudget {
  if (setting === 'auto' || setting >= budget.max) return budget;
  return {
    max: setting,
    derivation: `${budget.derivation}, capped at pool.max_server_connections = ${setting}`,
  };
}

function ofInstance(branch: string, budget: ServerBudget, note = ''): ServerBudget {
  return { max: budget.max, derivation: `branch instance ${branch}: ${budget.derivation}${note}` };
}
