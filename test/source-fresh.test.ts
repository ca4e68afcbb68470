// Branches of a source are fresh: a branch asked for after a transaction committed on the source
// holds it, whether it is made of a warm standby or copied, while a writer keeps the source busy.
// Past source.max_wait the branch holds what the standby had replayed and its NOTICE says how far
// behind; with the source unreachable, what was replayed, and the NOTICE says that. branch.scripts
// mask a branch of the source before any client sees it. pgbranch's data directory is on XFS
// (reflink), as a real deployment's is, so branches are clones and warm spares are on.
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { connect, connectWithNotices, queryOnce } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';
import { SUPERUSER_PASSWORD, sourceServer, type SourceServer } from './support/source-server.js';
import { mountReflinkXfs, type XfsMount } from './support/xfs.js';

vi.setConfig({ testTimeout: 240_000 });

/** How many times "commit on the source, connect to a new branch, the row is there". */
const ROUNDS = 50;

let mount: XfsMount;
let source: SourceServer;
let proxy: PgbranchProcess | undefined;
let dataDir: string;
/** A session on the source that commits the rows the branches must hold. */
let committer: pg.Client;
/** A second one writing all along, so the standby always has WAL to replay. */
let writing = true;
let writer: Promise<void> = Promise.resolve();

beforeAll(async () => {
  mount = await mountReflinkXfs(1024);
  if ('skipped' in mount) throw new Error(`this test needs XFS with reflink: ${mount.skipped}`);
  dataDir = fs.mkdtempSync(path.join(mount.dir, 'fresh-'));
  fs.chmodSync(dataDir, 0o755);
  source = await sourceServer();
  const admin = await source.connect();
  await admin.query('CREATE DATABASE app');
  await admin.end();
  committer = await source.connect('app');
  await committer.query('CREATE TABLE orders (id int PRIMARY KEY, email text)');
  await committer.query('CREATE TABLE noise (id bigserial PRIMARY KEY, at timestamptz)');
  await committer.query(
    "INSERT INTO orders SELECT g, 'customer' || g || '@example.com' FROM generate_series(1, 1000) g",
  );
  const maskScript = path.join(dataDir, 'mask.sql');
  fs.writeFileSync(
    maskScript,
    "UPDATE orders SET email = 'masked-' || id || '@example.invalid';\n",
  );
  proxy = await startPgbranch({
    dataDir,
    keepDataDir: true,
    args: [
      '--source',
      source.url(),
      '--branch-suspend-after',
      '1s',
      '--branch-scripts',
      `masked-*=${maskScript}`,
    ],
    timeoutMs: 180_000,
  });
  writer = (async () => {
    const client = await source.connect('app');
    try {
      while (writing) await client.query('INSERT INTO noise (at) VALUES (now())');
    } finally {
      await client.end();
    }
  })();
}, 300_000);

afterAll(async () => {
  writing = false;
  await writer.catch(() => undefined);
  await committer?.end().catch(() => undefined);
  await proxy?.stop();
  await source?.remove();
  if (mount && !('skipped' in mount)) await mount.unmount();
});

/** Through pgbranch as the source's own superuser, with the source's password. */
const config = (database: string) => proxy!.config(database, 'postgres', SUPERUSER_PASSWORD);

/** Connects to a new branch; resolves with its session and the NOTICEs its creation sent. */
function newBranch(database: string): Promise<{ client: pg.Client; notices: string[] }> {
  return connectWithNotices(config(database));
}

/** The creation's NOTICE (a copy sends its progress before it). */
function created(notices: string[]): string[] {
  return notices.filter((notice) => notice.startsWith('pgbranch: created branch'));
}

const MOMENT = '\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d UTC \\(LSN [0-9A-F]+/[0-9A-F]+\\)';

