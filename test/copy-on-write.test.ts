// A branch costs the disk what it changes, not what its parent holds: on XFS with reflink a branch
// is a clone that takes next to no space; where a copy can't fit, the connect fails cleanly; and
// where the filesystem can't clone, branches are copied and pgbranch says why.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import { connect, queryOnce } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';
import { findTool, mountReflinkXfs, type MountedXfs, type XfsMount } from './support/xfs.js';

const MB = 1024 * 1024;

/** Bytes in use on the filesystem holding `dir`, once what it frees in the background is freed. */
/**
 * Blocks in use, once the figure has settled: XFS frees a deleted file's blocks in the background,
 * so right after a delete the count can still be falling, more so on a loaded machine.
 */
function usedBytes(dir: string): number {
  const read = () => {
    execFileSync('sync', ['-f', dir]);
    const s = fs.statfsSync(dir);
    return (s.blocks - s.bfree) * s.bsize;
  };
  let last = read();
  for (let tries = 0; tries < 100; tries++) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
    const now = read();
    if (now === last) return now;
    last = now;
  }
  return last;
}

function freeBytes(dir: string): number {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

const mb = (bytes: number) => `${(bytes / MB).toFixed(1)} MB`;

/** Skips the test, saying why, when there is no XFS to run it on. */
function requireXfs(ctx: TestContext, mount: XfsMount | undefined): asserts mount is MountedXfs {
  const reason = !mount
    ? 'the XFS mount was not attempted'
    : 'skipped' in mount
      ? mount.skipped
      : undefined;
  if (reason === undefined) return;
  console.warn(`skipped "${ctx.task.name}": ${reason}`);
  ctx.skip(reason);
}

/**
 * Creates database `app` with one table of `rows` rows (about 440 bytes each) made server-side, and
 * returns its size. VACUUM FREEZE sets the hint bits now: otherwise the first read of a branch
 * would write them into every page, and so unshare every block of a clone.
 */
async function createParent(
  proxy: PgbranchProcess,
  rows: number,
  maxWalSize: string,
): Promise<number> {
  const admin = await connect(proxy.url('postgres'));
  try {
    // Keeps WAL from filling a small test filesystem while the table is written.
    await admin.query(`alter system set max_wal_size = '${maxWalSize}'`);
    await admin.query('select pg_reload_conf()');
    await admin.query('create database app');
    const app = await connect(proxy.url('app'));
    try {
      await app.query(
        'create table t as select g, repeat(md5(g::text), 12) as filler from generate_series(1, $1::int) g',
        [rows],
      );
      await app.query('vacuum (freeze) t');
    } finally {
      await app.end();
    }
    await admin.query('checkpoint');
    const { rows: size } = await admin.query<{ bytes: string }>(
      "select pg_database_size('app') as bytes",
    );
    return Number(size[0]!.bytes);
  } finally {
    await admin.end();
  }
}

async function checkpoint(proxy: PgbranchProcess): Promise<void> {
  await queryOnce(proxy.url('postgres'), 'checkpoint');
}

/** How a connection attempt failed, with the fields a person reads. */
async function connectFailure(
  url: string,
): Promise<{ code?: string; message: string; hint?: string } | undefined> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.end();
    return undefined;
  } catch (error) {
    const e = error as { code?: string; message: string; hint?: string };
    return { code: e.code, message: e.message, hint: e.hint };
  }
}

describe('what the copy-on-write tests need', () => {
  // `npm test` on a fresh machine runs them: the test setup installs xfsprogs where it can.
  it('is there as root on a machine with apt-get: mkfs.xfs for a reflink XFS', (ctx) => {
    const why =
      process.getuid?.() !== 0
        ? 'not running as root: a loop mount needs root, so the setup installs nothing'
        : !findTool('apt-get')
          ? 'no apt-get to install xfsprogs with'
          : undefined;
    if (why) {
      console.warn(`skipped "${ctx.task.name}": ${why}`);
      ctx.skip(why);
    }
    expect(findTool('mkfs.xfs')).toBeDefined();
  });
});

