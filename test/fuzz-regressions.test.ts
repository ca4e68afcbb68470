// Inputs the protocol fuzzer (test/fuzz-protocol.test.ts, npm run fuzz) found mishandled, replayed
// byte for byte, each named by the seed and case that found it.
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';
import { fieldsOf, WireClient, type Message } from './support/wire-client.js';

let proxy: PgbranchProcess;

/** 'Q', length 9: "S" and four zero bytes. */
const QUERY_WITH_ZEROS = Buffer.from('51000000095300000000', 'hex');
const SYNC = Buffer.from('5300000004', 'hex');

beforeAll(async () => {
  proxy = await startPgbranch();
});

afterAll(async () => {
  await proxy?.stop();
});

/** Logs in to `database` with SCRAM, sends `input`, and returns what came up to ReadyForQuery. */
async function answerTo(
  database: string,
  input: Buffer,
): Promise<{ client: WireClient; messages: Message[] }> {
  const { client } = await WireClient.connect(proxy.port, {
    user: 'postgres',
    password: proxy.password,
    database,
  });
  client.write(input);
  return { client, messages: await client.until('Z') };
}

/** Checks an ErrorResponse's fields as a client reads them: each a code byte and one string. */
function wellFormed(message: Message): boolean {
  const body = message.body;
  let at = 0;
  while (at < body.length && body[at] !== 0) {
    if (!/[SVCMDHPpqWstcdnFLR]/.test(String.fromCharCode(body[at]!))) return false;
    const end = body.indexOf(0, at + 1);
    if (end < 0) return false;
    at = end + 1;
  }
  return at === body.length - 1;
}

describe('the SQL console under bad input', () => {
  // FUZZ_SEED=1920593447 FUZZ_CASE=27 (and 12 more cases of that run): a Query cut short after
  // "S", which the fuzzer completes with zero bytes to the length it claims. The console took the
  // whole body as the text and quoted "S\0\0\0" in its syntax error, whose zero bytes cut the
  // ErrorResponse's message field apart: a client read the rest as garbage fields.
  it('answers a Query with bytes after its terminator as PostgreSQL does: 08P01 invalid message format, and serves on', async () => {
    const input = Buffer.concat([QUERY_WITH_ZEROS, SYNC]);
    const { client, messages } = await answerTo('pgbranch', input);
    const error = messages.find((m) => m.type === 'E')!;
    expect(wellFormed(error)).toBe(true);
    expect(fieldsOf(error)).toMatchObject({ S: 'ERROR', C: '08P01', M: 'invalid message format' });
    // The Sync that followed in the same input gets its own ReadyForQuery.
    expect((await client.until('Z')).map((m) => m.type)).toEqual(['Z']);
    client.write(Buffer.from('510000001153484f572056455253494f4e00', 'hex')); // SHOW VERSION
    const version = await client.until('Z');
    expect(version.map((m) => m.type)).toEqual(['T', 'D', 'C', 'Z']);
    client.destroy();
  });

  it('answers a Query without a terminator with 08P01 invalid string in message', async () => {
    const input = Buffer.from('510000000853484f57', 'hex'); // 'Q', length 8: "SHOW" and no zero
    const { client, messages } = await answerTo('pgbranch', input);
    const error = messages.find((m) => m.type === 'E')!;
    expect(wellFormed(error)).toBe(true);
    expect(fieldsOf(error)).toMatchObject({ C: '08P01', M: 'invalid string in message' });
    client.destroy();
  });

  it('says what PostgreSQL says to the first', async () => {
    const { client, messages } = await answerTo('postgres', QUERY_WITH_ZEROS);
    expect(fieldsOf(messages.find((m) => m.type === 'E')!)).toMatchObject({
      C: '08P01',
      M: 'invalid message format',
    });
    client.destroy();
  });
});

describe('transaction mode under bad input', () => {
  // FUZZ_SEED=20261207 FUZZ_CASE=92977 (a race: it needs the result in flight): a message whose
  // length word is over the limit, sent while the answer to an earlier query was half forwarded.
  // pgbranch wrote its FATAL error into the middle of a DataRow and closed: the client read a
  // truncated DataRow that swallowed the error.
  it('refuses a message of impossible length sent while a result is half forwarded only after that result message, so the client reads whole messages then the error', async () => {
    const { client } = await WireClient.connect(proxy.port, {
      user: 'postgres',
      password: proxy.password,
      database: 'postgres',
      parameters: { options: '-c pgbranch.pool_mode=transaction' },
    });
    const sql = Buffer.from("select repeat('x', 1000) from generate_series(1, 200000)\0");
    const length = Buffer.alloc(4);
    length.writeInt32BE(4 + sql.length, 0);
    client.socket.pause();
    client.write(Buffer.concat([Buffer.from('Q'), length, sql]));
    // The result fills the socket buffers and pgbranch pauses the server in the middle of it.
    await sleep(1_500);
    client.write(Buffer.from([0x00, 0x66, 0, 0, 0])); // a message claiming 1.7 GB
    await sleep(500);
    client.socket.resume();
    let last: Message | undefined;
    for (let m = await client.next(); m; m = await client.next()) last = m;
    expect(last && fieldsOf(last)).toMatchObject({ S: 'FATAL', C: '08P01' });
    expect((await client.rest()).length).toBe(0);
  });
});

