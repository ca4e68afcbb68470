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
    "select pid from pg_stat_activity where datname = 'app' and backend_type = 'client backend' and pid <> pg_backend_pid()";
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

  it('notices a temp table made by a trigger of an INSERT', async () => {
    const setup = await connect();
    await setup.query('create table audited (x int)');
    await setup.query(
      `create or replace function audit_to_temp() returns trigger language plpgsql as $$
       begin create temp table if not exists audit_log (x int); insert into audit_log values (new.x); return new; end $$`,
    );
    await setup.query(
      'create trigger audit after insert on audited for each row execute function audit_to_temp()',
    );
    const a = await connect();
    await a.query('insert into audited values (7)');
    await churn();
    expect((await a.query('select x from audit_log')).rows).toEqual([{ x: 7 }]);
    await a.end();
    const b = await connect();
    const c = await connect();
    expect(await seesTemp(b, 'audit_log')).toBe(false);
    expect(await seesTemp(c, 'audit_log')).toBe(false);
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

describe('a prepared statement whose result shape changed', () => {
  const types = (ms: Message[]) => ms.map((m) => m.type).join('');
  const rowDescription = (ms: Message[]) => ms.find((m) => m.type === 'T')!.body.readInt16BE(0);
  const describeFirst = (name: string, text: string) => [
    serialize.parse({ name, text }),
    serialize.describe({ type: 'S', name }),
    serialize.sync(),
  ];
  const execute = (name: string) => [
    serialize.bind({ statement: name }),
    serialize.execute({}),
    serialize.sync(),
  ];
  async function exchange(client: WireClient, messages: Buffer[]): Promise<Message[]> {
    client.write(Buffer.concat(messages));
    return client.until('Z');
  }
  async function recreate(table: string, columns: string): Promise<void> {
    await direct.query(`drop table if exists ${table}`);
    await direct.query(`create table ${table} (${columns})`);
  }
  async function appDirect(): Promise<pg.Client> {
    const client = await connectClient(proxy.directUrl('app'));
    opened.add(client);
    return client;
  }

  beforeAll(async () => {
    // The tables live in app; `direct` is on postgres: point it at app for these tests.
    await direct.end();
    direct = await appDirect();
    opened.delete(direct);
  });

  it('answers 0A000 "cached plan must not change result type" where it prepares the statement again, as PostgreSQL does', async () => {
    await recreate('shape_a', 'a int, b int, c int');
    await direct.query('insert into shape_a values (1, 2, 3)');
    const client = await wire();
    const described = await exchange(client, describeFirst('s', 'select * from shape_a'));
    expect(types(described)).toBe('1tTZ');
    expect(rowDescription(described)).toBe(3);
    expect(types(await exchange(client, execute('s')))).toBe('2DCZ');

    await recreate('shape_a', 'a int, b text');
    await direct.query("insert into shape_a values (1, 'x')");
    // The next Bind lands on a server connection that never had the statement.
    await dropServerConnections();
    const stale = await exchange(client, execute('s'));
    expect(types(stale)).toBe('EZ');
    expect(fieldsOf(stale[0]!)).toMatchObject({
      C: '0A000',
      M: 'cached plan must not change result type',
    });
    // What a driver does next: prepare again, and read the new shape.
    const again = await exchange(client, [
      serialize.close({ type: 'S', name: 's' }),
      ...describeFirst('s', 'select * from shape_a'),
    ]);
    expect(types(again)).toBe('31tTZ');
    expect(rowDescription(again)).toBe(2);
    const rows = await exchange(client, execute('s'));
    expect(types(rows)).toBe('2DCZ');
  });

  it('fails the transaction block as the server would, and only the statement that changed', async () => {
    await recreate('shape_b', 'a int, b int');
    const client = await wire();
    expect(types(await exchange(client, describeFirst('s', 'select * from shape_b')))).toBe('1tTZ');
    expect(types(await exchange(client, describeFirst('t', 'select 1 as one')))).toBe('1tTZ');
    await recreate('shape_b', 'a int');
    await dropServerConnections();
    const begun = await exchange(client, [serialize.query('begin')]);
    expect(types(begun)).toBe('CZ');
    expect(types(await exchange(client, execute('t')))).toBe('2DCZ');
    const stale = await exchange(client, execute('s'));
    expect(types(stale)).toBe('EZ');
    expect(fieldsOf(stale[0]!).C).toBe('0A000');
    // ReadyForQuery says the transaction failed.
    expect(String.fromCharCode(stale[1]!.body[0]!)).toBe('E');
    const failed = await exchange(client, execute('t'));
    expect(fieldsOf(failed[0]!).C).toBe('25P02');
    expect(types(await exchange(client, [serialize.query('rollback')]))).toBe('CZ');
    expect(types(await exchange(client, execute('t')))).toBe('2DCZ');
  });

  it('catches a statement another client prepared again after the change, on the same server connection', async () => {
    await recreate('shape_c', 'a int, b int, c int');
    // One client holds a server connection in a transaction: everyone else shares the other.
    const holder = await connect();
    await holder.query('begin');
    await holder.query('select 1');
    const first = await wire();
    expect(rowDescription(await exchange(first, describeFirst('s', 'select * from shape_c')))).toBe(
      3,
    );
    await recreate('shape_c', 'a int, b int');
    await direct.query('insert into shape_c values (1, 2)');
    const second = await wire();
    expect(
      rowDescription(await exchange(second, describeFirst('mine', 'select * from shape_c'))),
    ).toBe(2);
    const stale = await exchange(first, execute('s'));
    expect(fieldsOf(stale[0]!).C).toBe('0A000');
    expect(types(await exchange(second, execute('mine')))).toBe('2DCZ');
    await holder.query('commit');
  });

  it('checks the shape quietly where the statement is prepared again and nothing changed; an earlier error in the batch wins', async () => {
    await recreate('shape_e', 'a int, b int');
    await direct.query('insert into shape_e values (1, 2)');
    const client = await wire();
    expect(types(await exchange(client, describeFirst('s', 'select * from shape_e')))).toBe('1tTZ');
    await dropServerConnections();
    // Unchanged: the client sees exactly what it would have without the check.
    expect(types(await exchange(client, execute('s')))).toBe('2DCZ');
    await dropServerConnections();
    const failed = await exchange(client, [
      serialize.parse({ name: 'bad', text: 'selec nonsense' }),
      ...execute('s'),
    ]);
    expect(types(failed)).toBe('EZ');
    expect(fieldsOf(failed[0]!).C).toBe('42601');
    expect(types(await exchange(client, execute('s')))).toBe('2DCZ');
  });

  it('answers 0A000 to node-postgres too, which was told the shape by describing its portal, on every execute, as PostgreSQL does', async () => {
    await recreate('shape_f', 'a int, b int, c int');
    await direct.query('insert into shape_f values (1, 2, 3)');
    const client = await connect();
    const query = { name: 'rows_of_f', text: 'select * from shape_f where a = $1', values: [1] };
    expect((await client.query(query)).rows).toEqual([{ a: 1, b: 2, c: 3 }]);
    await recreate('shape_f', 'a int, b text');
    await direct.query("insert into shape_f values (1, 'two')");
    await dropServerConnections();
    for (let i = 0; i < 2; i++) {
      await expect(client.query(query)).rejects.toMatchObject({
        code: '0A000',
        message: 'cached plan must not change result type',
      });
    }
    expect((await client.query({ ...query, name: 'rows_of_f_again' })).rows).toEqual([
      { a: 1, b: 'two' },
    ]);
  });

  it('lets postgres.js read the new shape after a table is recreated (it prepares again on 0A000)', async () => {
    await recreate('shape_d', 'a int, b int, c int');
    await direct.query('insert into shape_d values (1, 2, 3)');
    const sql = postgresJs();
    const query = () => sql`select * from shape_d where a = ${1}`;
    expect(await query()).toEqual([{ a: 1, b: 2, c: 3 }]);
    await recreate('shape_d', 'a int, b text');
    await direct.query("insert into shape_d values (1, 'two')");
    await dropServerConnections();
    expect(await query()).toEqual([{ a: 1, b: 'two' }]);
    expect(await query()).toEqual([{ a: 1, b: 'two' }]);
  });
});

describe('statements that need a database to themselves, where pgbranch pools connections to it', () => {
  async function backendsOn(database: string): Promise<number> {
    const { rows } = await direct.query<{ n: number }>(
      'select count(*)::int as n from pg_stat_activity where datname = $1',
      [database],
    );
    return rows[0]!.n;
  }
  async function modeClient(database: string, mode: string): Promise<pg.Client> {
    const client = await connectClient({
      ...proxy.config(database),
      options: `-c pgbranch.pool_mode=${mode}`,
    });
    client.on('error', () => undefined);
    opened.add(client);
    return client;
  }
  /** Clients of `database` come and go: pgbranch keeps their server connections, idle. */
  async function leaveIdleConnections(database: string, mode: string): Promise<void> {
    const clients = await Promise.all(
      Array.from({ length: POOL }, () => modeClient(database, mode)),
    );
    await Promise.all(clients.map((c) => c.query('select pg_sleep(0.01)')));
    await Promise.all(clients.map((c) => c.end()));
    while ((await backendsOn(database)) === 0) await sleep(20);
  }

  for (const mode of ['transaction', 'session']) {
    it(`runs CREATE DATABASE ... TEMPLATE, ALTER DATABASE ... RENAME and DROP DATABASE from a ${mode}-mode client, as directly`, async () => {
      const name = `victim_${mode}`;
      const admin = await modeClient('postgres', mode);
      await admin.query(`create database ${name}`);
      await leaveIdleConnections(name, mode);
      await admin.query(`create database ${name}_copy template ${name}`);
      await leaveIdleConnections(name, mode);
      await admin.query(`alter database ${name} rename to ${name}_renamed`);
      await leaveIdleConnections(`${name}_renamed`, mode);
      await admin.query(`drop database "${name}_renamed"`);
      await admin.query(`drop database ${name}_copy`);
      expect(await backendsOn(`${name}_renamed`)).toBe(0);
      // New clients are served again at once, and told plainly what is gone.
      await expect(modeClient(`${name}_renamed`, mode)).rejects.toMatchObject({ code: '3D000' });
      expect((await admin.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
    });
  }

  it('still fails, as directly, while a client really uses the database', async () => {
    const admin = await connect('postgres');
    await admin.query('create database busy_one');
    const user = await connect('busy_one');
    await user.query('begin');
    await user.query('select 1');
    await expect(admin.query('drop database busy_one')).rejects.toMatchObject({ code: '55006' });
    await user.query('commit');
    await user.end();
    await admin.query('drop database busy_one');
  });
});
