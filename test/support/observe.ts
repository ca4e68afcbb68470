// Watching a pgbranch from outside: its embedded PostgreSQL reached directly, as an administrator
// would (taking no pool slot), and its log events.
import type pg from 'pg';
import { expect, vi } from 'vitest';
import { connect } from './clients.js';
import type { PgbranchProcess } from './pgbranch.js';

/** A superuser session on the embedded server's `postgres` database; the caller ends it. */
export function connectDirect(proxy: PgbranchProcess): Promise<pg.Client> {
  return connect(proxy.directUrl('postgres'));
}

/** Whether a server process with this pid is alive. */
export async function backendExists(direct: pg.Client, pid: number): Promise<boolean> {
  const { rows } = await direct.query('select 1 from pg_stat_activity where pid = $1', [pid]);
  return rows.length === 1;
}

/**
 * Returns a function that resolves once pgbranch has finished with one more client: reset its
 * server connection and pooled it, or closed it. A client's own end() does not wait for that.
 */
export function disconnectsAfter(proxy: PgbranchProcess): () => Promise<void> {
  const before = proxy.events('client_disconnected').length;
  return () =>
    vi.waitFor(() => expect(proxy.events('client_disconnected').length).toBeGreaterThan(before), {
      timeout: 10_000,
      interval: 20,
    });
}

/** Ends a client and waits until its server connection is back in the pool (or closed). */
export async function leave(proxy: PgbranchProcess, client: pg.Client): Promise<void> {
  const gone = disconnectsAfter(proxy);
  await client.end();
  await gone();
}
