// pgbranch --source: a PostgreSQL 18 source followed by a standby on pgbranch's data directory.
// Through pgbranch `app` is the source's data, read-only (25006 from PostgreSQL itself), a commit
// on the source shows up once replayed, `app@pr-1` is a writable branch of it, a second start
// reuses the standby, a pgbranch killed during the base backup leaves no half standby (the next
// start removes the partial copy and backs up again), the source going away and coming back is
// survived, and a role without REPLICATION or a pg_hba.conf without replication get one message
// saying what to change on the source.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { connect, connectWithNotices, psql, queryOnce } from './support/clients.js';
import {
  runCli,
  startPgbranch,
  tempDir,
  type PgbranchProcess,
  PGBRANCH_BIN,
} from './support/pgbranch.js';
import {
  REPLICATOR_PASSWORD,
  SUPERUSER_PASSWORD,
  commitOrder,
  replayedOn,
  sourceServer,
  type SourceServer,
} from './support/source-server.js';

vi.setConfig({ testTimeout: 240_000 });

const ROOT = path.resolve(import.meta.dirname, '..');
let source: SourceServer;
let proxy: PgbranchProcess | undefined;
const dataDir = tempDir('source');
/** Bytes of rows in app, so the base backup at a limited rate takes a few seconds. */
const ROWS = 300_000;

beforeAll(async () => {
  source = await sourceServer();
  const admin = await source.connect();
  await admin.query('CREATE DATABASE app');
  await admin.query("CREATE ROLE app_reader LOGIN PASSWORD 'reader-secret'");
  await admin.end();
  const app = await source.connect('app');
  await app.query('CREATE TABLE orders (id int PRIMARY KEY, note text)');
  await app.query(
    `INSERT INTO orders SELECT g, md5(g::text) || md5((-g)::text) FROM generate_series(1, ${ROWS}) g`,
  );
  await app.end();
});

