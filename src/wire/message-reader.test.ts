import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, test } from 'vitest';
import { PgError } from '../errors.js';
import { ClientGone, MessageReader } from './message-reader.js';

/** A connected pair of real sockets: what the client writes, the reader on the server side reads. */
async function socketPair(): Promise<{ client: net.Socket; server: net.Socket }> {
  const listener = net.createServer();
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => listener.once('connection', resolve));
  const client = net.connect((listener.address() as net.AddressInfo).port, '127.0.0.1');
  client.on('error', () => undefined);
  const server = await accepted;
  listener.close();
  opened.push(client, server);
  return { client, server };
}

const opened: net.Socket[] = [];
afterEach(() => {
  for (const socket of opened.splice(0)) socket.destroy();
});

/** StartupMessage 3.0, user=admin. */
const startup = Buffer.from('0000001400030000757365720061646d696e0000', 'hex');

function password(text: string): Buffer {
  const body = Buffer.from(`${text}\0`);
  const out = Buffer.alloc(5 + body.length);
  out.write('p', 0, 'latin1');
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (error: unknown) => error,
  );
}

describe('MessageReader', () => {
  test('reads a startup packet and then typed messages, however the bytes are split', async () => {
    const { client, server } = await socketPair();
    const reader = new MessageReader(server);
    const bytes = Buffer.concat([startup, password('one'), password('two')]);
    for (let i = 0; i < bytes.length; i += 3) {
      client.write(bytes.subarray(i, i + 3));
      await sleep(1);
    }
    expect(await reader.nextStartupPacket(1000)).toEqual(startup);
    expect((await reader.nextMessage(1000, 'p')).body.toString()).toBe('one\0');
    expect((await reader.nextMessage(1000, 'p')).body.toString()).toBe('two\0');
  });

  test('refuses an unexpected message type or an impossible length with 08P01', async () => {
    const { client, server } = await socketPair();
    client.write(Buffer.concat([startup, Buffer.from('Q\0\0\0\x05x')]));
    const reader = new MessageReader(server);
    await reader.nextStartupPacket(1000);
    const wrongType = (await rejection(reader.nextMessage(1000, 'p'))) as PgError;
    expect([wrongType.code, wrongType.message]).toEqual(['08P01', "expected 'p' message, got 'Q'"]);

    const other = await socketPair();
    other.client.write(Buffer.from('p\x7f\0\0\0'));
    const tooLong = (await rejection(
      new MessageReader(other.server).nextMessage(1000, 'p'),
    )) as PgError;
    expect(tooLong.code).toBe('08P01');
  });

  test('the timeout covers the whole message: trickling bytes does not extend it', async () => {
    const { client, server } = await socketPair();
    const reader = new MessageReader(server);
    const long = Buffer.concat([startup.subarray(0, 16), Buffer.alloc(180, 0x61), Buffer.alloc(4)]);
    long.writeInt32BE(long.length, 0);
    const trickle = (async () => {
      for (let i = 0; i < long.length && !client.destroyed; i++) {
        client.write(long.subarray(i, i + 1));
        await sleep(10);
      }
    })();
    const started = Date.now();
    const error = (await rejection(reader.nextStartupPacket(200))) as PgError;
    expect(error.code).toBe('08006');
    expect(Date.now() - started).toBeLessThan(1000);
    client.destroy();
    await trickle;
  });

  test('says the client is gone when it closes before a whole message came', async () => {
    const { client, server } = await socketPair();
    const reader = new MessageReader(server);
    client.end(startup.subarray(0, 10));
    expect(await rejection(reader.nextStartupPacket(1000))).toBeInstanceOf(ClientGone);
  });

  test('stops reading a client that sends far ahead, and resumes as its messages are taken', async () => {
    const { client, server } = await socketPair();
    const reader = new MessageReader(server);
    const messages = 10_000;
    const ahead = Buffer.concat(
      Array.from({ length: messages }, (_, i) => password(`pw${i}`.padEnd(100, '.'))),
    );
    client.write(Buffer.concat([startup, ahead]));
    await reader.nextStartupPacket(1000);
    await sleep(100);
    expect(server.isPaused()).toBe(true);
    expect(server.bytesRead).toBeLessThan(ahead.length / 2);

    for (let i = 0; i < messages - 1; i++) {
      expect((await reader.nextMessage(1000, 'p')).body.toString()).toBe(
        `${`pw${i}`.padEnd(100, '.')}\0`,
      );
    }
    await sleep(50);
    const rest = reader.detach();
    expect(rest.equals(password(`pw${messages - 1}`.padEnd(100, '.')))).toBe(true);
  });

  test('takes over from an earlier reader: its leftover bytes first, then a socket it left paused', async () => {
    const { client, server } = await socketPair();
    const first = new MessageReader(server);
    const ahead = Buffer.concat(
      Array.from({ length: 2000 }, (_, i) => password(`pw${i}`.padEnd(100, '.'))),
    );
    client.write(Buffer.concat([startup, ahead]));
    await first.nextStartupPacket(1000);
    await sleep(100);
    expect(server.isPaused()).toBe(true);

    const second = new MessageReader(server, { pending: first.detach() });
    for (let i = 0; i < 2000; i++) {
      expect((await second.nextMessage(1000, 'p')).body.toString()).toBe(
        `${`pw${i}`.padEnd(100, '.')}\0`,
      );
    }
    expect(server.isPaused()).toBe(false);
  });

  test('with maxMessage and no deadline, waits for a long message of any type as long as the client stays', async () => {
    const { client, server } = await socketPair();
    const reader = new MessageReader(server, { maxMessage: 1024 * 1024 });
    const query = Buffer.alloc(5 + 200_000, 0x61);
    query.write('Q', 0, 'latin1');
    query.writeInt32BE(query.length - 1, 1);
    const next = reader.nextMessage(Infinity);
    client.write(query.subarray(0, 1000));
    await sleep(200);
    client.write(query.subarray(1000));
    const message = await next;
    expect([String.fromCharCode(message.type), message.body.length]).toEqual(['Q', 200_000]);

    client.end();
    expect(await rejection(reader.nextMessage(Infinity))).toBeInstanceOf(ClientGone);

    const other = await socketPair();
    other.client.write(Buffer.from('Q\0\x10\0\x05'));
    const tooLong = (await rejection(
      new MessageReader(other.server, { maxMessage: 1024 * 1024 }).nextMessage(Infinity),
    )) as PgError;
    expect([tooLong.code, tooLong.message]).toEqual(['08P01', 'invalid message length 1048581']);
  });
});
