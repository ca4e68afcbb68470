// A replication connection to a source (`replication=true`: a walsender answers): pgbranch's own
// client of the replication protocol, since the embedded PostgreSQL ships no pg_basebackup.
// Commands run one at a time and return their result sets as text; BASE_BACKUP streams archive
// bytes to a sink straight from the socket's read buffer, and the socket pauses while the sink
// catches up, so a slow disk slows the source's walsender instead of filling memory.
import type net from 'node:net';
import { serialize } from 'pg-protocol';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { Parser } from 'pg-protocol/dist/parser.js';
import { md5Response, md5StoredHash } from '../auth/md5.js';
import { ScramClientExchange } from '../auth/scram.js';
import { ServerError } from '../upstream/server-connection.js';
import { startupMessage } from '../wire/frontend.js';
import { parseLsn, type Lsn } from './lsn.js';
import { openSourceSocket, type SourceSocket } from './source-socket.js';
import { describeSource, type SourceTarget } from './source-url.js';

/** One result set of a command: column names and rows of text values. */
export interface ResultSet {
  columns: string[];
  rows: (string | null)[][];
}

export interface SystemIdentity {
  /** The cluster's system identifier: the same on a primary and all its standbys. */
  systemId: string;
  timeline: number;
  /** The source's current WAL position: flushed on a primary, replayed on a standby. */
  xlogpos: Lsn;
}

export interface SlotInfo {
  /** 'physical' or 'logical'. */
  type: string;
  restartLsn: Lsn | null;
  restartTimeline: number | null;
}

/** Where BASE_BACKUP's stream goes, in the order the walsender sends it. */
export interface BackupSink {
  /** The backup's start, after its checkpoint; and the archives to come with their size estimates. */
  started(start: { lsn: Lsn; timeline: number }, tablespaces: TablespaceInfo[]): void;
  /** A new archive begins: `base.tar` (the data directory) or `<oid>.tar` for a tablespace. */
  archive(name: string, tablespacePath: string | null): void | Promise<void>;
  /**
   * Bytes of the current archive, in order, valid only during the call (they lie in the socket's
   * reused read buffer): copy what you keep. A promise holds the stream back until it settles.
   */
  data(chunk: Buffer): void | Promise<void>;
  /** How many bytes of files the walsender has sent so far. */
  progress(bytesDone: number): void;
}

export interface TablespaceInfo {
  oid: string | null;
  location: string | null;
  /** The walsender's estimate (PROGRESS), in bytes; null without PROGRESS. */
  bytes: number | null;
}

export interface BaseBackupOptions {
  label: string;
  /** Limit the walsender's rate, in kB/s (32 to 1048576); unlimited when undefined. */
  maxRateKbps?: number;
}

export interface BaseBackupResult {
  start: { lsn: Lsn; timeline: number };
  end: { lsn: Lsn; timeline: number };
}

export interface ConnectOptions {
  timeoutMs?: number;
  applicationName?: string;
  /** Warnings and notices the source sends (a checksum failure in a base backup, say). */
  onNotice?: (message: string) => void;
}

const DEFAULT_TIMEOUT_MS = 10_000;
const COPY_DATA = 0x64; // 'd'
/** The first byte of a BASE_BACKUP CopyData: new archive, archive data, progress, manifest. */
const NEW_ARCHIVE = 0x6e; // 'n'
const ARCHIVE_DATA = 0x64; // 'd'
const PROGRESS = 0x70; // 'p'
const MANIFEST = 0x6d; // 'm'

/** The command under way and what it has received so far. */
interface Pending {
  sets: ResultSet[];
  current: ResultSet | undefined;
  error: ServerError | undefined;
  sink: BackupSink | undefined;
  resolve: (sets: ResultSet[]) => void;
  reject: (error: Error) => void;
}

export class ReplicationConnection {
  private readonly parser = new Parser();
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Bytes of the archive-data message being streamed that have not arrived yet. */
  private streaming = 0;
  /** Inside the COPY of a BASE_BACKUP. */
  private copying = false;
  /** After an 'm' message: what follows is the manifest, which pgbranch never asks for. */
  private inManifest = false;
  /** The sink holds the stream back until this settles. */
  private held: Promise<void> | undefined;
  /** Some of `chunks` lie in the socket's reused read buffer. */
  private transient = false;
  private pending: Pending | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private closedBecause: Error | undefined;

