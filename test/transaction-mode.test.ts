// Transaction mode with real clients: pgbench, psql, node-postgres and postgres.js share a few
// server connections, one per transaction, and each sees the session it would see alone: its
// prepared statements, its settings, its cancels, and the session state that pins it.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import postgres from 'postgres';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect as connectClient, psql } from './support/clients.js';
import { backendExists, connectDirect, disconnectsAfter } from './support/observe.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';
import { fieldsOf, sendCancel, WireClient, type Message } from './support/wire-client.js';

/** Pool size of the main pgbranch: every test checks that no more server connections served. */
const POOL = 10;
/** Pool size of the second pgbranch, where many clients share very few server connections. */
const SMALL_POOL = 5;

/** Transaction mode for everything, ten server connections per pool. */
let proxy: PgbranchProcess;
/**
 * Session mode, except databases matching app@ci-* (transaction mode by configuration); at most
 * two prepared statements per server connection.
 */
let small: PgbranchProcess;
/** Superuser sessions on each pgbranch's embedded server, bypassing the proxy. */
let direct: pg.Client;
let directSmall: pg.Client;

/** Clients a test opened, ended after it whatever happened, so that a failure does not cascade. */
const opened = new Set<pg.Client>();
/** Background load a test started, stopped after it whatever happened. */
const busyLoops = new Set<{ stop(): Promise<number> }>();

async function connect(config: string | pg.ClientConfig, extra: pg.ClientConfig = {}) {
  const client = await connectClient(config, extra);
  client.on('error', () => undefined);
  opened.add(client);
  return client;
}

afterEach(async () => {
  await Promise.all([...busyLoops].map((busy) => busy.stop().catch(() => undefined)));
  await Promise.all([...opened].map((client) => client.end().catch(() => undefined)));
  opened.clear();
});

beforeAll(async () => {
  // Most of a start is initdb: start both side by side.
  const starting = [
    startPgbranch({
      args: [
        '--pool-mode',
        'transaction',
        '--pool-size',
        String(POOL),
        '--pool-max-client-connections',
        '2000',
      ],
    }),
    startPgbranch({
      // Two prepared statements per server connection: clients that use three keep evicting
      // and preparing again, which must not show.
      args: [
        '--pool-size',
        String(SMALL_POOL),
        '--pool-transaction-mode-for',
        'app@ci-*',
        '--pool-max-prepared-statements',
        '2',
      ],
    }),
  ];
  // Whichever started is stopped in afterAll, even if the other did not.
  void starting[0]!.then((p) => (proxy = p)).catch(() => undefined);
  void starting[1]!.then((p) => (small = p)).catch(() => undefined);
  await Promise.all(starting);
  for (const [p, db] of [
    [proxy, 'app'],
    [proxy, 'bench'],
    [small, 'app'],
  ] as const) {
    expect(await psql(p.url('postgres'), `create database ${db}`)).toMatchObject({ code: 0 });
  }
  expect(
    await psql(
      proxy.url('app'),
      // big is unlogged: the COPY test measures the proxy, not the server's WAL.
      'create table items (id int primary key, name text); create unlogged table big (id int, pad text)',
    ),
  ).toMatchObject({ code: 0 });
  direct = await connectDirect(proxy);
  directSmall = await connectDirect(small);
});

afterAll(async () => {
  await direct?.end();
  await directSmall?.end();
  await Promise.all([proxy?.stop(), small?.stop()]);
});

async function pidOf(client: pg.Client): Promise<number> {
  return (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
}

/** What a client was given in BackendKeyData. */
function keyOf(client: pg.Client): { processId: number; secret: number } {
  const c = client as unknown as { processID: number; secretKey: number };
  return { processId: c.processID, secret: c.secretKey };
}

/** Cuts a client's socket as a crash or a network failure would: no Terminate. */
function kill(client: pg.Client): void {
  client.connection.stream.destroy();
}

/** Server processes serving `database` now, as the embedded server counts them. */
async function serverPids(admin: pg.Client, database: string): Promise<number[]> {
  const { rows } = await admin.query<{ pid: number }>(
    "select pid from pg_stat_activity where datname = $1 and backend_type = 'client backend'",
    [database],
  );
  return rows.map((r) => r.pid);
}

/**
 * Watches the server processes of `database` until stopped: the most at any one time, and every
 * one seen.
 */
function watchServers(admin: pg.Client, database: string) {
  let running = true;
  let most = 0;
  const seen = new Set<number>();
  const loop = (async () => {
    while (running) {
      const pids = await serverPids(admin, database);
      most = Math.max(most, pids.length);
      for (const pid of pids) seen.add(pid);
      await sleep(20);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { most, seen };
    },
  };
}

/**
 * Clients that run short queries in a loop until stopped, so that a client's next transaction
 * lands on whichever server connection is free. Resolves once every one of them has run a query;
 * stop() resolves with how many they ran (and rejects if any failed).
 */
async function keepBusy(config: pg.ClientConfig, clients: number) {
  let running = true;
  let done = 0;
  let started = 0;
  let allStarted!: () => void;
  const ready = new Promise<void>((resolve) => (allStarted = resolve));
  const loops = Promise.all(
    Array.from({ length: clients }, async () => {
      const client = await connect(config);
      let first = true;
      while (running) {
        await client.query('select pg_sleep(0.002)');
        done++;
        if (first && ++started === clients) allStarted();
        first = false;
      }
    }),
  );
  // Reported by stop(); a test that fails before it must not leave an unhandled rejection.
  loops.catch(() => undefined);
  const busy = {
    async stop() {
      running = false;
      busyLoops.delete(busy);
      await loops;
      return done;
    },
  };
  busyLoops.add(busy);
  await Promise.race([ready, loops]);
  return busy;
}

/** The pid of the server process running a query that matches `pattern` (waits up to 10 s). */
async function runningQuery(admin: pg.Client, pattern: string): Promise<number> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const { rows } = await admin.query<{ pid: number }>(
      "select pid from pg_stat_activity where query like $1 and state = 'active' and pid <> pg_backend_pid()",
      [pattern],
    );
    if (rows.length > 0) return rows[0]!.pid;
    await sleep(20);
  }
  throw new Error(`no server process ran a query like ${pattern} within 10 s`);
}

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a program to its end; `input` goes to its stdin. Never throws on a failure exit. */
function run(
  command: string,
  args: string[],
  options: {
    input?: string;
    env?: Record<string, string>;
    onSpawn?: (pid: number) => void;
    /** Killed (SIGKILL) after this long, so that a hang fails the test instead of stalling it. */
    timeoutMs?: number;
  } = {},
): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      env: { ...process.env, PGCONNECT_TIMEOUT: '30', ...options.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('error', reject);
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.once('spawn', () => options.onSpawn?.(child.pid!));
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: stdout.trim(), stderr: stderr.trim(), ms: Date.now() - started });
    });
    child.stdin.end(options.input ?? '');
  });
}

