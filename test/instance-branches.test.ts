// Instance branches (branch.provider instance): a branch is a PostgreSQL instance of its own on a
// copy of its parent taken while the parent runs, so a parent in use by sessions that pgbranch
// can't pause (through pgbranch, or straight to the server) and under write load branches all the
// same, with every row committed before the connect. Idle instances are suspended and resumed on
// connect; at most branch.max_running run at once.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { describe, expect, it, vi } from 'vitest';
import { connect as connectClient, psql } from './support/clients.js';
import { instanceProxy, MAX_RUNNING } from './support/instance-proxy.js';
import { startPgbranch, tempDir } from './support/pgbranch.js';

// Each test copies and starts PostgreSQL instances: on a loaded 2-core machine that takes a few
// times what it takes on a quiet one, and a test must not fail for that.
vi.setConfig({ testTimeout: 240_000 });

const instances = instanceProxy();
const { connect, leave } = instances;

/** Running instances' postmasters: processes whose data directory is under instances/. */
function runningInstances(): string[] {
  const instancesDir = path.join(instances.proxy.dataDir, 'instances');
  if (!fs.existsSync(instancesDir)) return [];
  return fs
    .readdirSync(instancesDir)
    .filter((id) => fs.existsSync(path.join(instancesDir, id, 'pg', 'postmaster.pid')))
    .filter((id) => {
      const pid = Number(
        fs.readFileSync(path.join(instancesDir, id, 'pg', 'postmaster.pid'), 'utf8').split('\n')[0],
      );
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    });
}

/**
 * Inserts 1, 2, 3, ... into app.counter one autocommit transaction at a time, straight to the
 * server, until stopped; `committed()` is the highest id known committed.
 */
function countUp(): { committed: () => number; stop: () => Promise<number> } {
  let committed = 0;
  let running = true;
  const done = (async () => {
    const client = await connectClient(instances.proxy.directUrl('app'));
    try {
      while (running) {
        await client.query('insert into counter values ($1)', [committed + 1]);
        committed++;
      }
    } finally {
      await client.end();
    }
    return committed;
  })();
  return {
    committed: () => committed,
    stop: async () => {
      running = false;
      return done;
    },
  };
}

