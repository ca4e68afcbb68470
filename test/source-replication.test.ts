// pgbranch's replication client against a real PostgreSQL 18: logins by SCRAM, md5, password and
// trust (over a Unix socket), the walsender's commands (IDENTIFY_SYSTEM, SHOW, slots, TIMELINE_HISTORY
// of a promoted standby, BASE_BACKUP into a sink that holds the stream back), and errors that leave
// the connection usable or say what went wrong.
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, expect, test, vi } from 'vitest';
import { explainConnectError } from '../src/source/refusals.js';
import { ReplicationConnection } from '../src/source/replication-connection.js';
import { parseSourceUrl } from '../src/source/source-url.js';
import { startStandby } from '../src/source/standby.js';
import { TarParser } from '../src/source/tar.js';
import { pgClientConfig } from '../src/upstream/endpoint.js';
import { connect } from './support/clients.js';
import { tempDir } from './support/pgbranch.js';
import { sourceServer, type SourceServer } from './support/source-server.js';

vi.setConfig({ testTimeout: 120_000 });

let source: SourceServer;

beforeAll(async () => {
  source = await sourceServer();
  const admin = await source.connect();
  try {
    await admin.query("SET password_encryption = 'md5'");
    await admin.query("CREATE ROLE md5_replicator LOGIN REPLICATION PASSWORD 'md5-secret'");
    await admin.query("CREATE ROLE plain_replicator LOGIN REPLICATION PASSWORD 'plain-secret'");
  } finally {
    await admin.end();
  }
  await source.setHba(
    [
      'local all all trust',
      'host replication md5_replicator 127.0.0.1/32 md5',
      'host replication plain_replicator 127.0.0.1/32 password',
      'host all all 127.0.0.1/32 scram-sha-256',
      'host replication all 127.0.0.1/32 scram-sha-256',
      '',
    ].join('\n'),
  );
});

afterAll(async () => {
  await source?.remove();
});

async function open(url: string): Promise<ReplicationConnection> {
  return ReplicationConnection.open(parseSourceUrl(url));
}

test('SCRAM: IDENTIFY_SYSTEM, SHOW and a WAL position that moves with writes', async () => {
  const connection = await open(source.url());
  try {
    const before = await connection.identifySystem();
    expect(before).toMatchObject({ systemId: expect.stringMatching(/^\d+$/), timeline: 1 });
    expect(await connection.show('server_version_num')).toMatch(/^18\d{4}$/);
    expect(connection.serverVersion).toMatch(/^18\./);
    const admin = await source.connect();
    try {
      await admin.query('CREATE TABLE moved AS SELECT generate_series(1, 1000) AS n');
    } finally {
      await admin.end();
    }
    expect(await connection.currentLsn()).toBeGreaterThan(before.xlogpos);
  } finally {
    connection.close();
  }
});

test('md5 and password logins', async () => {
  for (const [user, password] of [
    ['md5_replicator', 'md5-secret'],
    ['plain_replicator', 'plain-secret'],
  ] as const) {
    const connection = await open(source.url(user, password));
    try {
      expect((await connection.identifySystem()).timeline).toBe(1);
    } finally {
      connection.close();
    }
  }
});

test('a wrong password is said to be one, with the role and where', async () => {
  const failure = await open(source.url('replicator', 'not-the-password')).then(
    () => undefined,
    (error: unknown) => explainConnectError(error, parseSourceUrl(source.url())),
  );
  expect(failure).toMatchObject({
    code: '28P01',
    message: `pgbranch could not log in to the source replicator@127.0.0.1:${source.port} as "replicator": password authentication failed for user "replicator"`,
  });
});

