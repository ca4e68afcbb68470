// Issue 8's differential test: one script of representative client work (scenario.ts), run by
// node-postgres, postgres.js and psycopg 3 against the server directly and through pgbranch in
// session mode, in transaction mode and on a branch (in transaction mode), with every step's
// results and errors compared to the same driver's run against the server directly. A difference
// fails the test unless limits.ts lists it as a limit of transaction mode, with its reason.
import fs from 'node:fs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from '../support/pgbranch.js';
import type { ConnectionInfo, Driver } from './drivers/driver.js';
import { quoteIdent } from './drivers/driver.js';
import { nodePostgres } from './drivers/node-postgres.js';
import { postgresJs } from './drivers/postgres-js.js';
import { psycopg, psycopgPython } from './drivers/psycopg.js';
import { limitOf } from './limits.js';
import { comparable, summarise as show, type Outcome } from './outcome.js';
import { runScenario, type Place } from './run.js';
import { expectedError, SCENARIO, SCHEMA, type DriverName } from './scenario.js';

const DRIVERS: Driver[] = [nodePostgres, postgresJs, psycopg];
/** Database names can't hold a dot. */
const SHORT: Record<DriverName, string> = { pg: 'pg', 'postgres.js': 'pgjs', psycopg: 'psycopg' };

type TargetName = 'direct' | 'session' | 'transaction' | 'branch';
const TARGETS: { name: TargetName; title: string; prefix: string; transactionMode: boolean }[] = [
  { name: 'direct', title: 'the server directly', prefix: 'direct', transactionMode: false },
  { name: 'session', title: 'session mode', prefix: 'session', transactionMode: false },
  { name: 'transaction', title: 'transaction mode', prefix: 'tx', transactionMode: true },
  {
    name: 'branch',
    title: 'a branch, transaction mode',
    prefix: 'branched',
    transactionMode: true,
  },
];
/** Transaction mode for the tx_ databases and the branched_ ones (and their branches). */
const ARGS = ['--pool-transaction-mode-for', 'tx_*, branched_*'];
const BRANCH = 'br';
const STEP_TIMEOUT_MS = 15_000;

let dataDir: string;
let proxy: PgbranchProcess | undefined;
/** Superuser sessions on the embedded server, bypassing pgbranch. */
let admin: pg.Pool | undefined;
/** What each step gave, by target and driver. */
const outcomes = new Map<TargetName, Map<DriverName, Map<string, Outcome>>>();

interface Tally {
  matched: number;
  differed: number;
  limits: number;
}
interface Difference {
  step: string;
  driver: DriverName;
  /** Whether a documented limit of transaction mode allows it. */
  limit: boolean;
  direct: Outcome | undefined;
  here: Outcome | undefined;
}

beforeAll(async () => {
  psycopgPython();
  dataDir = tempDir('differential');
  // Two-phase commit needs max_prepared_transactions, which takes a server restart.
  const first = await startPgbranch({ dataDir, args: ARGS });
  try {
    const direct = await connect(first.directUrl('postgres'));
    await direct.query('alter system set max_prepared_transactions = 20');
    await direct.end();
  } finally {
    await first.stop();
  }
  proxy = await startPgbranch({ dataDir, args: ARGS });
  admin = new pg.Pool({ connectionString: proxy.directUrl('postgres'), max: 4 });
  expect((await admin.query('show max_prepared_transactions')).rows[0]).toEqual({
    max_prepared_transactions: '20',
  });

  await admin.query('create database diff_template');
  const template = await connect(proxy.directUrl('diff_template'));
  await template.query(SCHEMA);
  await template.end();

  const places = new Map<string, Place>();
  for (const target of TARGETS) {
    for (const driver of DRIVERS) {
      const root = `${target.prefix}_${SHORT[driver.name]}`;
      for (const database of [root, `${root}_scratch`]) {
        await admin.query(`create database ${quoteIdent(database)} template diff_template`);
      }
      const name = (database: string) =>
        target.name === 'branch' ? `${database}@${BRANCH}` : database;
      const main = name(root);
      const scratch = name(`${root}_scratch`);
      places.set(`${target.name}/${driver.name}`, {
        connection: (database) => connectionTo(target.name, database === 'main' ? main : scratch),
        stored: (database) => (database === 'main' ? main : scratch),
        names: {
          scratch: quoteIdent(scratch),
          scratch2: quoteIdent(`${root}_renamed`),
          copy: quoteIdent(`${root}_copy`),
          gid: `differential-${target.name}-${SHORT[driver.name]}`,
        },
      });
      if (target.name === 'branch') {
        // Made now, so that no client of the scenario is the one that creates them.
        for (const branch of [main, scratch]) {
          const client = await connect(proxy.config(branch));
          await client.query('select 1');
          await client.end();
        }
      }
    }
  }

  const started = Date.now();
  await Promise.all(
    TARGETS.flatMap((target) =>
      DRIVERS.map(async (driver) => {
        const place = places.get(`${target.name}/${driver.name}`)!;
        const got = await runScenario(driver, place, admin!, STEP_TIMEOUT_MS);
        if (!outcomes.has(target.name)) outcomes.set(target.name, new Map());
        outcomes.get(target.name)!.set(driver.name, got);
      }),
    ),
  );
  console.log(report(Date.now() - started));
}, 300_000);

