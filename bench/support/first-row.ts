// The one measurement every row of the table is made of: a new client, from before it connects to
// the first row of `select 1`.
import pg from 'pg';

export async function connectToFirstRow(config: pg.ClientConfig): Promise<number> {
  const started = performance.now();
  const client = new pg.Client(config);
  client.on('error', () => undefined);
  try {
    await client.connect();
    const { rows } = await client.query<{ one: number }>('SELECT 1 AS one');
    const elapsed = performance.now() - started;
    if (rows[0]?.one !== 1) throw new Error('select 1 returned no row');
    return elapsed;
  } finally {
    await client.end().catch(() => undefined);
  }
}
