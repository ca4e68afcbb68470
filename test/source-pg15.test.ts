// A source of another major version: PostgreSQL 15 from this machine's Debian packages
// (/usr/lib/postgresql/15/bin), a private cluster on a port of its own. The standby must run
// PostgreSQL 15 too (found where Debian puts it), and so must the branches made from it.
import fs from 'node:fs';
import { afterAll, beforeAll, expect, test, vi } from 'vitest';
import { connect, queryOnce } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';
import {
  DEBIAN_15,
  SUPERUSER_PASSWORD,
  sourceServer,
  type SourceServer,
} from './support/source-server.js';

vi.setConfig({ testTimeout: 180_000 });

let source: SourceServer;
let proxy: PgbranchProcess;

beforeAll(async () => {
  source = await sourceServer({ binDir: DEBIAN_15 });
  const admin = await source.connect();
  await admin.query('CREATE DATABASE app');
  await admin.query("CREATE ROLE app_reader LOGIN PASSWORD 'reader-secret'");
  await admin.end();
  const app = await source.connect('app');
  await app.query(
    "CREATE TABLE orders AS SELECT g AS id, 'old' AS note FROM generate_series(1, 100) g",
  );
  await app.end();
  proxy = await startPgbranch({ args: ['--source', source.url()], timeoutMs: 120_000 });
});

afterAll(async () => {
  await proxy?.stop();
  await source?.remove();
});

const url = (database: string) => proxy.url(database, 'postgres', SUPERUSER_PASSWORD);

test('the standby runs PostgreSQL 15, found in Debian packages, and follows the source', async () => {
  expect(proxy.events('source_binaries')).toEqual([
    expect.objectContaining({
      postgres: `${DEBIAN_15}/postgres`,
      version: expect.stringMatching(/^15\./),
    }),
  ]);
  expect(proxy.ready.upstream).toMatch(/\(PostgreSQL 15\.\d+\)$/);
  expect(await queryOnce(url('app'), 'SHOW server_version_num')).toEqual([
    { server_version_num: expect.stringMatching(/^150\d{3}$/) },
  ]);
  const app = await source.connect('app');
  await app.query("INSERT INTO orders VALUES (101, 'new')");
  const lsn = (await app.query('SELECT pg_current_wal_lsn()::text AS lsn')).rows[0].lsn as string;
  await app.end();
  const client = await connect(url('app'));
  try {
    await vi.waitFor(
      async () =>
        expect(
          (await client.query('SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS done', [lsn])).rows,
        ).toEqual([{ done: true }]),
      { timeout: 60_000, interval: 50 },
    );
    expect((await client.query('SELECT note FROM orders WHERE id = 101')).rows).toEqual([
      { note: 'new' },
    ]);
    await expect(client.query('DELETE FROM orders')).rejects.toMatchObject({ code: '25006' });
  } finally {
    await client.end();
  }
});

test('a branch of it is a PostgreSQL 15 instance too, and writable', async () => {
  const client = await connect(url('app@pr-15'));
  try {
    expect((await client.query('SHOW server_version_num')).rows[0].server_version_num).toMatch(
      /^150\d{3}$/,
    );
    await client.query('DELETE FROM orders');
    expect((await client.query('SELECT count(*)::int AS n FROM orders')).rows).toEqual([{ n: 0 }]);
  } finally {
    await client.end();
  }
});

test('a branch of it at a past moment is recovered by PostgreSQL 15 to that moment', async () => {
  await vi.waitFor(() => expect(proxy.events('source_point_taken')).toHaveLength(1), {
    timeout: 60_000,
    interval: 50,
  });
  await new Promise((resolve) => setTimeout(resolve, 20));
  const moment = new Date();
  await new Promise((resolve) => setTimeout(resolve, 20));
  const app = await source.connect('app');
  await app.query("INSERT INTO orders VALUES (102, 'after the moment')");
  await app.end();
  const client = await connect(url('app@then-15'), {
    options: `-c pgbranch.at=${moment.toISOString()}`,
  });
  try {
    expect((await client.query('SHOW server_version_num')).rows[0].server_version_num).toMatch(
      /^150\d{3}$/,
    );
    expect((await client.query('SELECT max(id) AS id FROM orders')).rows).toEqual([{ id: 101 }]);
  } finally {
    await client.end();
  }
});

test("a role without REPLICATION on PostgreSQL 15 (whose words differ from 16's) gets the same message", async () => {
  const dir = tempDir('source-refused');
  try {
    const failure = await startPgbranch({
      dataDir: dir,
      args: ['--source', source.url('app_reader', 'reader-secret')],
    }).then(
      async (started) => {
        await started.stop();
        return 'pgbranch started';
      },
      (error: Error) => error.message,
    );
    expect(failure).toContain(
      `pgbranch: role "app_reader" may not replicate from the source app_reader@127.0.0.1:${source.port}: it lacks the REPLICATION attribute. On the source, as a superuser: ALTER ROLE app_reader REPLICATION;\n`,
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
