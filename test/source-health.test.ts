// A source's health everywhere pgbranch reports it (`pgbranch source status`, GET /v1/source,
// SHOW SOURCE through psql, the pgbranch_source_* metrics), as the standby streams, lags, loses
// its source and gets it back; a source re-initialised under it (another cluster at the same
// address) reported as a problem, and `pgbranch source resync` rebuilding the standby from it
// while a branch made before keeps serving a session throughout; and a pgbranch without a source
// saying so in each of them.
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import type { SourceStatus } from '../src/source/health.js';
import { connect, connectWithNotices, psql, queryOnce } from './support/clients.js';
import {
  runCli,
  startPgbranch,
  tempDir,
  type CliRun,
  type PgbranchProcess,
} from './support/pgbranch.js';
import {
  REPLICATOR_PASSWORD,
  SUPERUSER_PASSWORD,
  sourceServer,
  type SourceServer,
} from './support/source-server.js';

vi.setConfig({ testTimeout: 120_000 });

let source: SourceServer;
let proxy: PgbranchProcess;
const dataDir = tempDir('source-health');
const wait = { timeout: 60_000, interval: 100 };

beforeAll(async () => {
  source = await sourceServer();
  await fillSource('the first cluster');
  proxy = await startPgbranch({
    dataDir,
    // No restore points (source-history.test.ts has them): the window stays null here.
    args: ['--source', source.url(), '--branch-warm-spare', 'on', '--source-retention', '0'],
    timeoutMs: 120_000,
  });
});

afterAll(async () => {
  await proxy?.stop();
  await source?.remove();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

/** Database app with a table of three rows saying which cluster they were written on. */
async function fillSource(note: string): Promise<void> {
  const admin = await source.connect();
  await admin.query('CREATE DATABASE app');
  await admin.end();
  const app = await source.connect('app');
  await app.query('CREATE TABLE orders (id int PRIMARY KEY, note text)');
  await app.query('INSERT INTO orders SELECT g, $1 FROM generate_series(1, 3) g', [note]);
  await app.end();
}

/** Through pgbranch as the source's own superuser, with the source's password. */
const url = (database: string) => proxy.url(database, 'postgres', SUPERUSER_PASSWORD);

async function api(method = 'GET', route = '/v1/source') {
  const response = await fetch(`${proxy.ready.adminUrl}${route}`, { method });
  return { status: response.status, body: (await response.json()) as SourceStatus };
}

async function metrics(): Promise<Map<string, number>> {
  const text = await (await fetch(proxy.ready.metricsUrl!)).text();
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    const match = /^(pgbranch_source_\w+)\{source="([^"]*)"\} (\S+)$/.exec(line);
    if (match) {
      expect(match[2]).toBe(`replicator@127.0.0.1:${source.port}`);
      values.set(match[1]!, Number(match[3]));
    }
  }
  return values;
}

/** The CLI against `adminUrl` (this file's pgbranch by default). */
function cli(args: string[], adminUrl = proxy.ready.adminUrl!): Promise<CliRun> {
  return runCli(args, { PGBRANCH_ADMIN_PORT: new URL(adminUrl).port });
}

/** SHOW SOURCE through psql, as `column|value` lines. */
async function showSource(): Promise<Record<string, string>> {
  const run = await psql(url('pgbranch'), 'SHOW SOURCE', { args: ['-x'] });
  expect(run.stderr).toBe('');
  return Object.fromEntries(
    run.stdout.split('\n').map((line) => line.split('|') as [string, string]),
  );
}

async function commitOnSource(id: number, note: string): Promise<void> {
  const app = await source.connect('app');
  try {
    await app.query('INSERT INTO orders VALUES ($1, $2)', [id, note]);
  } finally {
    await app.end();
  }
}

