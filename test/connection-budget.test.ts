// The server connection budget: pgbranch takes its cap from the server's max_connections, and
// never passes the server's "too many clients" on while it can make room by closing idle
// connections of its own, even when sessions that bypass it take more than its margin.
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect, connectWithNotices, psql, queryOnce } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';

const ROLES = Array.from({ length: 15 }, (_, i) => `budget_role_${i + 1}`);
const ROOTS = ['shop', 'blog', 'crm'];
/** Six databases and branches: three roots and a branch of each. */
const DATABASES = [...ROOTS, ...ROOTS.map((root) => `${root}@preview`)];
const WORKERS = 20;
/** Sessions that connect straight to the server, more than pool.server_margin (3 of 30). */
const OUTSIDERS = 5;
/** How long the workers keep connecting once the outsiders hold their slots. */
const CHURN_MS = 25_000;

const password = (role: string) => `pw-${role}`;

let proxy: PgbranchProcess;
let admin: pg.Client;
/** The configuration file, which the RELOAD test changes. */
const configFile = path.join(tempDir('budget-config'), 'pgbranch.yaml');

beforeAll(async () => {
  fs.writeFileSync(configFile, 'embedded:\n  max_connections: 30\n');
  proxy = await startPgbranch({ args: ['--config', configFile] });
  admin = await connect(proxy.directUrl('postgres'));
  for (const role of [...ROLES, 'outsider']) {
    await admin.query(`create role ${role} login password '${password(role)}'`);
  }
  for (const root of ROOTS) await admin.query(`create database ${root}`);
  // Branches made before the churn: a clone needs its parent quiet.
  for (const root of ROOTS) {
    await queryOnce(proxy.url(`${root}@preview`), 'select 1');
  }
});

afterAll(async () => {
  await admin?.end();
  await proxy?.stop();
  fs.rmSync(path.dirname(configFile), { recursive: true, force: true });
});

/** The console's SHOW POOLS row for the budget. */
async function budgetRow(): Promise<Record<string, string | null>> {
  const rows = await queryOnce<Record<string, string | null>>(proxy.url('pgbranch'), 'SHOW POOLS');
  return rows.find((row) => row.mode === 'budget')!;
}

describe('pool.max_server_connections: auto', () => {
  it('takes the budget from the server: max_connections less reserved slots, its own connections and the margin', async () => {
    const row = await budgetRow();
    expect(row.parameters).toBe(
      "19: max_connections 30 - 3 reserved - 5 pgbranch's own - 3 margin = 19",
    );
    const metrics = await (await fetch(`${proxy.ready.metricsUrl}`)).text();
    expect(metrics).toContain('pgbranch_server_connections_budget 19\n');
    expect(proxy.events('server_budget')).toMatchObject([{ max: 19 }]);
  });

  it(`serves ${WORKERS} clients coming and going as ${ROLES.length} roles over ${DATABASES.length} databases and branches without an error, while ${OUTSIDERS} sessions bypass pgbranch`, async () => {
    const failures: string[] = [];
    const served = new Array<number>(WORKERS).fill(0);
    let stopAt = Infinity;
    /** One client's life after another: connect, ask who and where it is, leave. */
    const worker = async (w: number) => {
      for (let n = 0; Date.now() < stopAt; n++) {
        const role = ROLES[(w + n) % ROLES.length]!;
        const database = DATABASES[(w * 7 + n) % DATABASES.length]!;
        const url = proxy.url(database, role, password(role));
        const sql = 'select current_user, current_database()';
        try {
          if (w % 2 === 0) {
            const result = await psql(url, sql);
            if (result.code !== 0) throw new Error(result.stderr);
            expect(result.stdout).toBe(`${role}|${database}`);
          } else {
            const [row] = await queryOnce(url, sql);
            expect(row).toEqual({ current_user: role, current_database: database });
          }
          served[w]!++;
        } catch (error) {
          failures.push(`${role} on ${database}: ${(error as Error).message}`);
        }
      }
    };
    const workers = Array.from({ length: WORKERS }, (_, w) => worker(w));

    // Once every pool slot has been used, sessions outside pgbranch take their slots: they wait
    // for the server to have room as any client would, and pgbranch makes it.
    // What pgbranch holds on the server, watched through the run.
    let mostHeld = 0;
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const row = await budgetRow();
        mostHeld = Math.max(mostHeld, Number(row.active) + Number(row.idle) + Number(row.opening));
      }
    })();
    await vi.waitFor(() => expect(mostHeld).toBe(19), { timeout: 30_000, interval: 50 });
    const outsiders: pg.Client[] = [];
    for (let i = 0; i < OUTSIDERS; i++) {
      const url = new URL(proxy.directUrl('postgres'));
      url.username = 'outsider';
      url.password = password('outsider');
      outsiders.push(
        // An outsider gets a slot when it wins the race for one that pgbranch freed (it closes an
        // idle connection when its own connect is refused): on a loaded machine that took
        // 62 s for the five.
        await vi.waitFor(() => connect(url.toString()), { timeout: 90_000, interval: 20 }),
      );
    }
    stopAt = Date.now() + CHURN_MS;
    await Promise.all(workers);
    await Promise.all(outsiders.map((client) => client.end()));
    watching = false;
    await watcher;

    expect(failures).toEqual([]);
    expect(Math.min(...served)).toBeGreaterThan(0);
    expect(mostHeld).toBe(19);
  }, 300_000);

  it('reads the server again on RELOAD, with a margin changed in the file', async () => {
    fs.writeFileSync(configFile, 'embedded:\n  max_connections: 30\npool:\n  server_margin: 5\n');
    const { client: session, notices } = await connectWithNotices(proxy.url('pgbranch'));
    try {
      await session.query('RELOAD');
    } finally {
      await session.end();
    }
    expect(notices).toContain('pgbranch: configuration reloaded: applied pool.server_margin');
    expect((await budgetRow()).parameters).toBe(
      "17: max_connections 30 - 3 reserved - 5 pgbranch's own - 5 margin = 17",
    );
    const metrics = await (await fetch(`${proxy.ready.metricsUrl}`)).text();
    expect(metrics).toContain('pgbranch_server_connections_budget 17\n');
  });
});