/** Runs a psql script from stdin, as `psql -f -` does: one Query message per statement. */
function psqlScript(url: string, script: string, options: { stopOnError?: boolean } = {}) {
  return run(
    'psql',
    [
      '-X',
      '-A',
      '-t',
      '-v',
      `ON_ERROR_STOP=${options.stopOnError === false ? 0 : 1}`,
      '-d',
      url,
      '-f',
      '-',
    ],
    { input: script },
  );
}

/** The text of each column of a DataRow. */
function columns(message: Message): (string | null)[] {
  const count = message.body.readInt16BE(0);
  const out: (string | null)[] = [];
  let i = 2;
  for (let c = 0; c < count; c++) {
    const length = message.body.readInt32BE(i);
    i += 4;
    out.push(length < 0 ? null : message.body.toString('utf8', i, i + length));
    if (length > 0) i += length;
  }
  return out;
}

describe('pgbench through transaction mode', () => {
  it('initialises a scale-1 pgbench database through the proxy (pgbench -i -s 1)', async () => {
    const result = await run('pgbench', ['-i', '-s', '1', '-q', proxy.url('bench')]);
    expect(result.stderr).toMatch(/done in/);
    expect(result.code).toBe(0);
    const rows = await psql(proxy.url('bench'), 'select count(*) from pgbench_accounts');
    expect(rows).toMatchObject({ code: 0, stdout: '100000' });
  });

  it.each(['simple', 'extended', 'prepared'])(
    'runs 20 pgbench clients in -M %s on at most 10 server connections, with no failed transaction',
    async (mode) => {
      const watch = watchServers(direct, 'bench');
      // -T 5 ends a healthy run in about five seconds; one that hangs is killed after twenty.
      const result = await run(
        'pgbench',
        ['-n', '-M', mode, '-c', '20', '-j', '2', '-T', '5', proxy.url('bench')],
        { timeoutMs: 20_000 },
      );
      const servers = await watch.stop();
      expect(result.stderr).not.toMatch(/error|abort/i);
      expect(result.code, result.code === null ? 'pgbench hung and was killed' : '').toBe(0);
      expect(result.stdout).toMatch(/number of clients: 20\n/);
      expect(result.stdout).toMatch(/number of failed transactions: 0 \(/);
      const processed = Number(/actually processed: (\d+)/.exec(result.stdout)?.[1]);
      expect(processed).toBeGreaterThan(0);
      const tps = Number(/tps = ([\d.]+)/.exec(result.stdout)?.[1]);
      expect(tps).toBeGreaterThan(0);
      // Twenty clients, ten server processes at most, and the same ten all along.
      expect(servers.most).toBeGreaterThan(0);
      expect(servers.most).toBeLessThanOrEqual(POOL);
      expect(servers.seen.size).toBeLessThanOrEqual(POOL);
    },
  );
});

describe('transactions from psql and node-postgres', () => {
  it('keeps a multi-statement psql transaction on one server connection, invisible to others until COMMIT', async () => {
    const busy = await keepBusy(proxy.config('app'), 12);
    const script = [
      'BEGIN;',
      "INSERT INTO items VALUES (1, 'one');",
      'SELECT txid_current(), pg_backend_pid();',
      'SELECT pg_sleep(0.05);',
      "INSERT INTO items VALUES (2, 'two');",
      'SELECT txid_current(), pg_backend_pid();',
      'SELECT pg_sleep(0.5) AS both_inserted;',
      'SELECT count(*) FROM items WHERE id IN (1, 2);',
      'COMMIT;',
    ].join('\n');
    const reading = psqlScript(proxy.url('app'), script);
    // Both rows are in, not committed: another client sees neither.
    const other = await connect(proxy.config('app'));
    await runningQuery(direct, '%both_inserted%');
    const during = await other.query('select count(*)::int as n from items where id in (1, 2)');
    const result = await reading;
    expect(await busy.stop()).toBeGreaterThan(0);
    expect(result.stderr).toBe('');
    const lines = result.stdout.split('\n');
    expect(lines[0]).toBe('BEGIN');
    // The same transaction and the same server process for every statement.
    expect(lines[2]).toMatch(/^\d+\|\d+$/);
    expect(lines[5]).toBe(lines[2]);
    expect(lines.slice(-2)).toEqual(['2', 'COMMIT']);
    expect(during.rows).toEqual([{ n: 0 }]);
    const after = await other.query('select name from items where id in (1, 2) order by id');
    expect(after.rows).toEqual([{ name: 'one' }, { name: 'two' }]);
  });

  it('rolls back a psql transaction that hit an error, and runs the next transaction normally', async () => {
    const result = await psqlScript(
      proxy.url('app'),
      [
        'BEGIN;',
        "INSERT INTO items VALUES (10, 'doomed');",
        'SELECT 1/0;',
        "SELECT 'after the error';",
        'ROLLBACK;',
        'BEGIN;',
        "INSERT INTO items VALUES (11, 'kept');",
        'COMMIT;',
        'SELECT name FROM items WHERE id IN (10, 11) ORDER BY id;',
      ].join('\n'),
      { stopOnError: false },
    );
    expect(result.stdout.split('\n')).toEqual([
      'BEGIN',
      'INSERT 0 1',
      'ROLLBACK',
      'BEGIN',
      'INSERT 0 1',
      'COMMIT',
      'kept',
    ]);
    expect(result.stderr).toMatch(/division by zero/);
    expect(result.stderr).toMatch(/current transaction is aborted/);
  });

  it('mixes simple and extended protocol in one transaction, on one server connection', async () => {
    const busy = await keepBusy(proxy.config('app'), 12);
    const client = await connect(proxy.config('app'));
    await client.query('begin');
    const simple = await client.query<{ x: string; pid: number }>(
      'select txid_current()::text as x, pg_backend_pid() as pid',
    );
    await client.query('insert into items values ($1, $2)', [20, 'extended']);
    await client.query("insert into items values (21, 'simple'); select 1");
    const named = await client.query<{ x: string; pid: number; n: number }>({
      name: 'tx-and-count',
      text: 'select txid_current()::text as x, pg_backend_pid() as pid, count(*)::int as n from items where id >= $1',
      values: [20],
    });
    expect(named.rows[0]).toEqual({ ...simple.rows[0], n: 2 });
    // An error in the extended protocol aborts the transaction, as it would on a session.
    const bad = await client.query('select $1::int', ['not a number']).catch((e: unknown) => e);
    expect(bad).toMatchObject({ code: '22P02' });
    const aborted = await client.query('select 1').catch((e: unknown) => e);
    expect(aborted).toMatchObject({ code: '25P02' });
    await client.query('rollback');
    const { rows } = await client.query<{ n: number }>(
      'select count(*)::int as n from items where id >= $1',
      [20],
    );
    expect(rows).toEqual([{ n: 0 }]);
    expect(await busy.stop()).toBeGreaterThan(0);
  });
});

describe('named prepared statements from many clients on few server connections', () => {
  const ci = () => small.config('app@ci-1');

  it('serves 50 node-postgres clients with named statements interleaved on 5 server connections, every result right', async () => {
    const clients = await Promise.all(Array.from({ length: 50 }, () => connect(ci())));
    const watch = watchServers(directSmall, 'app@ci-1');
    const pidsPerClient = await Promise.all(
      clients.map(async (client, c) => {
        const pids = new Set<number>();
        for (let round = 0; round < 10; round++) {
          const add = await client.query<{ r: number; pid: number }>({
            name: 'add',
            text: 'select $1::int + $2::int as r, pg_backend_pid() as pid',
            values: [c, round],
          });
          expect(add.rows[0]!.r).toBe(c + round);
          const who = await client.query<{ r: string }>({
            name: 'who',
            text: "select $1::text || '/' || $2::text as r",
            values: [`client ${c}`, round],
          });
          expect(who.rows).toEqual([{ r: `client ${c}/${round}` }]);
          const mul = await client.query<{ r: number }>({
            name: 'mul',
            text: 'select $1::int * $2::int as r',
            values: [c, round],
          });
          expect(mul.rows).toEqual([{ r: c * round }]);
          pids.add(add.rows[0]!.pid);
        }
        return pids;
      }),
    );
    const servers = await watch.stop();
    expect(servers.most).toBeLessThanOrEqual(SMALL_POOL);
    const all = new Set(pidsPerClient.flatMap((p) => [...p]));
    expect(all.size).toBeLessThanOrEqual(SMALL_POOL);
    // The statements really moved between server connections.
    expect(Math.max(...pidsPerClient.map((p) => p.size))).toBeGreaterThan(1);
    expect(small.events('client_connected').at(-1)).toMatchObject({ mode: 'transaction' });
  });

  it('keeps at most pool.max_prepared_statements on a server connection, preparing again on demand', async () => {
    const client = await connect(ci());
    await client.query('begin');
    for (let round = 0; round < 3; round++) {
      for (let n = 0; n < 5; n++) {
        const { rows } = await client.query<{ r: number }>({
          name: `s${n}`,
          text: `select $1::int + ${n} as r`,
          values: [round],
        });
        expect(rows).toEqual([{ r: round + n }]);
      }
    }
    // Inside one transaction the client stays on one server connection: count what it holds.
    const { rows } = await client.query<{ n: number }>(
      "select count(*)::int as n from pg_prepared_statements where name like 'pgbranch_%'",
    );
    expect(rows[0]!.n).toBeLessThanOrEqual(2);
    await client.query('commit');
  });

  it('keeps two clients’ statements of the same name and different text apart', async () => {
    const [a, b] = await Promise.all([connect(ci()), connect(ci())]);
    const busy = await keepBusy(ci(), 6);
    await Promise.all([
      (async () => {
        for (let i = 0; i < 40; i++) {
          const { rows } = await a.query({
            name: 'q',
            text: 'select $1::int * 2 as r',
            values: [i],
          });
          expect(rows).toEqual([{ r: i * 2 }]);
        }
      })(),
      (async () => {
        for (let i = 0; i < 40; i++) {
          const { rows } = await b.query({
            name: 'q',
            text: "select $1::text || ' from b' as r",
            values: [i],
          });
          expect(rows).toEqual([{ r: `${i} from b` }]);
        }
      })(),
    ]);
    expect(await busy.stop()).toBeGreaterThan(0);
  });

  it('reports a statement that fails to prepare, and the client’s later statements work', async () => {
    const client = await connect(ci());
    const busy = await keepBusy(ci(), 6);
    const failed = await client
      .query({ name: 'broken', text: 'selec $1::int', values: [1] })
      .catch((e: unknown) => e);
    expect(failed).toMatchObject({ code: '42601' });
    for (let i = 0; i < 10; i++) {
      const fine = await client.query({ name: 'fine', text: 'select $1::int as r', values: [i] });
      expect(fine.rows).toEqual([{ r: i }]);
      // The failed name is free again: this time with text that parses.
      const fixed = await client.query({
        name: 'broken',
        text: 'select $1::int + 1 as r',
        values: [i],
      });
      expect(fixed.rows).toEqual([{ r: i + 1 }]);
    }
    expect(await busy.stop()).toBeGreaterThan(0);
  });

  it('closes a statement (Close), refuses it afterwards, and takes the name for new text', async () => {
    const busy = await keepBusy(ci(), 6);
    const { client: wire } = await WireClient.connect(small.port, {
      user: 'postgres',
      password: small.password,
      database: 'app@ci-1',
    });
    try {
      const types = (messages: Message[]) => messages.map((m) => m.type).join('');
      const execute = (values: string[] = []) =>
        Buffer.concat([
          serialize.bind({ statement: 'st', values }),
          serialize.execute({}),
          serialize.sync(),
        ]);
      wire.write(
        Buffer.concat([serialize.parse({ name: 'st', text: 'select 1 as v' }), serialize.sync()]),
      );
      expect(types(await wire.until('Z'))).toBe('1Z');
      for (let i = 0; i < 5; i++) {
        wire.write(execute());
        const messages = await wire.until('Z');
        expect(types(messages)).toBe('2DCZ');
        expect(columns(messages[1]!)).toEqual(['1']);
        await sleep(5);
      }
      wire.write(Buffer.concat([serialize.close({ type: 'S', name: 'st' }), serialize.sync()]));
      expect(types(await wire.until('Z'))).toBe('3Z');
      wire.write(execute());
      const refused = await wire.until('Z');
      expect(types(refused)).toBe('EZ');
      expect(fieldsOf(refused[0]!).C).toBe('26000');
      wire.write(
        Buffer.concat([
          serialize.parse({ name: 'st', text: 'select $1::int * 10 as v' }),
          execute(['7']),
        ]),
      );
      const again = await wire.until('Z');
      expect(types(again)).toBe('12DCZ');
      expect(columns(again[2]!)).toEqual(['70']);
      for (let i = 0; i < 5; i++) {
        wire.write(execute([String(i)]));
        const messages = await wire.until('Z');
        expect(types(messages)).toBe('2DCZ');
        expect(columns(messages[1]!)).toEqual([String(i * 10)]);
        await sleep(5);
      }
    } finally {
      wire.destroy();
    }
    expect(await busy.stop()).toBeGreaterThan(0);
  });

  it('uses transaction mode only where asked: app@ci-* by configuration, or pgbranch.pool_mode in options', async () => {
    // Session mode on the root: two clients at once have two server processes of their own.
    const [s1, s2] = await Promise.all([
      connect(small.config('app')),
      connect(small.config('app')),
    ]);
    expect(await pidOf(s1)).toBe(keyOf(s1).processId);
    expect(await pidOf(s2)).not.toBe(await pidOf(s1));
    await Promise.all([s1.end(), s2.end()]);
    // Asked for per connection: eight clients at once on a pool of five.
    const clients = await Promise.all(
      Array.from({ length: 8 }, () =>
        connect(small.config('app'), { options: '-c pgbranch.pool_mode=transaction' }),
      ),
    );
    const rows = await Promise.all(
      clients.map(async (c, i) => {
        const pids: number[] = [];
        for (let round = 0; round < 5; round++) {
          const { rows } = await c.query<{ i: number; pid: number }>(
            'select $1::int as i, pg_backend_pid() as pid',
            [i],
          );
          expect(rows[0]!.i).toBe(i);
          pids.push(rows[0]!.pid);
        }
        return pids;
      }),
    );
    expect(new Set(rows.flat()).size).toBeLessThanOrEqual(SMALL_POOL);
  });
});

describe('postgres.js and pipelines', () => {
  it('runs 400 concurrent postgres.js queries (prepared by default) and transactions correctly', async () => {
    const sql = postgres(proxy.url('app'), { max: 8, onnotice: () => undefined });
    try {
      const texts = [
        (i: number) => sql`select ${i}::int as i, 'a' as kind`,
        (i: number) => sql`select ${i}::int + 0 as i, 'b' as kind`,
        (i: number) => sql`select ${String(i)}::text::int as i, 'c' as kind`,
      ];
      const results = await Promise.all(
        Array.from({ length: 400 }, (_, i) => texts[i % 3]!(i).then((rows) => rows[0])),
      );
      expect(results).toEqual(
        Array.from({ length: 400 }, (_, i) => ({ i, kind: ['a', 'b', 'c'][i % 3] })),
      );
      const txs = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          sql.begin(async (tx) => {
            await tx`insert into items values (${1000 + i}, ${'pjs'})`;
            const [row] = await tx`select count(*)::int as n from items where id = ${1000 + i}`;
            return row!.n as number;
          }),
        ),
      );
      expect(txs).toEqual(Array(20).fill(1));
      const [count] = await sql`select count(*)::int as n from items where name = 'pjs'`;
      expect(count).toEqual({ n: 20 });
    } finally {
      await sql.end();
    }
  });

  it('answers postgres.js queries pipelined on one connection, in order', async () => {
    const sql = postgres(proxy.url('app'), { max: 1, onnotice: () => undefined });
    const busy = await keepBusy(proxy.config('app'), 12);
    try {
      for (let round = 0; round < 3; round++) {
        const results = await Promise.all(
          Array.from({ length: 100 }, (_, i) =>
            i % 2
              ? sql`select ${i}::int as i`.then((r) => r[0]!.i as number)
              : sql`select ${i}::int * 1 as i, pg_sleep(0)`.then((r) => r[0]!.i as number),
          ),
        );
        expect(results).toEqual(Array.from({ length: 100 }, (_, i) => i));
      }
    } finally {
      await sql.end();
    }
    expect(await busy.stop()).toBeGreaterThan(0);
  });

  it('answers node-postgres pipelined queries in order, an error failing only its own query', async () => {
    const client = await connect({ ...proxy.config('app'), pipeline: true } as pg.ClientConfig);
    const busy = await keepBusy(proxy.config('app'), 12);
    for (let round = 0; round < 10; round++) {
      const settled = await Promise.allSettled([
        client.query({ name: 'pl-add', text: 'select $1::int + 1 as v', values: [round] }),
        client.query('select 2 as v'),
        client.query({ name: 'pl-bad', text: 'select nonsense from nowhere', values: [] }),
        client.query({ name: 'pl-add', text: 'select $1::int + 1 as v', values: [round + 1] }),
        client.query('select 1/0 as v'),
        client.query({ name: 'pl-mul', text: 'select $1::int * 3 as v', values: [round] }),
      ]);
      const values = settled.map((s) =>
        s.status === 'fulfilled'
          ? s.value.rows[0].v
          : ((s.reason as { code?: string }).code ?? String(s.reason)),
      );
      expect(values).toEqual([round + 1, 2, '42P01', round + 2, '22012', round * 3]);
    }
    expect(await busy.stop()).toBeGreaterThan(0);
  });

  it('answers a raw pipeline of extended batches, a failed Parse skipping only its own batch', async () => {
    const { client: wire } = await WireClient.connect(proxy.port, {
      user: 'postgres',
      password: proxy.password,
      database: 'app',
    });
    const busy = await keepBusy(proxy.config('app'), 12);
    try {
      for (let round = 0; round < 10; round++) {
        wire.write(
          Buffer.concat([
            serialize.parse({ name: `p1-${round}`, text: 'select $1::int + 1 as v' }),
            serialize.bind({ statement: `p1-${round}`, values: ['41'] }),
            serialize.describe({ type: 'P', name: '' }),
            serialize.execute({}),
            serialize.sync(),
            serialize.parse({ name: `p2-${round}`, text: 'selec nonsense' }),
            serialize.bind({ statement: `p2-${round}` }),
            serialize.execute({}),
            serialize.sync(),
            serialize.bind({ statement: `p1-${round}`, values: ['1'] }),
            serialize.execute({}),
            serialize.sync(),
            serialize.query('select 3 as v'),
          ]),
        );
        const messages = await wire.until('Z', 4);
        expect(messages.map((m) => m.type).join('')).toBe('12TDCZ' + 'EZ' + '2DCZ' + 'TDCZ');
        const rows = messages.filter((m) => m.type === 'D').map((m) => columns(m)[0]);
        expect(rows).toEqual(['42', '2', '3']);
        expect(fieldsOf(messages[6]!).C).toBe('42601');
      }
    } finally {
      wire.destroy();
    }
    expect(await busy.stop()).toBeGreaterThan(0);
  });
});

