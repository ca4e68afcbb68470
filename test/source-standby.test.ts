// The standby of a source, as the module that makes and runs it (startStandby): made from scratch
// with a slot and a base backup, configured so that only pgbranch reaches it and no password lies
// in its settings, streaming by itself, reporting its lag, going on when the source goes away and
// reconnecting when it comes back, reused on a second start, refused when the source at its URL is
// another cluster.
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import pg from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { serverOwner } from '../src/branch/instance/postmaster.js';
import { writeDevCertificates } from '../src/cli/tls-init.js';
import { slotName, startStandby, type Standby } from '../src/source/standby.js';
import { pgClientConfig } from '../src/upstream/endpoint.js';
import { tempDir } from './support/pgbranch.js';
import {
  commitOrder,
  REPLICATOR_PASSWORD,
  replayedOn,
  sourceServer,
  type SourceServer,
} from './support/source-server.js';

vi.setConfig({ testTimeout: 180_000 });

let source: SourceServer;
let dataDir: string;
let standby: Standby | undefined;
const lines: Record<string, unknown>[] = [];
const log = pino(
  { level: 'debug' },
  new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line));
      done();
    },
  }),
);
const events = (name: string) => lines.filter((line) => line.event === name);

beforeAll(async () => {
  source = await sourceServer();
  const admin = await source.connect();
  await admin.query('CREATE DATABASE app');
  await admin.end();
  const app = await source.connect('app');
  await app.query('CREATE TABLE orders (id int PRIMARY KEY, note text)');
  await app.query(
    "INSERT INTO orders SELECT g, 'before the standby' FROM generate_series(1, 1000) g",
  );
  await app.end();
  dataDir = tempDir('standby');
});