afterAll(async () => {
  await admin?.end();
  await proxy?.stop();
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

function connectionTo(target: TargetName, database: string): ConnectionInfo {
  const p = proxy!;
  const port = target === 'direct' ? Number(new URL(p.directUrl('postgres')).port) : p.port;
  return { host: '127.0.0.1', port, user: 'postgres', password: p.password, database };
}

function stepsOf(driver: DriverName): string[] {
  return SCENARIO.filter((s) => !s.only || s.only.includes(driver)).map((s) => s.id);
}

function compare(target: (typeof TARGETS)[number]) {
  const tallies = {} as Record<DriverName, Tally>;
  const differences: Difference[] = [];
  for (const driver of DRIVERS.map((d) => d.name)) {
    const tally: Tally = { matched: 0, differed: 0, limits: 0 };
    const direct = outcomes.get('direct')?.get(driver);
    const here = outcomes.get(target.name)?.get(driver);
    for (const step of stepsOf(driver)) {
      const a = direct?.get(step);
      const b = here?.get(step);
      if (comparable(a) === comparable(b)) {
        tally.matched++;
        continue;
      }
      const limit = target.transactionMode && limitOf(step) !== undefined;
      if (limit) tally.limits++;
      else tally.differed++;
      differences.push({ step, driver, limit, direct: a, here: b });
    }
    tallies[driver] = tally;
  }
  return { tallies, differences };
}

function report(ms: number): string {
  const width = 20;
  const lines = [
    `differential test (${(ms / 1000).toFixed(1)} s): steps that match the server directly / differ / differ as a documented limit of transaction mode`,
    `  ${'through pgbranch'.padEnd(28)}${DRIVERS.map((d) => d.name.padEnd(width)).join('')}`,
  ];
  for (const target of TARGETS.slice(1)) {
    const { tallies } = compare(target);
    const cells = DRIVERS.map((d) => {
      const t = tallies[d.name];
      return `${t.matched} / ${t.differed} / ${t.limits}`.padEnd(width);
    });
    lines.push(`  ${target.title.padEnd(28)}${cells.join('')}`);
  }
  for (const target of TARGETS.slice(1)) {
    for (const d of compare(target).differences) {
      lines.push(`  ${d.limit ? 'LIMIT' : 'DIFFERS'} ${target.name} ${d.driver} ${d.step}`);
      lines.push(`    directly: ${show(d.direct)}`);
      lines.push(`    pgbranch: ${show(d.here)}`);
    }
  }
  return lines.join('\n');
}

describe('the scenario directly against the server', () => {
  it.each(DRIVERS.map((d) => d.name))(
    'runs with %s, every step succeeding or failing as the scenario says',
    (driver) => {
      const got = outcomes.get('direct')!.get(driver)!;
      const unexpected = stepsOf(driver).flatMap((step) => {
        const expected = expectedError(
          SCENARIO.find((s) => s.id === step)!,
          driver,
        );
        const outcome = got.get(step);
        return outcome?.error === expected
          ? []
          : [`${step}: expected ${expected ?? 'success'}, got ${show(outcome)}`];
      });
      expect(unexpected).toEqual([]);
    },
  );
});

describe('the scenario through pgbranch gives what it gives directly', () => {
  it.each(TARGETS.slice(1).map((t) => [t.title, t] as const))('in %s', (_, target) => {
    const differences = compare(target).differences.filter((d) => !d.limit);
    const text = differences.map(
      (d) =>
        `${d.step} (${d.driver}): directly ${show(d.direct)}, through pgbranch ${show(d.here)}`,
    );
    expect(text).toEqual([]);
  });
});