test('slots: made with WAL reserved, read, dropped; READ_REPLICATION_SLOT of none is undefined', async () => {
  const connection = await open(source.url());
  try {
    expect(await connection.readSlot('pgbranch_test_slot')).toBeUndefined();
    await connection.createPhysicalSlot('pgbranch_test_slot');
    const slot = await connection.readSlot('pgbranch_test_slot');
    expect(slot).toMatchObject({ type: 'physical', restartTimeline: 1 });
    expect(slot!.restartLsn).toBeGreaterThan(0n);
    await connection.dropSlot('pgbranch_test_slot');
    expect(await connection.readSlot('pgbranch_test_slot')).toBeUndefined();
  } finally {
    connection.close();
  }
});

test("a command the walsender refuses rejects with the server's error, and the connection goes on", async () => {
  const connection = await open(source.url());
  try {
    await expect(connection.command('SELECT 1')).rejects.toMatchObject({ code: '0A000' });
    await expect(connection.dropSlot('no_such_slot')).rejects.toMatchObject({
      code: '42704',
      message: 'replication slot "no_such_slot" does not exist',
    });
    expect((await connection.identifySystem()).timeline).toBe(1);
  } finally {
    connection.close();
  }
});

test('a BASE_BACKUP sink that holds the stream back after every chunk gets the archive whole and in order', async () => {
  const admin = await source.connect();
  let relation: string;
  try {
    // Not vacuumed nor read while the test runs: its file stays as the checkpoint wrote it.
    await admin.query('CREATE TABLE held (n int, pad text) WITH (autovacuum_enabled = off)');
    await admin.query(
      "INSERT INTO held SELECT n, repeat('x', 200) FROM generate_series(1, 20000) n",
    );
    await admin.query('CHECKPOINT');
    relation = (await admin.query<{ p: string }>("SELECT pg_relation_filepath('held') AS p"))
      .rows[0]!.p;
  } finally {
    await admin.end();
  }
  const files = new Map<string, Buffer[]>();
  let current: Buffer[] = [];
  const parser = new TarParser({
    entry: (entry) => {
      if (entry.type === 'file') files.set(entry.path, (current = []));
    },
    data: (chunk) => current.push(Buffer.from(chunk)),
    endFile: () => (current = []),
  });
  let holds = 0;
  const connection = await open(source.url());
  try {
    await connection.baseBackup(
      { label: 'held' },
      {
        started: () => undefined,
        archive: () => undefined,
        data: (chunk) => {
          parser.push(chunk);
          holds++;
          return new Promise<void>((resolve) => setImmediate(resolve));
        },
        progress: () => undefined,
      },
    );
    parser.end();
  } finally {
    connection.close();
  }
  const received = (name: string) => Buffer.concat(files.get(name) ?? []);
  const onSource = (name: string) => fs.readFileSync(path.join(source.pgDataDir, name));
  expect(received(relation).length).toBeGreaterThan(4 * 1024 * 1024);
  expect(received(relation).equals(onSource(relation))).toBe(true);
  expect(received('PG_VERSION').equals(onSource('PG_VERSION'))).toBe(true);
  expect(holds).toBeGreaterThan(100);
});

test('trust over a Unix socket, and TIMELINE_HISTORY of a promoted standby', async () => {
  const dataDir = tempDir('replication-promoted');
  const standby = await startStandby({
    url: source.url(),
    dataDir,
    log: pino({ level: 'silent' }),
  });
  try {
    const client = await connect({
      ...pgClientConfig(standby.endpoint),
      user: standby.superuser,
      database: 'postgres',
    });
    try {
      await client.query('SELECT pg_promote()');
    } finally {
      await client.end();
    }
    const url = `postgres://${standby.superuser}@localhost/postgres?host=${encodeURIComponent(standby.endpoint.socketDir)}&port=${standby.endpoint.port}`;
    const connection = await open(url);
    try {
      expect((await connection.identifySystem()).timeline).toBe(2);
      const history = await connection.timelineHistory(2);
      expect(history.filename).toBe('00000002.history');
      expect(history.content).toMatch(/^1\t[0-9A-F]+\/[0-9A-F]+\tno recovery target specified\n$/);
    } finally {
      connection.close();
    }
  } finally {
    await standby.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
