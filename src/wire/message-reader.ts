// Reads whole packets from a client socket: during the startup phase (startup packet, then
// authentication messages), and for the SQL console after login. The relays read the socket
// themselves: they forward bytes rather than take whole messages.
import type net from 'node:net';
import { errors } from '../errors.js';
import { MAX_STARTUP_PACKET, startupPacketLength } from './startup.js';

/** Authentication messages are small; anything larger than this is an attack or a confused client. */
const MAX_AUTH_MESSAGE = 10_000;

export interface TypedMessage {
  type: number;
  body: Buffer;
}

export interface MessageReaderOptions {
  /** What an earlier reader of the socket took beyond its last message (its detach()). */
  pending?: Buffer;
  /** The longest typed message taken (length word and body); longer is a protocol violation. */
  maxMessage?: number;
}

export class MessageReader {
  private buffer: Buffer;
  private waiting: (() => void) | undefined;
  private ended: Error | undefined;
  private paused: boolean;
  private readonly maxMessage: number;
  /**
   * Unread bytes beyond which the socket is paused until they are taken. Larger than any message
   * allowed here, so a paused reader always holds a complete message (or a length it refuses),
   * while a client that floods the socket costs a bounded amount of memory and copying.
   */
  private readonly maxBuffered: number;
  private readonly onData = (chunk: Buffer) => {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    if (this.buffer.length >= this.maxBuffered && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
    this.wake();
  };
  private readonly onEnd = () => {
    this.ended ??= new ClientGone();
    this.wake();
  };

  constructor(
    private readonly socket: net.Socket,
    { pending = Buffer.alloc(0), maxMessage = MAX_AUTH_MESSAGE }: MessageReaderOptions = {},
  ) {
    this.buffer = pending;
    this.maxMessage = maxMessage;
    this.maxBuffered = 64 * 1024 + Math.max(MAX_STARTUP_PACKET, maxMessage + 1);
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onEnd);
    // A reader that takes over from another finds the socket as that one left it: maybe paused,
    // maybe already ended (whose events have gone by).
    if (socket.readableEnded || socket.destroyed) this.ended = new ClientGone();
    this.paused = socket.isPaused();
    this.resumeIfRoom();
  }

  /**
   * The next startup-phase packet (length word, then body; no type byte). The whole packet must
   * arrive within timeoutMs, however it is split, so that trickling bytes does not hold a
   * connection open.
   */
  async nextStartupPacket(timeoutMs: number): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const length = startupPacketLength(this.buffer);
      if (length !== undefined && this.buffer.length >= length) return this.take(length);
      await this.more(deadline, timeoutMs);
    }
  }

  /**
   * The next typed message, within timeoutMs as a whole (Infinity: for as long as the client
   * stays). `expected` names the types allowed here; without it, the caller judges the type.
   */
  async nextMessage(timeoutMs: number, expected?: string): Promise<TypedMessage> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.buffer.length >= 5) {
        const type = this.buffer[0]!;
        const length = this.buffer.readInt32BE(1);
        if (expected !== undefined && !expected.includes(String.fromCharCode(type))) {
          throw errors.protocolViolation(
            `expected ${[...expected].map((t) => `'${t}'`).join(' or ')} message, got '${printableType(type)}'`,
          );
        }
        if (length < 4 || length > this.maxMessage) {
          throw errors.protocolViolation(`invalid message length ${length}`);
        }
        if (this.buffer.length >= length + 1) {
          const packet = this.take(length + 1);
          return { type, body: packet.subarray(5) };
        }
      }
      await this.more(deadline, timeoutMs);
    }
  }

  /**
   * The first unread byte, left unread: waits up to timeoutMs for it. Tells a TLS handshake (direct
   * TLS) from a startup packet.
   */
  async peekByte(timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffer.length === 0) await this.more(deadline, timeoutMs);
    return this.buffer[0]!;
  }

  /** Bytes that arrived beyond the last packet taken. */
  get buffered(): number {
    return this.buffer.length;
  }

  /** Stops reading and returns what arrived beyond the last packet taken. */
  detach(): Buffer {
    this.socket.removeListener('data', this.onData);
    this.socket.removeListener('end', this.onEnd);
    this.socket.removeListener('close', this.onEnd);
    this.socket.removeListener('error', this.onEnd);
    // The socket stays paused if it was: whoever reads it next resumes it.
    const rest = this.buffer;
    this.buffer = Buffer.alloc(0);
    return rest;
  }

  private take(n: number): Buffer {
    const packet = this.buffer.subarray(0, n);
    this.buffer = this.buffer.subarray(n);
    this.resumeIfRoom();
    return packet;
  }

  private resumeIfRoom(): void {
    if (this.paused && this.buffer.length < this.maxBuffered) {
      this.paused = false;
      this.socket.resume();
    }
  }

  private more(deadline: number, timeoutMs: number): Promise<void> {
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      const timer =
        deadline === Infinity
          ? undefined
          : setTimeout(
              () => {
                this.waiting = undefined;
                reject(errors.incompleteMessage(timeoutMs));
              },
              Math.max(0, deadline - Date.now()),
            );
      this.waiting = () => {
        clearTimeout(timer);
        this.waiting = undefined;
        if (this.ended) reject(this.ended);
        else resolve();
      };
    });
  }

  private wake(): void {
    this.waiting?.();
  }
}

/** The client closed the connection; nothing to answer. */
export class ClientGone extends Error {
  constructor() {
    super('client closed the connection');
  }
}

function printableType(type: number): string {
  return type >= 0x20 && type < 0x7f ? String.fromCharCode(type) : `\\x${type.toString(16)}`;
}
