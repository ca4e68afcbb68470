// Automatic restore points of roots: every branch.root_snapshot_interval a quiet root with branches
// gets one, the first an interval after its first branch. Where branches are copies, each would be
// as large as its root, so there they are taken only with branch.root_snapshot_copies. pgbranch
// runs in this process (its sweep is called, not waited for) on a real embedded PostgreSQL.
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import { startPgbranch, type Running } from '../src/app.js';
import { configSchema, type Config } from '../src/config/schema.js';
import { queryOnce } from './support/clients.js';
import { tempDir } from './support/pgbranch.js';
import { mountReflinkXfs, type XfsMount } from './support/xfs.js';

const PASSWORD = 'root-points-password';

/** One pgbranch in this process, its log lines kept. */
class Instance {
  readonly logs: Record<string, unknown>[] = [];
  running!: Running;

  constructor(private readonly base: (branch: Record<string, unknown>) => Config) {}

  settings(branch: Record<string, unknown> = {}): Config {
    return this.base(branch);
  }

  async start(): Promise<void> {
    const sink = new Writable({
      write: (chunk: Buffer, _encoding, done) => {
        for (const line of chunk.toString().split('\n')) if (line) this.logs.push(JSON.parse(line));
        done();
      },
    });
    this.running = await startPgbranch(this.settings(), pino({ level: 'info' }, sink));
    await queryOnce(this.url('postgres'), 'create database app');
    await queryOnce(
      this.url('app'),
      'create table items as select g from generate_series(1, 1000) g',
    );
  }

  url(database: string): string {
    return `postgres://postgres:${PASSWORD}@127.0.0.1:${this.running.port}/${database}`;
  }

  events(name: string) {
    return this.logs.filter((l) => l.event === name);
  }

  async autoPoints() {
    return (await this.running.lifecycle.get('app')).snapshots.filter((s) => s.auto);
  }
}

function configFor(dataDir: string, copyMethod: 'auto' | 'copy') {
  return (branch: Record<string, unknown>) =>
    configSchema.parse({
      data_dir: dataDir,
      listen: { port: 0 },
      embedded: { password: PASSWORD },
      metrics: { enabled: false },
      admin: { enabled: false },
      // Sweeps run when the tests call them, not on a timer.
      branch: { copy_method: copyMethod, sweep_interval: '1h', ...branch },
    });
}

/** Resolves once `branch` was made more than `ms` ago: the state a due restore point needs. */
async function olderThan(running: Running, branch: string, ms: number): Promise<void> {
  const { createdAt } = await running.lifecycle.get(branch);
  const due = Date.parse(createdAt!) + ms + 1;
  while (Date.now() < due) await new Promise((r) => setTimeout(r, due - Date.now()));
}

describe('where branches are copies', () => {
  const dataDir = tempDir('root-points-copy');
  const pgbranch = new Instance(configFor(dataDir, 'copy'));

  beforeAll(async () => {
    await pgbranch.start();
    expect(pgbranch.running.copyMethod.mode).toBe('copy');
  }, 120_000);

  afterAll(async () => {
    await pgbranch.running?.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('takes none on the sweep after a root’s first branch: the first is due an interval later', async () => {
    const { running } = pgbranch;
    running.reload(pgbranch.settings({ root_snapshot_copies: true }));
    await running.lifecycle.create({ name: 'app@first' });
    await running.lifecycle.sweep();
    expect(await pgbranch.autoPoints()).toEqual([]);
  });

  it('takes none where it would be a full copy, and says once how to ask for them', async () => {
    const { running } = pgbranch;
    running.reload(pgbranch.settings({ root_snapshot_interval: '1s' }));
    await olderThan(running, 'app@first', 1000);
    await running.lifecycle.sweep();
    await running.lifecycle.sweep();
    expect(await pgbranch.autoPoints()).toEqual([]);
    const said = pgbranch.events('auto_snapshots_off');
    expect(said).toHaveLength(1);
    expect(said[0]!.msg).toContain('set branch.root_snapshot_copies: true');
  });

  it('takes copies when asked for, one per interval', async () => {
    const { running } = pgbranch;
    running.reload(pgbranch.settings({ root_snapshot_interval: '1s', root_snapshot_copies: true }));
    await olderThan(running, 'app@first', 1000);
    await running.lifecycle.sweep();
    const taken = await pgbranch.autoPoints();
    expect(taken).toHaveLength(1);
    expect(taken[0]!.name).toMatch(/^auto-\d{8}T\d{6}Z$/);
    // The newest is younger than the interval: the next sweep leaves it as it is.
    running.reload(pgbranch.settings({ root_snapshot_copies: true }));
    await running.lifecycle.sweep();
    expect(await pgbranch.autoPoints()).toEqual(taken);
  });
});

describe('where branches are clones (XFS with reflink)', () => {
  let mount: XfsMount | undefined;
  let pgbranch: Instance | undefined;

  beforeAll(async () => {
    mount = await mountReflinkXfs(512);
    if ('skipped' in mount) return;
    pgbranch = new Instance(configFor(path.join(mount.dir, 'pgbranch'), 'auto'));
    await pgbranch.start();
  }, 120_000);

  afterAll(async () => {
    await pgbranch?.running?.stop();
    if (mount && !('skipped' in mount)) await mount.unmount();
  });

  it('takes them by default, on the schedule', async (ctx: TestContext) => {
    if (!pgbranch) {
      const reason = mount && 'skipped' in mount ? mount.skipped : 'no XFS mount';
      console.warn(`skipped "${ctx.task.name}": ${reason}`);
      ctx.skip(reason);
      return;
    }
    const { running } = pgbranch;
    expect(running.copyMethod.mode).toBe('clone');
    await running.lifecycle.create({ name: 'app@first' });
    await running.lifecycle.sweep();
    expect(await pgbranch.autoPoints()).toEqual([]);
    running.reload(pgbranch.settings({ root_snapshot_interval: '1s' }));
    await olderThan(running, 'app@first', 1000);
    await running.lifecycle.sweep();
    expect(await pgbranch.autoPoints()).toHaveLength(1);
    expect(pgbranch.events('auto_snapshots_off')).toEqual([]);
  });
});