describe('PostgreSQL crashing under a client input', () => {
  // FUZZ_SEED=20261207 FUZZ_CASE=109855 and 127284: the two bursts of refused logins of a
  // 400,000-input run. Not pgbranch: PostgreSQL 18.4 itself dies of a segmentation fault on an
  // Execute of the unnamed portal in a transaction block that an error aborted, and its postmaster
  // then ends every session and recovers (logins meanwhile get 57P03). Case 109855, cut down to
  // what still crashes it: a savepoint command fails in a transaction block, a Query of two
  // statements is refused as the transaction is aborted, then the Execute; PostgreSQL 15 answers
  // the same bytes with errors. Case 127284 (a Parse refused in an aborted transaction, Sync, then
  // the Execute) crashes an external PostgreSQL 18.4 upstream too. The fuzzer counts such crashes
  // apart from pgbranch's failures and names the case that causes each (fuzz-harness.ts).
  const CRASHING_INPUT = Buffer.concat([
    Buffer.from('510000000a626567696e00', 'hex'), // Query "begin"
    Buffer.from('5100000013726f6c6c6261636b20746f20733100', 'hex'), // Query "rollback to s1"
    Buffer.from('510000001773656c65637420313b2073656c656374203200', 'hex'), // "select 1; select 2"
    Buffer.from('45000000090000000000', 'hex'), // Execute, unnamed portal, all rows
    SYNC,
  ]);

  /** The checkpointer's process id: a new one means the postmaster went through crash recovery. */
  async function checkpointer(): Promise<number> {
    const client = new pg.Client({ connectionString: proxy.directUrl('postgres') });
    client.on('error', () => undefined);
    await client.connect();
    try {
      const { rows } = await client.query<{ pid: number }>(
        "select pid from pg_stat_activity where backend_type = 'checkpointer'",
      );
      return rows[0]!.pid;
    } finally {
      await client.end();
    }
  }

  /** Waits until the server takes connections again and returns its checkpointer. */
  function recovered(): Promise<number> {
    return vi.waitFor(() => checkpointer(), { timeout: 60_000, interval: 100 });
  }

  it('tells the client whose input crashed it 08006, its other session clients the server’s 57P02 warning and 08006, and serves everyone again once it has recovered, without a restart', async () => {
    const before = await checkpointer();
    const bystanders = {
      session: await connect(proxy.config('postgres')),
      transaction: await connect({
        ...proxy.config('postgres'),
        options: '-c pgbranch.pool_mode=transaction',
      }),
    };
    const ended: Record<string, string | undefined> = {};
    const warned: Record<string, string | undefined> = {};
    for (const [mode, client] of Object.entries(bystanders)) {
      client.on('error', (error) => (ended[mode] ??= (error as { code?: string }).code));
      client.on('notice', (notice) => (warned[mode] ??= notice.code));
      await client.query('select 1');
    }
    const { client } = await WireClient.connect(proxy.port, {
      user: 'postgres',
      password: proxy.password,
      database: 'postgres',
    });
    client.write(CRASHING_INPUT);
    const answers: Message[] = [];
    for (let m = await client.next(); m; m = await client.next()) answers.push(m);
    // begin, the savepoint's error, the refused Query: each with ReadyForQuery; then pgbranch's
    // own 08006, as the server closed without a word.
    expect(answers.map((m) => m.type).join('')).toBe('CZEZEZE');
    expect(fieldsOf(answers.at(-1)!)).toMatchObject({
      S: 'FATAL',
      C: '08006',
      M: 'pgbranch could not reach the PostgreSQL server: the server closed the connection unexpectedly',
    });

    expect(await recovered()).not.toBe(before);
    // The session client's server session was ended by the postmaster, which warned why (57P02,
    // a WARNING, as PostgreSQL sends it); pgbranch then says the server closed the connection.
    await vi.waitFor(() => expect(ended.session).toBe('08006'));
    expect(warned.session).toBe('57P02');
    await bystanders.session.end().catch(() => undefined);
    // The transaction-mode client held no server connection: it goes on as if nothing happened.
    expect((await bystanders.transaction.query('select 2 as two')).rows).toEqual([{ two: 2 }]);
    expect(ended.transaction).toBeUndefined();
    await bystanders.transaction.end();
    const later = await connect(proxy.config('postgres'));
    expect((await later.query('select 3 as three')).rows).toEqual([{ three: 3 }]);
    await later.end();
    expect(proxy.child.exitCode).toBeNull();
  });

  it('is PostgreSQL’s own crash: the same bytes sent straight to the server crash it too', async () => {
    const before = await checkpointer();
    const port = Number(new URL(proxy.directUrl('postgres')).port);
    const { client } = await WireClient.connect(port, {
      user: 'postgres',
      password: proxy.password,
      database: 'postgres',
    });
    client.write(CRASHING_INPUT);
    const answers: Message[] = [];
    for (let m = await client.next(); m; m = await client.next()) answers.push(m);
    // No answer to the Execute: the backend died.
    expect(answers.map((m) => m.type).join('')).toBe('CZEZEZ');
    expect(await recovered()).not.toBe(before);
  });
});
