// Session pooling: a server connection outlives its client, comes back to the next one clean, and
// the pools stay inside their limits.
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connectEndedAfterEachTest, connectError, psql } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';
import { backendExists, connectDirect, disconnectsAfter, leave } from './support/observe.js';
import { WireClient, type Message } from './support/wire-client.js';

/** Clients a test opened are ended after it, whatever happened. */
const connect = connectEndedAfterEachTest();

async function pidOf(client: pg.Client): Promise<number> {
  return (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
}

/** The process id a client was given in BackendKeyData. */
function keyPid(client: pg.Client): number {
  return (client as unknown as { processID: number }).processID;
}

/** Cuts a client's socket as a crash or a network failure would: no Terminate. */
function kill(client: pg.Client): void {
  client.connection.stream.destroy();
}

/** A FunctionCall message with one text argument and a text result. */
function functionCall(oid: number, argument: string): Buffer {
  const arg = Buffer.from(argument);
  const out = Buffer.alloc(1 + 4 + 4 + 2 + 2 + 2 + 4 + arg.length + 2);
  out.write('F', 0, 'latin1');
  out.writeInt32BE(out.length - 1, 1);
  out.writeInt32BE(oid, 5);
  out.writeInt16BE(1, 9); // one argument format code: text
  out.writeInt16BE(0, 11);
  out.writeInt16BE(1, 13); // one argument
  out.writeInt32BE(arg.length, 15);
  arg.copy(out, 19);
  out.writeInt16BE(0, 19 + arg.length); // text result
  return out;
}

function backendKey(messages: Message[]): number {
  return messages.find((m) => m.type === 'K')!.body.readInt32BE(0);
}

/** The describes below share three pgbranches with different limits. */
const proxies = {} as Record<'sessions' | 'limits' | 'clientsAndIdle', PgbranchProcess>;

beforeAll(async () => {
  // Most of a start is the embedded server's initdb: start the three side by side.
  const starts = {
    sessions: startPgbranch({ args: ['--pool-size', '3'] }),
    limits: startPgbranch({
      args: ['--pool-size', '2', '--pool-max-server-connections', '3', '--pool-wait-timeout', '1s'],
    }),
    clientsAndIdle: startPgbranch({
      args: ['--pool-max-client-connections', '2', '--pool-idle-timeout', '1s'],
    }),
  };
  for (const [name, start] of Object.entries(starts)) {
    start.then((proxy) => (proxies[name as keyof typeof proxies] = proxy)).catch(() => undefined);
  }
  await Promise.all(Object.values(starts));
});

afterAll(async () => {
  await Promise.all(Object.values(proxies).map((proxy) => proxy.stop()));
});

describe('reusing server connections', () => {
  let proxy: PgbranchProcess;
  let direct: pg.Client;
  const app = () => proxy.config('app');
  const wireLogin = () =>
    WireClient.connect(proxy.port, { user: 'postgres', password: proxy.password, database: 'app' });

  beforeAll(async () => {
    proxy = proxies.sessions;
    expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
    const setup = await connect(app());
    await setup.query('create table items (id int primary key, note text)');
    await setup.end();
    direct = await connectDirect(proxy);
  });

  afterAll(async () => {
    await direct?.end();
  });

  it('hands the next client with the same user, database and parameters the same server process', async () => {
    const first = await connect(app());
    const pid = await pidOf(first);
    await leave(proxy, first);
    const second = await connect(app());
    expect(await pidOf(second)).toBe(pid);
  });

  it('gives the next client none of the previous session: DISCARD ALL ran in between', async () => {
    const first = await connect(app());
    const pid = await pidOf(first);
    await first.query('create temp table scratch (x int)');
    await first.query("set work_mem = '77MB'");
    await first.query('prepare leftover as select 1');
    await first.query('select pg_advisory_lock(4242)');
    await first.query('listen leftover_channel');
    await first.query('set role pg_monitor');
    await leave(proxy, first);

    const second = await connect(app());
    expect(await pidOf(second)).toBe(pid);
    const { rows } = await second.query(`select
        to_regclass('pg_temp.scratch') as temp_table,
        current_setting('work_mem') as work_mem,
        (select count(*)::int from pg_prepared_statements) as prepared,
        (select count(*)::int from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()) as advisory_locks,
        (select count(*)::int from pg_listening_channels()) as channels,
        current_user as role`);
    expect(rows[0]).toEqual({
      temp_table: null,
      work_mem: '4MB',
      prepared: 0,
      advisory_locks: 0,
      channels: 0,
      role: 'postgres',
    });
  });

  it('rolls back the open transaction of a client that vanished, and reuses the connection', async () => {
    const first = await connect(app());
    const pid = await pidOf(first);
    await first.query('begin');
    await first.query("insert into items values (1, 'uncommitted')");
    const gone = disconnectsAfter(proxy);
    kill(first);
    await gone();

    const second = await connect(app());
    expect(await pidOf(second)).toBe(pid);
    const { rows } = await direct.query(
      'select state, backend_xid from pg_stat_activity where pid = $1',
      [pid],
    );
    expect(rows).toEqual([{ state: 'idle', backend_xid: null }]);
    expect((await second.query('select count(*)::int as n from items')).rows).toEqual([{ n: 0 }]);
    // The row lock went with the transaction: the same key goes in without waiting.
    await second.query("set lock_timeout = '1s'");
    await second.query("insert into items values (1, 'second client')");
    await second.query('delete from items');
  });

  it('ends a COPY FROM STDIN that a client abandoned between messages, keeping none of its rows', async () => {
    const { client: first, messages } = await wireLogin();
    const pid = backendKey(messages);
    first.write(serialize.query('copy items from stdin'));
    await first.until('G');
    for (let id = 100; id < 200; id++)
      first.write(serialize.copyData(Buffer.from(`${id}\tcopied\n`)));
    const gone = disconnectsAfter(proxy);
    first.destroy();
    await gone();

    const { client: second, messages: greeting } = await wireLogin();
    expect(backendKey(greeting)).toBe(pid);
    second.write(serialize.query('select count(*) from items'));
    const reply = await second.until('Z');
    expect(reply.map((m) => m.type).join('')).toBe('TDCZ');
    expect(reply[1]!.body.toString('utf8', 6)).toBe('0');
    expect(reply[3]!.body.toString()).toBe('I');
    second.destroy();
  });

  it('closes the server connection of a client that died halfway through a COPY message', async () => {
    const { client: first, messages } = await wireLogin();
    const pid = backendKey(messages);
    first.write(serialize.query('copy items from stdin'));
    await first.until('G');
    first.write(serialize.copyData(Buffer.from('300\tcopied\n')));
    const half = serialize.copyData(Buffer.from('301\tcopied\n'.repeat(100)));
    first.write(half.subarray(0, 50));
    const gone = disconnectsAfter(proxy);
    await sleep(50);
    first.destroy();
    await gone();

    await vi.waitFor(async () => expect(await backendExists(direct, pid)).toBe(false), {
      timeout: 5000,
    });
    const next = await connect(app());
    expect((await next.query('select count(*)::int as n from items')).rows).toEqual([{ n: 0 }]);
  });

  it('does not commit an extended-protocol batch whose client died before sending Sync', async () => {
    const { client: first, messages } = await wireLogin();
    const pid = backendKey(messages);
    first.write(
      Buffer.concat([
        serialize.parse({ text: "insert into items values (400, 'never synced')" }),
        serialize.bind({}),
        serialize.execute({}),
        serialize.flush(),
      ]),
    );
    // ParseComplete, BindComplete, CommandComplete: the insert ran, in a transaction not yet ended.
    const ran = await first.until('C');
    expect(ran.map((m) => m.type).join('')).toBe('12C');
    const gone = disconnectsAfter(proxy);
    first.destroy();
    await gone();

    const check = await connect(app());
    expect((await check.query('select count(*)::int as n from items')).rows).toEqual([{ n: 0 }]);
    const { client: second, messages: greeting } = await wireLogin();
    expect(backendKey(greeting)).toBe(pid);
    second.destroy();
  });

  it('drops a pooled connection whose server process ended while it was idle', async () => {
    const first = await connect(app());
    const pid = await pidOf(first);
    await leave(proxy, first);
    await direct.query('select pg_terminate_backend($1)', [pid]);
    await vi.waitFor(async () => expect(await backendExists(direct, pid)).toBe(false));
    const next = await connect(app());
    expect(await pidOf(next)).not.toBe(pid);
  });

  it('tells each client the real server process id in BackendKeyData', async () => {
    const clients = await Promise.all([connect(app()), connect(app()), connect(app())]);
    for (const client of clients) expect(keyPid(client)).toBe(await pidOf(client));
  });
});

describe('branching a database whose pool is full', () => {
  it('serves the clients that waited for that pool as soon as the branch is made', async () => {
    const proxy = proxies.sessions;
    expect(await psql(proxy.url('postgres'), 'create database busy')).toMatchObject({ code: 0 });
    const held = await Promise.all([1, 2, 3].map(() => connect(proxy.config('busy'))));
    const started = Date.now();
    const waiting = connect(proxy.config('busy'));
    await sleep(200);
    // Creating the branch pauses the parent's pools until their sessions have ended.
    const branching = connect(proxy.config('busy@side'));
    await sleep(200);
    for (const client of held) await client.end();
    await branching;
    const waiter = await waiting;
    // Well within the default 30 s wait timeout.
    expect(Date.now() - started).toBeLessThan(10_000);
    expect((await waiter.query('select current_database() as db')).rows).toEqual([{ db: 'busy' }]);
  });
});

describe('pool limits', () => {
  let proxy: PgbranchProcess;
  let direct: pg.Client;
  const app = (application_name = 'limits') => ({ ...proxy.config('app'), application_name });

  beforeAll(async () => {
    proxy = proxies.limits;
    expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
    direct = await connectDirect(proxy);
  });

  afterAll(async () => {
    await direct?.end();
  });

  it('makes a client beyond --pool-size wait, then refuses it with 53300 naming the pool', async () => {
    const held = await Promise.all([connect(app()), connect(app())]);
    const started = Date.now();
    const refused = await connectError(app());
    const waited = Date.now() - started;
    for (const client of held) await leave(proxy, client);
    expect(refused).toMatchObject({ code: '53300' });
    expect(refused!.message).toContain('pool app/postgres');
    expect(waited).toBeGreaterThanOrEqual(900);
    expect(waited).toBeLessThan(5000);
  });

  it('gives a waiting client the server connection that another client of its pool gives back', async () => {
    const held = await Promise.all([connect(app()), connect(app())]);
    const handedOver = await pidOf(held[0]!);
    const waiting = connect(app());
    await sleep(300);
    await held[0]!.end();
    const waiter = await waiting;
    expect(await pidOf(waiter)).toBe(handedOver);
    await leave(proxy, waiter);
    await leave(proxy, held[1]!);
  });

  it('does not lose a server connection to a client that gave up while waiting for it', async () => {
    const held = await Promise.all([connect(app()), connect(app())]);
    const quitter = await WireClient.open(proxy.port);
    // Logged in, so pgbranch now waits for a connection of pg's pool for it (pg sends
    // client_encoding too); then it gives up.
    await quitter.authenticate({
      user: 'postgres',
      password: proxy.password,
      database: 'app',
      parameters: { application_name: 'limits', client_encoding: 'UTF8' },
    });
    await sleep(100);
    quitter.destroy();
    // pgbranch sees it leave (and closes its side) long before a connection frees up.
    await sleep(200);
    await held[0]!.end();
    // The connection went to the departed client; it must come back for the next one.
    const next = await connect(app());
    expect(await next.query('select 1 as one')).toMatchObject({ rows: [{ one: 1 }] });
    await leave(proxy, next);
    await leave(proxy, held[1]!);
  });

  it('hands over a connection with nothing in flight when its client left during a function call', async () => {
    const login = () =>
      WireClient.connect(proxy.port, {
        user: 'postgres',
        password: proxy.password,
        database: 'app',
        parameters: { application_name: 'fastpath' },
      });
    const { client: caller } = await login();
    const { client: other } = await login();
    caller.write(serialize.query("select 'pg_sleep(float8)'::regprocedure::oid"));
    const oid = Number((await caller.until('Z'))[1]!.body.toString('utf8', 6));
    // Temporary tables make the reset's DISCARD ALL slow enough to answer apart from the call.
    caller.write(
      serialize.query(
        "do $$ begin for i in 1..500 loop execute format('create temp table t%s (x int)', i); end loop; end $$",
      ),
    );
    await caller.until('Z');
    const waiting = login();
    await sleep(200);
    // A fastpath call (as libpq's large-object functions make) answered by its own ReadyForQuery.
    caller.write(functionCall(oid, '0.3'));
    caller.destroy();
    const { client: next } = await waiting;
    next.write(serialize.query('select 1'));
    const reply = await next.until('Z');
    expect(reply.map((m) => m.type).join('')).toBe('TDCZ');
    expect(reply[2]!.body.toString('utf8', 0, 8)).toBe('SELECT 1');
    next.destroy();
    other.destroy();
  });

  it('keeps all pools together within --pool-max-server-connections', async () => {
    const x = await Promise.all([connect(app('x')), connect(app('x'))]);
    await connect(app('y'));
    const refused = await connectError(app('y'));
    expect(refused).toMatchObject({ code: '53300' });
    expect(refused!.message).toContain('pool app/postgres');
    // Idle connections of earlier tests were closed to make room; their processes exit soon after.
    await vi.waitFor(async () => {
      const { rows } = await direct.query(
        "select count(*)::int as n from pg_stat_activity where datname = 'app'",
      );
      expect(rows).toEqual([{ n: 3 }]);
    });

    // A connection that goes idle in another pool is closed to make room for the waiter.
    const xPid = await pidOf(x[0]!);
    const waiting = connect(app('y'));
    await sleep(300);
    await x[0]!.end();
    const second = await waiting;
    expect(await pidOf(second)).not.toBe(xPid);
    await vi.waitFor(async () => expect(await backendExists(direct, xPid)).toBe(false));
  });
});

describe('client limit and idle timeout', () => {
  let proxy: PgbranchProcess;
  let direct: pg.Client;

  beforeAll(async () => {
    proxy = proxies.clientsAndIdle;
    direct = await connectDirect(proxy);
  });

  afterAll(async () => {
    await direct?.end();
  });

  it('refuses clients beyond --pool-max-client-connections with 53300 "too many clients"', async () => {
    const held = await Promise.all([
      connect(proxy.config('postgres')),
      connect(proxy.config('postgres')),
    ]);
    const refused = await connectError(proxy.config('postgres'));
    expect(refused).toMatchObject({ code: '53300' });
    expect(refused!.message).toMatch(/too many clients/);
    await leave(proxy, held[0]!);
    // The refused client's socket closes a moment after its error; then there is room again.
    await vi.waitFor(async () =>
      expect(await connectError(proxy.config('postgres'))).toBe(undefined),
    );
  });

  it('closes server connections left idle longer than --pool-idle-timeout', async () => {
    const client = await connect({ ...proxy.config('postgres'), application_name: 'idle' });
    const pid = await pidOf(client);
    await leave(proxy, client);
    // Pooled, not closed with its client...
    expect(await backendExists(direct, pid)).toBe(true);
    // ...until it has been idle for a second (the janitor looks every second).
    const started = Date.now();
    await vi.waitFor(async () => expect(await backendExists(direct, pid)).toBe(false), {
      timeout: 5000,
      interval: 50,
    });
    expect(Date.now() - started).toBeGreaterThanOrEqual(500);
  });
});