describe('a branch of the source', () => {
  test(`holds what the source committed before it was asked for, ${ROUNDS} times in a row, made of warm standbys and copies`, async () => {
    const from = new Set<string>();
    for (let round = 1; round <= ROUNDS; round++) {
      const id = 1000 + round;
      await committer.query('INSERT INTO orders VALUES ($1, $2)', [id, `round ${round}`]);
      // No wait for the standby: the branch's creation waits for it to replay the source.
      const { client, notices } = await newBranch(`app@fresh-${round}`);
      try {
        const { rows } = await client.query<{ email: string }>(
          'SELECT email FROM orders WHERE id = $1',
          [id],
        );
        expect(rows, `round ${round}`).toEqual([{ email: `round ${round}` }]);
      } finally {
        await client.end();
      }
      expect(created(notices)).toEqual([
        expect.stringMatching(
          new RegExp(
            `^pgbranch: created branch "fresh-${round}" \\(an instance of its own\\), a branch of production \\(127\\.0\\.0\\.1:${source.port}\\) as of ${MOMENT} \\((clone|copy)\\)$`,
          ),
        ),
      ]);
      const event = proxy!.events('branch_created').find((e) => e.branch === `fresh-${round}`);
      from.add(event?.from === 'warm_spare' ? 'warm standby' : 'copy');
    }
    // Both ways of making a branch were tried: a warm standby when one was ready, else a copy.
    expect([...from].sort()).toEqual(['copy', 'warm standby']);
  });

  test('past source.max_wait holds what the standby had replayed, and its NOTICE says how far behind', async () => {
    // The standby stops receiving from the source (its walreceiver ends when primary_conninfo is
    // emptied), while the source still answers: a standby that can't keep up, on demand.
    const standby = await connect(config('app'));
    const { rows } = await standby.query<{ conninfo: string }>(
      'SELECT current_setting($1) AS conninfo',
      ['primary_conninfo'],
    );
    const conninfo = rows[0]!.conninfo;
    try {
      await standby.query("ALTER SYSTEM SET primary_conninfo = ''");
      await standby.query('SELECT pg_reload_conf()');
      await vi.waitFor(
        async () =>
          expect(
            (await standby.query('SELECT count(*)::int AS n FROM pg_stat_wal_receiver')).rows,
          ).toEqual([{ n: 0 }]),
        { timeout: 30_000, interval: 50 },
      );
      await committer.query("INSERT INTO orders VALUES (5000, 'not received')");
      const { client, notices } = await newBranch('app@late');
      try {
        expect(
          (await client.query('SELECT count(*)::int AS n FROM orders WHERE id = 5000')).rows,
        ).toEqual([{ n: 0 }]);
      } finally {
        await client.end();
      }
      expect(created(notices)).toEqual([
        expect.stringMatching(
          new RegExp(
            `^pgbranch: created branch "late" \\(an instance of its own\\), a branch of production \\(127\\.0\\.0\\.1:${source.port}\\) as of ${MOMENT} \\(clone\\); the standby had not replayed the source's position [0-9A-F]+/[0-9A-F]+ within source\\.max_wait, \\d+ (bytes|MB) behind: its data is \\d+ s old$`,
          ),
        ),
      ]);
    } finally {
      await standby.query(`ALTER SYSTEM SET primary_conninfo = '${conninfo.replace(/'/g, "''")}'`);
      await standby.query('SELECT pg_reload_conf()');
      await standby.end();
    }
    // Receiving again, the next branch is fresh.
    const { client, notices } = await newBranch('app@caught-up');
    try {
      expect(
        (await client.query('SELECT count(*)::int AS n FROM orders WHERE id = 5000')).rows,
      ).toEqual([{ n: 1 }]);
    } finally {
      await client.end();
    }
    expect(created(notices)[0]).not.toContain('behind');
  });

  test('with the source unreachable holds what was replayed, and its NOTICE says the source could not be reached', async () => {
    await committer.end();
    writing = false;
    await writer;
    await source.stop();
    try {
      const { client, notices } = await newBranch('app@offline');
      try {
        expect(
          (await client.query('SELECT count(*)::int AS n FROM orders WHERE id = 5000')).rows,
        ).toEqual([{ n: 1 }]);
      } finally {
        await client.end();
      }
      expect(created(notices)).toEqual([
        expect.stringMatching(
          new RegExp(
            `^pgbranch: created branch "offline" \\(an instance of its own\\), a branch of production \\(127\\.0\\.0\\.1:${source.port}\\) as of ${MOMENT} \\((clone|copy)\\); the source could not be reached \\(.+\\): its data is what the standby had replayed, \\d+ s old$`,
          ),
        ),
      ]);
    } finally {
      await source.start();
      committer = await source.connect('app');
    }
  });

  test('branch.scripts mask it before any client sees it, and the source keeps its data', async () => {
    const { client } = await newBranch('app@masked-1');
    try {
      expect(
        (
          await client.query<{ email: string }>(
            'SELECT email FROM orders WHERE id IN (1, 1001) ORDER BY id',
          )
        ).rows,
      ).toEqual([{ email: 'masked-1@example.invalid' }, { email: 'masked-1001@example.invalid' }]);
      expect(
        (
          await client.query(
            "SELECT count(*)::int AS n FROM orders WHERE email LIKE '%@example.com'",
          )
        ).rows,
      ).toEqual([{ n: 0 }]);
    } finally {
      await client.end();
    }
    expect(
      await queryOnce(
        proxy!.url('app', 'postgres', SUPERUSER_PASSWORD),
        'SELECT email FROM orders WHERE id = 1',
      ),
    ).toEqual([{ email: 'customer1@example.com' }]);
    expect(proxy!.events('branch_script_ran')).toContainEqual(
      expect.objectContaining({ branch: 'masked-1', database: 'app' }),
    );
  });
});
