// Branches of a source at a past moment (options=-c pgbranch.at=...): pgbranch takes restore points
// of its standby every source.snapshot_interval (2 s here) and archives the standby's WAL; a branch
// at moment T is the newest point before T recovered to T. Rows are committed on the source between
// known moments, across restore points and WAL segments, and branches at those moments hold exactly
// the rows committed before them. Moments outside the window get 22023 naming it, a moment that is
// no moment 22007; points survive a restart, and those older than source.retention go.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { connect, connectWithNotices, psql } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';
import { SUPERUSER_PASSWORD, sourceServer, type SourceServer } from './support/source-server.js';
import { mountReflinkXfs, type XfsMount } from './support/xfs.js';

vi.setConfig({ testTimeout: 120_000 });

let source: SourceServer;
let proxy: PgbranchProcess | undefined;
let mount: XfsMount | undefined;
let dataDir: string;

const args = (retention: string) => [
  '--source',
  source.url(),
  '--source-snapshot-interval',
  '2s',
  '--source-retention',
  retention,
];

beforeAll(async () => {
  mount = await mountReflinkXfs(1024);
  if ('skipped' in mount) {
    console.warn(`restore points are byte copies here: ${mount.skipped}`);
    dataDir = tempDir('history');
  } else {
    dataDir = fs.mkdtempSync(path.join(mount.dir, 'history-'));
    fs.chmodSync(dataDir, 0o755);
  }
  source = await sourceServer();
  const admin = await source.connect();
  await admin.query('CREATE DATABASE app');
  await admin.end();
  const app = await source.connect('app');
  await app.query('CREATE TABLE orders (id int PRIMARY KEY, note text)');
  await app.end();
  proxy = await startPgbranch({ dataDir, args: args('1h'), timeoutMs: 120_000 });
}, 180_000);

afterAll(async () => {
  await proxy?.stop();
  await source?.remove();
  fs.rmSync(dataDir, { recursive: true, force: true });
  if (mount && !('skipped' in mount)) await mount.unmount();
});

const pointsTaken = () => proxy!.events('source_point_taken').length;

/** Waits for a restore point taken after now. */
async function nextPoint(): Promise<void> {
  const before = pointsTaken();
  await vi.waitFor(() => expect(pointsTaken()).toBeGreaterThan(before), {
    timeout: 60_000,
    interval: 50,
  });
}

/** Commits a row on the source and switches WAL segment, so the next row is in another one. */
async function commit(id: number): Promise<void> {
  const app = await source.connect('app');
  try {
    await app.query('INSERT INTO orders VALUES ($1, $2)', [id, `row ${id}`]);
    await app.query('SELECT pg_switch_wal()');
  } finally {
    await app.end();
  }
}

/** A moment strictly between what was committed before and what is committed after. */
async function moment(): Promise<Date> {
  await new Promise((resolve) => setTimeout(resolve, 20));
  const at = new Date();
  await new Promise((resolve) => setTimeout(resolve, 20));
  return at;
}

/** Connects to a new branch at `at` through pgbranch: its rows, and the notice it was made with. */
async function branchAt(branch: string, at: string): Promise<{ ids: number[]; notice: string }> {
  const { client, notices } = await connectWithNotices({
    ...proxy!.config(`app@${branch}`, 'postgres', SUPERUSER_PASSWORD),
    options: `-c pgbranch.at=${at}`,
  });
  try {
    const { rows } = await client.query<{ id: number }>('SELECT id FROM orders ORDER BY id');
    return { ids: rows.map((row) => row.id), notice: notices.join('\n') };
  } finally {
    await client.end();
  }
}

/** How connecting to a new branch at `at` fails. */
async function refusal(branch: string, at: string): Promise<{ code?: string; message: string }> {
  const error = await connect(proxy!.config(`app@${branch}`, 'postgres', SUPERUSER_PASSWORD), {
    options: `-c pgbranch.at=${at}`,
  }).then(
    async (client) => {
      await client.end();
      throw new Error(`app@${branch} at ${at} was made`);
    },
    (failed: Error & { code?: string }) => failed,
  );
  return { code: error.code, message: error.message };
}

const WINDOW =
  /from (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? UTC) to (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? UTC)/;
const pointDirs = () =>
  fs.readdirSync(path.join(dataDir, 'source', 'history')).filter((d) => !d.startsWith('.'));