  private readonly socket: net.Socket;

  private constructor(
    source: SourceSocket,
    readonly target: SourceTarget,
    /** What the server reported at startup: server_version, and the rest. */
    readonly parameters: Map<string, string>,
    private readonly onNotice: ((message: string) => void) | undefined,
  ) {
    this.socket = source.socket;
    source.onBytes((chunk, transient) => this.received(chunk, transient));
  }

  /** Opens and authenticates a replication connection; rejects with the server's error as it is. */
  static async open(
    target: SourceTarget,
    options: ConnectOptions = {},
  ): Promise<ReplicationConnection> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const source = await openSourceSocket(target, timeoutMs);
    const parameters = new Map<string, string>();
    const connection = new ReplicationConnection(source, target, parameters, options.onNotice);
    try {
      await connection.startup(options.applicationName ?? 'pgbranch', timeoutMs);
    } catch (error) {
      source.socket.destroy();
      throw error;
    }
    return connection;
  }

  /** server_version as the source reported it at startup, e.g. "15.8 (Debian 15.8-1.pgdg120+1)". */
  get serverVersion(): string {
    return this.parameters.get('server_version') ?? 'unknown';
  }

  /** Runs one replication command; resolves with its result sets. */
  command(sql: string): Promise<ResultSet[]> {
    return this.run(sql, undefined);
  }

  async identifySystem(): Promise<SystemIdentity> {
    const row = only(await this.command('IDENTIFY_SYSTEM'), 'IDENTIFY_SYSTEM');
    return { systemId: row[0]!, timeline: Number(row[1]), xlogpos: parseLsn(row[2]!) };
  }

  /** The source's WAL position now (IDENTIFY_SYSTEM's xlogpos). */
  async currentLsn(): Promise<Lsn> {
    return (await this.identifySystem()).xlogpos;
  }

  async show(setting: string): Promise<string> {
    return only(await this.command(`SHOW ${identifier(setting)}`), 'SHOW')[0] ?? '';
  }

  /** A physical slot that holds WAL from now on, for a standby that will stream from it. */
  async createPhysicalSlot(name: string): Promise<{ consistentPoint: Lsn | null }> {
    const row = only(
      await this.command(`CREATE_REPLICATION_SLOT ${identifier(name)} PHYSICAL RESERVE_WAL`),
      'CREATE_REPLICATION_SLOT',
    );
    return { consistentPoint: row[1] ? parseLsn(row[1]) : null };
  }

  /** The slot, or undefined when the source has none of that name (PostgreSQL 15 and newer). */
  async readSlot(name: string): Promise<SlotInfo | undefined> {
    const row = only(
      await this.command(`READ_REPLICATION_SLOT ${identifier(name)}`),
      'READ_REPLICATION_SLOT',
    );
    if (row[0] === null) return undefined;
    return {
      type: row[0]!,
      restartLsn: row[1] ? parseLsn(row[1]) : null,
      restartTimeline: row[2] === null ? null : Number(row[2]),
    };
  }

  async dropSlot(name: string): Promise<void> {
    await this.command(`DROP_REPLICATION_SLOT ${identifier(name)}`);
  }

  /** The history file of a timeline (the timelines a failed-over source went through). */
  async timelineHistory(timeline: number): Promise<{ filename: string; content: string }> {
    const row = only(await this.command(`TIMELINE_HISTORY ${timeline}`), 'TIMELINE_HISTORY');
    return { filename: row[0]!, content: row[1]! };
  }

  /**
   * BASE_BACKUP in PostgreSQL 15's option syntax, without WAL (the standby streams it from its
   * slot) and without a manifest: the archives go to `sink` as they arrive.
   */
  async baseBackup(options: BaseBackupOptions, sink: BackupSink): Promise<BaseBackupResult> {
    const parts = [
      `LABEL ${literal(options.label)}`,
      'PROGRESS',
      "CHECKPOINT 'fast'",
      'WAL false',
      "MANIFEST 'no'",
    ];
    if (options.maxRateKbps !== undefined) parts.push(`MAX_RATE ${options.maxRateKbps}`);
    const sets = await this.run(`BASE_BACKUP (${parts.join(', ')})`, sink);
    // The start position, the tablespaces, then (after the COPY) the end position.
    const end = sets[2]?.rows[0];
    if (!end) throw new Error('BASE_BACKUP ended without its end position');
    const start = sets[0]!.rows[0]!;
    return {
      start: { lsn: parseLsn(start[0]!), timeline: Number(start[1]) },
      end: { lsn: parseLsn(end[0]!), timeline: Number(end[1]) },
    };
  }

  /** Terminate, and the socket closed. */
  close(): void {
    if (!this.closedBecause) {
      this.closedBecause = new Error(`the connection to ${describeSource(this.target)} was closed`);
      this.socket.end(serialize.end());
    }
    this.socket.destroy();
  }

  get closed(): boolean {
    return this.closedBecause !== undefined;
  }

  private run(sql: string, sink: BackupSink | undefined): Promise<ResultSet[]> {
    const next = this.queue.then(
      () =>
        new Promise<ResultSet[]>((resolve, reject) => {
          if (this.closedBecause) return reject(this.closedBecause);
          this.pending = {
            sets: [],
            current: undefined,
            error: undefined,
            sink,
            resolve,
            reject,
          };
          this.socket.write(serialize.query(sql));
        }),
    );
    this.queue = next.catch(() => undefined);
    return next;
  }

  private startup(applicationName: string, timeoutMs: number): Promise<void> {
    const { target } = this;
    return new Promise<void>((resolve, reject) => {
      let scram: ScramClientExchange | undefined;
      const timer = setTimeout(
        () =>
          this.fail(
            new Error(`${describeSource(target)} did not answer the login within ${timeoutMs} ms`),
          ),
        timeoutMs,
      );
      const noPassword = (method: string) =>
        new Error(
          `${describeSource(target)} asks for a password (${method}) and source.url has none: write postgres://${target.user}:PASSWORD@...`,
        );
      this.pending = {
        sets: [],
        current: undefined,
        error: undefined,
        sink: undefined,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      this.onAuthentication = (msg) => {
        const password = target.password;
        switch (msg.name) {
          case 'authenticationOk':
            return;
          case 'authenticationCleartextPassword':
            if (password === undefined) throw noPassword('password');
            return void this.socket.write(serialize.password(password));
          case 'authenticationMD5Password': {
            if (password === undefined) throw noPassword('md5');
            const salt = (msg as unknown as { salt: Buffer }).salt;
            const response = md5Response(md5StoredHash(target.user, password), salt);
            return void this.socket.write(serialize.password(response));
          }
          case 'authenticationSASL': {
            const { mechanisms } = msg as unknown as { mechanisms: string[] };
            if (!mechanisms.includes('SCRAM-SHA-256')) {
              throw new Error(
                `${describeSource(target)} offers ${mechanisms.join(', ')} and pgbranch speaks SCRAM-SHA-256`,
              );
            }
            if (password === undefined) throw noPassword('SCRAM-SHA-256');
            scram = new ScramClientExchange({ password });
            const initial = scram.initialResponse().toString('latin1');
            return void this.socket.write(
              serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', initial),
            );
          }
          case 'authenticationSASLContinue': {
            const { data } = msg as unknown as { data: string };
            const answer = scram!.continue(Buffer.from(data, 'latin1')).toString('latin1');
            return void this.socket.write(serialize.sendSCRAMClientFinalMessage(answer));
          }
          case 'authenticationSASLFinal': {
            const { data } = msg as unknown as { data: string };
            scram!.finish(Buffer.from(data, 'latin1'));
            return;
          }
          default:
            throw new Error(
              `${describeSource(target)} asks for ${msg.name}, which pgbranch does not speak`,
            );
        }
      };
      this.socket.on('error', (error) =>
        this.fail(new Error(`${describeSource(target)}: ${error.message}`, { cause: error })),
      );
      this.socket.on('close', () =>
        this.fail(new Error(`${describeSource(target)} closed the connection`)),
      );
      this.socket.write(
        startupMessage([
          ['user', target.user],
          ['database', 'replication'],
          ['replication', 'true'],
          ['application_name', applicationName],
        ]),
      );
    });
  }

  /** Set during startup: the authentication requests go here. */
  private onAuthentication: ((msg: BackendMessage) => void) | undefined;

  /** The connection is unusable: the command under way and every later one fail with `error`. */
  private fail(error: Error): void {
    this.closedBecause ??= error;
    this.socket.destroy();
    const pending = this.pending;
    this.pending = undefined;
    pending?.reject(pending.error ?? error);
  }

  /** Returns false while the sink holds the stream back: the socket pauses. */
  private received(chunk: Buffer, transient: boolean): boolean {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.transient ||= transient;
    this.readFrames();
    if (this.held !== undefined) return false;
    this.keepLeftover();
    return true;
  }

  /**
   * Before the socket reads again into its reused buffer: what is left there (a message cut by
   * the read) is copied out. Not while the stream is held: the socket is paused then, so what the
   * sink has not taken yet stays where it is, however much, until the sink takes it.
   */
  private keepLeftover(): void {
    if (this.transient && this.buffered > 0) this.chunks = [Buffer.concat(this.chunks)];
    this.transient = false;
  }

  /**
   * Reads every whole message buffered, and streams archive data as it comes: the bytes of an
   * archive-data CopyData go to the sink as slices of the socket's own buffers, never copied.
   */
  private readFrames(): void {
    try {
      while (this.held === undefined && !this.closedBecause) {
        if (this.streaming > 0) {
          if (this.buffered === 0) return;
          const head = this.chunks[0]!;
          const piece = head.length <= this.streaming ? head : head.subarray(0, this.streaming);
          this.consume(piece.length);
          this.streaming -= piece.length;
          if (!this.inManifest) this.hold(this.pending?.sink?.data(piece));
          continue;
        }
        if (this.buffered < 5) return;
        const header = this.peek(6);
        const type = header[0]!;
        const length = header.readInt32BE(1);
        if (length < 4) throw new Error(`invalid message length ${length} from the source`);
        if (this.copying && type === COPY_DATA && length > 4) {
          if (header.length < 6) return;
          if (header[5] === ARCHIVE_DATA) {
            this.consume(6);
            this.streaming = length - 5;
            continue;
          }
        }
        if (this.buffered < 1 + length) return;
        this.dispatch(this.take(1 + length));
      }
    } catch (error) {
      this.fail(error as Error);
    }
  }

  /** A sink that is behind holds the stream (and the socket) until it has caught up. */
  private hold(promise: void | Promise<void>): void {
    if (!promise) return;
    this.held = promise;
    this.socket.pause();
    promise.then(
      () => {
        this.held = undefined;
        this.readFrames();
        if (this.held !== undefined) return;
        this.keepLeftover();
        this.socket.resume();
      },
      (error: unknown) => {
        this.held = undefined;
        this.fail(error as Error);
      },
    );
  }

  private dispatch(frame: Buffer): void {
    if (this.copying && frame[0] === COPY_DATA) return this.copyMessage(frame.subarray(5));
    this.parser.parse(frame, (msg) => this.message(msg));
  }

  /** The BASE_BACKUP CopyData messages other than archive data. */
  private copyMessage(body: Buffer): void {
    const sink = this.pending?.sink;
    switch (body[0]) {
      case NEW_ARCHIVE: {
        const nameEnd = body.indexOf(0, 1);
        const name = body.toString('utf8', 1, nameEnd);
        const location = body.toString('utf8', nameEnd + 1, body.indexOf(0, nameEnd + 1));
        this.inManifest = false;
        return this.hold(sink?.archive(name, location === '' ? null : location));
      }
      case PROGRESS:
        return sink?.progress(Number(body.readBigInt64BE(1)));
      case MANIFEST:
        this.inManifest = true;
        return;
      default:
        throw new Error(
          `unknown BASE_BACKUP message type ${JSON.stringify(String.fromCharCode(body[0] ?? 0))}`,
        );
    }
  }

  private message(msg: BackendMessage): void {
    const pending = this.pending;
    switch (msg.name) {
      case 'parameterStatus': {
        const p = msg as unknown as { parameterName: string; parameterValue: string };
        this.parameters.set(p.parameterName, p.parameterValue);
        return;
      }
      case 'backendKeyData':
        return;
      case 'notice':
        return this.onNotice?.((msg as unknown as { message: string }).message);
      case 'error': {
        const error = new ServerError(
          msg as unknown as ConstructorParameters<typeof ServerError>[0],
        );
        // An error ends a COPY under way; ReadyForQuery follows.
        this.copying = false;
        // During startup, and for a FATAL, no ReadyForQuery follows.
        if (this.onAuthentication || error.severity === 'FATAL') return this.fail(error);
        if (pending) pending.error ??= error;
        return;
      }
      case 'rowDescription': {
        const { fields } = msg as unknown as { fields: { name: string }[] };
        if (pending) pending.current = { columns: fields.map((f) => f.name), rows: [] };
        return;
      }
      case 'dataRow':
        pending?.current?.rows.push((msg as unknown as { fields: (string | null)[] }).fields);
        return;
      case 'commandComplete':
        if (pending?.current) pending.sets.push(pending.current);
        if (pending) pending.current = undefined;
        return;
      case 'copyOutResponse': {
        if (!pending?.sink) throw new Error('the source started a COPY that nothing asked for');
        this.copying = true;
        this.inManifest = false;
        // Before the COPY: the start position, then a row per tablespace (size in kB).
        const [start, spaces] = pending.sets;
        const at = start?.rows[0];
        if (!at || !spaces) throw new Error('BASE_BACKUP began its COPY without its header');
        pending.sink.started(
          { lsn: parseLsn(at[0]!), timeline: Number(at[1]) },
          spaces.rows.map(([oid, location, size]) => ({
            oid: oid ?? null,
            location: location ?? null,
            bytes: size === null || size === undefined ? null : Number(size) * 1024,
          })),
        );
        return;
      }
      case 'copyDone':
        this.copying = false;
        return;
      case 'readyForQuery':
        this.onAuthentication = undefined;
        this.pending = undefined;
        if (!pending) return;
        if (pending.error) pending.reject(pending.error);
        else pending.resolve(pending.sets);
        return;
      case 'emptyQuery':
        return;
      default:
        if (msg.name.startsWith('authentication') && this.onAuthentication) {
          return this.onAuthentication(msg);
        }
        throw new Error(`unexpected ${msg.name} from the source`);
    }
  }

  /** Up to `n` bytes from the front, fewer when fewer are buffered; nothing consumed. */
  private peek(n: number): Buffer {
    const head = this.chunks[0]!;
    if (head.length >= n || this.chunks.length === 1) return head.subarray(0, n);
    const parts: Buffer[] = [];
    let length = 0;
    for (const chunk of this.chunks) {
      if (length >= n) break;
      parts.push(chunk);
      length += chunk.length;
    }
    return Buffer.concat(parts).subarray(0, n);
  }

  private take(n: number): Buffer {
    const head = this.chunks[0]!;
    if (head.length >= n) {
      this.consume(n);
      return head.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0]!;
      const count = Math.min(chunk.length, n - filled);
      chunk.copy(out, filled, 0, count);
      filled += count;
      this.consume(count);
    }
    return out;
  }

  private consume(n: number): void {
    this.buffered -= n;
    while (n > 0) {
      const head = this.chunks[0]!;
      if (head.length <= n) {
        this.chunks.shift();
        n -= head.length;
      } else {
        this.chunks[0] = head.subarray(n);
        n = 0;
      }
    }
  }
}

function only(sets: ResultSet[], command: string): (string | null)[] {
  const row = sets[0]?.rows[0];
  if (!row) throw new Error(`${command} returned no row`);
  return row;
}

/** Replication commands take bare identifiers: slot and setting names are checked, not quoted. */
function identifier(name: string): string {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`"${name}" is not a plain identifier`);
  return name;
}

function literal(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}