afterAll(async () => {
  await standby?.stop();
  await source?.remove();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

/** A session on the standby, as pgbranch has one: its superuser on the private socket. */
async function onStandby(database = 'app'): Promise<pg.Client> {
  const client = new pg.Client({
    ...pgClientConfig(standby!.endpoint),
    user: standby!.superuser,
    database,
  });
  await client.connect();
  return client;
}

describe('a standby made from scratch', () => {
  beforeAll(async () => {
    standby = await startStandby({ url: source.url(), dataDir, log });
  });

  test('holds the source data, read-only, with a slot on the source that it streams from', async () => {
    expect(standby!.created).toBe(true);
    expect(events('source_backup_started')).toHaveLength(1);
    expect(events('source_backup_done')).toHaveLength(1);
    const client = await onStandby();
    try {
      expect((await client.query('SELECT count(*)::int AS n FROM orders')).rows[0].n).toBe(1000);
      expect((await client.query('SELECT pg_is_in_recovery() AS r')).rows[0].r).toBe(true);
      await expect(client.query("INSERT INTO orders VALUES (0, 'no')")).rejects.toMatchObject({
        code: '25006',
      });
    } finally {
      await client.end();
    }
    const admin = await source.connect();
    try {
      const slot = slotName(path.join(path.resolve(dataDir), 'source'));
      await vi.waitFor(
        async () => {
          const { rows } = await admin.query(
            'SELECT active FROM pg_replication_slots WHERE slot_name = $1',
            [slot],
          );
          expect(rows).toEqual([{ active: true }]);
        },
        { timeout: 30_000, interval: 100 },
      );
    } finally {
      await admin.end();
    }
  });

  test('keeps the password out of its settings, and lets in only pgbranch', () => {
    const pgDataDir = standby!.pgDataDir;
    const root = path.dirname(path.dirname(pgDataDir));
    const auto = fs.readFileSync(path.join(pgDataDir, 'postgresql.auto.conf'), 'utf8');
    expect(auto).toMatch(/^primary_conninfo = '.*passfile=/m);
    expect(auto).toMatch(/^primary_slot_name = 'pgbranch_/m);
    for (const file of ['postgresql.auto.conf', 'postgresql.conf', 'pg_hba.conf']) {
      expect(fs.readFileSync(path.join(pgDataDir, file), 'utf8')).not.toContain(
        REPLICATOR_PASSWORD,
      );
    }
    const passfile = fs.statSync(path.join(root, 'passfile'));
    expect(passfile.mode & 0o777).toBe(0o600);
    expect(passfile.uid).toBe(serverOwner()?.uid ?? process.getuid!());
    const hba = fs.readFileSync(path.join(pgDataDir, 'pg_hba.conf'), 'utf8');
    expect(hba.split('\n').filter((line) => line && !line.startsWith('#'))).toEqual([
      'local all all trust',
      'local replication all trust',
    ]);
    const socketDir = standby!.endpoint.socketDir;
    expect(fs.statSync(socketDir).mode & 0o777).toBe(0o700);
    expect(fs.existsSync(path.join(pgDataDir, 'standby.signal'))).toBe(true);
    for (const line of lines) expect(JSON.stringify(line)).not.toContain(REPLICATOR_PASSWORD);
  });

  test('a commit on the source reaches it, and its status shows no lag once replayed', async () => {
    const lsn = await commitOrder(source, 1001, 'streamed');
    await replayedOn(onStandby, lsn);
    const client = await onStandby();
    try {
      const { rows } = await client.query('SELECT note FROM orders WHERE id = 1001');
      expect(rows).toEqual([{ note: 'streamed' }]);
    } finally {
      await client.end();
    }
    await vi.waitFor(
      async () => {
        const status = await standby!.status();
        expect(status).toMatchObject({ connected: true, lagBytes: 0, lagSeconds: 0 });
        expect(status.systemId).toBe(standby!.systemId);
        expect(status.replayLsn).toBe(status.sourceLsn);
      },
      { timeout: 30_000, interval: 100 },
    );
  });

  test('source stopped: the standby goes on serving reads; started again: it reconnects by itself', async () => {
    await source.stop();
    await vi.waitFor(
      async () => {
        const status = await standby!.status();
        expect(status).toMatchObject({ connected: false, sourceLsn: null, lagBytes: null });
      },
      { timeout: 30_000, interval: 100 },
    );
    await expect(standby!.currentLsn()).rejects.toThrow(/could not reach the source/);
    const client = await onStandby();
    try {
      expect((await client.query('SELECT count(*)::int AS n FROM orders')).rows[0].n).toBe(1001);
    } finally {
      await client.end();
    }
    await source.start();
    const lsn = await commitOrder(source, 1002, 'after the source came back');
    await replayedOn(onStandby, lsn);
    await vi.waitFor(
      async () => expect(await standby!.status()).toMatchObject({ connected: true, lagBytes: 0 }),
      { timeout: 30_000, interval: 100 },
    );
  });

  test('a second start reuses it: no second base backup, the data as it was', async () => {
    await standby!.stop();
    standby = undefined;
    const backups = events('source_backup_started').length;
    standby = await startStandby({ url: source.url(), dataDir, log });
    expect(standby.created).toBe(false);
    expect(events('source_backup_started')).toHaveLength(backups);
    expect(events('source_standby_reused')).toHaveLength(1);
    const lsn = await commitOrder(source, 1003, 'after the restart');
    await replayedOn(onStandby, lsn);
    const client = await onStandby();
    try {
      expect((await client.query('SELECT count(*)::int AS n FROM orders')).rows[0].n).toBe(1003);
    } finally {
      await client.end();
    }
  });

  test('a start while the source is down serves what the standby has, and follows the source once back', async () => {
    await standby!.stop();
    standby = undefined;
    await source.stop();
    standby = await startStandby({ url: source.url(), dataDir, log });
    expect(standby.created).toBe(false);
    expect(events('source_unreachable')).toEqual([
      expect.objectContaining({
        msg: expect.stringMatching(
          /^pgbranch could not reach the source replicator@127\.0\.0\.1:\d+: .*: starting the standby with what it has; it reconnects by itself$/,
        ),
      }),
    ]);
    const client = await onStandby();
    try {
      expect((await client.query('SELECT count(*)::int AS n FROM orders')).rows[0].n).toBe(1003);
    } finally {
      await client.end();
    }
    await source.start();
    const lsn = await commitOrder(source, 1004, 'after a start without the source');
    await replayedOn(onStandby, lsn);
  });

  test('sslmode=require and a source without TLS: refused, saying so', async () => {
    const other = tempDir('standby-tls-refused');
    try {
      await expect(
        startStandby({ url: `${source.url()}?sslmode=require`, dataDir: other, log }),
      ).rejects.toThrow(
        /^pgbranch could not reach the source replicator@127\.0\.0\.1:\d+: replicator@127\.0\.0\.1:\d+ does not offer TLS and source\.url asks for sslmode=require$/,
      );
    } finally {
      fs.rmSync(other, { recursive: true, force: true });
    }
  });

  test('another cluster at the source URL is refused, naming both system identifiers', async () => {
    await standby!.stop();
    standby = undefined;
    const other = await sourceServer();
    try {
      await expect(startStandby({ url: other.url(), dataDir, log })).rejects.toThrow(
        /follows the cluster with system identifier \d+, and the source replicator@127\.0\.0\.1:\d+ is now \d+/,
      );
    } finally {
      await other.remove();
    }
  });
});

test('a source that takes replication over TLS only: pgbranch and the standby verify its certificate', async () => {
  const dir = tempDir('tls-source');
  const certificates = await writeDevCertificates(path.join(dir, 'tls'), []);
  const owner = serverOwner();
  fs.chmodSync(path.join(dir, 'tls'), 0o755);
  if (owner) fs.chownSync(certificates.key, owner.uid, owner.gid);
  const tlsSource = await sourceServer({
    settings: { ssl: 'on', ssl_cert_file: certificates.cert, ssl_key_file: certificates.key },
  });
  const tlsDataDir = tempDir('standby-tls');
  let tlsStandby: Standby | undefined;
  try {
    await tlsSource.setHba(
      'local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhostssl replication all 127.0.0.1/32 scram-sha-256\n',
    );
    const url = tlsSource
      .url()
      .replace('@127.0.0.1:', '@localhost:')
      .concat(`?sslmode=verify-full&sslrootcert=${encodeURIComponent(certificates.ca)}`);
    tlsStandby = await startStandby({ url, dataDir: tlsDataDir, log });
    const admin = await tlsSource.connect();
    try {
      await vi.waitFor(
        async () => {
          const { rows } = await admin.query(
            `SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)`,
          );
          expect(rows).toEqual([{ ssl: true }]);
        },
        { timeout: 30_000, interval: 100 },
      );
    } finally {
      await admin.end();
    }
  } finally {
    await tlsStandby?.stop();
    await tlsSource.remove();
    fs.rmSync(tlsDataDir, { recursive: true, force: true });
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