describe('branches at past moments', () => {
  const moments: Record<string, Date> = {};

  beforeAll(async () => {
    await nextPoint();
    moments.before = await moment();
    await commit(1);
    moments.afterOne = await moment();
    await commit(2);
    await nextPoint();
    moments.afterTwo = await moment();
    await commit(3);
    // The standby makes a restartpoint: WAL it archived may leave its pg_wal.
    const source = await connect(proxy!.config('app', 'postgres', SUPERUSER_PASSWORD));
    await source.query('CHECKPOINT').finally(() => source.end());
    await nextPoint();
    moments.afterThree = await moment();
  }, 120_000);

  test('a branch holds exactly the rows committed before its moment', async () => {
    expect((await branchAt('before', moments.before!.toISOString())).ids).toEqual([]);
    // Recovered from the same point as `before`, through the WAL of rows 1 and 2.
    expect((await branchAt('after-one', moments.afterOne!.toISOString())).ids).toEqual([1]);
    const two = await branchAt('after-two', moments.afterTwo!.toISOString());
    expect(two.ids).toEqual([1, 2]);
    expect(two.notice).toMatch(
      new RegExp(
        `^pgbranch: created branch "after-two" \\(an instance of its own\\), a branch of production \\(127\\.0\\.0\\.1:${source.port}\\) as of ${moments.afterTwo!.toISOString().slice(0, 19).replace('T', ' ')} UTC \\(LSN [0-9A-F]+/[0-9A-F]+\\)`,
      ),
    );
    // After the last commit: the end of what the standby has replayed.
    expect((await branchAt('after-three', moments.afterThree!.toISOString())).ids).toEqual([
      1, 2, 3,
    ]);
    expect(fs.readdirSync(path.join(dataDir, 'source', 'wal-archive')).length).toBeGreaterThan(0);
  });

  test('a branch at a past moment is a writable branch of its own', async () => {
    const url = proxy!.url('app@after-one', 'postgres', SUPERUSER_PASSWORD);
    const written = await psql(url, "INSERT INTO orders VALUES (10, 'only here') RETURNING id");
    expect(written).toMatchObject({ code: 0, stdout: expect.stringMatching(/^10\n/) });
    expect((await branchAt('after-one', moments.afterOne!.toISOString())).ids).toEqual([1, 10]);
  });

  test('pgbranch branch create --at makes one too, and says what is wrong with a bad moment', async () => {
    const cli = (...words: string[]) =>
      promisify(execFile)(process.execPath, [path.resolve('bin/pgbranch.js'), 'branch', ...words], {
        env: { ...process.env, PGBRANCH_ADMIN_PORT: new URL(proxy!.ready.adminUrl!).port },
      });
    const made = await cli('create', 'app@cli-two', '--at', moments.afterTwo!.toISOString());
    expect(made.stdout).toMatch(/^created cli-two from main in \d+ ms/);
    expect((await branchAt('cli-two', moments.afterTwo!.toISOString())).ids).toEqual([1, 2]);
    await expect(
      cli('create', 'app@cli-early', '--at', '2020-01-01T00:00:00Z'),
    ).rejects.toMatchObject({
      stderr: expect.stringMatching(
        /^pgbranch: no branch of the source at 2020-01-01 00:00:00 UTC: it is before the oldest restore point; branches can be made at moments from .+ UTC to .+ UTC \(22023\)$/m,
      ),
    });
  });

  test('a moment before the window, or in the future, gets 22023 naming the window', async () => {
    const early = await refusal('early', '2020-01-01T00:00:00Z');
    expect(early.code).toBe('22023');
    expect(early.message).toContain(
      'no branch of the source at 2020-01-01 00:00:00 UTC: it is before the oldest restore point',
    );
    expect(early.message).toMatch(WINDOW);
    // The same window in the source's status (GET /v1/source, pgbranch source status).
    const status = (await (await fetch(`${proxy!.ready.adminUrl}/v1/source`)).json()) as {
      window: { from: string; to: string } | null;
    };
    expect(status.window).not.toBeNull();
    expect(Date.parse(status.window!.from)).toBeLessThan(Date.parse(status.window!.to));
    expect(early.message).toContain(
      `from ${new Date(status.window!.from)
        .toISOString()
        .replace('T', ' ')
        .replace(/(\.000)?Z$/, '')} UTC`,
    );
    const later = new Date(Date.now() + 3_600_000).toISOString();
    const future = await refusal('future', later);
    expect(future.code).toBe('22023');
    expect(future.message).toContain('it is in the future');
    expect(future.message).toMatch(WINDOW);
  });

  test('a moment that is no moment gets 22007 saying how to write one', async () => {
    const result = await psql(
      `${proxy!.url('app@bad', 'postgres', SUPERUSER_PASSWORD)}?options=-c%20pgbranch.at%3Dyesterday`,
      'SELECT 1',
    );
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('invalid value for parameter "pgbranch.at": "yesterday"');
    const noZone = await refusal('no-zone', '2026-12-06T09:30:00');
    expect(noZone.code).toBe('22007');
  });

  test('restore points survive a restart of pgbranch', async () => {
    const before = pointDirs();
    await proxy!.stop();
    proxy = await startPgbranch({ dataDir, args: args('1h'), timeoutMs: 120_000 });
    expect(pointDirs()).toEqual(expect.arrayContaining(before));
    expect((await branchAt('after-restart', moments.afterOne!.toISOString())).ids).toEqual([1]);
    // No commit after this moment was replayed, and it is older than the standby's start: the
    // recovery to it ends with the WAL, and is made again to that end.
    expect((await branchAt('end-after-restart', moments.afterThree!.toISOString())).ids).toEqual([
      1, 2, 3,
    ]);
  });

  test('restore points older than source.retention are removed', async () => {
    const oldest = pointDirs().sort()[0]!;
    await proxy!.stop();
    proxy = await startPgbranch({ dataDir, args: args('3s'), timeoutMs: 120_000 });
    await vi.waitFor(() => expect(pointDirs()).not.toContain(oldest), {
      timeout: 30_000,
      interval: 100,
    });
    expect(proxy.events('source_point_pruned').length).toBeGreaterThan(0);
    const gone = await refusal('gone', moments.before!.toISOString());
    expect(gone.code).toBe('22023');
    expect(gone.message).toContain('it is before the oldest restore point');
  });
});