describe('on XFS with reflink', () => {
  const ROWS = 1_150_000; // about 500 MB
  let mount: XfsMount | undefined;
  let proxy: PgbranchProcess | undefined;
  let parentBytes = 0;

  beforeAll(async () => {
    mount = await mountReflinkXfs(2048);
    if ('skipped' in mount) return;
    proxy = await startPgbranch({ dataDir: path.join(mount.dir, 'pgbranch') });
    const started = Date.now();
    parentBytes = await createParent(proxy, ROWS, '512MB');
    console.info(`made a ${mb(parentBytes)} parent in ${Date.now() - started} ms`);
  }, 120_000);

  afterAll(async () => {
    await proxy?.stop();
    if (mount && !('skipped' in mount)) await mount.unmount();
  });

  it('runs the image on a loop device with direct I/O, as a disk of its own', (ctx) => {
    requireXfs(ctx, mount);
    const { device } = mount as MountedXfs;
    expect(device).toMatch(/^\/dev\/loop\d+$/);
    // The kernel's own word: 1 once the loop device reads and writes its image with O_DIRECT.
    const dio = fs.readFileSync(`/sys/block/${path.basename(device!)}/loop/dio`, 'utf8').trim();
    if (dio !== '1') {
      // Only a filesystem under the image that refuses O_DIRECT (tmpfs) excuses it.
      const probe = path.join(os.tmpdir(), `pgbranch-odirect-${process.pid}`);
      try {
        fs.closeSync(
          fs.openSync(probe, fs.constants.O_CREAT | fs.constants.O_WRONLY | fs.constants.O_DIRECT),
        );
      } catch (error) {
        const why = `${os.tmpdir()} refuses O_DIRECT (${(error as NodeJS.ErrnoException).code}), so the image's loop device stays buffered`;
        console.warn(`skipped "${ctx.task.name}": ${why}`);
        ctx.skip(why);
      } finally {
        fs.rmSync(probe, { force: true });
      }
    }
    expect(dio).toBe('1');
  });

  it('detects at start that branches will be clones, and names the filesystem', (ctx) => {
    requireXfs(ctx, mount);
    expect(proxy!.ready.copyMode).toBe('clone');
    expect(proxy!.ready.copyReason).toMatch(/file_copy_method = clone; xfs supports reflink/);
    expect(proxy!.stderr()).toMatch(/branches: +cloned \(copy-on-write\): .*xfs/);
  });

  it('branches a 500 MB database as a clone that takes next to no disk', async (ctx) => {
    requireXfs(ctx, mount);
    const dir = mount.dir;
    const before = usedBytes(dir);
    const rows = await queryOnce(proxy!.url('app@clone-1'), 'select count(*)::int as n from t');
    await checkpoint(proxy!);
    const growth = usedBytes(dir) - before;

    expect(rows).toEqual([{ n: ROWS }]);
    expect(parentBytes).toBeGreaterThan(450 * MB);
    expect(growth).toBeLessThan(parentBytes * 0.1);
    const event = proxy!.events('branch_created').find((e) => e.branch === 'clone-1');
    expect(event).toMatchObject({
      mode: 'clone',
      cloneMs: expect.any(Number),
      totalMs: expect.any(Number),
    });
    console.info(
      `clone of ${mb(parentBytes)}: ${String(event!.cloneMs)} ms (${String(event!.totalMs)} ms in all), disk grew ${mb(growth)}`,
    );
  });

  it('keeps a write to a clone in the clone, and it costs only the pages it changed', async (ctx) => {
    requireXfs(ctx, mount);
    const before = usedBytes(mount.dir);
    await queryOnce(proxy!.url('app@clone-1'), "update t set filler = 'changed' where g = 1");
    await checkpoint(proxy!);
    const growth = usedBytes(mount.dir) - before;

    const inBranch = await queryOnce(proxy!.url('app@clone-1'), 'select filler from t where g = 1');
    const inParent = await queryOnce(proxy!.url('app'), 'select filler from t where g = 1');
    expect(inBranch).toEqual([{ filler: 'changed' }]);
    expect(inParent[0]!.filler).not.toBe('changed');
    expect(growth).toBeLessThan(parentBytes * 0.1);
  });
});

