// A restore point taken under the backup API keeps its backup_label in every copy made of it. The
// point's pg_control is copied last, so it may name a checkpoint that ended while the files were
// being copied: a copy recovering from that checkpoint instead of the backup's start never replays
// the changes made before it to files copied earlier. Built here by hand, in that order, on a real
// PostgreSQL 18, then copied by copyCluster as a branch from a restore point is.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyCluster } from '../src/branch/instance/cluster-copy.js';
import {
  serverBinaries,
  serverOwner,
  startPostmaster,
  type Postmaster,
} from '../src/branch/instance/postmaster.js';
import { freePort } from '../src/upstream/embedded.js';
import { tempDir } from './support/pgbranch.js';
import { SUPERUSER_PASSWORD, sourceServer, type SourceServer } from './support/source-server.js';

const ROWS_DURING_COPY = 1000;

describe('a copy of a restore point whose pg_control names a checkpoint after its start', () => {
  let source: SourceServer | undefined;
  let copy: Postmaster | undefined;
  const dir = tempDir('label');

  beforeAll(async () => {
    source = await sourceServer();
  }, 120_000);

  afterAll(async () => {
    await copy?.stop('immediate');
    await source?.remove();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('recovers from the backup start in its label: every row committed during the copy is there', async () => {
    const owner = serverOwner();
    const point = path.join(dir, 'point', 'pg');
    fs.mkdirSync(path.dirname(point));
    const client = await source!.connect();
    try {
      await client.query('create table t (id int)');
      await client.query('insert into t values (0)');
      await client.query('checkpoint');
      await client.query(`select pg_backup_start('test', fast => true)`);
      // The files first: t's heap as it was before the rows below.
      execFileSync('cp', ['-a', source!.pgDataDir, point]);
      fs.rmSync(path.join(point, 'postmaster.pid'));
      // Rows committed while the copy ran, then a checkpoint that ends before pg_control is read.
      await client.query('insert into t select generate_series(1, $1)', [ROWS_DURING_COPY]);
      await client.query('checkpoint');
      fs.copyFileSync(
        path.join(source!.pgDataDir, 'global', 'pg_control'),
        path.join(point, 'global', 'pg_control'),
      );
      const { rows } = await client.query<{ labelfile: string }>(
        'select labelfile from pg_backup_stop(wait_for_archive => false)',
      );
      // The WAL from the start to the stop (and more, which recovery replays as well).
      const pgWal = path.join(source!.pgDataDir, 'pg_wal');
      for (const name of fs.readdirSync(pgWal)) {
        if (/^[0-9A-F]{24}$/.test(name)) {
          fs.copyFileSync(path.join(pgWal, name), path.join(point, 'pg_wal', name));
        }
      }
      fs.writeFileSync(path.join(point, 'backup_label'), rows[0]!.labelfile, { mode: 0o600 });
      if (owner) execFileSync('chown', ['-R', `${owner.uid}:${owner.gid}`, point]);
    } finally {
      await client.end();
    }

    const target = path.join(dir, 'branch', 'pg');
    await copyCluster({ sourceDataDir: point, target, owner, clone: true });
    expect(fs.readFileSync(path.join(target, 'backup_label'), 'utf8')).toBe(
      fs.readFileSync(path.join(point, 'backup_label'), 'utf8'),
    );

    const binaries = await serverBinaries();
    copy = await startPostmaster({
      binary: binaries.postgres,
      pgDataDir: target,
      socketDir: path.join(dir, 'run'),
      port: await freePort(),
      owner,
      log: pino({ level: 'silent' }),
    });
    const session = new pg.Client({
      host: copy.endpoint.socketDir,
      port: copy.endpoint.port,
      user: 'postgres',
      password: SUPERUSER_PASSWORD,
      database: 'postgres',
    });
    await session.connect();
    try {
      const { rows } = await session.query<{ n: number }>('select count(*)::int as n from t');
      expect(rows[0]!.n).toBe(1 + ROWS_DURING_COPY);
    } finally {
      await session.end();
    }
  }, 120_000);
});
