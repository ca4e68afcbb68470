// A client that speaks the wire protocol message by message, for what psql and node-postgres never
// send on their own: other protocol versions, malformed packets, pipelines, batches cut off halfway.
import { createRequire } from 'node:module';
import net from 'node:net';

export interface Message {
  /** The type byte as a character ('R', 'Z', 'E', ...). */
  type: string;
  body: Buffer;
}

interface ScramSession {
  response: string;
}
/** node-postgres's SCRAM client, so that raw connections log in exactly as pg does. */
const sasl = createRequire(import.meta.url)('pg/lib/crypto/sasl.js') as {
  startSession(mechanisms: string[]): ScramSession;
  continueSession(session: ScramSession, password: string, serverData: string): Promise<void>;
  finalizeSession(session: ScramSession, serverData: string): void;
};

export interface LoginOptions {
  user: string;
  password: string;
  database: string;
  /** (major << 16) | minor; 3.0 unless set. */
  version?: number;
  parameters?: Record<string, string>;
}

export const PROTOCOL_3_0 = 3 << 16;
export const PROTOCOL_3_2 = (3 << 16) | 2;

/** A StartupMessage (or any startup-phase packet) for `version` with these parameters. */
export function startupPacket(version: number, parameters: Record<string, string>): Buffer {
  const pairs = Object.entries(parameters).flatMap(([k, v]) => [k, v]);
  const body = Buffer.from(pairs.map((s) => `${s}\0`).join('') + '\0');
  const out = Buffer.alloc(8 + body.length);
  out.writeInt32BE(out.length, 0);
  out.writeInt32BE(version, 4);
  body.copy(out, 8);
  return out;
}

/** An 8-byte request with only a code: SSLRequest (80877103) or GSSENCRequest (80877104). */
export function codePacket(code: number): Buffer {
  const out = Buffer.alloc(8);
  out.writeInt32BE(8, 0);
  out.writeInt32BE(code, 4);
  return out;
}

/** A CancelRequest; a secret given as a number is the 4 bytes of protocol 3.0. */
export function cancelPacket(processId: number, secret: number | Buffer): Buffer {
  const key = typeof secret === 'number' ? Buffer.alloc(4) : secret;
  if (typeof secret === 'number') key.writeInt32BE(secret, 0);
  const out = Buffer.alloc(12 + key.length);
  out.writeInt32BE(out.length, 0);
  out.writeInt32BE(80877102, 4);
  out.writeInt32BE(processId, 8);
  key.copy(out, 12);
  return out;
}

/** The cancel key a login's BackendKeyData carried. */
export function backendKey(messages: Message[]): { processId: number; secret: Buffer } {
  const key = messages.find((m) => m.type === 'K');
  if (!key) throw new Error(`no BackendKeyData in ${describe(messages)}`);
  return { processId: key.body.readInt32BE(0), secret: Buffer.from(key.body.subarray(4)) };
}

/** Sends a CancelRequest on a connection of its own, as libpq and pg do; resolves once it is closed. */
export async function sendCancel(
  port: number,
  processId: number,
  secret: number | Buffer,
): Promise<void> {
  const wire = await WireClient.open(port);
  wire.write(cancelPacket(processId, secret));
  await wire.closed;
}

/** The fields of an ErrorResponse or NoticeResponse, by code: S, C, M, D, H... */
export function fieldsOf(message: Message): Record<string, string> {
  const fields: Record<string, string> = {};
  let i = 0;
  while (i < message.body.length && message.body[i] !== 0) {
    const end = message.body.indexOf(0, i + 1);
    fields[String.fromCharCode(message.body[i]!)] = message.body.toString('utf8', i + 1, end);
    i = end + 1;
  }
  return fields;
}

