// Protocol fidelity: what a client says reaches its server session as it said it, what the server
// says reaches the client, and what the proxy can't serve is refused without disturbing anyone else.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import type { NoticeMessage } from 'pg-protocol/dist/messages.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect as connectClient, connectEndedAfterEachTest, psql } from './support/clients.js';
import { connectDirect, disconnectsAfter, leave } from './support/observe.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';
import {
  codePacket,
  fieldsOf,
  PROTOCOL_3_2,
  sendCancel,
  startupPacket,
  WireClient,
  type Message,
} from './support/wire-client.js';

const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;

let proxy: PgbranchProcess;
let direct: pg.Client;
let scratch: string;

beforeAll(async () => {
  proxy = await startPgbranch();
  expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
  direct = await connectDirect(proxy);
  scratch = tempDir('protocol');
});

afterAll(async () => {
  await direct?.end();
  await proxy?.stop();
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
});

const connect = connectEndedAfterEachTest();

interface BackendKey {
  processID: number;
  secretKey: number;
}

function keyOf(client: pg.Client): BackendKey {
  return client as unknown as BackendKey;
}

async function pidOf(client: pg.Client): Promise<number> {
  return (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
}

/** Waits until some server session is running this exact statement; returns its pid. */
async function runningPid(query: string): Promise<number> {
  return vi.waitFor(
    async () => {
      const { rows } = await direct.query<{ pid: number }>(
        "select pid from pg_stat_activity where query = $1 and state = 'active'",
        [query],
      );
      expect(rows).toHaveLength(1);
      return rows[0]!.pid;
    },
    { timeout: 10_000, interval: 20 },
  );
}

const SETTINGS = `select pg_backend_pid() as pid,
  current_setting('application_name') as application_name,
  current_setting('TimeZone') as timezone, current_setting('DateStyle') as datestyle,
  current_setting('search_path') as search_path, current_setting('work_mem') as work_mem,
  current_setting('statement_timeout') as statement_timeout,
  current_setting('client_encoding') as client_encoding`;

describe('startup parameters', () => {
  it('reach the server session exactly as psql sent them, also when it is reused', async () => {
    const env = {
      PGAPPNAME: 'proto-psql',
      PGTZ: 'Pacific/Chatham',
      PGDATESTYLE: 'SQL, DMY',
      PGOPTIONS: '-c search_path=custom,public -c work_mem=12MB -c statement_timeout=4321',
      PGCLIENTENCODING: 'LATIN1',
    };
    const expected = 'proto-psql|Pacific/Chatham|SQL, DMY|custom,public|12MB|4321ms|LATIN1';
    const gone = disconnectsAfter(proxy);
    const first = await psql(
      proxy.url('app'),
      `set application_name = 'changed'; set TimeZone = 'UTC'; set DateStyle = 'ISO';
       set search_path = public; set work_mem = '1MB'; set statement_timeout = 0;
       set client_encoding = 'UTF8'`,
      { env, args: ['-q', '-c', SETTINGS] },
    );
    expect(first.code).toBe(0);
    const [pid, ...settings] = first.stdout.split('|');
    expect(settings.join('|')).toBe(expected);
    await gone();

    const again = await psql(proxy.url('app'), SETTINGS, { env });
    expect(again).toMatchObject({ code: 0, stdout: `${pid}|${expected}` });
  });

  it('are restored on a reused server connection, and never shared with other parameters', async () => {
    const session = (name: string, zone: string, schema: string) => ({
      config: {
        ...proxy.config('app'),
        application_name: name,
        statement_timeout: 4321,
        options: `-c search_path=${schema},public -c work_mem=5MB -c TimeZone=${zone} -c DateStyle=German`,
      },
      expected: {
        application_name: name,
        timezone: zone,
        datestyle: 'German, DMY',
        search_path: `${schema},public`,
        work_mem: '5MB',
        statement_timeout: '4321ms',
        client_encoding: 'UTF8',
      },
    });
    const p = session('proto-p', 'Asia/Kathmandu', 'p_schema');
    const q = session('proto-q', 'America/St_Johns', 'q_schema');

    const first = await connect(p.config);
    const { pid, ...settings } = (await first.query(SETTINGS)).rows[0];
    expect(settings).toEqual(p.expected);
    await first.query(`set application_name = 'changed'; set TimeZone = 'UTC'; set DateStyle = 'ISO';
      set search_path = public; set work_mem = '1MB'; set statement_timeout = 0;
      set client_encoding = 'LATIN1'`);
    await leave(proxy, first);

    const again = await connect(p.config);
    expect((await again.query(SETTINGS)).rows[0]).toEqual({ pid, ...p.expected });
    await leave(proxy, again);

    const other = await connect(q.config);
    const { pid: otherPid, ...otherSettings } = (await other.query(SETTINGS)).rows[0];
    expect(otherPid).not.toBe(pid);
    expect(otherSettings).toEqual(q.expected);
  });
});

describe('messages from the server', () => {
  it('passes ParameterStatus through, at startup and when the client changes a reported setting', async () => {
    const client = new pg.Client({ ...proxy.config('app'), application_name: 'status' });
    const reported: [string, string][] = [];
    client.connection.on(
      'parameterStatus',
      (m: { parameterName: string; parameterValue: string }) =>
        reported.push([m.parameterName, m.parameterValue]),
    );
    connect.track(client);
    await client.connect();
    expect(Object.fromEntries(reported)).toMatchObject({
      application_name: 'status',
      server_version: expect.stringMatching(/^18\./),
      client_encoding: 'UTF8',
    });
    reported.length = 0;
    await client.query("set TimeZone = 'Asia/Kathmandu'");
    await client.query("set application_name = 'renamed'");
    expect(reported).toEqual([
      ['TimeZone', 'Asia/Kathmandu'],
      ['application_name', 'renamed'],
    ]);
  });

  it('passes NoticeResponse through to pg and to psql', async () => {
    const notice = `do $$ begin raise notice 'hello %', 42; end $$`;
    const client = await connect(proxy.config('app'));
    const notices: NoticeMessage[] = [];
    client.on('notice', (n) => notices.push(n));
    await client.query(notice);
    expect(notices).toMatchObject([{ severity: 'NOTICE', message: 'hello 42' }]);

    const result = await psql(proxy.url('app'), notice);
    expect(result).toMatchObject({ code: 0 });
    expect(result.stderr).toContain('NOTICE:  hello 42');
  });

  it('delivers NOTIFY from one client to another that LISTENs', async () => {
    const listener = await connect(proxy.config('app'));
    const notifier = await connect(proxy.config('app'));
    await listener.query('listen proto_events');
    const received = new Promise<pg.Notification>((resolve) =>
      listener.once('notification', resolve),
    );
    await notifier.query("select pg_notify('proto_events', 'hello from the other side')");
    expect(await received).toEqual({
      channel: 'proto_events',
      payload: 'hello from the other side',
      processId: await pidOf(notifier),
      name: 'notification',
      length: expect.any(Number),
    });
  });

  it('reports a session the server terminates as FATAL 57P01, closes it, and serves others', async () => {
    const victim = await connect(proxy.config('app'));
    const pid = await pidOf(victim);
    const error = new Promise<Error & { code?: string; severity?: string }>((resolve) =>
      victim.once('error', resolve),
    );
    const ended = new Promise<void>((resolve) => victim.once('end', resolve));
    await direct.query('select pg_terminate_backend($1)', [pid]);
    expect(await error).toMatchObject({ code: '57P01', severity: 'FATAL' });
    await ended;
    const next = await connect(proxy.config('app'));
    expect((await next.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
  });
});

describe('bulk traffic', () => {
  it('copies 50 MB in and out with psql \\copy, byte for byte', async () => {
    const input = path.join(scratch, 'in.tsv');
    const output = path.join(scratch, 'out.tsv');
    const rows = 400_000;
    const out = fs.createWriteStream(input);
    for (let start = 1; start <= rows; start += 10_000) {
      let chunk = '';
      for (let id = start; id < start + 10_000; id++) {
        chunk += `${id}\t${createHash('md5').update(String(id)).digest('hex').repeat(3)}\trow ${id}\n`;
      }
      out.write(chunk);
    }
    await new Promise((resolve) => out.end(resolve));
    expect(fs.statSync(input).size).toBeGreaterThan(45_000_000);

    expect(
      await psql(proxy.url('app'), 'create table bulk (id int, hash text, note text)'),
    ).toMatchObject({ code: 0 });
    const copyIn = await psql(proxy.url('app'), `\\copy bulk from '${input}'`);
    expect(copyIn).toMatchObject({ code: 0, stdout: `COPY ${rows}` });
    const copyOut = await psql(
      proxy.url('app'),
      `\\copy (select * from bulk order by id) to '${output}'`,
    );
    expect(copyOut).toMatchObject({ code: 0, stdout: `COPY ${rows}` });
    const digest = (file: string) =>
      createHash('sha256').update(fs.readFileSync(file)).digest('hex');
    expect(fs.statSync(output).size).toBe(fs.statSync(input).size);
    expect(digest(output)).toBe(digest(input));
  });

  it('streams a 2-million-row, 200 MB result to psql whole', async () => {
    const rows = 2_000_000;
    const child = spawn(
      'psql',
      [
        '-X',
        '-A',
        '-t',
        '-d',
        proxy.url('app'),
        '-c',
        `select i, repeat('x', 90) from generate_series(1, ${rows}) i`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let bytes = 0;
    let lines = 0;
    child.stdout.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      for (let i = chunk.indexOf(10); i >= 0; i = chunk.indexOf(10, i + 1)) lines++;
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    let expected = 0;
    for (let digits = 1, low = 1; low <= rows; digits++, low *= 10) {
      const count = Math.min(rows, low * 10 - 1) - low + 1;
      expected += count * (digits + 1 + 90 + 1);
    }
    expect(lines).toBe(rows);
    expect(bytes).toBe(expected);
  });

  it('answers queries pg issues before awaiting any, each with its own result, in order', async () => {
    const client = await connect(proxy.config('app'));
    const results = await Promise.all(
      Array.from({ length: 100 }, (_, i) => client.query('select $1::int * 2 as v', [i])),
    );
    expect(results.map((r) => r.rows[0].v)).toEqual(Array.from({ length: 100 }, (_, i) => i * 2));
  });

  it('answers a pipeline of 50 extended-protocol queries sent in one write, one failing', async () => {
    const { client } = await WireClient.connect(proxy.port, {
      user: 'postgres',
      password: proxy.password,
      database: 'app',
    });
    const batch: Buffer[] = [];
    for (let i = 0; i < 50; i++) {
      const text = i === 25 ? 'select 1 / $1::int' : 'select $1::int * 2';
      batch.push(
        serialize.parse({ text }),
        serialize.bind({ values: [i === 25 ? '0' : String(i)] }),
        serialize.execute({}),
        serialize.sync(),
      );
    }
    client.write(Buffer.concat(batch));
    const replies = await client.until('Z', 50);
    client.destroy();
    const outcomes: (string | number)[] = [];
    for (const m of replies) {
      if (m.type === 'D') outcomes.push(Number(m.body.toString('utf8', 6)));
      if (m.type === 'E') outcomes.push(fieldsOf(m).C!);
    }
    expect(outcomes).toEqual(Array.from({ length: 50 }, (_, i) => (i === 25 ? '22012' : i * 2)));
  });
});

describe('cancel requests', () => {
  it('cancels psql’s query on Ctrl-C, and the server session lives on for the next client', async () => {
    const sql = 'select pg_sleep(60)';
    const child = spawn('psql', ['-X', '-A', '-t', '-d', proxy.url('app'), '-c', sql], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
    const gone = disconnectsAfter(proxy);
    const pid = await runningPid(sql);
    const started = Date.now();
    child.kill('SIGINT');
    expect(await exited).toBe(1);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(stderr).toContain('ERROR:  canceling statement due to user request');
    await gone();
    const next = await psql(proxy.url('app'), 'select pg_backend_pid()');
    expect(next).toMatchObject({ code: 0, stdout: String(pid) });
  });

  it('cancels a pg client’s query with its BackendKeyData, and the session stays usable', async () => {
    const client = await connect(proxy.config('app'));
    const sql = 'select pg_sleep(60) as cancel_me';
    const query = client.query(sql).catch((error: { code?: string }) => error);
    await runningPid(sql);
    const started = Date.now();
    await sendCancel(proxy.port, keyOf(client).processID, keyOf(client).secretKey);
    expect(await query).toMatchObject({ code: '57014' });
    expect(Date.now() - started).toBeLessThan(5000);
    expect((await client.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
  });

  it('has delivered a cancel to the server by the time it closes the cancel connection', async () => {
    const client = await connect(proxy.config('app'));
    for (let i = 0; i < 5; i++) {
      // Nothing runs now: PostgreSQL ignores a cancel that finds the session idle...
      await sendCancel(proxy.port, keyOf(client).processID, keyOf(client).secretKey);
      // ...so it must not hit the query sent once the cancel request has been answered.
      expect((await client.query('select pg_sleep(0.1) as slept')).rows).toEqual([{ slept: '' }]);
    }
  });

  it('ignores a cancel request with the wrong secret', async () => {
    const client = await connect(proxy.config('app'));
    const sql = 'select pg_sleep(1) as keep_me';
    const query = client.query(sql);
    await runningPid(sql);
    await sendCancel(proxy.port, keyOf(client).processID, keyOf(client).secretKey ^ 1);
    expect((await query).rows).toEqual([{ keep_me: '' }]);
  });
});

describe('what the proxy cannot serve', () => {
  let healthy: pg.Client;
  let healthyPid: number;

  beforeAll(async () => {
    healthy = await connectClient({ ...proxy.config('app'), application_name: 'healthy' });
    healthyPid = await pidOf(healthy);
  });

  afterAll(async () => {
    await healthy?.end();
  });

  /** Runs `attempt` while the healthy client has a query in flight; both must finish. */
  async function besideHealthy<T>(attempt: () => Promise<T>): Promise<T> {
    const [result, rows] = await Promise.all([
      attempt(),
      healthy.query("select pg_sleep(0.2), 'fine' as state").then((r) => r.rows),
    ]);
    expect(rows).toEqual([{ pg_sleep: '', state: 'fine' }]);
    return result;
  }

  /** The messages the proxy answers `bytes` with, up to the close it must end with. */
  async function answerTo(bytes: Buffer): Promise<Message[]> {
    const wire = await WireClient.open(proxy.port);
    wire.write(bytes);
    const messages: Message[] = [];
    for (let m = await wire.next(); m; m = await wire.next()) messages.push(m);
    return messages;
  }

  it('answers SSLRequest with N, so psql connects with sslmode=prefer and fails with require', async () => {
    const prefer = await besideHealthy(() =>
      psql(`${proxy.url('app')}?sslmode=prefer`, 'select 1'),
    );
    expect(prefer).toMatchObject({ code: 0, stdout: '1' });
    const required = await psql(`${proxy.url('app')}?sslmode=require`, 'select 1');
    expect(required.code).not.toBe(0);
    expect(required.stderr).toContain('server does not support SSL, but SSL was required');
  });

  it('answers GSSENCRequest with N, so psql connects with gssencmode=prefer', async () => {
    const prefer = await besideHealthy(() =>
      psql(`${proxy.url('app')}?gssencmode=prefer`, 'select 1'),
    );
    expect(prefer).toMatchObject({ code: 0, stdout: '1' });
  });

  it('goes on to a normal login on the same socket after refusing both encryptions', async () => {
    const wire = await WireClient.open(proxy.port);
    wire.write(codePacket(GSSENC_REQUEST));
    expect(await wire.byte()).toBe('N');
    wire.write(codePacket(SSL_REQUEST));
    expect(await wire.byte()).toBe('N');
    await wire.login({ user: 'postgres', password: proxy.password, database: 'app' });
    wire.write(serialize.query('select 1'));
    expect((await wire.until('Z')).map((m) => m.type).join('')).toBe('TDCZ');
    wire.destroy();
  });

  it('refuses protocol 4.0 with 0A000, as PostgreSQL does, and closes', async () => {
    const answer = await besideHealthy(() =>
      answerTo(startupPacket(4 << 16, { user: 'postgres', database: 'app' })),
    );
    expect(answer.map((m) => m.type)).toEqual(['E']);
    expect(fieldsOf(answer[0]!)).toMatchObject({
      S: 'FATAL',
      C: '0A000',
      M: 'unsupported frontend protocol 4.0: server supports 3.0 to 3.2',
    });
  });

  it('serves a protocol 3.2 request at 3.2, refusing only its unknown _pq_ options', async () => {
    const wire = await WireClient.open(proxy.port);
    const login = await wire.login({
      user: 'postgres',
      password: proxy.password,
      database: 'app',
      version: PROTOCOL_3_2,
      parameters: { '_pq_.test_extension': 'on' },
    });
    const negotiate = login.find((m) => m.type === 'v');
    expect(negotiate).toBeDefined();
    expect(negotiate!.body.readInt32BE(0)).toBe((3 << 16) | 2);
    expect(negotiate!.body.readInt32BE(4)).toBe(1);
    expect(negotiate!.body.toString('utf8', 8)).toBe('_pq_.test_extension\0');
    // A 3.2 key: a 32-byte secret after the process id.
    expect(login.find((m) => m.type === 'K')!.body.length).toBe(36);
    wire.write(serialize.query('select 1'));
    expect((await wire.until('Z')).map((m) => m.type).join('')).toBe('TDCZ');
    wire.destroy();
  });

  const unterminated = startupPacket(3 << 16, { user: 'postgres' }).subarray(0, -1);
  unterminated.writeInt32BE(unterminated.length, 0);
  it.each([
    ['a length shorter than the length word', Buffer.from([0, 0, 0, 3, 0, 3, 0, 0])],
    ['a length over 10000 bytes', Buffer.from([0, 0, 0x4e, 0x21, 0, 3, 0, 0])],
  ])('closes a startup packet with %s without answering, as PostgreSQL does', async (_, packet) => {
    expect(await besideHealthy(() => answerTo(packet))).toEqual([]);
  });

  it('refuses a startup packet with no terminating zero byte with 08P01 and closes', async () => {
    const answer = await besideHealthy(() => answerTo(unterminated));
    expect(answer.map((m) => m.type)).toEqual(['E']);
    expect(fieldsOf(answer[0]!)).toMatchObject({ S: 'FATAL', C: '08P01' });
  });

  it('kept the session of a client connected all along on its server process throughout', async () => {
    expect(await pidOf(healthy)).toBe(healthyPid);
    expect((await healthy.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
  });
});