describe('a streaming standby', () => {
  test('CLI, API, console and metrics tell the same status, without the password', async () => {
    await vi.waitFor(async () => {
      expect((await api()).body).toMatchObject({ connected: true, lagBytes: 0, problem: null });
    }, wait);
    const { status, body } = await api();
    expect(status).toBe(200);
    expect(body).toMatchObject({
      source: `replicator@127.0.0.1:${source.port}`,
      version: expect.stringMatching(/^18\./),
      systemId: expect.stringMatching(/^\d+$/),
      receiveLsn: expect.stringMatching(/^[0-9A-F]+\/[0-9A-F]+$/),
      replayLsn: expect.any(String),
      sourceLsn: expect.any(String),
      lagSeconds: 0,
      dataDir: path.join(dataDir, 'source', 'standby', 'pg'),
      diskBytes: expect.any(Number),
      window: null,
      resync: null,
    });
    expect(body.diskBytes).toBeGreaterThan(10 * 1024 * 1024);

    const text = await cli(['source', 'status']);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(`source:          replicator@127.0.0.1:${source.port}\n`);
    expect(text.stdout).toContain(`system id:       ${body.systemId}\n`);
    expect(text.stdout).toContain('streaming:       yes\n');
    expect(text.stdout).not.toContain('PROBLEM');
    const json = await cli(['source', 'status', '--json']);
    expect(JSON.parse(json.stdout)).toMatchObject({ systemId: body.systemId, connected: true });

    const row = await showSource();
    expect(row).toMatchObject({
      source: body.source,
      system_identifier: body.systemId,
      connected: 't',
      data_dir: body.dataDir,
      window_from: '',
      problem: '',
    });
    expect(await metrics()).toEqual(
      new Map([
        ['pgbranch_source_connected', 1],
        ['pgbranch_source_lag_bytes', 0],
        ['pgbranch_source_lag_seconds', 0],
      ]),
    );
    const everything = JSON.stringify([body, text, json, row, proxy.logs]) + proxy.stderr();
    expect(everything).not.toContain(REPLICATOR_PASSWORD);
  });

  test('lag: non-zero while the standby does not replay, zero once it does again', async () => {
    // Lag in seconds is the age of the newest transaction replayed: one is, first.
    await commitOnSource(99, 'replayed');
    await vi.waitFor(async () => expect((await api()).body.lagBytes).toBe(0), wait);
    const standby = await connect(url('app'));
    let paused = true;
    try {
      await standby.query('SELECT pg_wal_replay_pause()');
      await commitOnSource(100, 'while replay is paused');
      await vi.waitFor(async () => {
        const { body } = await api();
        expect(body.lagBytes).toBeGreaterThan(0);
        expect(body.lagSeconds).toBeGreaterThan(0);
        expect((await metrics()).get('pgbranch_source_lag_bytes')).toBeGreaterThan(0);
      }, wait);
      expect((await showSource()).lag_bytes).toMatch(/^[1-9]\d*$/);
      await standby.query('SELECT pg_wal_replay_resume()');
      paused = false;
      await vi.waitFor(async () => {
        expect((await api()).body).toMatchObject({ lagBytes: 0, lagSeconds: 0 });
        expect((await metrics()).get('pgbranch_source_lag_bytes')).toBe(0);
      }, wait);
    } finally {
      if (paused) await standby.query('SELECT pg_wal_replay_resume()');
      await standby.end();
    }
  });

  test('source stopped: not connected, lag unknown, app still answers; back: streaming again', async () => {
    await source.stop();
    try {
      await vi.waitFor(async () => {
        expect((await api()).body).toMatchObject({
          connected: false,
          sourceLsn: null,
          lagBytes: null,
          problem: null,
        });
        const now = await metrics();
        expect(now.get('pgbranch_source_connected')).toBe(0);
        expect(now.has('pgbranch_source_lag_bytes')).toBe(false);
      }, wait);
      expect((await showSource()).connected).toBe('f');
      expect((await cli(['source', 'status'])).stdout).toContain(
        "lag:             unknown (the source can't be reached)",
      );
      expect(await queryOnce(url('app'), 'SELECT count(*)::int AS n FROM orders')).toEqual([
        { n: 5 },
      ]);
    } finally {
      await source.start();
    }
    await vi.waitFor(async () => {
      expect((await api()).body).toMatchObject({ connected: true, lagBytes: 0 });
      expect((await metrics()).get('pgbranch_source_connected')).toBe(1);
    }, wait);
  });
});

