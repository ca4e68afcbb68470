// Transaction mode must look like a session of one's own, also for the session state that clients
// rarely think about: temporary objects, statements prepared with SQL, DEALLOCATE and DISCARD
// sent with either protocol, and a schema that changes between a statement's executions. Each
// test fails on the fault that real clients (pg, postgres.js, psycopg 3, pg_dump) hit before.
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import postgres from 'postgres';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connect as connectClient, psql } from './support/clients.js';
import { connectDirect } from './support/observe.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';
import { fieldsOf, WireClient, type Message } from './support/wire-client.js';

/** Two server connections per pool: enough for one pinned client and everyone else. */
const POOL = 2;

let proxy: PgbranchProcess;
let direct: pg.Client;
const opened = new Set<{ end(): Promise<unknown> }>();

async function connect(database = 'app'): Promise<pg.Client> {
  const client = await connectClient(proxy.config(database));
  client.on('error', () => undefined);
  opened.add(client);
  return client;
}

function postgresJs(database = 'app', options: postgres.Options<never> = {}) {
  const settings = proxy.config(database);
  const sql = postgres({
    host: settings.host,
    port: settings.port,
    user: settings.user,
    password: settings.password,
    database: settings.database,
    max: 1,
    onnotice: () => undefined,
    ...options,
  });
  opened.add({ end: () => sql.end({ timeout: 1 }) });
  return sql;
}

/** postgres.js options for a query without parameters sent with Parse/Bind, as psycopg 3 sends it. */
const EXTENDED = { prepare: false, simple: false } as postgres.UnsafeQueryOptions;

async function wire(database = 'app'): Promise<WireClient> {
  const { client } = await WireClient.connect(proxy.port, {
    user: 'postgres',
    password: proxy.password,
    database,
  });
  opened.add({ end: async () => client.destroy() });
  return client;
}

afterEach(async () => {
  await Promise.all([...opened].map((c) => c.end().catch(() => undefined)));
  opened.clear();
});

beforeAll(async () => {
  proxy = await startPgbranch({
    args: ['--pool-mode', 'transaction', '--pool-size', String(POOL)],
  });
  expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
  direct = await connectDirect(proxy);
});

afterAll(async () => {
  await direct?.end();
  await proxy?.stop();
});

