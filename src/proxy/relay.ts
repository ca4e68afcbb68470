// Session mode: copy bytes between a client and its server connection as they arrive, while
// frame scanners note message boundaries, so that when the client leaves the server connection can
// be brought back to a clean, idle state and pooled, or closed when that is not possible.
import type net from 'node:net';
import { FrameScanner, TERMINATE } from '../wire/frames.js';
import { abortBatch, copyFail, query } from '../wire/frontend.js';
import { databaseNeeded, startsWithDdl } from './statement-effects.js';

const QUERY = 0x51; // 'Q'
const FUNCTION_CALL = 0x46; // 'F'
const SYNC = 0x53; // 'S'
const ERROR = 0x45; // 'E'
const COPY_IN = 0x47; // 'G'
const COPY_BOTH = 0x57; // 'W'
const STATUS_IDLE = 0x49; // 'I'

/** Client to server: counts the messages that each end in one ReadyForQuery. */
class ClientFrames extends FrameScanner {
  /** Query, FunctionCall and Sync messages sent whose ReadyForQuery has not come back yet. */
  pending = 0;
  /** Query, FunctionCall and Sync messages sent in all. */
  sent = 0;
  /** Extended-protocol messages sent since the last Sync. */
  unsynced = false;
  /** Called with a database that a simple query needs to itself, and that query's number. */
  onDatabaseNeeded: ((database: string, batch: number) => void) | undefined;
  protected override onFrame(type: number, length: number, chunk: Buffer, at: number): void {
    if (type === QUERY || type === FUNCTION_CALL) {
      this.pending++;
      this.sent++;
      // DROP DATABASE and the like: only whole queries in this chunk are looked at (DDL is short).
      const end = at + length - 5;
      if (type === QUERY && this.onDatabaseNeeded && end <= chunk.length) {
        if (startsWithDdl(chunk, at, end)) {
          const database = databaseNeeded(chunk.toString('utf8', at, end));
          if (database !== undefined) this.onDatabaseNeeded(database, this.sent);
        }
      }
    } else if (type === SYNC) {
      this.pending++;
      this.sent++;
      this.unsynced = false;
    } else if (type >= 0x42 && type <= 0x50 && EXTENDED[type - 0x42]) this.unsynced = true;
  }
}

/** 'B' Bind, 'C' Close, 'D' Describe, 'E' Execute, 'H' Flush, 'P' Parse start an unsynced batch. */
const EXTENDED = (() => {
  const table = new Array<boolean>(0x50 - 0x42 + 1).fill(false);
  for (const c of 'BCDEHP') table[c.charCodeAt(0) - 0x42] = true;
  return table;
})();

/** Server to client: ReadyForQuery count, COPY state, and the last message's type. */
class ServerFrames extends FrameScanner {
  constructor(private readonly client: ClientFrames) {
    super();
  }
  copyIn = false;
  /** COPY BOTH (replication) can't be ended from outside: such a connection is never reused. */
  copyBoth = false;
  lastType = 0;
  /** ErrorResponses seen since the counter was last cleared. */
  errors = 0;
  malformed = false;
  protected override onFrame(type: number): void {
    this.lastType = type;
    if (type === COPY_IN) this.copyIn = true;
    else if (type === COPY_BOTH) this.copyBoth = true;
    else if (type === ERROR) this.errors++;
  }
  /** ReadyForQuery messages received in all. */
  readies = 0;
  /** Called at each ReadyForQuery while some database is held (see ClientFrames). */
  onReadyWhileHeld: (() => void) | undefined;
  protected override onReady(): void {
    this.copyIn = false;
    this.readies++;
    if (this.client.pending > 0) this.client.pending--;
    this.onReadyWhileHeld?.();
  }
  protected override onMalformed(): void {
    this.malformed = true;
  }
}

export type RelayEnd =
  | { by: 'client' }
  | { by: 'server'; atBoundary: boolean; lastType: number }
  | { by: 'error'; error: Error };

/**
 * Relays until either side leaves. Resolves with who ended it; the caller then resets or closes
 * the server connection with resetForReuse().
 */
export class SessionRelay {
  private readonly clientFrames = new ClientFrames();
  private readonly serverFrames = new ServerFrames(this.clientFrames);
  private finished = false;
  private resolveEnd!: (end: RelayEnd) => void;
  readonly ended: Promise<RelayEnd> = new Promise((resolve) => (this.resolveEnd = resolve));

  /** Called once the client is idle outside a transaction (see whenIdle). */
  private onIdle: (() => void) | undefined;

  /** Databases kept free of pgbranch's connections until query `until` is answered. */
  private readonly databaseHolds: { until: number; end: () => void }[] = [];

  constructor(
    private readonly client: net.Socket,
    private readonly server: net.Socket,
    /** Bytes the client sent right after authenticating, before the relay started. */
    pending: Buffer,
    /**
     * A query needs `database` to itself (DROP DATABASE...): returns what ends pgbranch keeping
     * its connections off it, called once the query is answered.
     */
    onDatabaseNeeded: (database: string) => () => void,
  ) {
    this.clientFrames.onDatabaseNeeded = (database, until) => {
      this.databaseHolds.push({ until, end: onDatabaseNeeded(database) });
      this.serverFrames.onReadyWhileHeld = this.endDatabaseHolds;
    };
    client.on('data', this.fromClient);
    server.on('data', this.fromServer);
    client.on('drain', this.resumeServer);
    server.on('drain', this.resumeClient);
    client.on('end', this.clientEnded);
    client.on('close', this.clientEnded);
    client.on('error', this.clientEnded);
    server.on('close', this.serverEnded);
    server.on('error', this.serverEnded);
    server.resume();
    client.resume();
    // A client can leave while it waits for a server connection; its 'close' has been and gone.
    if (client.destroyed || client.readableEnded) this.clientEnded();
    else if (pending.length > 0) this.fromClient(pending);
  }

