// Connection budgets per server with instance branches: each instance is a postmaster of its own
// with its own max_connections, so its pools get a budget read from it, and one instance's pools
// never take another's slots. More clients than an instance holds wait for a connection instead
// of getting the server's "too many clients".
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { psql, queryOnce } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';

// Instances are copies of the root started as postmasters: slow on a loaded machine.
vi.setConfig({ testTimeout: 240_000 });

const BRANCHES = ['one', 'two'];
/** Clients on each branch at once: more than an instance of max_connections 10 holds. */
const CLIENTS_PER_BRANCH = 12;
/**
 * How long each client holds its session: longer than pool.connect_timeout, so that clients the
 * server refused for lack of slots could not get in by retrying while the others hold theirs.
 */
const HOLD_SECONDS = 4;

let proxy: PgbranchProcess;
const configDir = tempDir('instance-budget-config');
const configFile = path.join(configDir, 'pgbranch.yaml');
const config = (margin: string) =>
  [
    'branch:',
    '  provider: instance',
    '  instance_settings: "max_connections=10"',
    // A branch promoted from a warm standby may run with its parent's max_connections (a hot
    // standby needs at least the primary's): off, so that every instance has the 10 tested here.
    '  warm_spare: off',
    'pool:',
    '  connect_timeout: 3s',
    '  wait_timeout: 120s',
    `  server_margin: "${margin}"`,
    '',
  ].join('\n');

beforeAll(async () => {
  fs.writeFileSync(configFile, config('10%'));
  proxy = await startPgbranch({ args: ['--config', configFile] });
  const setup = ['create database app', "create role worker login password 'worker-pw'"];
  for (const sql of setup)
    expect(await psql(proxy.url('postgres'), sql)).toMatchObject({ code: 0 });
  expect(
    await psql(proxy.url('app'), 'create table visits (n int); grant all on visits to worker'),
  ).toMatchObject({ code: 0 });
  // The instances, made by the superuser's first connect (worker may not create branches).
  for (const branch of BRANCHES) await queryOnce(proxy.url(`app@${branch}`), 'select 1');
});

afterAll(async () => {
  await proxy?.stop();
  fs.rmSync(configDir, { recursive: true, force: true });
});

/** The budget rows of SHOW POOLS, by branch instance (`main` for the main server). */
async function budgets(): Promise<Map<string, Record<string, string | null>>> {
  const rows = await queryOnce<Record<string, string | null>>(proxy.url('pgbranch'), 'SHOW POOLS');
  const byServer = new Map<string, Record<string, string | null>>();
  for (const row of rows.filter((r) => r.mode === 'budget')) {
    const instance = /^\d+: branch instance ([^:]+):/.exec(row.parameters ?? '')?.[1];
    byServer.set(instance ?? 'main', row);
  }
  return byServer;
}

const held = (row: Record<string, string | null> | undefined) =>
  row ? Number(row.active) + Number(row.idle) + Number(row.opening) : 0;

describe('instance branches: a connection budget per instance', () => {
  it("reads each instance's budget from the instance: its max_connections, reserved slots, pgbranch's own and the margin", async () => {
    const rows = await budgets();
    for (const branch of BRANCHES) {
      expect(rows.get(branch)?.parameters).toBe(
        `4: branch instance ${branch}: max_connections 10 - 3 reserved - 2 pgbranch's own - 1 margin = 4`,
      );
    }
    expect(rows.get('main')?.parameters).toMatch(/^\d+: max_connections 100 - /);
    const metrics = await (await fetch(proxy.ready.metricsUrl!)).text();
    for (const branch of BRANCHES) {
      expect(metrics).toContain(
        `pgbranch_instance_server_connections_budget{branch="${branch}"} 4\n`,
      );
    }
    expect(proxy.events('server_budget')).toEqual(
      expect.arrayContaining(BRANCHES.map((branch) => expect.objectContaining({ branch, max: 4 }))),
    );
  });

  it(`serves ${CLIENTS_PER_BRANCH} clients at once on each of two instances of max_connections 10 without an error, each instance within its own budget`, async () => {
    let watching = true;
    const most = new Map<string, number>();
    let mostTogether = 0;
    const watcher = (async () => {
      while (watching) {
        const rows = await budgets();
        let together = 0;
        for (const branch of BRANCHES) {
          const n = held(rows.get(branch));
          most.set(branch, Math.max(most.get(branch) ?? 0, n));
          together += n;
        }
        mostTogether = Math.max(mostTogether, together);
      }
    })();

    const failures: string[] = [];
    const client = async (branch: string, i: number) => {
      const session = new pg.Client(proxy.config(`app@${branch}`, 'worker', 'worker-pw'));
      session.on('error', () => undefined);
      try {
        await session.connect();
        await session.query('insert into visits values ($1)', [i]);
        await session.query('select pg_sleep($1)', [HOLD_SECONDS]);
      } catch (error) {
        const e = error as { code?: string; message: string };
        failures.push(`app@${branch} client ${i}: ${e.code ?? ''} ${e.message}`);
      } finally {
        await session.end().catch(() => undefined);
      }
    };
    await Promise.all(
      BRANCHES.flatMap((branch) =>
        Array.from({ length: CLIENTS_PER_BRANCH }, (_, i) => client(branch, i)),
      ),
    );
    watching = false;
    await watcher;

    expect(failures).toEqual([]);
    for (const branch of BRANCHES) {
      const [row] = await queryOnce<{ count: string }>(
        proxy.url(`app@${branch}`),
        'select count(*) from visits',
      );
      expect(Number(row?.count)).toBe(CLIENTS_PER_BRANCH);
      // Never past the instance's budget of 4, which its waiting clients used in full.
      expect(most.get(branch)).toBe(4);
    }
    // Both instances full at once: neither counted the other's connections against its budget.
    expect(mostTogether).toBe(8);
  });

  it("reads every instance's budget again on RELOAD", async () => {
    fs.writeFileSync(configFile, config('3'));
    const session = new pg.Client({ connectionString: proxy.url('pgbranch') });
    await session.connect();
    try {
      await session.query('RELOAD');
    } finally {
      await session.end();
    }
    const rows = await budgets();
    for (const branch of BRANCHES) {
      expect(rows.get(branch)?.parameters).toBe(
        `2: branch instance ${branch}: max_connections 10 - 3 reserved - 2 pgbranch's own - 3 margin = 2`,
      );
    }
  });
});
