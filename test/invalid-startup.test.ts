// Invalid startup input answered as PostgreSQL 18 answers it (ProcessStartupPacket): what breaks
// the framing is closed without a byte and only logged, as PostgreSQL's COMMERROR; what is framed
// but wrong gets PostgreSQL's FATAL error, in its words. Either way nobody else notices.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect, queryOnce } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';
import {
  codePacket,
  fieldsOf,
  PROTOCOL_3_0,
  startupPacket,
  WireClient,
} from './support/wire-client.js';

const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;
const CANCEL_REQUEST = 80877102;
/** What node-postgres sends when a client is ended before its startup packet: Terminate. */
const TERMINATE = Buffer.from([0x58, 0, 0, 0, 4]);

let proxy: PgbranchProcess;
let steady: pg.Client;
let steadyPid: number;

beforeAll(async () => {
  proxy = await startPgbranch();
  steady = await connect(proxy.config('postgres'));
  steadyPid = await pidOf(steady);
});

afterAll(async () => {
  await steady?.end();
  await proxy?.stop();
});

async function pidOf(client: pg.Client): Promise<number> {
  return (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
}

/** Sends `bytes` on a connection of its own; everything the proxy sent before it closed. */
async function answerTo(bytes: Buffer): Promise<Buffer> {
  const wire = await WireClient.open(proxy.port);
  wire.write(bytes);
  return wire.rest();
}

/** The reasons of the client_dropped log lines so far. */
function drops(): unknown[] {
  return proxy.events('client_dropped').map((entry) => entry.reason);
}

/** Waits until the proxy has logged `count` client_dropped lines. */
async function dropsLogged(count: number): Promise<unknown[]> {
  await vi.waitFor(() => expect(drops().length).toBeGreaterThanOrEqual(count), {
    timeout: 10_000,
    interval: 20,
  });
  return drops();
}

/** The proxy still serves: the steady client on its own session, and a client new now. */
async function stillServing(): Promise<void> {
  expect(await pidOf(steady)).toBe(steadyPid);
  expect(await queryOnce(proxy.url('postgres'), 'select 1 as one')).toEqual([{ one: 1 }]);
}

function cancelRequest(length: number): Buffer {
  const bytes = Buffer.alloc(length);
  bytes.writeInt32BE(length, 0);
  bytes.writeInt32BE(CANCEL_REQUEST, 4);
  return bytes;
}

describe('input that breaks the framing: closed without a byte, and logged', () => {
  it('closes a connection that sends Terminate before any startup packet without answering', async () => {
    const before = drops().length;
    expect(await answerTo(TERMINATE)).toEqual(Buffer.alloc(0));
    expect((await dropsLogged(before + 1)).slice(before)).toEqual([
      'invalid length of startup packet: 1476395008',
    ]);
    expect(proxy.events('client_dropped').at(-1)).toMatchObject({
      level: 30,
      code: '08P01',
      msg: 'closed a connection without an answer: invalid length of startup packet: 1476395008',
    });
    await stillServing();
  });

  it.each([0, 4, 7, -1, 10_005, 0x7fffffff])(
    'closes a startup packet of length %i without answering, and logs the length',
    async (length) => {
      const before = drops().length;
      const bytes = startupPacket(PROTOCOL_3_0, { user: 'postgres' });
      bytes.writeInt32BE(length, 0);
      expect(await answerTo(bytes)).toEqual(Buffer.alloc(0));
      expect((await dropsLogged(before + 1)).slice(before)).toEqual([
        `invalid length of startup packet: ${length}`,
      ]);
      await stillServing();
    },
  );

  it('lets a node-postgres client ended before it connected go without an error, as PostgreSQL does', async () => {
    const before = drops().length;
    const client = new pg.Client(proxy.config('postgres'));
    const errors: Error[] = [];
    client.on('error', (error) => errors.push(error));
    let connected: unknown = 'pending';
    client.connect().then(
      () => (connected = 'connected'),
      (error: unknown) => (connected = error),
    );
    // Before the TCP connection is up: pg sends Terminate ahead of its startup packet.
    await client.end();
    // Against PostgreSQL, connect() never settles here; it must not fail with the proxy's error,
    // which would have come before the close that end() waited for.
    expect(connected).not.toBeInstanceOf(Error);
    expect(errors).toEqual([]);
    expect((await dropsLogged(before + 1)).slice(before)).toEqual([
      'invalid length of startup packet: 1476395008',
    ]);
    await stillServing();
  });

  it.each([
    ['no process id', 11, 'invalid length of cancel request packet: 11'],
    ['no secret', 12, 'invalid length of cancel key in cancel request packet: 0 bytes'],
    [
      'a 257-byte secret',
      12 + 257,
      'invalid length of cancel key in cancel request packet: 257 bytes',
    ],
  ])(
    'closes a CancelRequest with %s without answering, and logs why',
    async (_, length, reason) => {
      const before = drops().length;
      expect(await answerTo(cancelRequest(length))).toEqual(Buffer.alloc(0));
      expect((await dropsLogged(before + 1)).slice(before)).toEqual([reason]);
    },
  );

  it('logs a startup packet the client cut off, but not a connection that sent nothing', async () => {
    const before = drops().length;
    // Nothing at all, as monitors and port scanners do: no line.
    const silent = await WireClient.open(proxy.port);
    silent.socket.end();
    expect(await silent.rest()).toEqual(Buffer.alloc(0));
    // A length word cut off after an SSLRequest was refused (the client disliked the N): no line.
    const refused = await WireClient.open(proxy.port);
    refused.write(codePacket(SSL_REQUEST));
    expect(await refused.byte()).toBe('N');
    refused.socket.end(Buffer.from([0, 0]));
    expect(await refused.rest()).toEqual(Buffer.alloc(0));
    // Ten bytes of a startup packet: a line. Lines come in order, so when it is there, any line
    // of the two before it would be too.
    const cut = await WireClient.open(proxy.port);
    cut.socket.end(startupPacket(PROTOCOL_3_0, { user: 'postgres' }).subarray(0, 10));
    expect(await cut.rest()).toEqual(Buffer.alloc(0));
    expect((await dropsLogged(before + 1)).slice(before)).toEqual([
      'incomplete startup packet: the client closed the connection after 10 bytes of it',
    ]);
  });
});

describe('input that is framed but wrong: PostgreSQL’s FATAL error', () => {
  it('takes a startup packet of 10,004 bytes, PostgreSQL’s limit (10,000 after the length word)', async () => {
    const parameters: Record<string, string> = { user: 'postgres', database: 'postgres' };
    const filler = 10_004 - startupPacket(PROTOCOL_3_0, { ...parameters, a: '' }).length;
    const bytes = startupPacket(PROTOCOL_3_0, { ...parameters, a: 'x'.repeat(filler) });
    expect(bytes.length).toBe(10_004);
    const wire = await WireClient.open(proxy.port);
    wire.write(bytes);
    // Asked for its password: the packet was read, not refused.
    expect((await wire.next())?.type).toBe('R');
    wire.destroy();
  });

  it('refuses protocol 4.0 with 0A000 in PostgreSQL’s words', async () => {
    const wire = await WireClient.open(proxy.port);
    wire.write(startupPacket(4 << 16, { user: 'postgres' }));
    const error = await wire.next();
    expect(error?.type).toBe('E');
    expect(fieldsOf(error!)).toMatchObject({
      S: 'FATAL',
      C: '0A000',
      M: 'unsupported frontend protocol 4.0: server supports 3.0 to 3.2',
    });
    expect(await wire.rest()).toEqual(Buffer.alloc(0));
    await stillServing();
  });

  it('refuses protocol 2.0 with an error in protocol 2’s form, as PostgreSQL does', async () => {
    const answer = await answerTo(startupPacket(2 << 16, { user: 'postgres' }));
    expect(answer.toString('latin1')).toBe(
      'EFATAL:  unsupported frontend protocol 2.0: server supports 3.0 to 3.2\n\0',
    );
  });

  it('answers an encryption request that has a body N, as PostgreSQL does, and logs in after it', async () => {
    const wire = await WireClient.open(proxy.port);
    wire.write(startupPacket(SSL_REQUEST, { ignored: 'body' }));
    expect(await wire.byte()).toBe('N');
    wire.write(startupPacket(GSSENC_REQUEST, {}));
    expect(await wire.byte()).toBe('N');
    const login = await wire.login({
      user: 'postgres',
      password: proxy.password,
      database: 'postgres',
    });
    expect(login.at(-1)?.type).toBe('Z');
    wire.destroy();
  });

  it.each([
    ['SSLRequest', SSL_REQUEST, '1234.5679'],
    ['GSSENCRequest', GSSENC_REQUEST, '1234.5680'],
  ])('refuses a second %s as the protocol version its code is, with 0A000', async (_, code, v) => {
    const wire = await WireClient.open(proxy.port);
    wire.write(codePacket(code));
    expect(await wire.byte()).toBe('N');
    wire.write(codePacket(code));
    expect(fieldsOf((await wire.next())!)).toMatchObject({
      C: '0A000',
      M: `unsupported frontend protocol ${v}: server supports 3.0 to 3.2`,
    });
    expect(await wire.rest()).toEqual(Buffer.alloc(0));
  });

  it('refuses bytes sent along with an SSLRequest, before its answer, with 08P01', async () => {
    const wire = await WireClient.open(proxy.port);
    wire.write(
      Buffer.concat([
        codePacket(SSL_REQUEST),
        startupPacket(PROTOCOL_3_0, { user: 'postgres', database: 'postgres' }),
      ]),
    );
    expect(await wire.byte()).toBe('N');
    expect(fieldsOf((await wire.next())!)).toMatchObject({
      S: 'FATAL',
      C: '08P01',
      M: 'received unencrypted data after SSL request',
      D: 'This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.',
    });
    await stillServing();
  });

  it('refuses a startup packet whose layout is wrong with PostgreSQL’s message, the detail in the log', async () => {
    const bytes = Buffer.concat([
      startupPacket(PROTOCOL_3_0, { user: 'postgres' }),
      Buffer.from('x'),
    ]);
    bytes.writeInt32BE(bytes.length, 0);
    const wire = await WireClient.open(proxy.port);
    wire.write(bytes);
    expect(fieldsOf((await wire.next())!)).toMatchObject({
      C: '08P01',
      M: 'invalid startup packet layout: expected terminator as last byte',
    });
    await vi.waitFor(() =>
      expect(proxy.events('client_refused')).toContainEqual(
        expect.objectContaining({
          reason: 'invalid startup packet layout: data after the terminator',
        }),
      ),
    );
  });
});
