// One pgbranch with instance branches for a test file: on a reflink XFS where the machine allows
// one (as root), where copies are clones, as instance branches are meant to run (warm standbys
// off, so the copy under the backup API is what is tested; elsewhere byte copies, the same
// tests), with databases app (tables counter and notes) and billing, branch.scripts masking
// app@masked-* and failing for app@broken-*, and clients ended after each test.
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, expect } from 'vitest';
import { connect as connectClient, psql } from './clients.js';
import { connectDirect } from './observe.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './pgbranch.js';
import { mountReflinkXfs, type XfsMount } from './xfs.js';

export const MAX_RUNNING = 12;

export interface InstanceProxy {
  readonly proxy: PgbranchProcess;
  /** A session straight to the root instance (not through pgbranch). */
  readonly direct: pg.Client;
  /** A client through pgbranch, ended after the test unless left. */
  connect(database: string, options?: string): Promise<pg.Client>;
  leave(client: pg.Client): Promise<void>;
}

/** Registers the file's hooks; the proxy is there from beforeAll on. */
export function instanceProxy(): InstanceProxy {
  let proxy: PgbranchProcess | undefined;
  let direct: pg.Client | undefined;
  let mount: XfsMount | undefined;
  const opened = new Set<pg.Client>();
  const scripts = tempDir('instance-scripts');
  fs.writeFileSync(path.join(scripts, 'mask.sql'), "update notes set body = 'masked'");
  fs.writeFileSync(path.join(scripts, 'broken.sql'), 'select 1 / 0');

  beforeAll(async () => {
    mount = await mountReflinkXfs(2048);
    let dataDir: string | undefined;
    if ('skipped' in mount) console.warn(`byte copies: ${mount.skipped}`);
    else {
      dataDir = fs.mkdtempSync(path.join(mount.dir, 'instances-'));
      fs.chmodSync(dataDir, 0o755);
    }
    proxy = await startPgbranch({
      ...(dataDir ? { dataDir } : {}),
      args: [
        '--branch-warm-spare',
        'off',
        '--branch-scripts',
        `app@masked-*=${path.join(scripts, 'mask.sql')}, app@broken-*=${path.join(scripts, 'broken.sql')}`,
        '--branch-provider',
        'instance',
        '--branch-max-running',
        String(MAX_RUNNING),
        '--branch-suspend-after',
        '2s',
        '--branch-sweep-interval',
        '1s',
      ],
    });
    expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
    expect(
      await psql(
        proxy.url('app'),
        'create table counter (id int primary key); create table notes (id serial primary key, body text)',
      ),
    ).toMatchObject({ code: 0 });
    expect(await psql(proxy.url('postgres'), 'create database billing')).toMatchObject({ code: 0 });
    expect(await psql(proxy.url('billing'), 'create table invoices (n int)')).toMatchObject({
      code: 0,
    });
    direct = await connectDirect(proxy);
  });

  afterEach(async () => {
    await Promise.all([...opened].map((c) => c.end().catch(() => undefined)));
    opened.clear();
  });

  afterAll(async () => {
    await direct?.end();
    await proxy?.stop();
    fs.rmSync(scripts, { recursive: true, force: true });
    if (mount && !('skipped' in mount)) await mount.unmount();
  });

  return {
    get proxy() {
      return proxy!;
    },
    get direct() {
      return direct!;
    },
    async connect(database, options) {
      const client = await connectClient({
        ...proxy!.config(database),
        ...(options ? { options } : {}),
      });
      client.on('error', () => undefined);
      opened.add(client);
      return client;
    },
    async leave(client) {
      opened.delete(client);
      await client.end();
    },
  };
}