async function pidOf(client: pg.Client): Promise<number> {
  return (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
}

/** Runs `count` one-statement transactions on each of `POOL` clients at once: every server connection serves others meanwhile. */
async function churn(count = 10): Promise<Set<number>> {
  const clients = await Promise.all(Array.from({ length: POOL }, () => connect()));
  const pids = new Set<number>();
  for (let i = 0; i < count; i++) {
    for (const pid of await Promise.all(clients.map(pidOf))) pids.add(pid);
  }
  await Promise.all(clients.map((c) => c.end()));
  return pids;
}

/** Ends every server connection pgbranch holds to app, and waits until they are gone. */
async function dropServerConnections(): Promise<void> {
  const sql =
    "select pid from pg_stat_activity where datname = 'app' and backend_type = 'client backend'";
  await direct.query(`select pg_terminate_backend(pid) from (${sql}) s`);
  while ((await direct.query(sql)).rows.length > 0) await sleep(20);
}

/** Whether a temporary table of this name is visible to the client's session. */
async function seesTemp(client: pg.Client, name: string): Promise<boolean> {
  const { rows } = await client.query<{ t: string | null }>(
    `select to_regclass('pg_temp.${name}')::text as t`,
  );
  return rows[0]!.t !== null;
}

describe('temporary objects pin the client to its server connection', () => {
  it('keeps a psql-style temp table across transactions while others use the pool, and nobody else sees it', async () => {
    const a = await connect();
    await a.query('create temp table scratch (x int)');
    await a.query('insert into scratch values (1), (2), (3)');
    const pid = await pidOf(a);
    // Every other client's transactions run meanwhile, on the pool's other server connection.
    const others = await churn();
    expect(others.has(pid)).toBe(false);
    expect((await a.query('select count(*)::int as n from scratch')).rows[0].n).toBe(3);
    expect(await pidOf(a)).toBe(pid);
    expect(proxy.events('client_pinned').some((e) => e.reason === 'temporary objects')).toBe(true);
    await a.end();
    // A's server connection goes back only without A's table.
    const b = await connect();
    const c = await connect();
    for (const client of [b, c]) {
      expect(await seesTemp(client, 'scratch')).toBe(false);
      await expect(client.query('select * from scratch')).rejects.toMatchObject({
        code: '42P01',
      });
    }
  });

  it('notices a temp table made by a function, where the SQL text cannot tell', async () => {
    const setup = await connect();
    await setup.query(
      `create or replace function make_scratch() returns void language plpgsql as $$
       begin create temp table fn_scratch (x int); insert into fn_scratch values (42); end $$`,
    );
    const a = await connect();
    await a.query('select make_scratch()');
    await churn();
    expect((await a.query('select x from fn_scratch')).rows).toEqual([{ x: 42 }]);
    await a.end();
    const b = await connect();
    const c = await connect();
    expect(await seesTemp(b, 'fn_scratch')).toBe(false);
    expect(await seesTemp(c, 'fn_scratch')).toBe(false);
  });

  it('keeps temp tables, views and sequences of postgres.js (extended protocol), SELECT INTO TEMP and ON COMMIT variants', async () => {
    const sql = postgresJs();
    await sql`create temporary table pj (x int) on commit delete rows`;
    await sql`create temp sequence pj_seq`;
    await sql`select 7 as x into temp pj_into`;
    await sql`create temp view pj_view as select x from pj_into`;
    const pid = (await sql<{ pid: number }[]>`select pg_backend_pid() as pid`)[0]!.pid;
    await churn();
    expect(await sql`select x from pj_view`).toEqual([{ x: 7 }]);
    expect(await sql`select nextval('pj_seq')::int as n`).toEqual([{ n: 1 }]);
    expect((await sql<{ pid: number }[]>`select pg_backend_pid() as pid`)[0]!.pid).toBe(pid);
    await sql.end();
    const b = await connect();
    const c = await connect();
    for (const client of [b, c]) {
      for (const name of ['pj', 'pj_seq', 'pj_into', 'pj_view']) {
        expect(await seesTemp(client, name)).toBe(false);
      }
    }
  });

  it('does not pin for a temp table dropped at commit: the connection goes back to the pool', async () => {
    const a = await connect();
    const pinnedBefore = proxy.events('client_pinned').length;
    await a.query('begin');
    await a.query('create temp table gone (x int) on commit drop');
    await a.query('insert into gone values (1)');
    await a.query('commit');
    const pid = await pidOf(a);
    // The other clients may now get A's connection: it holds nothing of A's.
    const others = await churn();
    expect(others.has(pid)).toBe(true);
    expect(proxy.events('client_pinned').length).toBe(pinnedBefore);
  });
});

describe('SQL PREPARE stays with the client that prepared it', () => {
  it('pins a client that prepares with SQL; other clients neither see its statement nor collide with its name', async () => {
    const one = await connect();
    await one.query('begin');
    await one.query('prepare p (int) as select $1 + 1 as v');
    expect((await one.query('execute p(1)')).rows).toEqual([{ v: 2 }]);
    await one.query('commit');
    await churn(3);
    expect((await one.query('execute p(2)')).rows).toEqual([{ v: 3 }]);
    await one.end();

    const two = await connect();
    await two.query('prepare p as select 2 as v');
    expect((await two.query('execute p')).rows).toEqual([{ v: 2 }]);
    const three = await connect();
    await expect(three.query('execute p(5)')).rejects.toMatchObject({ code: '26000' });
  });

  it('drops what a client prepared with SQL in a transaction it never finished (PREPARE outlives the rollback)', async () => {
    for (let i = 0; i < 3; i++) {
      const client = await connect();
      await client.query('begin');
      await client.query('prepare left_behind as select 1');
      await client.end();
    }
    const next = await connect();
    await expect(next.query('execute left_behind')).rejects.toMatchObject({ code: '26000' });
  });

  it('keeps a pg_dump-style transaction (PREPARE inside REPEATABLE READ) from colliding with the next one; pg_dump itself runs in upstream-pg15.test.ts', async () => {
    for (let i = 0; i < 3; i++) {
      const result = await psql(
        proxy.url('app'),
        'begin isolation level repeatable read, read only; ' +
          'prepare dumpFunc(oid) as select $1::int as oid; execute dumpFunc(1); commit',
      );
      expect(result).toMatchObject({ code: 0, stderr: '' });
    }
  });
});

describe('DEALLOCATE and DISCARD from clients', () => {
  it('notices DEALLOCATE ALL and DISCARD ALL sent with the extended protocol: clients whose statements they dropped still get results', async () => {
    // node-postgres prepares a named statement once per connection and then only binds it; it
    // does not retry on 26000 (postgres.js does, which would hide the fault).
    const clients = await Promise.all(Array.from({ length: 3 }, () => connect()));
    const runAll = async () => {
      for (const client of clients) {
        for (let i = 0; i < 3; i++) {
          const { rows } = await client.query({
            name: `s${i}`,
            text: `select $1::int + ${100 + i} as v`,
            values: [0],
          });
          expect(rows).toEqual([{ v: 100 + i }]);
        }
      }
    };
    await runAll();
    // Two clients at once, each in a transaction: between them they hold every server connection
    // of the pool, so DEALLOCATE ALL reaches all of them.
    let arrived = 0;
    let bothIn!: () => void;
    const together = new Promise<void>((resolve) => (bothIn = resolve));
    await Promise.all(
      [postgresJs(), postgresJs()].map((sql) =>
        sql.begin(async (tx) => {
          await tx`select 1`;
          if (++arrived === 2) bothIn();
          await together;
          await tx.unsafe('deallocate all', [], EXTENDED);
        }),
      ),
    );
    await runAll();
    // DISCARD ALL can't run in a transaction: whichever connections it reaches.
    for (const statement of ['discard all', 'deallocate all']) {
      await Promise.all(
        [postgresJs(), postgresJs()].map((sql) => sql.unsafe(statement, [], EXTENDED)),
      );
      await runAll();
    }
  });

  it('maps DEALLOCATE of a statement prepared with Parse (psycopg 3 evicting), in both protocols', async () => {
    const client = await wire();
    const run = async (messages: Buffer[], syncs = 1): Promise<Message[]> => {
      client.write(Buffer.concat(messages));
      return client.until('Z', syncs);
    };
    const types = (ms: Message[]) => ms.map((m) => m.type).join('');
    const prepareAndRun = [
      serialize.parse({ name: '_pg3_0', text: 'select 1 as v' }),
      serialize.bind({ statement: '_pg3_0' }),
      serialize.execute({}),
      serialize.sync(),
    ];
    expect(types(await run(prepareAndRun))).toBe('12DCZ');
    const ended = (ms: Message[]) =>
      ms.map((m) => (m.type === 'E' ? fieldsOf(m).M : m.type)).join('');
    // Extended protocol, as psycopg 3 sends it; on a server connection that has the statement,
    // then on one that never had it.
    const deallocateExtended = [
      serialize.parse({ text: 'DEALLOCATE _pg3_0' }),
      serialize.bind({}),
      serialize.describe({ type: 'P', name: '' }),
      serialize.execute({}),
      serialize.sync(),
    ];
    expect(ended(await run(deallocateExtended))).toBe('12nCZ');
    expect(types(await run(prepareAndRun))).toBe('12DCZ');
    await dropServerConnections();
    expect(ended(await run(deallocateExtended))).toBe('12nCZ');
    // Simple protocol, both ways too.
    for (const fresh of [false, true]) {
      expect(types(await run(prepareAndRun))).toBe('12DCZ');
      if (fresh) await dropServerConnections();
      const simple = await run([serialize.query('DEALLOCATE "_pg3_0"')]);
      expect(ended(simple)).toBe('CZ');
      expect(simple[0]!.body.toString('utf8', 0, simple[0]!.body.length - 1)).toBe('DEALLOCATE');
    }
    expect(types(await run(prepareAndRun))).toBe('12DCZ');
    // Gone means gone, as on a server of one's own.
    const gone = await run(
      [
        serialize.query('DEALLOCATE _pg3_0'),
        serialize.bind({ statement: '_pg3_0' }),
        serialize.execute({}),
        serialize.sync(),
      ],
      2,
    );
    expect(types(gone)).toBe('CZEZ');
    expect(fieldsOf(gone[2]!).C).toBe('26000');
  });
});