afterAll(async () => {
  await proxy?.stop();
  await source?.remove();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

/** Through pgbranch as the source's own superuser, with the source's password. */
const url = (database: string) => proxy!.url(database, 'postgres', SUPERUSER_PASSWORD);

/** pgbranch started as a user would, its JSON log lines read as they come (no wait for ready). */
function spawnPgbranch(args: string[]) {
  const child = spawn(
    process.execPath,
    [
      PGBRANCH_BIN,
      ...['--port', '0', '--data-dir', dataDir, '--log-format', 'json'],
      ...['--metrics-port', '0', '--admin-port', '0', ...args],
    ],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const logs: Record<string, unknown>[] = [];
  readline.createInterface({ input: child.stdout! }).on('line', (line) => {
    try {
      logs.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // Not a log line.
    }
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  return { child, logs, exited, stderr: () => stderr };
}

/** Waits for the base backup's `count`th progress line; returns them all. */
async function progressLines(logs: Record<string, unknown>[], count: number) {
  const lines = () => logs.filter((l) => l.event === 'source_backup_progress');
  await vi.waitFor(() => expect(lines().length).toBeGreaterThanOrEqual(count), {
    timeout: 120_000,
    interval: 50,
  });
  return lines();
}

async function slotsOnSource(): Promise<string[]> {
  const admin = await source.connect();
  try {
    const { rows } = await admin.query<{ name: string }>(
      'SELECT slot_name AS name FROM pg_replication_slots',
    );
    return rows.map((row) => row.name);
  } finally {
    await admin.end();
  }
}

describe('a base backup interrupted', () => {
  test('meanwhile clients, psql on the console, the CLI and the admin API are told how far it is; Ctrl-C stops it at once: no partial copy and no slot are left', async () => {
    const token = 'making-token';
    const run = spawnPgbranch([
      // 1 MB/s: the backup outlasts every check below by far; Ctrl-C ends it.
      ...['--source', source.url(), '--source-max-rate', '1024'],
      ...['--admin-token', token],
    ]);
    try {
      await progressLines(run.logs, 1);
      const listening = run.logs.find((l) => l.event === 'listening_while_making')!;
      const adminUrl = run.logs.find((l) => l.event === 'admin_listening_while_making')!
        .url as string;
      const port = listening.port as number;
      const howFar =
        /^pgbranch is making its standby of the source replicator@127\.0\.0\.1:\d+: base backup: [\d.]+ MB of [\d.]+ MB \(\d+%\), [\d.]+ MB\/s, \d+ s left$/;

      // A client of app: 57P03, as a server starting up, with the base backup's figures.
      const client = new pg.Client({
        host: '127.0.0.1',
        port,
        database: 'app',
        user: 'postgres',
        password: SUPERUSER_PASSWORD,
      });
      const refused = (await client.connect().then(
        () => undefined,
        (error: unknown) => error,
      )) as { code?: string; message?: string; hint?: string } | undefined;
      expect(refused).toMatchObject({ code: '57P03', message: expect.stringMatching(howFar) });
      expect(refused!.hint).toContain('pgbranch source status');

      // psql on the console database, over TLS if it asks (sslmode=prefer): the same answer.
      const onConsole = await psql(
        `postgresql://postgres@127.0.0.1:${port}/pgbranch`,
        'SHOW SOURCE',
        {
          env: { PGPASSWORD: SUPERUSER_PASSWORD },
        },
      );
      expect(onConsole.code).toBe(2);
      expect(onConsole.stderr).toMatch(
        /FATAL: +pgbranch is making its standby of the source .*base backup: [\d.]+ MB of/,
      );

      // The CLI: where the standby is, in words and as JSON, bytes growing.
      const env = { PGBRANCH_ADMIN_PORT: new URL(adminUrl).port, PGBRANCH_ADMIN_TOKEN: token };
      const text = await runCli(['source', 'status'], env);
      expect(text, text.stderr).toMatchObject({ code: 0 });
      expect(text.stdout).toMatch(/^source: +replicator@127\.0\.0\.1:\d+$/m);
      expect(text.stdout).toMatch(/^standby: +being made since \d{4}-\d\d-\d\dT/m);
      expect(text.stdout).toMatch(
        /^now: +base backup: [\d.]+ MB of [\d.]+ MB \(\d+%\), [\d.]+ MB\/s, \d+ s left$/m,
      );
      const first = JSON.parse((await runCli(['source', 'status', '--json'], env)).stdout) as {
        making: { step: string; backup: { bytes: number; totalBytes: number } };
      };
      expect(first.making.step).toBe('backup');
      await vi.waitFor(
        async () => {
          const later = JSON.parse((await runCli(['source', 'status', '--json'], env)).stdout) as {
            making: { backup: { bytes: number } };
          };
          expect(later.making.backup.bytes).toBeGreaterThan(first.making.backup.bytes);
        },
        { timeout: 60_000, interval: 200 },
      );
      // A command that needs the standby: 57P03 with the same words, exit code 1.
      const list = await runCli(['branch', 'list'], env);
      expect(list.code).toBe(1);
      expect(list.stderr).toMatch(/pgbranch is making its standby of the source .*base backup:/);

      // The admin API: liveness yes, readiness no (with why), the token still required.
      expect((await fetch(`${adminUrl}/healthz`)).status).toBe(200);
      const ready = await fetch(`${adminUrl}/readyz`);
      expect(ready.status).toBe(503);
      expect(((await ready.json()) as { reason: string }).reason).toMatch(howFar);
      expect((await fetch(`${adminUrl}/v1/source`)).status).toBe(401);
      const branches = await fetch(`${adminUrl}/v1/branches`, {
        headers: { authorization: `Bearer ${token}` },
      });
      expect(branches.status).toBe(503);
      expect(((await branches.json()) as { error: { code: string } }).error.code).toBe('57P03');
      // The token never reaches the log.
      expect(JSON.stringify(run.logs)).not.toContain(token);
    } finally {
      run.child.kill('SIGINT');
    }
    expect(await run.exited).toBe(1);
    expect(run.stderr()).toMatch(
      /^pgbranch: stopped during the base backup of replicator@127\.0\.0\.1:\d+ \([\d.]+ MB of [\d.]+ MB \(\d+%\), [\d.]+ MB\/s, \d+ s left\): nothing of it was kept, and the next start begins it again$/m,
    );
    expect(fs.readdirSync(path.join(dataDir, 'source'))).not.toContain('.standby-partial');
    expect(await slotsOnSource()).toEqual([]);
  });

  test('kill -9 leaves no half standby; the next start backs up again', async () => {
    // 4 MB/s: the backup takes several seconds, and says how far it is each second.
    const first = spawnPgbranch(['--source', source.url(), '--source-max-rate', '4096']);
    let progress: Record<string, unknown>[];
    try {
      progress = await progressLines(first.logs, 2);
    } finally {
      first.child.kill('SIGKILL');
      await first.exited;
    }
    for (const line of progress) {
      expect(line.msg).toMatch(
        /^base backup: [\d.]+ MB of [\d.]+ MB \(\d+%\), [\d.]+ MB\/s, \d+ s left$/,
      );
      expect(line).toMatchObject({ bytes: expect.any(Number), rate: expect.any(Number) });
    }
    expect(progress[1]!.bytes).toBeGreaterThan(progress[0]!.bytes as number);
    expect(progress[1]!.secondsLeft).toBeGreaterThan(0);
    expect(fs.existsSync(path.join(dataDir, 'source', '.standby-partial'))).toBe(true);
    expect(fs.existsSync(path.join(dataDir, 'source', 'standby'))).toBe(false);
    // The slot made before the backup stays: the next start makes it afresh.
    expect(await slotsOnSource()).toEqual([expect.stringMatching(/^pgbranch_/)]);

    proxy = await startPgbranch({ dataDir, args: ['--source', source.url()], timeoutMs: 180_000 });
    expect(proxy.events('source_backup_leftover_removed')).toHaveLength(1);
    expect(proxy.events('source_backup_done')).toHaveLength(1);
    expect(fs.existsSync(path.join(dataDir, 'source', '.standby-partial'))).toBe(false);
    expect(await slotsOnSource()).toHaveLength(1);
    expect(proxy.ready.upstream).toMatch(
      /^standby of replicator@127\.0\.0\.1:\d+ \(PostgreSQL 18\.\d+\)$/,
    );
    expect(proxy.stderr()).toMatch(/server: +standby of replicator@127\.0\.0\.1:\d+/);
    const joined = JSON.stringify(first.logs) + JSON.stringify(proxy.logs) + proxy.stderr();
    expect(joined).not.toContain(REPLICATOR_PASSWORD);
  });
});

describe('through pgbranch', () => {
  test('app is the source data, and a write on it is refused by PostgreSQL with 25006', async () => {
    expect(await queryOnce(url('app'), 'SELECT count(*)::int AS n FROM orders')).toEqual([
      { n: ROWS },
    ]);
    const client = await connect(url('app'));
    try {
      await expect(client.query("INSERT INTO orders VALUES (0, 'no')")).rejects.toMatchObject({
        code: '25006',
        message: 'cannot execute INSERT in a read-only transaction',
      });
    } finally {
      await client.end();
    }
  });

  test('a row committed on the source is there once the standby has replayed it', async () => {
    const lsn = await commitOrder(source, ROWS + 1, 'committed on the source');
    await replayedOn(() => connect(url('app')), lsn);
    expect(await queryOnce(url('app'), `SELECT note FROM orders WHERE id = ${ROWS + 1}`)).toEqual([
      { note: 'committed on the source' },
    ]);
  });

  test('app@pr-1 is a writable branch of the source, and what it writes stays there', async () => {
    const client = await connect(url('app@pr-1'));
    try {
      await client.query(`DELETE FROM orders WHERE id > 10`);
      await client.query("INSERT INTO orders VALUES (0, 'only in pr-1')");
      expect((await client.query('SELECT count(*)::int AS n FROM orders')).rows).toEqual([
        { n: 11 },
      ]);
    } finally {
      await client.end();
    }
    expect(await queryOnce(url('app'), 'SELECT count(*)::int AS n FROM orders')).toEqual([
      { n: ROWS + 1 },
    ]);
  });

  test('source stopped: app still answers; started again: the standby follows it again', async () => {
    await source.stop();
    expect(await queryOnce(url('app'), 'SELECT count(*)::int AS n FROM orders')).toEqual([
      { n: ROWS + 1 },
    ]);
    await source.start();
    const lsn = await commitOrder(source, ROWS + 2, 'after the source came back');
    await replayedOn(() => connect(url('app')), lsn);
    await vi.waitFor(
      async () =>
        expect(await queryOnce(url('app'), 'SELECT status FROM pg_stat_wal_receiver')).toEqual([
          { status: 'streaming' },
        ]),
      { timeout: 30_000, interval: 100 },
    );
  });

  test('a second start reuses the standby instead of copying again', async () => {
    await proxy!.stop();
    proxy = await startPgbranch({ dataDir, args: ['--source', source.url()], timeoutMs: 120_000 });
    expect(proxy.events('source_standby_reused')).toHaveLength(1);
    expect(proxy.events('source_backup_started')).toHaveLength(0);
    const lsn = await commitOrder(source, ROWS + 3, 'after the restart');
    await replayedOn(() => connect(url('app')), lsn);
    expect(await queryOnce(url('app'), 'SELECT count(*)::int AS n FROM orders')).toEqual([
      { n: ROWS + 3 },
    ]);
  });
  test('a standby postmaster that dies is started again: app answers again, with its data', async () => {
    const pidFile = path.join(dataDir, 'source', 'standby', 'pg', 'postmaster.pid');
    const pid = Number(fs.readFileSync(pidFile, 'utf8').split('\n')[0]);
    process.kill(pid, 'SIGKILL');
    await vi.waitFor(() => expect(proxy!.events('source_standby_restarted')).toHaveLength(1), {
      timeout: 120_000,
      interval: 100,
    });
    expect(proxy!.events('source_standby_exited')).toEqual([
      expect.objectContaining({ level: 40, code: null }),
    ]);
    expect(await queryOnce(url('app'), 'SELECT count(*)::int AS n FROM orders')).toEqual([
      { n: ROWS + 3 },
    ]);
    const lsn = await commitOrder(source, ROWS + 5, 'after the standby came back');
    await replayedOn(() => connect(url('app')), lsn);
  });

  test('with warm spares, a branch is a cascading standby of the standby, promoted', async () => {
    await restartWithSpares(1);
    const lsn = await commitOrder(source, ROWS + 4, 'before the branch');
    await replayedOn(() => connect(url('app')), lsn);
    expect(
      await queryOnce(url('app@pr-2'), `SELECT note FROM orders WHERE id = ${ROWS + 4}`),
    ).toEqual([{ note: 'before the branch' }]);
    expect(proxy!.events('branch_created')).toEqual([
      expect.objectContaining({ msg: expect.stringContaining('its warm standby promoted') }),
    ]);
  });

  test('a branch asked for while the next warm standby is being made waits for it instead of copying the standby', async () => {
    // WAL since the source's last checkpoint, which every copy of the standby replays: the next
    // spare takes seconds to be ready, and a copy made meanwhile would replay it all again.
    const app = await source.connect('app');
    try {
      await app.query('CREATE TABLE IF NOT EXISTS ballast (id int, pad text)');
      await app.query(
        "INSERT INTO ballast SELECT g, repeat('x', 200) FROM generate_series(1, 400000) g",
      );
    } finally {
      await app.end();
    }
    const lsn = await commitOrder(source, ROWS + 6, 'before pr-3');
    await replayedOn(() => connect(url('app')), lsn);
    // pr-3 takes the spare (waiting for it if it is still being made); the next one is made
    // behind it, and pr-4 is asked for as soon as that begins.
    await queryOnce(url('app@pr-3'), 'SELECT 1');
    const pr3 = proxy!.events('branch_created').find((e) => e.branch === 'pr-3')!;
    const asked = (pr3.time as number) - (pr3.ms as number);
    await vi.waitFor(
      () =>
        expect(
          proxy!.events('spare_making').filter((e) => (e.time as number) >= asked),
        ).not.toHaveLength(0),
      { timeout: 60_000, interval: 20 },
    );
    expect(
      await queryOnce(url('app@pr-4'), `SELECT note FROM orders WHERE id = ${ROWS + 6}`),
    ).toEqual([{ note: 'before pr-3' }]);
    const created = proxy!.events('branch_created').find((e) => e.branch === 'pr-4');
    expect(created).toMatchObject({
      from: 'warm_spare',
      phases: expect.objectContaining({ waitMs: expect.any(Number) }),
    });
  });
});

/**
 * pgbranch again on the same data directory with warm spares on (`count` of them, made one after
 * the other), once they are all ready.
 */
async function restartWithSpares(count: number, args: string[] = []): Promise<void> {
  await proxy!.stop();
  proxy = await startPgbranch({
    dataDir,
    args: [
      ...['--source', source.url(), '--branch-warm-spare', 'on'],
      ...(count > 1 ? ['--source-warm-standbys', String(count)] : []),
      ...args,
    ],
    timeoutMs: 120_000,
  });
  await vi.waitFor(() => expect(proxy!.events('spare_ready')).toHaveLength(count), {
    timeout: 120_000,
    interval: 100,
  });
}

describe('with source.warm_standbys 2', () => {
  test('two branches asked for at once are both warm standbys promoted, neither waits', async () => {
    // A spare that replays slowly on a loaded host waits rather than being made behind: this
    // is about which standby each branch is, not how fast they replay.
    await restartWithSpares(2, ['--source-max-wait', '60s']);
    const lsn = await commitOrder(source, ROWS + 7, 'before the burst');
    await replayedOn(() => connect(url('app')), lsn);
    const burst = ['ci-1', 'ci-2'];
    const made = await Promise.all(
      burst.map(async (name) => {
        const { client, notices } = await connectWithNotices(url(`app@${name}`));
        try {
          const { rows } = await client.query(`SELECT note FROM orders WHERE id = ${ROWS + 7}`);
          return { notices, rows };
        } finally {
          await client.end();
        }
      }),
    );
    for (const [i, name] of burst.entries()) {
      const created = proxy!.events('branch_created').find((e) => e.branch === name);
      // A ready spare is taken without waiting: nothing between the ask and the take awaits.
      expect(created).toMatchObject({
        from: 'warm_spare',
        phases: expect.objectContaining({ waitMs: expect.toSatisfy((ms: number) => ms <= 1) }),
      });
      expect(made[i]).toEqual({
        notices: [expect.stringMatching(new RegExp(`^pgbranch: created branch "${name}" .*\\)$`))],
        rows: [{ note: 'before the burst' }],
      });
    }
  });
});

describe('a source pgbranch cannot follow', () => {
  /** Starts pgbranch on a fresh data directory; resolves with why it refused to start. */
  async function refusal(sourceUrl: string): Promise<string> {
    const dir = tempDir('source-refused');
    try {
      const error = await startPgbranch({ dataDir: dir, args: ['--source', sourceUrl] }).then(
        async (started) => {
          await started.stop();
          throw new Error('pgbranch started');
        },
        (failed: Error) => failed,
      );
      return error.message;
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  test('a role without REPLICATION: one message with the ALTER ROLE to run on the source', async () => {
    const message = await refusal(source.url('app_reader', 'reader-secret'));
    expect(message).toMatch(/exited with 1 before it was ready/);
    expect(message).toContain(
      `pgbranch: role "app_reader" may not replicate from the source app_reader@127.0.0.1:${source.port}: it lacks the REPLICATION attribute. On the source, as a superuser: ALTER ROLE app_reader REPLICATION;\n`,
    );
  });

  test('a pg_hba.conf without replication: one message with the line to add on the source', async () => {
    const hba = fs.readFileSync(path.join(source.pgDataDir, 'pg_hba.conf'), 'utf8');
    await source.setHba('local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n');
    try {
      const message = await refusal(source.url());
      expect(message).toContain(
        `pgbranch: the source replicator@127.0.0.1:${source.port} refuses replication connections from this host (no pg_hba.conf entry for replication connection from host "127.0.0.1", user "replicator", no encryption). ` +
          "Add this line to the source's pg_hba.conf, above any line that would match first, then reload it (SELECT pg_reload_conf()): host replication replicator 127.0.0.1/32 scram-sha-256\n",
      );
    } finally {
      await source.setHba(hba);
    }
  });
});