  private readonly fromClient = (chunk: Buffer): void => {
    if (this.finished) return;
    const stop = this.clientFrames.scan(chunk, TERMINATE);
    if (stop < 0) {
      if (!this.server.write(chunk)) this.client.pause();
      return;
    }
    if (stop > 0) this.server.write(chunk.subarray(0, stop));
    // Terminate is for us: the server connection stays open for the next client.
    this.finish({ by: 'client' });
  };

  private readonly fromServer = (chunk: Buffer): void => {
    if (this.finished) return;
    this.serverFrames.scan(chunk);
    if (!this.client.write(chunk)) this.server.pause();
    if (this.onIdle) this.checkIdle();
  };

  /**
   * Calls `then` once the client is outside a transaction with nothing on its way: at once if it
   * is now, else after the ReadyForQuery that ends its transaction has reached it.
   */
  whenIdle(then: () => void): void {
    this.onIdle = then;
    this.checkIdle();
  }

  private checkIdle(): void {
    const client = this.clientFrames;
    const server = this.serverFrames;
    const idle =
      client.pending === 0 &&
      !client.unsynced &&
      client.atBoundary &&
      server.atBoundary &&
      !server.copyIn &&
      (server.readyStatus === STATUS_IDLE || server.readyStatus === 0);
    if (!idle || this.finished || !this.onIdle) return;
    const then = this.onIdle;
    this.onIdle = undefined;
    then();
  }

  private readonly resumeServer = (): void => {
    if (!this.finished) this.server.resume();
  };
  private readonly resumeClient = (): void => {
    if (!this.finished) this.client.resume();
  };

  private readonly clientEnded = (): void => {
    this.finish({ by: 'client' });
  };

  private readonly serverEnded = (): void => {
    this.finish({
      by: 'server',
      atBoundary: this.serverFrames.atBoundary,
      lastType: this.serverFrames.lastType,
    });
  };

  private readonly endDatabaseHolds = (): void => {
    const holds = this.databaseHolds;
    const done = this.finished ? Infinity : this.serverFrames.readies;
    for (let i = holds.length - 1; i >= 0; i--) {
      if (holds[i]!.until <= done) holds.splice(i, 1)[0]!.end();
    }
    if (holds.length === 0) this.serverFrames.onReadyWhileHeld = undefined;
  };

  private finish(end: RelayEnd): void {
    if (this.finished) return;
    this.finished = true;
    this.endDatabaseHolds();
    this.client.removeListener('data', this.fromClient);
    this.server.removeListener('data', this.fromServer);
    this.client.removeListener('drain', this.resumeServer);
    this.server.removeListener('drain', this.resumeClient);
    this.client.removeListener('end', this.clientEnded);
    this.client.removeListener('close', this.clientEnded);
    this.client.removeListener('error', this.clientEnded);
    this.server.removeListener('close', this.serverEnded);
    this.server.removeListener('error', this.serverEnded);
    this.resolveEnd(end);
  }

  /**
   * After the client left: ends whatever it left half done (COPY, an unsynced batch, an open
   * transaction), then DISCARD ALL. Resolves true when the server connection is idle and clean.
   */
  async resetForReuse(timeoutMs: number): Promise<boolean> {
    const client = this.clientFrames;
    const server = this.serverFrames;
    if (!client.atBoundary || server.copyBoth || server.malformed || this.server.destroyed) {
      return false;
    }
    const socket = this.server;
    return new Promise<boolean>((resolve) => {
      let step: 'drain' | 'rollback' | 'discard' = 'drain';
      const done = (clean: boolean) => {
        clearTimeout(timer);
        socket.removeListener('data', onData);
        socket.removeListener('close', onGone);
        socket.removeListener('error', onGone);
        socket.pause();
        resolve(clean);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      const onGone = () => done(false);
      const advance = () => {
        if (client.pending > 0 || !server.atBoundary) return;
        if (step === 'drain') {
          if (server.readyStatus !== STATUS_IDLE && server.readyStatus !== 0) {
            step = 'rollback';
            client.pending++;
            socket.write(query('ROLLBACK'));
            return;
          }
          step = 'rollback';
        }
        if (step === 'rollback') {
          step = 'discard';
          server.errors = 0;
          client.pending++;
          socket.write(query('DISCARD ALL'));
          return;
        }
        done(server.errors === 0 && server.readyStatus === STATUS_IDLE);
      };
      const onData = (chunk: Buffer) => {
        server.scan(chunk);
        advance();
      };
      socket.on('data', onData);
      socket.on('close', onGone);
      socket.on('error', onGone);
      socket.resume();
      if (server.copyIn) socket.write(copyFail('client disconnected'));
      if (client.unsynced) {
        // Sync alone would commit what the batch did; PostgreSQL rolls back a departed client's work.
        client.pending++;
        socket.write(abortBatch());
      }
      advance();
    });
  }
}
