// The one measurement every row of the tables is made of: a new client, from before it connects to
// the first row of a query (`select 1`, or one that reads a table of the branch).
import pg from 'pg';

/** `sql` must return a first row with one = 1. */
export async function connectToFirstRow(
  config: pg.ClientConfig,
  sql = 'SELECT 1 AS one',
): Promise<number> {
  const started = performance.now();
  const client = new pg.Client(config);
  client.on('error', () => undefined);
  try {
    await client.connect();
    const { rows } = await client.query<{ one: number }>(sql);
    const elapsed = performance.now() - started;
    if (rows[0]?.one !== 1) throw new Error(`${sql} returned no row with one = 1`);
    return elapsed;
  } finally {
    await client.end().catch(() => undefined);
  }
}