describe('restore points on XFS with reflink', () => {
  const ROWS = 460_000; // about 200 MB
  let mount: XfsMount | undefined;
  let proxy: PgbranchProcess | undefined;
  let parentBytes = 0;

  beforeAll(async () => {
    mount = await mountReflinkXfs(1024);
    if ('skipped' in mount) return;
    proxy = await startPgbranch({ dataDir: path.join(mount.dir, 'pgbranch') });
    parentBytes = await createParent(proxy, ROWS, '256MB');
  }, 120_000);

  afterAll(async () => {
    await proxy?.stop();
    if (mount && !('skipped' in mount)) await mount.unmount();
  });

  /** A call to the running pgbranch's admin API; the answer's JSON. */
  async function admin(method: string, route: string, body?: unknown) {
    const response = await fetch(`${proxy!.ready.adminUrl}${route}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    expect(response.status, route).toBeLessThan(300);
    return (await response.json()) as Record<string, unknown>;
  }

  it('saves and restores a branch as clones: the round trip takes next to no disk', async (ctx) => {
    requireXfs(ctx, mount);
    const branch = encodeURIComponent('app@migration');
    await admin('POST', '/v1/branches', { name: 'app@migration' });
    await checkpoint(proxy!);
    const before = usedBytes(mount.dir);

    await admin('POST', `/v1/branches/${branch}/snapshots`, { name: 'before' });
    await queryOnce(proxy!.url('app@migration'), 'drop table t');
    await admin('POST', `/v1/branches/${branch}/restore`, { snapshot: 'before' });
    const rows = await queryOnce(proxy!.url('app@migration'), 'select count(*)::int as n from t');
    await checkpoint(proxy!);
    const growth = usedBytes(mount.dir) - before;

    expect(rows).toEqual([{ n: ROWS }]);
    expect(growth).toBeLessThan(parentBytes * 0.1);
    const restored = proxy!.events('branch_restored').find((e) => e.branch === 'app@migration');
    console.info(
      `restore point and restore of ${mb(parentBytes)}: restored in ${String(restored!.totalMs)} ms, disk grew ${mb(growth)}`,
    );
  });
});

describe('when the disk cannot hold a copy', () => {
  const ROWS = 330_000; // about 150 MB
  let mount: XfsMount | undefined;
  let proxy: PgbranchProcess | undefined;
  let parentBytes = 0;
  let ballast = '';

  beforeAll(async () => {
    mount = await mountReflinkXfs(512);
    if ('skipped' in mount) return;
    proxy = await startPgbranch({
      dataDir: path.join(mount.dir, 'pgbranch'),
      args: ['--branch-copy-method', 'copy'],
    });
    parentBytes = await createParent(proxy, ROWS, '64MB');
    // Other data on the same disk, leaving room for half a copy.
    ballast = path.join(mount.dir, 'ballast');
    fillFile(ballast, freeBytes(mount.dir) - Math.floor(parentBytes / 2));
  }, 120_000);

  afterAll(async () => {
    await proxy?.stop();
    if (mount && !('skipped' in mount)) await mount.unmount();
  });

  it('refuses the branch with 53100 and what to do, leaves nothing behind, and keeps serving', async (ctx) => {
    requireXfs(ctx, mount);
    expect(proxy!.ready.copyMode).toBe('copy');
    const before = usedBytes(mount.dir);
    const failure = await connectFailure(proxy!.url('app@too-big'));
    await checkpoint(proxy!);

    expect(failure).toMatchObject({
      code: '53100',
      message: `could not create branch "app@too-big": the server's disk is full`,
      hint: expect.stringMatching(/^Free disk space \(drop unused branches\) and connect again/),
    });
    const leftovers = await queryOnce(
      proxy!.url('postgres'),
      "select datname from pg_database where datname like 'app@%'",
    );
    expect(leftovers).toEqual([]);
    // What the failed copy wrote (up to half the parent, here) is gone again. A WAL segment or
    // two (16 MB each) may have been added meanwhile: allow a quarter of the parent.
    expect(Math.abs(usedBytes(mount.dir) - before)).toBeLessThan(parentBytes * 0.25);
    expect(await queryOnce(proxy!.url('app'), 'select count(*)::int as n from t')).toEqual([
      { n: ROWS },
    ]);
  });

  it('makes the branch, a full copy, on the next connect once space is freed', async (ctx) => {
    requireXfs(ctx, mount);
    fs.rmSync(ballast);
    const before = usedBytes(mount.dir);
    const rows = await queryOnce(proxy!.url('app@too-big'), 'select count(*)::int as n from t');
    await checkpoint(proxy!);
    const growth = usedBytes(mount.dir) - before;

    expect(rows).toEqual([{ n: ROWS }]);
    expect(proxy!.events('branch_created')).toContainEqual(
      expect.objectContaining({ branch: 'too-big', mode: 'copy' }),
    );
    // A copy costs the parent's size again: the contrast with a clone.
    expect(growth).toBeGreaterThan(parentBytes * 0.9);
    console.info(`copy of ${mb(parentBytes)} took ${mb(growth)} of disk`);
  });
});