describe('COPY', () => {
  const ROWS = 1_000_000;
  const PAD = 240;
  let dir: string;
  let file: string;

  beforeAll(async () => {
    dir = tempDir('copy');
    file = path.join(dir, 'big.tsv');
    const out = fs.createWriteStream(file);
    const pad = 'x'.repeat(PAD);
    for (let start = 1; start <= ROWS; start += 10_000) {
      let chunk = '';
      for (let i = start; i < start + 10_000 && i <= ROWS; i++) chunk += `${i}\t${pad}\n`;
      if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
    }
    await new Promise<void>((r) => out.end(() => r()));
  });

  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('copies 250 MB in and out with psql \\copy while other clients keep working', async () => {
    expect(fs.statSync(file).size).toBeGreaterThan(245_000_000);
    let copying = true;
    const workers = Array.from({ length: 4 }, async () => {
      const client = await connect(proxy.config('app'));
      let done = 0;
      while (copying) {
        const { rows } = await client.query<{ v: number }>('select $1::int as v', [done]);
        expect(rows).toEqual([{ v: done }]);
        done++;
        await sleep(10);
      }
      return done;
    });
    const copyIn = await psql(proxy.url('app'), `\\copy big from '${file}'`, {
      timeoutMs: 90_000,
    });
    expect(copyIn).toMatchObject({ code: 0, stdout: `COPY ${ROWS}` });
    const copyOut = await psql(proxy.url('app'), "\\copy big to '/dev/null'", {
      timeoutMs: 90_000,
    });
    expect(copyOut).toMatchObject({ code: 0, stdout: `COPY ${ROWS}` });
    copying = false;
    const done = await Promise.all(workers);
    for (const n of done) expect(n).toBeGreaterThan(10);
    const check = await psql(
      proxy.url('app'),
      'select count(*), sum(id), min(length(pad)), max(length(pad)) from big',
    );
    expect(check).toMatchObject({
      code: 0,
      stdout: `${ROWS}|${(ROWS * (ROWS + 1)) / 2}|${PAD}|${PAD}`,
    });
  });
});