test('a failover to a server whose timeline forked before the standby: reported, RESYNC SOURCE follows it', async () => {
  const systemId = (await api()).body.systemId;
  const { takeOver } = await source.fork();
  await commitOnSource(101, 'lost in the failover');
  await vi.waitFor(async () => {
    expect((await api()).body).toMatchObject({ connected: true, lagBytes: 0 });
  }, wait);
  await takeOver();
  await vi.waitFor(async () => {
    expect((await api()).body).toMatchObject({
      connected: false,
      problem: expect.stringMatching(
        /^the standby can't follow the timeline of the source replicator@127\.0\.0\.1:\d+: it was failed over .*Run pgbranch source resync/,
      ),
    });
    expect((await metrics()).get('pgbranch_source_connected')).toBe(0);
  }, wait);

  const run = await psql(url('pgbranch'), 'RESYNC SOURCE');
  expect(run.stderr).toMatch(
    /NOTICE: {2}pgbranch: the standby of replicator@127\.0\.0\.1:\d+ was made again \(system identifier \d+\) and streams from it/,
  );
  expect(run.code).toBe(0);
  const admin = await source.connect();
  try {
    // The slot the copy brought along was dropped and made again: one, the standby's.
    const { rows } = await admin.query('SELECT active FROM pg_replication_slots');
    expect(rows).toEqual([{ active: expect.any(Boolean) }]);
  } finally {
    await admin.end();
  }
  await commitOnSource(102, 'on the new timeline');
  await vi.waitFor(async () => {
    expect((await api()).body).toMatchObject({
      systemId,
      connected: true,
      lagBytes: 0,
      problem: null,
    });
    expect(await queryOnce(url('app'), 'SELECT id FROM orders WHERE id > 100 ORDER BY id')).toEqual(
      [{ id: 102 }],
    );
  }, wait);
  expect(proxy.events('source_problem')).toHaveLength(1);
});