export class WireClient {
  private buffer = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  private ended = false;
  /** Resolves when the server has closed the connection (or it was destroyed). */
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.wake?.();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.ended = true;
        this.wake?.();
        resolve();
      }),
    );
  }

  /** A client on a socket the caller connected (a TLS socket, say). */
  static over(socket: net.Socket): WireClient {
    return new WireClient(socket);
  }

  static open(port: number): Promise<WireClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.removeListener('error', reject);
        resolve(new WireClient(socket));
      });
    });
  }

  /** Opens a connection and logs in: the client and what came up to the first ReadyForQuery. */
  static async connect(
    port: number,
    options: LoginOptions,
  ): Promise<{ client: WireClient; messages: Message[] }> {
    const client = await WireClient.open(port);
    return { client, messages: await client.login(options) };
  }

  /** Sends a StartupMessage and logs in with SCRAM; returns what came up to the first ReadyForQuery. */
  async login(options: LoginOptions): Promise<Message[]> {
    const messages = await this.authenticate(options);
    return [...messages, ...(await this.until('Z'))];
  }

  /** Sends a StartupMessage and answers SCRAM; returns what came up to AuthenticationOk. */
  async authenticate(options: LoginOptions): Promise<Message[]> {
    this.write(
      startupPacket(options.version ?? PROTOCOL_3_0, {
        user: options.user,
        database: options.database,
        ...options.parameters,
      }),
    );
    const messages: Message[] = [];
    let session: ScramSession | undefined;
    for (;;) {
      const message = await this.next();
      if (!message) throw new Error(`closed during login after ${describe(messages)}`);
      messages.push(message);
      if (message.type === 'E') throw new Error(`login failed: ${fieldsOf(message).M}`);
      if (message.type !== 'R') continue;
      const kind = message.body.readInt32BE(0);
      const data = message.body.subarray(4);
      if (kind === 0) return messages;
      if (kind === 10) {
        session = sasl.startSession(data.toString('utf8').split('\0').filter(Boolean));
        this.write(saslInitialResponse('SCRAM-SHA-256', session.response));
      } else if (kind === 11) {
        await sasl.continueSession(session!, options.password, data.toString('utf8'));
        this.write(typed('p', Buffer.from(session!.response)));
      } else if (kind === 12) {
        sasl.finalizeSession(session!, data.toString('utf8'));
      }
    }
  }

  write(bytes: Buffer | string): void {
    this.socket.write(bytes);
  }

  /** The next message, or undefined once the server has closed the connection. */
  async next(timeoutMs = 10_000): Promise<Message | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.buffer.length >= 5) {
        const length = this.buffer.readInt32BE(1);
        if (this.buffer.length >= length + 1) {
          const message = {
            type: String.fromCharCode(this.buffer[0]!),
            body: this.buffer.subarray(5, length + 1),
          };
          this.buffer = this.buffer.subarray(length + 1);
          return message;
        }
      }
      if (this.ended) return undefined;
      await this.more(deadline);
    }
  }

  /** One byte, as the answer to SSLRequest and GSSENCRequest comes. */
  async byte(timeoutMs = 10_000): Promise<string | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffer.length === 0) {
      if (this.ended) return undefined;
      await this.more(deadline);
    }
    const byte = String.fromCharCode(this.buffer[0]!);
    this.buffer = this.buffer.subarray(1);
    return byte;
  }

  /** Messages up to and including the `count`-th of type `type`. */
  async until(type: string, count = 1, timeoutMs = 10_000): Promise<Message[]> {
    const messages: Message[] = [];
    let seen = 0;
    while (seen < count) {
      const message = await this.next(timeoutMs);
      if (!message)
        throw new Error(`closed while waiting for '${type}' after ${describe(messages)}`);
      messages.push(message);
      if (message.type === type) seen++;
    }
    return messages;
  }

  /** Every byte not yet read, once the server has closed the connection. */
  async rest(): Promise<Buffer> {
    await this.closed;
    const rest = this.buffer;
    this.buffer = Buffer.alloc(0);
    return rest;
  }

  destroy(): void {
    this.socket.destroy();
  }

  private more(deadline: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.wake = undefined;
        reject(new Error('timed out waiting for the server'));
      }, deadline - Date.now());
      this.wake = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
    });
  }
}

function typed(type: string, body: Buffer): Buffer {
  const out = Buffer.alloc(5 + body.length);
  out.write(type, 0, 'latin1');
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

function saslInitialResponse(mechanism: string, response: string): Buffer {
  const data = Buffer.from(response);
  const length = Buffer.alloc(4);
  length.writeInt32BE(data.length, 0);
  return typed('p', Buffer.concat([Buffer.from(`${mechanism}\0`), length, data]));
}

function describe(messages: Message[]): string {
  return messages.map((m) => m.type).join('') || 'nothing';
}