describe('cancel', () => {
  it('cancels a transaction-mode client’s query by its BackendKeyData, quickly, and no one else’s', async () => {
    const [sleeper, bystander] = await Promise.all([
      connect(proxy.config('app')),
      connect(proxy.config('app')),
    ]);
    const sleeping = sleeper.query('select pg_sleep(30) as long_one').catch((e: unknown) => e);
    const started = Date.now();
    const other = bystander.query<{ ok: boolean }>('select true as ok from pg_sleep(3)');
    await runningQuery(direct, '%pg_sleep(30) as long_one%');
    const canceled = Date.now();
    await sendCancel(proxy.port, keyOf(sleeper).processId, keyOf(sleeper).secret);
    expect(await sleeping).toMatchObject({ code: '57014' });
    expect(Date.now() - canceled).toBeLessThan(2000);
    expect((await other).rows).toEqual([{ ok: true }]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(2900);
    // The canceled client goes on.
    expect((await sleeper.query('select 1 as n')).rows).toEqual([{ n: 1 }]);
  });

  it('cancels a psql query on Ctrl-C (SIGINT), and not a query of another client', async () => {
    const bystander = await connect(proxy.config('app'));
    const other = bystander.query<{ ok: boolean }>('select true as ok from pg_sleep(2)');
    let psqlPid = 0;
    const running = run(
      'psql',
      ['-X', '-A', '-t', '-d', proxy.url('app'), '-c', 'select pg_sleep(30) as ctrl_c'],
      { onSpawn: (pid) => (psqlPid = pid) },
    );
    await runningQuery(direct, '%pg_sleep(30) as ctrl_c%');
    process.kill(psqlPid, 'SIGINT');
    const result = await running;
    expect(result.stderr).toMatch(/canceling statement due to user request/);
    expect(result.code).not.toBe(0);
    expect(result.ms).toBeLessThan(10_000);
    expect((await other).rows).toEqual([{ ok: true }]);
  });

  it('does nothing with a cancel for a client that runs nothing, whatever others run', async () => {
    const [idle, bystander] = await Promise.all([
      connect(proxy.config('app')),
      connect(proxy.config('app')),
    ]);
    await idle.query('select 1');
    const other = bystander.query<{ ok: boolean }>('select true as ok from pg_sleep(1)');
    await runningQuery(direct, '%from pg_sleep(1)%');
    await sendCancel(proxy.port, keyOf(idle).processId, keyOf(idle).secret);
    expect((await other).rows).toEqual([{ ok: true }]);
    expect((await idle.query('select true as ok from pg_sleep(0.3)')).rows).toEqual([{ ok: true }]);
  });
});

describe('many clients', () => {
  it('serves 1,000 clients on 10 server connections, every query answered', async () => {
    const clients: pg.Client[] = [];
    for (let batch = 0; batch < 10; batch++) {
      clients.push(
        ...(await Promise.all(Array.from({ length: 100 }, () => connect(proxy.config('app'))))),
      );
    }
    const watch = watchServers(direct, 'app');
    const answers = await Promise.all(
      clients.map(async (client, i) => {
        const a = await client.query<{ v: number }>('select $1::int as v', [i]);
        await client.query('begin');
        const b = await client.query<{ v: string }>("select 'client ' || $1 as v", [i]);
        await client.query('commit');
        const c = await client.query<{ v: number }>({
          name: 'thousand',
          text: 'select $1::int * 2 as v',
          values: [i],
        });
        return [a.rows[0]!.v, b.rows[0]!.v, c.rows[0]!.v];
      }),
    );
    const servers = await watch.stop();
    expect(answers).toEqual(clients.map((_, i) => [i, `client ${i}`, i * 2]));
    expect(servers.most).toBeGreaterThan(0);
    expect(servers.most).toBeLessThanOrEqual(POOL);
    await Promise.all(clients.map((c) => c.end()));
    opened.clear();
  });
});

describe('a server connection that dies', () => {
  it('tells a client whose server is terminated mid-transaction (57P01 or 08006), and the pool heals', async () => {
    const client = await connect(proxy.config('app'));
    await client.query('begin');
    await client.query("insert into items values (500, 'doomed')");
    const pid = await pidOf(client);
    const sleeping = client.query('select pg_sleep(10) as doomed').catch((e: unknown) => e);
    await runningQuery(direct, '%pg_sleep(10) as doomed%');
    await direct.query('select pg_terminate_backend($1)', [pid]);
    const error = (await sleeping) as { code?: string };
    expect(['57P01', '08006']).toContain(error.code);
    await vi.waitFor(async () => expect(await backendExists(direct, pid)).toBe(false));
    // New clients and their transactions work, on at most ten server connections.
    const others = await Promise.all(
      Array.from({ length: 20 }, () => connect(proxy.config('app'))),
    );
    const rows = await Promise.all(
      others.map(async (c, i) => {
        await c.query('begin');
        const r = await c.query<{ v: number }>('select $1::int as v', [i]);
        await c.query('commit');
        return r.rows[0]!.v;
      }),
    );
    expect(rows).toEqual(others.map((_, i) => i));
    expect(await serverPids(direct, 'app')).not.toContain(pid);
    const { rows: doomed } = await others[0]!.query('select 1 from items where id = 500');
    expect(doomed).toEqual([]);
  });

  it('drops idle pooled server connections that were terminated, and serves the next clients', async () => {
    await Promise.all(
      Array.from({ length: 10 }, async () => {
        const c = await connect(proxy.config('app'));
        await c.query('select pg_sleep(0.05)');
      }),
    );
    const idle = await serverPids(direct, 'app');
    expect(idle.length).toBeGreaterThan(0);
    await direct.query('select pg_terminate_backend(pid) from unnest($1::int[]) as pid', [idle]);
    const clients = await Promise.all(
      Array.from({ length: 10 }, () => connect(proxy.config('app'))),
    );
    const rows = await Promise.all(
      clients.map(
        async (c, i) => (await c.query<{ v: number }>('select $1::int as v', [i])).rows[0]!.v,
      ),
    );
    expect(rows).toEqual(clients.map((_, i) => i));
  });
});

describe('settings that follow the client', () => {
  it('replays SET search_path, statement_timeout and application_name on whichever server connection the client gets', async () => {
    const client = await connect(proxy.config('app'));
    await client.query('set search_path = tenant_x, public');
    await client.query("set statement_timeout = '4321ms'");
    await client.query("set application_name = 'x-app'");
    const busy = await keepBusy(proxy.config('app'), 12);
    const pids = new Set<number>();
    for (let i = 0; i < 20; i++) {
      expect((await client.query('show search_path')).rows).toEqual([
        { search_path: 'tenant_x, public' },
      ]);
      expect((await client.query('show statement_timeout')).rows).toEqual([
        { statement_timeout: '4321ms' },
      ]);
      expect((await client.query('show application_name')).rows).toEqual([
        { application_name: 'x-app' },
      ]);
      pids.add(await pidOf(client));
    }
    expect(await busy.stop()).toBeGreaterThan(0);
    expect(pids.size).toBeGreaterThan(1);
    await client.end();

    // Ten other clients at once hold every server connection: none carries those settings.
    const others = await Promise.all(
      Array.from({ length: POOL }, () => connect(proxy.config('app'))),
    );
    const seen = await Promise.all(
      others.map(async (c) => {
        await c.query('begin');
        const { rows } = await c.query(
          `select current_setting('search_path') as sp, current_setting('statement_timeout') as st,
                  current_setting('application_name') as an, pg_backend_pid() as pid`,
        );
        return rows[0] as { sp: string; st: string; an: string; pid: number };
      }),
    );
    for (const row of seen) expect(row).toMatchObject({ sp: '"$user", public', st: '0', an: '' });
    for (const pid of pids) expect(seen.map((r) => r.pid)).toContain(pid);
    await Promise.all(others.map((c) => c.query('commit')));
  });

  it('applies startup parameters (PGAPPNAME, options -c work_mem) per client', async () => {
    const busy = await keepBusy(proxy.config('app'), 12);
    const line =
      "select current_setting('application_name'), current_setting('work_mem'), (select true from pg_sleep(0.02));\n";
    const clients: { env: Record<string, string>; expected: string }[] = [
      { env: { PGAPPNAME: 'app-a', PGOPTIONS: '-c work_mem=7MB' }, expected: 'app-a|7MB|t' },
      { env: { PGAPPNAME: 'app-b', PGOPTIONS: '-c work_mem=9MB' }, expected: 'app-b|9MB|t' },
      { env: {}, expected: 'psql|4MB|t' },
    ];
    const results = await Promise.all(
      clients.map(({ env }) =>
        run('psql', ['-X', '-A', '-t', '-d', proxy.url('app'), '-f', '-'], {
          env,
          input: line.repeat(10),
        }),
      ),
    );
    expect(await busy.stop()).toBeGreaterThan(0);
    for (const [i, result] of results.entries()) {
      expect(result).toMatchObject({ code: 0, stderr: '' });
      expect(result.stdout.split('\n')).toEqual(Array(10).fill(clients[i]!.expected));
    }
  });

  it('forgets a SET that failed: the client’s next transactions work wherever they land', async () => {
    const client = await connect(proxy.config('app'));
    const failed = await client.query("set statement_timeout = 'soon'").catch((e: unknown) => e);
    expect(failed).toMatchObject({ code: '22023' });
    const busy = await keepBusy(proxy.config('app'), 12);
    const pids = new Set<number>();
    for (let i = 0; i < 20; i++) {
      expect((await client.query('show statement_timeout')).rows).toEqual([
        { statement_timeout: '0' },
      ]);
      pids.add(await pidOf(client));
    }
    expect(await busy.stop()).toBeGreaterThan(0);
    expect(pids.size).toBeGreaterThan(1);
  });

  it('does not replay a SET that was rolled back with its transaction', async () => {
    const client = await connect(proxy.config('app'));
    await client.query('begin');
    await client.query('set search_path = rolled_back');
    await client.query('rollback');
    const busy = await keepBusy(proxy.config('app'), 12);
    const pids = new Set<number>();
    for (let i = 0; i < 20; i++) {
      expect((await client.query('show search_path')).rows).toEqual([
        { search_path: '"$user", public' },
      ]);
      pids.add(await pidOf(client));
    }
    expect(await busy.stop()).toBeGreaterThan(0);
    expect(pids.size).toBeGreaterThan(1);
  });

  it('keeps a SET sent with the extended protocol (postgres.js) wherever the client lands', async () => {
    const sql = postgres(proxy.url('app'), { max: 1, onnotice: () => undefined });
    try {
      await sql`set statement_timeout = '2345ms'`;
      const busy = await keepBusy(proxy.config('app'), 12);
      for (let i = 0; i < 20; i++) {
        const [row] = await sql`select current_setting('statement_timeout') as st`;
        expect(row).toEqual({ st: '2345ms' });
      }
      expect(await busy.stop()).toBeGreaterThan(0);
    } finally {
      await sql.end();
    }
  });

  it('keeps a setting changed with set_config() in a simple query wherever the client lands', async () => {
    const client = await connect(proxy.config('app'));
    await client.query("select set_config('statement_timeout', '3456ms', false)");
    const busy = await keepBusy(proxy.config('app'), 12);
    for (let i = 0; i < 20; i++) {
      const { rows } = await client.query("select current_setting('statement_timeout') as st");
      expect(rows).toEqual([{ st: '3456ms' }]);
    }
    expect(await busy.stop()).toBeGreaterThan(0);
  });

  it('does not leak a SET sent with the extended protocol into other clients', async () => {
    const setter = postgres(proxy.url('app'), { max: 1, onnotice: () => undefined });
    const others = postgres(proxy.url('app'), { max: POOL, onnotice: () => undefined });
    try {
      await setter`set statement_timeout = '2345ms'`;
      // Ten transactions at once hold every server connection, the setter's last one too.
      let arrived = 0;
      let allThere!: () => void;
      const together = new Promise<void>((resolve) => (allThere = resolve));
      const seen = await Promise.all(
        Array.from({ length: POOL }, () =>
          others.begin(async (tx) => {
            const [row] = await tx`select current_setting('statement_timeout') as st`;
            if (++arrived === POOL) allThere();
            await together;
            return row!.st as string;
          }),
        ),
      );
      expect(seen).toEqual(Array(POOL).fill('0'));
    } finally {
      await Promise.all([setter.end(), others.end()]);
    }
  });

  it('applies a list-valued startup parameter (options -c search_path=a,b) as the list it is', async () => {
    const client = await connect(proxy.config('app'), {
      options: '-c search_path=tenant_b,public',
    });
    const busy = await keepBusy(proxy.config('app'), 12);
    for (let i = 0; i < 10; i++) {
      const { rows } = await client.query(
        "select array_to_string(current_schemas(false), ',') as schemas",
      );
      expect(rows).toEqual([{ schemas: 'public' }]);
      expect((await client.query('show search_path')).rows).toEqual([
        { search_path: 'tenant_b,public' },
      ]);
    }
    expect(await busy.stop()).toBeGreaterThan(0);
  });
});

describe('session state pins the client to its server connection', () => {
  it('keeps a client holding a session-level advisory lock on one server connection, and logs client_pinned', async () => {
    const busy = await keepBusy(proxy.config('app'), 12);
    const client = await connect(proxy.config('app'));
    await client.query('select pg_advisory_lock(4242)');
    const pid = await pidOf(client);
    for (let i = 0; i < 10; i++) {
      expect(await pidOf(client)).toBe(pid);
      await sleep(10);
    }
    const holders = () =>
      direct.query(
        "select pid from pg_locks where locktype = 'advisory' and objid = 4242 and granted",
      );
    expect((await holders()).rows).toEqual([{ pid }]);
    await vi.waitFor(() =>
      expect(proxy.events('client_pinned')).toContainEqual(
        expect.objectContaining({ reason: 'a session-level advisory lock' }),
      ),
    );
    expect(await busy.stop()).toBeGreaterThan(0);
    // The lock goes with the client.
    const gone = disconnectsAfter(proxy);
    await client.end();
    await gone();
    await vi.waitFor(async () => expect((await holders()).rows).toEqual([]));
  });

  it('keeps a LISTENing client on one server connection, and delivers NOTIFY from another client', async () => {
    const busy = await keepBusy(proxy.config('app'), 12);
    const listener = await connect(proxy.config('app'));
    const payloads: string[] = [];
    listener.on('notification', (n) => payloads.push(n.payload ?? ''));
    await listener.query('listen jobs');
    const pid = await pidOf(listener);
    const notifier = await connect(proxy.config('app'));
    for (let i = 0; i < 5; i++) {
      await notifier.query(`notify jobs, 'job ${i}'`);
      expect(await pidOf(listener)).toBe(pid);
    }
    await vi.waitFor(() => expect(payloads).toEqual(['job 0', 'job 1', 'job 2', 'job 3', 'job 4']));
    expect(proxy.events('client_pinned')).toContainEqual(
      expect.objectContaining({ reason: 'LISTEN' }),
    );
    expect(await busy.stop()).toBeGreaterThan(0);
  });

  it('keeps a client with a WITH HOLD cursor on one server connection across transactions', async () => {
    const busy = await keepBusy(proxy.config('app'), 12);
    const client = await connect(proxy.config('app'));
    await client.query('begin');
    await client.query('declare held cursor with hold for select g from generate_series(1, 6) g');
    await client.query('commit');
    const pid = await pidOf(client);
    for (const expected of [
      [1, 2],
      [3, 4],
      [5, 6],
    ]) {
      await sleep(20);
      const { rows } = await client.query<{ g: number }>('fetch 2 from held');
      expect(rows.map((r) => r.g)).toEqual(expected);
      expect(await pidOf(client)).toBe(pid);
    }
    await client.query('close held');
    expect(proxy.events('client_pinned')).toContainEqual(
      expect.objectContaining({ reason: 'a WITH HOLD cursor' }),
    );
    expect(await busy.stop()).toBeGreaterThan(0);
  });
});

describe('a client that vanishes mid-transaction', () => {
  it('commits nothing, and its server connection is rolled back and reused', async () => {
    const client = await connect(proxy.config('app'));
    await client.query('begin');
    await client.query("insert into items values (700, 'ghost')");
    const pid = await pidOf(client);
    const gone = disconnectsAfter(proxy);
    kill(client);
    await gone();
    await vi.waitFor(async () => {
      const { rows } = await direct.query('select state from pg_stat_activity where pid = $1', [
        pid,
      ]);
      expect(rows).toEqual([{ state: 'idle' }]);
    });
    // No row and no row lock left behind: the same key goes in at once.
    const other = await connect(proxy.config('app'));
    await other.query(
      "begin; set local lock_timeout = '2s'; insert into items values (700, 'alive'); commit",
    );
    const { rows } = await other.query('select name from items where id = 700');
    expect(rows).toEqual([{ name: 'alive' }]);
    // Ten clients at once take every server connection: that one is among them.
    const holders = await Promise.all(
      Array.from({ length: POOL }, () => connect(proxy.config('app'))),
    );
    const pids = await Promise.all(
      holders.map(async (c) => {
        await c.query('begin');
        return pidOf(c);
      }),
    );
    expect(pids).toContain(pid);
    await Promise.all(holders.map((c) => c.query('commit')));
  });

  it('commits nothing of an extended-protocol batch cut off before its Sync', async () => {
    const { client: wire } = await WireClient.connect(proxy.port, {
      user: 'postgres',
      password: proxy.password,
      database: 'app',
    });
    const gone = disconnectsAfter(proxy);
    wire.write(
      Buffer.concat([
        serialize.parse({ text: "insert into items values (701, 'cut off')" }),
        serialize.bind({}),
        serialize.execute({}),
        serialize.flush(),
      ]),
    );
    expect((await wire.until('C')).map((m) => m.type).join('')).toBe('12C');
    wire.destroy();
    await gone();
    const other = await connect(proxy.config('app'));
    // Rolled back, not committed by a Sync: the key is free.
    await other.query(
      "begin; set local lock_timeout = '2s'; insert into items values (701, 'alive'); commit",
    );
    const { rows } = await other.query('select name from items where id = 701');
    expect(rows).toEqual([{ name: 'alive' }]);
  });

  it('gives back the server connection of a client that left while it was being prepared for it', async () => {
    // Each client's own application_name must be set on the server connection before its query
    // runs; these clients send a query and vanish at once, while that happens.
    for (let i = 0; i < 30; i++) {
      const wire = await WireClient.open(proxy.port);
      await wire.login({
        user: 'postgres',
        password: proxy.password,
        database: 'app',
        parameters: { application_name: `leaver-${i}` },
      });
      const gone = disconnectsAfter(proxy);
      wire.write(serialize.query('select 1'));
      wire.destroy();
      await gone();
    }
    // Every server connection can still be had: ten clients at once hold all ten.
    const holders = await Promise.all(
      Array.from({ length: POOL }, () => connect(proxy.config('app'))),
    );
    const all = Promise.all(
      holders.map(async (c) => {
        await c.query('begin');
        return pidOf(c);
      }),
    );
    const pids = await Promise.race([
      all,
      sleep(5000).then(() => {
        throw new Error('fewer than ten server connections could be had within 5 s');
      }),
    ]);
    expect(new Set(pids).size).toBe(POOL);
    await Promise.all(holders.map((c) => c.query('commit')));
  });
});