describe('on a filesystem that cannot clone', () => {
  let proxy: PgbranchProcess;
  let filesystem: string;

  beforeAll(async () => {
    proxy = await startPgbranch();
    filesystem = execFileSync('findmnt', ['-n', '-o', 'FSTYPE', '--target', proxy.dataDir])
      .toString()
      .trim();
    const admin = await connect(proxy.url('postgres'));
    await admin.query('create database app');
    await admin.end();
    const app = await connect(proxy.url('app'));
    await app.query('create table items as select g as id from generate_series(1, 1000) g');
    await app.end();
  });

  afterAll(async () => {
    await proxy?.stop();
  });

  it('copies branches, and says which filesystem is why', async (ctx) => {
    if (proxy.ready.copyMode === 'clone') {
      const reason = `the temporary directory is on ${filesystem}, which clones`;
      console.warn(`skipped "${ctx.task.name}": ${reason}`);
      ctx.skip(reason);
    }
    console.info(`copy path on ${filesystem}: ${proxy.ready.copyReason}`);
    expect(proxy.ready.copyMode).toBe('copy');
    expect(proxy.ready.copyReason).toContain(`${filesystem} cannot clone files`);
    expect(proxy.stderr()).toMatch(/branches: +copied \(no copy-on-write\)/);

    await queryOnce(proxy.url('app@plain'), 'delete from items where id > 10');
    const inBranch = await queryOnce(
      proxy.url('app@plain'),
      'select count(*)::int as n from items',
    );
    const inRoot = await queryOnce(proxy.url('app'), 'select count(*)::int as n from items');
    expect(inBranch).toEqual([{ n: 10 }]);
    expect(inRoot).toEqual([{ n: 1000 }]);
    expect(proxy.events('branch_created')).toContainEqual(
      expect.objectContaining({ branch: 'plain', mode: 'copy' }),
    );
  });
});

/** Writes `bytes` of real (not sparse) data, so the space is taken. */
function fillFile(file: string, bytes: number): void {
  const chunk = Buffer.alloc(4 * MB, 1);
  const fd = fs.openSync(file, 'w');
  try {
    for (let written = 0; written < bytes; written += chunk.length) {
      fs.writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - written));
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