describe('a source re-initialised under the standby', () => {
  let branch: pg.Client;
  let oldSystemId: string;

  beforeAll(async () => {
    oldSystemId = (await api()).body.systemId;
    branch = await connect(url('app@pr-1'));
    await branch.query("INSERT INTO orders VALUES (0, 'only in pr-1')");
    await source.reinitialise();
    await fillSource('the second cluster');
  });

  afterAll(async () => {
    await branch?.end();
  });

  test('is reported: a problem saying to resync, once in the log, connected 0', async () => {
    await vi.waitFor(async () => {
      const { body } = await api();
      expect(body.problem).toMatch(
        new RegExp(
          `^the source replicator@127\\.0\\.0\\.1:${source.port} is now another cluster .*Run pgbranch source resync`,
        ),
      );
      expect(body.connected).toBe(false);
    }, wait);
    expect((await metrics()).get('pgbranch_source_connected')).toBe(0);
    expect((await showSource()).problem).toContain('pgbranch source resync');
    expect((await cli(['source', 'status'])).stdout).toMatch(/^PROBLEM: +the source .* resync/);
    await api();
    expect(proxy.events('source_problem')).toHaveLength(2);
    expect(proxy.events('source_problem')[1]).toMatchObject({ level: 40 });
    // A new branch meanwhile does not wait for a position of another cluster: it is made of what
    // the standby has, and says why.
    const { client, notices } = await connectWithNotices(url('app@pr-0'));
    await client.end();
    // Made as a copy when no warm standby is ready, which on a loaded host takes long enough for
    // its progress to be told first.
    const copying = /^pgbranch: copying branch "pr-0": \d+%/;
    expect(notices.filter((notice) => !copying.test(notice))).toEqual([
      expect.stringMatching(
        /^pgbranch: created branch "pr-0" .*the source could not be reached \(the source replicator@127\.0\.0\.1:\d+ is now another cluster/,
      ),
    ]);
  });

  test('pgbranch source resync follows the new cluster while the branch keeps serving', async () => {
    // A session on the branch, and new ones, run queries all through the resync.
    let running = true;
    const failures: unknown[] = [];
    let queries = 0;
    let logins = 0;
    const onBranch = (async () => {
      while (running) {
        await branch.query('SELECT count(*) FROM orders').then(
          () => queries++,
          (error: unknown) => failures.push(error),
        );
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();
    // Logins during the swap itself (the old standby stopped, the new one starting) go on: the
    // branch's server is its own, and the role's secret is what the catalog said before.
    let loginsInSwap = 0;
    const swapping = async () => (await api()).body.resync?.phase === 'swap';
    const newSessions = (async () => {
      while (running) {
        const before = await swapping();
        await queryOnce(url('app@pr-1'), 'SELECT 1').then(
          () => logins++,
          (error: unknown) => failures.push(error),
        );
        if (before && (await swapping())) loginsInSwap++;
      }
    })();
    const run = await cli(['source', 'resync']);
    running = false;
    await Promise.all([onBranch, newSessions]);
    expect(run.stderr).not.toContain('pgbranch:');
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^the standby of replicator@127\.0\.0\.1:\d+ was made again/);
    expect(failures).toEqual([]);
    expect(queries).toBeGreaterThan(10);
    expect(logins).toBeGreaterThan(1);
    expect(loginsInSwap).toBeGreaterThan(0);
    // At once, no retry: pgbranch's server connections to the old standby are gone from its pools.
    expect(await queryOnce(url('app'), 'SELECT count(*)::int AS n FROM orders')).toEqual([
      { n: 3 },
    ]);

    const admin = await source.connect();
    const { rows } = await admin.query<{ id: string }>(
      'SELECT system_identifier::text AS id FROM pg_control_system()',
    );
    await admin.end();
    const { body } = await api();
    expect(body).toMatchObject({ systemId: rows[0]!.id, problem: null, resync: null });
    expect(body.systemId).not.toBe(oldSystemId);
    await vi.waitFor(async () => {
      expect((await api()).body).toMatchObject({ connected: true, lagBytes: 0 });
      expect((await metrics()).get('pgbranch_source_connected')).toBe(1);
    }, wait);
    expect(proxy.events('source_problem_cleared')).toHaveLength(2);

    // app is the new cluster, and follows it.
    await commitOnSource(4, 'the second cluster, after the resync');
    await vi.waitFor(async () => {
      expect(await queryOnce(url('app'), 'SELECT note FROM orders ORDER BY id')).toEqual([
        { note: 'the second cluster' },
        { note: 'the second cluster' },
        { note: 'the second cluster' },
        { note: 'the second cluster, after the resync' },
      ]);
    }, wait);
    // The branch made before is its own data still.
    expect(
      (await branch.query('SELECT id, note FROM orders WHERE id IN (0, 100) ORDER BY id')).rows,
    ).toEqual([
      { id: 0, note: 'only in pr-1' },
      { id: 100, note: 'while replay is paused' },
    ]);
    // The root's warm spare followed the old standby: it was made again of the new one.
    const done = proxy.logs.findIndex((line) => line.event === 'source_resync_done');
    const after = () => proxy.logs.slice(done).filter((line) => line.event === 'spare_ready');
    expect(proxy.logs.slice(0, done).some((line) => line.event === 'spare_discarded')).toBe(true);
    await vi.waitFor(() => expect(after().length).toBeGreaterThanOrEqual(1), wait);
    expect(await queryOnce(url('app@pr-2'), 'SELECT count(*)::int AS n FROM orders')).toEqual([
      { n: 4 },
    ]);
  });
});

test('without a source: API 404, CLI one line and exit 4, SHOW SOURCE no row, no metrics', async () => {
  // The machine's PostgreSQL 15 as an upstream: no source, and no initdb to wait for.
  const plain = await startPgbranch({
    args: ['--upstream', 'postgres://postgres@127.0.0.1:5432/postgres', '--auth', 'trust'],
  });
  try {
    const response = await fetch(`${plain.ready.adminUrl}/v1/source`);
    expect(response.status).toBe(404);
    expect(await response.json()).toEqual({
      error: {
        code: '42704',
        message:
          'this pgbranch follows no source: it was started without source.url (--source, PGBRANCH_SOURCE)',
      },
    });
    const run = await cli(['source', 'status'], plain.ready.adminUrl);
    expect(run).toEqual({
      code: 4,
      stdout: '',
      stderr:
        'pgbranch: this pgbranch follows no source: it was started without source.url (--source, PGBRANCH_SOURCE)\n',
    });
    const shown = await psql(plain.url('pgbranch', 'postgres', ''), 'SHOW SOURCE');
    expect(shown).toMatchObject({ code: 0, stdout: '' });
    expect(shown.stderr).toContain('NOTICE:  pgbranch: this pgbranch follows no source');
    const text = await (await fetch(plain.ready.metricsUrl!)).text();
    expect(text).not.toContain('pgbranch_source_');
  } finally {
    await plain.stop();
  }
});