/** pgbench writing to the root through pgbranch until stopped; resolves with its exit and output. */
function pgbenchOnRoot(): { stop: () => Promise<{ code: number | null; output: string }> } {
  const child = spawn(
    'pgbench',
    ['-n', '-c', '2', '-T', '600', '-f', '-', instances.proxy.url('app')],
    {
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  child.stdin.end("insert into notes (body) values ('from pgbench');\n");
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  return {
    stop: async () => {
      child.kill('SIGINT');
      return { code: await exited, output };
    },
  };
}

describe('branching a busy parent', () => {
  it('makes 20 branches one after another and 10 at once while the parent has sessions and writers, each with every row committed before its connect', async () => {
    // Held open all along: a session through pgbranch, one straight to the server, and writers.
    const held = await connect('app');
    await held.query('begin');
    await held.query('select count(*) from counter');
    const heldDirect = await connectClient(instances.proxy.directUrl('app'));
    const counter = countUp();
    const bench = pgbenchOnRoot();
    try {
      while (counter.committed() < 10) await sleep(10);
      for (let i = 0; i < 20; i++) {
        const before = counter.committed();
        const branch = await connect(`app@seq-${i}`);
        const { rows } = await branch.query<{ n: number }>(
          'select count(*)::int as n from counter where id <= $1',
          [before],
        );
        expect(rows[0]!.n).toBe(before);
        await leave(branch);
      }
      const before = counter.committed();
      const together = await Promise.all(
        Array.from({ length: 10 }, async (_, i) => {
          const branch = await connect(`app@par-${i}`);
          const { rows } = await branch.query<{ n: number }>(
            'select count(*)::int as n from counter where id <= $1',
            [before],
          );
          await leave(branch);
          return rows[0]!.n;
        }),
      );
      expect(together).toEqual(Array(10).fill(before));
    } finally {
      const written = await counter.stop();
      const { code, output } = await bench.stop();
      // The parent's own clients saw no error.
      expect(written).toBeGreaterThan(10);
      expect(output).not.toMatch(/error|abort/i);
      expect(code === 0 || code === null, output).toBe(true);
      expect((await held.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
      await held.query('commit');
      await heldDirect.end();
    }
    expect(instances.proxy.events('branch_created').length).toBeGreaterThanOrEqual(30);
  });

  it('holds every database of the parent: app@x and billing@x are one instance', async () => {
    const app = await connect('app@both');
    await app.query("insert into notes (body) values ('only in both')");
    const billing = await connect('billing@both');
    expect((await billing.query('select count(*)::int as n from invoices')).rows).toEqual([
      { n: 0 },
    ]);
    const [a, b] = await Promise.all(
      [app, billing].map(
        async (c) => (await c.query('show data_directory')).rows[0].data_directory,
      ),
    );
    expect(a).toBe(b);
    expect(
      instances.proxy.events('branch_created').filter((e) => e.branch === 'both'),
    ).toHaveLength(1);
  });

  it('keeps a branch and its parent apart, both ways', async () => {
    const branch = await connect('app@isolated');
    await branch.query("insert into notes (body) values ('branch only')");
    const root = await connect('app');
    expect(
      (await root.query("select count(*)::int as n from notes where body = 'branch only'")).rows,
    ).toEqual([{ n: 0 }]);
    await root.query("insert into notes (body) values ('root after')");
    expect(
      (await branch.query("select count(*)::int as n from notes where body = 'root after'")).rows,
    ).toEqual([{ n: 0 }]);
  });

  it('makes a branch of a branch (pgbranch.parent), with the parent branch’s rows', async () => {
    const parent = await connect('app@develop');
    await parent.query("insert into notes (body) values ('on develop')");
    const child = await connect('app@feature-on-develop', '-c pgbranch.parent=develop');
    expect(
      (await child.query("select count(*)::int as n from notes where body = 'on develop'")).rows,
    ).toEqual([{ n: 1 }]);
  });
});

describe('branch.scripts', () => {
  it('runs a masking script in the new instance before any client sees it', async () => {
    const root = await connect('app');
    await root.query("insert into notes (body) values ('alice@example.com')");
    const branch = await connect('app@masked-1');
    const bodies = (await branch.query<{ body: string }>('select distinct body from notes')).rows;
    expect(bodies).toEqual([{ body: 'masked' }]);
    expect(
      (await root.query("select count(*)::int as n from notes where body = 'alice@example.com'"))
        .rows,
    ).toEqual([{ n: 1 }]);
  });

  it('fails the creation with the script’s SQLSTATE and name, leaving nothing behind', async () => {
    await expect(connect('app@broken-1')).rejects.toMatchObject({
      code: '22012',
      message: expect.stringContaining('broken.sql'),
    });
    const staging = fs
      .readdirSync(path.join(instances.proxy.dataDir, 'instances'))
      .filter((d) => d.startsWith('.'));
    expect(staging).toEqual([]);
    await expect(connect('app@broken-1')).rejects.toMatchObject({ code: '22012' });
  });
});

describe('suspend and resume', () => {
  it('shuts an idle instance down and starts it again on the next connect, data intact', async () => {
    const client = await connect('app@sleepy');
    await client.query("insert into notes (body) values ('before sleep')");
    await leave(client);
    // Suspended after branch.suspend_after (2 s) with no clients.
    while (!instances.proxy.events('instance_suspended').some((e) => e.branch === 'sleepy')) {
      await sleep(50);
    }
    const again = await connect('app@sleepy');
    expect(
      (await again.query("select count(*)::int as n from notes where body = 'before sleep'")).rows,
    ).toEqual([{ n: 1 }]);
    expect(
      instances.proxy.events('instance_started').filter((e) => e.branch === 'sleepy').length,
    ).toBeGreaterThanOrEqual(2);
  });

  it(`runs at most ${MAX_RUNNING} instances, suspending the least recently used idle one, and says so when all are busy`, async () => {
    const clients: pg.Client[] = [];
    for (let i = 0; i < MAX_RUNNING; i++) clients.push(await connect(`app@busy-${i}`));
    expect(runningInstances().length).toBeLessThanOrEqual(MAX_RUNNING);
    await expect(connect('app@one-too-many')).rejects.toMatchObject({ code: '53300' });
    await leave(clients.pop()!);
    const last = await connect('app@one-too-many');
    expect((await last.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
    expect(runningInstances().length).toBeLessThanOrEqual(MAX_RUNNING);
  });
});

describe('a pgbranch killed mid-creation', () => {
  it('leaves no half branch: the next start removes the unfinished copy and stops what it left running', async () => {
    const dataDir = tempDir('instance-kill');
    const first = await startPgbranch({
      dataDir,
      args: ['--branch-provider', 'instance'],
    });
    try {
      await psql(first.url('postgres'), 'create database app');
      await connectClient(first.config('app@kept')).then((c) => c.end());
      // A parent large enough that its copy takes a while, so the kill lands in the middle.
      expect(
        await psql(
          first.url('app'),
          "create table bulk as select g, repeat('x', 500) as pad from generate_series(1, 400000) g",
        ),
      ).toMatchObject({ code: 0 });
      const creating = connectClient(first.config('app@half')).catch(() => undefined);
      const staging = path.join(dataDir, 'instances');
      const copying = () => fs.readdirSync(staging).filter((d) => d.startsWith('.creating-'));
      while (copying().length === 0) await sleep(5);
      first.child.kill('SIGKILL');
      await creating;
      // Killed mid-copy: the half-made copy is still there for the next start to remove.
      expect(copying().length).toBeGreaterThan(0);
    } finally {
      await first.stop();
    }
    const second = await startPgbranch({ dataDir, args: ['--branch-provider', 'instance'] });
    try {
      expect(fs.readdirSync(path.join(dataDir, 'instances')).some((d) => d.startsWith('.'))).toBe(
        false,
      );
      const kept = await connectClient(second.config('app@kept'));
      expect((await kept.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
      await kept.end();
      const half = await connectClient(second.config('app@half'));
      expect((await half.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
      await half.end();
    } finally {
      await second.stop();
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
