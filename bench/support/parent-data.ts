// The parent database a branch is made from: one wide table with a primary key and a secondary
// index, generated on the server, sized to roughly the number of MiB asked for. The same SQL runs
// on PostgreSQL 18 and 15, so both baselines copy the same data.
import pg from 'pg';

/** Heap, primary key and secondary index together, per row; measured on PostgreSQL 15 and 18. */
const BYTES_PER_ROW = 318;
/** pg_database_size of an empty database. */
const EMPTY_DATABASE_BYTES = 7.6e6;
const CHUNKS = 10;

/**
 * Fills `database` (empty, just created) through `config`; `report` hears how far it got.
 * Returns pg_database_size afterwards.
 */
export async function fillParent(
  config: pg.ClientConfig,
  database: string,
  mib: number,
  report: (step: string) => void,
): Promise<number> {
  const rows = Math.max(CHUNKS, Math.round((mib * 2 ** 20 - EMPTY_DATABASE_BYTES) / BYTES_PER_ROW));
  const client = new pg.Client({ ...config, database });
  await client.connect();
  try {
    await client.query(`CREATE TABLE items (
      id bigint NOT NULL,
      account_id int NOT NULL,
      created_at timestamptz NOT NULL,
      status text NOT NULL,
      payload text NOT NULL)`);
    const perChunk = Math.ceil(rows / CHUNKS);
    for (let chunk = 0; chunk < CHUNKS; chunk++) {
      const first = chunk * perChunk + 1;
      const last = Math.min(rows, first + perChunk - 1);
      await client.query(
        `INSERT INTO items
         SELECT i, (i * 7919) % 100003, timestamptz '2024-01-01' + i * interval '1 second',
                (ARRAY['new', 'paid', 'shipped', 'returned'])[1 + i % 4], repeat(md5(i::text), 6)
           FROM generate_series($1::bigint, $2::bigint) AS i`,
        [first, last],
      );
      report(`${Math.round(((chunk + 1) / CHUNKS) * 100)}% of ${rows.toLocaleString('en')} rows`);
    }
    report('primary key and index');
    await client.query('ALTER TABLE items ADD PRIMARY KEY (id)');
    await client.query('CREATE INDEX items_account_created ON items (account_id, created_at)');
    // Leaves autovacuum nothing to do, so no worker sits on the parent when it is branched.
    report('VACUUM (ANALYZE) and CHECKPOINT');
    await client.query('VACUUM (ANALYZE) items');
    await client.query('CHECKPOINT');
    const { rows: size } = await client.query<{ bytes: string }>(
      'SELECT pg_database_size(current_database()) AS bytes',
    );
    return Number(size[0]!.bytes);
  } finally {
    await client.end();
  }
}
