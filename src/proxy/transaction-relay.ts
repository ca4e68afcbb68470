// Transaction mode: a client holds a server connection from the first message of a transaction to
// the ReadyForQuery that ends it idle, then the connection goes back to the pool. Client messages
// are read whole (their bodies can be rewritten: named prepared statements get server-side names,
// and are prepared on demand wherever the client lands); server messages are forwarded as they
// arrive, with frames scanned in place, except the few responses to what the proxy itself added.
import type net from 'node:net';
import { errors, PgError } from '../errors.js';
import type { Pool, PoolManager, PoolRequest, ServerConnection, ServerSink } from '../pool/pool.js';
import { commandComplete, errorResponse, readyForQuery } from '../wire/backend.js';
import { cstring, int32, message } from '../wire/build.js';
import { abortBatch, copyFail, query } from '../wire/frontend.js';
import {
  carriesSettings,
  ClientState,
  MAY_SET,
  serverState,
  parameterTypes,
  rowShape,
  settingsFor,
  type PreparedStatement,
  type ServerState,
} from './client-state.js';
import { IdleInTransactionTimer } from './idle-in-transaction.js';
import {
  databaseNeeded,
  DEALLOCATES,
  deallocateTarget,
  dropsAllStatements,
  MAY_NEED_DATABASE,
  NEEDS_CHECK,
  READ_TEXT,
  RUNS_CODE,
  statementEffects,
} from './statement-effects.js';

const BIND = 0x42; // 'B'
const CLOSE = 0x43; // 'C'
const DESCRIBE = 0x44; // 'D'
const FUNCTION_CALL = 0x46; // 'F'
const PARSE = 0x50; // 'P'
const QUERY = 0x51; // 'Q'
const SYNC = 0x53; // 'S'
const TERMINATE = 0x58; // 'X'
const EXECUTE = 0x45; // 'E'
const FLUSH = 0x48; // 'H'

const PARSE_COMPLETE = 0x31; // '1'
const CLOSE_COMPLETE = 0x33; // '3'
const PARAMETER_STATUS = 0x53; // 'S'
const READY = 0x5a; // 'Z'
const ERROR = 0x45; // 'E'
const COPY_IN = 0x47; // 'G'
const COPY_OUT = 0x48; // 'H'
const STATUS_IDLE = 0x49; // 'I'
const STATUS_FAILED = 0x45; // 'E'
const PARSE_COMPLETE_MESSAGE = Buffer.from([PARSE_COMPLETE, 0, 0, 0, 4]);
const PARAMETER_DESCRIPTION = 0x74; // 't'
const ROW_DESCRIPTION = 0x54; // 'T'
const NO_DATA = 0x6e; // 'n'
const FLUSH_MESSAGE = Buffer.from([FLUSH, 0, 0, 0, 4]);

/**
 * A statement whose result shape changed under a client: PostgreSQL's own error for it
 * (plancache.c), on which drivers prepare again (postgres.js by its routine, pgjdbc by its text).
 */
const STALE_STATEMENT = message(
  'E',
  Buffer.from(
    'SERROR\0VERROR\0C0A000\0Mcached plan must not change result type\0' +
      'Fplancache.c\0RRevalidateCachedQuery\0\0',
  ),
);
/**
 * Sent instead of the client's Bind of a changed statement: an Execute of a portal that can't
 * exist fails on the server as the Bind would have (the transaction fails, the rest of the batch
 * is skipped), and its error is replaced with STALE_STATEMENT.
 */
const STALE_PORTAL = 'pgbranch: statement changed';
const STALE_EXECUTE = message('E', Buffer.concat([cstring(STALE_PORTAL), int32(0)]));
const DATA_ROW = 0x44; // 'D'

/** Largest client message accepted (PostgreSQL's own limit for most messages is 1 GB). */
const MAX_MESSAGE = 256 * 1024 * 1024;
/** Client bytes kept while waiting for a server connection before the client socket is paused. */
const MAX_WAITING_BYTES = 64 * 1024;

/** What inspectQuery() returns for a query it answered itself. */
const ANSWERED: unique symbol = Symbol('answered');

/**
 * Read back after a transaction, as rows of (kind, name, value), whichever are needed: 's' the
 * session's settings; 't' when the session holds temporary objects; 'q' statements prepared with
 * SQL PREPARE; 'p' the protocol-level prepared statements the server connection has.
 */
const SETTINGS_ROWS =
  "SELECT 's'::text, name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session'";
const SESSION_STATE_ROWS =
  "SELECT 't', '', '' WHERE pg_catalog.pg_my_temp_schema() <> 0 AND (" +
  'EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()) OR ' +
  'EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace = pg_catalog.pg_my_temp_schema()) OR ' +
  'EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace = pg_catalog.pg_my_temp_schema()))' +
  " UNION ALL SELECT 'q', name, '' FROM pg_catalog.pg_prepared_statements WHERE from_sql";
/** 'f' when the database has functions whose text could make temporary objects or PREPARE. */
const RISKY_CODE_ROWS =
  "SELECT 'f', '', '' WHERE EXISTS (SELECT FROM pg_catalog.pg_proc p " +
  'JOIN pg_catalog.pg_language l ON l.oid = p.prolang ' +
  "WHERE l.lanname NOT IN ('internal', 'c') AND p.pronamespace NOT IN " +
  "('pg_catalog'::regnamespace, 'information_schema'::regnamespace) " +
  "AND p.prosrc ~* '(temp|prepare)')";
/**
 * What the server said last about a pool's database: whether any of its functions could make
 * session state (RISKY_CODE_ROWS), and when. Writes and calls of its functions are looked after
 * only where it could, and once the answer is older than CODE_VERDICT_MS, so that a function made
 * since (through pgbranch, which asks at once, or not) is seen within that time.
 */
const codeVerdicts = new WeakMap<Pool, { risky: boolean; at: number }>();
const CODE_VERDICT_MS = 5_000;
const PREPARED_ROWS =
  "SELECT 'p', name, '' FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql";

/** Statements that tie a session to its server connection until it ends. */
const PINNING = /pg_(try_)?advisory_lock(_shared)?\s*\(|^\s*listen\b|\bwith\s+hold\b/i;

export interface TransactionRelayOptions {
  client: net.Socket;
  pools: PoolManager;
  /** The pool this client draws from (database, user, login; no startup parameters). */
  request: PoolRequest;
  state: ClientState;
  /** Bytes the client sent before the relay started. */
  pending: Buffer;
  /** Called once when the client gets pinned, with the reason. */
  onPinned: (reason: string) => void;
  /** Called with the server connection the client now holds (undefined when it holds none). */
  onServer: (conn: ServerConnection | undefined) => void;
  resetTimeoutMs: number;
  /** A client idle inside a transaction this long is disconnected with 25P03; 0 for no limit. */
  idleInTransactionTimeoutMs: number;
  /** Prepared statements one server connection keeps before the oldest is closed. */
  maxPreparedStatements: number;
  /**
   * The client sends a statement that PostgreSQL refuses while others are connected to
   * `database` (DROP DATABASE...): pgbranch's own idle connections to it must go, and no new ones
   * be made, until the statement is done. Returns what ends that.
   */
  onDatabaseNeeded: (database: string) => () => void;
}

/** An entry per Parse or Close sent, in order: the responses come back in the same order. */
interface Expected {
  /** How many Query/Sync/FunctionCall messages were sent before it: its batch. */
  batch: number;
  type: number;
  /** Responses to the proxy's own messages are not forwarded. */
  swallow: boolean;
  /** For a Parse: the server-side name it defines, recorded once it succeeded. */
  defines?: string;
  /** For a Close: the server-side name it removes. */
  removes?: string;
}

/**
 * A Describe whose answer records a statement's shape: of the statement ('S': ParameterDescription,
 * then RowDescription or NoData), or of the unnamed portal bound to it ('P': RowDescription or
 * NoData). Answers are matched by batch and by their order among the batch's Describe answers.
 */
interface DescribeSent {
  batch: number;
  ordinal: number;
  statement: PreparedStatement;
  /** Sent by the proxy: the answer is not forwarded. */
  swallow: boolean;
}

export class TransactionRelay implements ServerSink {
  private conn: ServerConnection | undefined;
  private server: ServerState | undefined;
  private acquiring = false;
  /** Set by terminateWhenIdle: the error the client gets when its transaction ends. */
  private closing: PgError | undefined;
  /** Client bytes that arrived while the client had no server connection, and their length. */
  private readonly raw: Buffer[] = [];
  private rawBytes = 0;
  /** A partial client message carried over to the next chunk. */
  private tail: Buffer | undefined;
  private finished = false;
  private resolveEnd!: (reason: 'client' | 'server' | 'error') => void;
  readonly ended = new Promise<'client' | 'server' | 'error'>((r) => (this.resolveEnd = r));

  // Client-side protocol state.
  /** Query, FunctionCall and Sync messages whose ReadyForQuery has not come back yet. */
  private pendingReady = 0;
  private unsynced = false;
  private readonly expected: Expected[] = [];
  /** Query, Sync and FunctionCall messages sent, and ReadyForQuery messages received. */
  private batchesSent = 0;
  private batchesDone = 0;
  private settingsChanged = false;
  /** The transaction may have left temporary objects or SQL prepared statements: ask after it. */
  private check = false;
  /** As check, but only through functions of the database's (see codeVerdicts). */
  private runsCode = false;
  /** A DEALLOCATE or DISCARD ran: read back which prepared statements the server has. */
  private resyncPrepared = false;
  /** statementEffects() of the unnamed statement last parsed. */
  private unnamedEffects = 0;
  /** Databases kept free of pgbranch's connections until batch `until` is done. */
  private readonly databaseHolds: { until: number; end: () => void }[] = [];

  // Prepared statements' shapes (see shapeOf): what a client was told must hold where it runs.
  private readonly describes: DescribeSent[] = [];
  /** Describe messages sent in the current batch, and answered in the batch being answered. */
  private describesSent = 0;
  private describesAnswered = 0;
  /** The last server frame was a ParameterDescription: a RowDescription or NoData ends that answer. */
  private afterParameters = false;
  /** The statement the unnamed portal was last bound to (for a Describe of that portal). */
  private boundStatement: PreparedStatement | undefined;
  /** The Describe whose answer is being read, and its ParameterDescription frame once read. */
  private describing: DescribeSent | undefined;
  private parameterFrame: Buffer | undefined;
  /** The proxy's Describe that must be answered before the client's held bytes may go on. */
  private verifying: DescribeSent | undefined;
  private held: Buffer[] | undefined;
  /** The answer came (or an error made it moot): send the held bytes. */
  private verifyDone = false;
  /** An error skips the batch on the server anyway: no shape checks until the client's Sync. */
  private trustUntilSync = false;
  /** A Bind's statement changed shape: set once by extended(), then the batch is discarded. */
  private stale = false;
  /** Client messages are dropped until its Sync (after STALE_EXECUTE). */
  private discarding = false;
  /** The next ErrorResponse may be STALE_EXECUTE's, to be replaced with STALE_STATEMENT. */
  private replaceError = false;
  /** Bytes of a server frame being read whole (a description, or an error to replace). */
  private capture: Buffer[] | undefined;
  /** The current server frame is cut out of what the client gets. */
  private dropFrame = false;

  // Server-side frame scanning.
  private remaining = 0;
  /**
   * A client's protocol violation that came while a server message was half forwarded: its
   * error waits for that message's end, so that the client reads whole messages, then the error.
   */
  private failing: PgError | undefined;
  private frameType = 0;
  private copyIn = false;
  /** Bytes of the ParameterStatus frame being collected. */
  private status: Buffer[] | undefined;
  private readyStatus = 0;

  private readonly idleTimer: IdleInTransactionTimer | undefined;

  constructor(private readonly options: TransactionRelayOptions) {
    const { client, idleInTransactionTimeoutMs: idleMs } = options;
    if (idleMs > 0) {
      this.idleTimer = new IdleInTransactionTimer(idleMs, () =>
        this.fail(errors.idleInTransactionTimeout(idleMs)),
      );
    }
    client.on('data', this.fromClient);
    client.on('end', this.clientEnded);
    client.on('close', this.clientEnded);
    client.on('error', this.clientEnded);
    client.on('drain', this.resumeServer);
    client.resume();
    if (client.destroyed || client.readableEnded) this.clientEnded();
    else if (options.pending.length > 0) this.fromClient(options.pending);
  }

  private readonly fromClient = (data: Buffer): void => {
    if (this.finished || this.failing) return;
    this.idleTimer?.touch();
    if (this.verifying) {
      this.held!.push(data);
      this.rawBytes += data.length;
      if (this.rawBytes > MAX_WAITING_BYTES) this.options.client.pause();
      return;
    }
    if (!this.conn || this.acquiring) {
      // Rewriting depends on the server connection: keep the bytes until there is one.
      this.raw.push(data);
      this.rawBytes += data.length;
      if (!this.acquiring) {
        const first = this.tail ? this.tail[0] : this.raw[0]![0];
        if (first === TERMINATE) {
          this.finish('client');
          return;
        }
        if (first === PARSE && this.prepareWithoutServer()) return;
        this.attach();
      } else if (this.rawBytes > MAX_WAITING_BYTES) {
        this.options.client.pause();
      }
      return;
    }
    let chunk = data;
    if (this.tail) {
      chunk = Buffer.concat([this.tail, data]);
      this.tail = undefined;
    }
    // Only rewritten messages need a list: most chunks go out as they came.
    let out: Buffer[] | undefined;
    let answered = false;
    let start = 0;
    let i = 0;
    while (i + 5 <= chunk.length) {
      const type = chunk[i]!;
      const length = chunk.readInt32BE(i + 1);
      if (length < 4 || length > MAX_MESSAGE) {
        this.failAtBoundary(new PgError('08P01', `invalid message length ${length} from client`));
        return;
      }
      const end = i + 1 + length;
      if (end > chunk.length) break;
      if (this.discarding && type !== SYNC) {
        out ??= [];
        if (i > start) out.push(chunk.subarray(start, i));
        start = i = end;
        continue;
      }
      switch (type) {
        case QUERY: {
          this.pendingReady++;
          this.batchesSent++;
          this.describesSent = 0;
          const rewritten = this.inspectQuery(chunk, i + 5, end - 1);
          if (rewritten) {
            out ??= [];
            if (i > start) out.push(chunk.subarray(start, i));
            if (rewritten === ANSWERED) {
              // Answered here: no ReadyForQuery will come from the server for it.
              this.pendingReady--;
              this.batchesSent--;
              answered = true;
            } else out.push(rewritten);
            start = end;
          }
          break;
        }
        case FUNCTION_CALL:
          this.pendingReady++;
          this.batchesSent++;
          this.check = true;
          break;
        case SYNC:
          this.pendingReady++;
          this.batchesSent++;
          this.unsynced = false;
          this.discarding = this.trustUntilSync = false;
          this.describesSent = 0;
          break;
        case EXECUTE:
        case FLUSH:
          this.unsynced = true;
          break;
        case PARSE:
        case BIND:
        case DESCRIBE:
        case CLOSE: {
          this.unsynced = true;
          if (type === DESCRIBE) this.describesSent++;
          const rewritten = this.extended(type, chunk, i, end);
          if (this.verifying) {
            // Nothing from this Bind on goes out until the server has described the statement.
            out ??= [];
            if (i > start) out.push(chunk.subarray(start, i));
            out.push(...rewritten!);
            this.held = [Buffer.from(chunk.subarray(i))];
            this.rawBytes = chunk.length - i;
            this.send(out);
            return;
          }
          if (this.stale) {
            this.stale = false;
            this.discarding = this.replaceError = true;
            out ??= [];
            if (i > start) out.push(chunk.subarray(start, i));
            out.push(STALE_EXECUTE);
            start = end;
            break;
          }
          if (rewritten) {
            out ??= [];
            if (i > start) out.push(chunk.subarray(start, i));
            out.push(...rewritten);
            start = end;
          }
          break;
        }
        case TERMINATE:
          this.sendFrom(chunk, start, i, out);
          this.finish('client');
          return;
      }
      i = end;
    }
    if (i < chunk.length) this.tail = Buffer.from(chunk.subarray(i));
    this.sendFrom(chunk, start, i, out);
    if (answered && this.atTransactionEnd()) this.transactionEnded();
  };

  /** Sends the rewritten messages in `out`, then chunk[start, end). */
  private sendFrom(chunk: Buffer, start: number, end: number, out: Buffer[] | undefined): void {
    if (out) {
      if (end > start) out.push(chunk.subarray(start, end));
      if (out.length > 0) this.send(out);
    } else if (end > start) {
      const ok = this.conn!.session.socket.write(
        start === 0 && end === chunk.length ? chunk : chunk.subarray(start, end),
      );
      if (!ok) this.options.client.pause();
    }
  }

  /**
   * A client outside a transaction that only prepares named statements (Parse... Sync, as libpq's
   * PQprepare sends) needs no server connection: the statements are recorded and prepared on
   * demand where they are first used, and the client is answered at once. Waiting for a server
   * connection here could wait forever: pgbench runs many clients on one thread and blocks in
   * PQprepare while the thread's other clients hold every server connection in open transactions.
   * A statement with an error is then reported where it is first used. Returns whether it answered.
   */
  private prepareWithoutServer(): boolean {
    const bytes = this.raw.length === 1 ? this.raw[0]! : Buffer.concat(this.raw);
    const parses: [string, Buffer][] = [];
    let i = 0;
    while (i + 5 <= bytes.length) {
      const type = bytes[i]!;
      const length = bytes.readInt32BE(i + 1);
      const end = i + 1 + length;
      if (length < 4 || end > bytes.length) return false;
      if (type === SYNC) {
        if (end !== bytes.length || parses.length === 0) return false;
        const answer: Buffer[] = [];
        for (const [name, definition] of parses) {
          const statement = this.options.state.define(name, definition);
          if (statement.maySet) this.settingsChanged = true;
          this.checkPin(definition.toString('utf8', 0, Math.max(0, definition.indexOf(0))));
          answer.push(PARSE_COMPLETE_MESSAGE);
        }
        answer.push(readyForQuery('I'));
        this.raw.length = 0;
        this.rawBytes = 0;
        this.options.client.write(Buffer.concat(answer));
        return true;
      }
      if (type !== PARSE) return false;
      const nameEnd = bytes.indexOf(0, i + 5);
      if (nameEnd <= i + 5 || nameEnd >= end) return false;
      parses.push([bytes.toString('utf8', i + 5, nameEnd), bytes.subarray(nameEnd + 1, end)]);
      i = end;
    }
    return false;
  }

  /**
   * Notices settings, session state and session-pinning statements in a simple query's text.
   * Returns the message to send instead of a DEALLOCATE of a statement the client prepared with
   * Parse, or ANSWERED when it answered that itself.
   */
  private inspectQuery(
    chunk: Buffer,
    start: number,
    end: number,
  ): Buffer | typeof ANSWERED | undefined {
    const effects = statementEffects(chunk, start, end);
    if (effects & NEEDS_CHECK) this.check = true;
    if (effects & RUNS_CODE) this.runsCode = true;
    // Only texts the one scan of the bytes marked are decoded.
    if (!(effects & READ_TEXT)) return undefined;
    const sql = chunk.toString('utf8', start, end);
    if (effects & MAY_NEED_DATABASE) this.needDatabase(sql, this.batchesSent);
    if (MAY_SET.test(sql)) this.settingsChanged = true;
    this.checkPin(sql);
    if (!(effects & DEALLOCATES)) return undefined;
    // Answering here keeps the order of answers only when nothing else is on its way.
    const alone =
      this.pendingReady === 1 &&
      !this.unsynced &&
      this.expected.length === 0 &&
      this.readyStatus !== STATUS_FAILED;
    const mapped = this.deallocate(sql, alone ? 'answer' : 'pass');
    if (mapped === undefined || mapped === ANSWERED) return mapped;
    return query(mapped);
  }

  /**
   * DEALLOCATE and DISCARD: the server connection's statements are read back after the
   * transaction, ALL forgets the client's, and DEALLOCATE of a statement the client prepared with
   * Parse names it as the server has it (pgbranch_...). Where the server connection does not have
   * it, `missing` says what to do: answer here (nothing else on its way to the client), let the
   * caller define it first, or pass the statement on as it is. Returns the text to send instead,
   * ANSWERED, or undefined to send the statement as it is.
   */
  private deallocate(
    sql: string,
    missing: 'answer' | 'define' | 'pass',
  ): string | typeof ANSWERED | undefined {
    this.resyncPrepared = true;
    const state = this.options.state;
    if (dropsAllStatements(sql)) {
      state.prepared.clear();
      this.server?.prepared.clear();
      return undefined;
    }
    const target = deallocateTarget(sql);
    if (!target || 'all' in target) return undefined;
    // Not one of the client's protocol-level statements: a SQL PREPARE's, or none; the server says.
    const statement = state.prepared.get(target.name);
    if (!statement) return undefined;
    const onServer =
      this.server?.prepared.has(statement.serverName) ||
      this.pendingDefinition(statement.serverName);
    if (!onServer && missing === 'pass') return undefined;
    state.prepared.delete(target.name);
    this.server?.prepared.delete(statement.serverName);
    if (onServer || missing === 'define') return `DEALLOCATE ${statement.serverName}`;
    const status = this.readyStatus === 0x54 /* T */ ? 'T' : 'I';
    this.options.client.write(
      Buffer.concat([commandComplete('DEALLOCATE'), readyForQuery(status)]),
    );
    return ANSWERED;
  }

  private noteEffects(effects: number): void {
    if (effects & NEEDS_CHECK) this.check = true;
    if (effects & RUNS_CODE) this.runsCode = true;
  }

  /** Keeps pgbranch's connections off the database `sql` needs to itself until batch `until`. */
  private needDatabase(sql: string, until: number): void {
    const database = databaseNeeded(sql);
    if (database !== undefined) {
      this.databaseHolds.push({ until, end: this.options.onDatabaseNeeded(database) });
    }
  }

  /** Ends the holds of batches that are done (all of them once the client is gone). */
  private endDatabaseHolds(done: number): void {
    const holds = this.databaseHolds;
    for (let i = holds.length - 1; i >= 0; i--) {
      if (holds[i]!.until <= done) holds.splice(i, 1)[0]!.end();
    }
  }

  private checkPin(sql: string): void {
    const state = this.options.state;
    if (state.pinned) return;
    const match = PINNING.exec(sql);
    if (!match) return;
    state.pinned = match[0].trim().toLowerCase().startsWith('listen')
      ? 'LISTEN'
      : /hold/i.test(match[0])
        ? 'a WITH HOLD cursor'
        : 'a session-level advisory lock';
    this.options.onPinned(state.pinned);
  }

  /**
   * Parse, Bind, Describe and Close naming a prepared statement are rewritten to its server-side
   * name, with a Parse added first where the server connection does not have it yet. Returns the
   * messages to send instead, or undefined to send the original.
   */
  private extended(type: number, chunk: Buffer, start: number, end: number): Buffer[] | undefined {
    const state = this.options.state;
    const body = start + 5;
    if (type === PARSE) {
      const nameEnd = chunk.indexOf(0, body);
      if (nameEnd < 0 || nameEnd >= end) return undefined;
      const definition = chunk.subarray(nameEnd + 1, end);
      if (nameEnd === body) return this.unnamedParse(definition);
      const name = chunk.toString('utf8', body, nameEnd);
      const statement = state.define(name, definition);
      if (statement.maySet) this.settingsChanged = true;
      this.checkPin(definition.toString('utf8', 0, Math.max(0, definition.indexOf(0))));
      const messages: Buffer[] = [];
      // Defining it again on this server: close the old one first, quietly.
      if (
        this.server?.prepared.has(statement.serverName) ||
        this.pendingDefinition(statement.serverName)
      ) {
        messages.push(closeStatement(statement.serverName));
        this.expect({ type: CLOSE_COMPLETE, swallow: true, removes: statement.serverName });
      } else {
        messages.push(...this.evictIfFull());
      }
      messages.push(parseMessage(statement.serverName, statement.definition));
      this.expect({ type: PARSE_COMPLETE, swallow: false, defines: statement.serverName });
      return messages;
    }
    let nameStart: number;
    let unnamedPortal = false;
    if (type === BIND) {
      const portalEnd = chunk.indexOf(0, body);
      if (portalEnd < 0 || portalEnd >= end) return undefined;
      nameStart = portalEnd + 1;
      unnamedPortal = portalEnd === body;
      this.boundStatement = undefined;
    } else {
      // Describe and Close: 'S' for a statement, 'P' for a portal (portals need no mapping).
      if (chunk[body] !== 0x53 /* S */) {
        if (type === CLOSE) this.expect({ type: CLOSE_COMPLETE, swallow: false });
        else if (chunk[body + 1] === 0 && this.boundStatement?.shape === undefined) {
          // The rows' shape of the statement bound to the unnamed portal, told for the first time.
          if (this.boundStatement) this.describeSent(this.boundStatement, false);
        }
        return undefined;
      }
      nameStart = body + 1;
    }
    const nameEnd = chunk.indexOf(0, nameStart);
    if (nameEnd < 0 || nameEnd >= end) return undefined;
    if (nameEnd === nameStart) {
      if (type === CLOSE) this.expect({ type: CLOSE_COMPLETE, swallow: false });
      else if (type === BIND) this.noteEffects(this.unnamedEffects);
      return undefined;
    }
    const name = chunk.toString('utf8', nameStart, nameEnd);
    const statement = state.prepared.get(name);
    if (!statement) {
      // Unknown to us: let the server say so in its own words.
      if (type === CLOSE) this.expect({ type: CLOSE_COMPLETE, swallow: false });
      return undefined;
    }
    if (unnamedPortal) this.boundStatement = statement;
    if (type === BIND && statement.shape !== undefined && !this.trustUntilSync) {
      const verify = this.verifyShape(statement);
      if (verify) return verify;
    }
    if (type === BIND) {
      if (statement.maySet) this.settingsChanged = true;
      this.noteEffects(statement.effects);
      if (statement.effects & DEALLOCATES) this.resyncPrepared = true;
    }
    const messages: Buffer[] = [];
    if (type === CLOSE) {
      state.prepared.delete(name);
      this.expect({ type: CLOSE_COMPLETE, swallow: false, removes: statement.serverName });
    } else if (
      !this.server?.prepared.has(statement.serverName) &&
      !this.pendingDefinition(statement.serverName)
    ) {
      messages.push(...this.evictIfFull());
      messages.push(parseMessage(statement.serverName, statement.definition));
      this.expect({ type: PARSE_COMPLETE, swallow: true, defines: statement.serverName });
    }
    if (type === DESCRIBE) this.describeSent(statement, false);
    const before = chunk.subarray(start + 5, nameStart);
    const after = chunk.subarray(nameEnd, end);
    messages.push(withName(type, before, statement.serverName, after));
    return messages;
  }

  /** Records a Describe just counted in describesSent, whose answer is to be read. */
  private describeSent(statement: PreparedStatement, swallow: boolean): DescribeSent {
    const sent = { batch: this.batchesSent, ordinal: this.describesSent - 1, statement, swallow };
    this.describes.push(sent);
    return sent;
  }

  /** The recorded Describe that the answer beginning now belongs to, if any. */
  private describeAnswered(): DescribeSent | undefined {
    const ordinal = this.describesAnswered++;
    const head = this.describes[0];
    if (!head || head.batch !== this.batchesDone || head.ordinal !== ordinal) return undefined;
    return this.describes.shift();
  }

  /**
   * A client binds a statement it was told the shape of. Where this server connection's statement
   * is known to have that shape, nothing to do (undefined). Where it is known to have another
   * (the schema changed since, and the statement was prepared here again), `stale` is set and
   * nothing is sent. Otherwise the statement is described here first, quietly (prepared first if
   * the connection lacks it), and `verifying` holds the client's bytes until the answer came.
   */
  private verifyShape(statement: PreparedStatement): Buffer[] | undefined {
    const server = this.server!;
    const name = statement.serverName;
    const pending = this.pendingDefinition(name);
    const onServer = server.prepared.has(name);
    const known = onServer && !pending ? server.shapes.get(name) : undefined;
    if (known) {
      // Shapes are interned: equal ones are one Buffer.
      const types = statement.parameterTypes;
      if (
        known.row === statement.shape &&
        (types === undefined ||
          known.parameterTypes === undefined ||
          known.parameterTypes === types)
      ) {
        return undefined;
      }
      this.stale = true;
      return [];
    }
    const messages: Buffer[] = [];
    if (!onServer && !pending) {
      messages.push(...this.evictIfFull());
      messages.push(parseMessage(name, statement.definition));
      this.expect({ type: PARSE_COMPLETE, swallow: true, defines: name });
    }
    this.describesSent++;
    this.verifying = this.describeSent(statement, true);
    messages.push(describeStatement(name), FLUSH_MESSAGE);
    return messages;
  }

  /**
   * An unnamed Parse goes as it came, except a DEALLOCATE of a statement the client prepared with
   * Parse: its text names the server's statement instead, defined first where this server
   * connection does not have it, so that the DEALLOCATE succeeds as it would have for the client.
   */
  private unnamedParse(definition: Buffer): Buffer[] | undefined {
    const textEnd = Math.max(0, definition.indexOf(0));
    const effects = statementEffects(definition, 0, textEnd);
    this.unnamedEffects = effects;
    if (effects & NEEDS_CHECK) this.check = true;
    if (effects & RUNS_CODE) this.runsCode = true;
    if (!(effects & READ_TEXT)) {
      this.expect({ type: PARSE_COMPLETE, swallow: false });
      return undefined;
    }
    const sql = definition.toString('utf8', 0, textEnd);
    if (MAY_SET.test(sql)) this.settingsChanged = true;
    this.checkPin(sql);
    // It runs in the batch that the client's next Sync ends.
    if (effects & MAY_NEED_DATABASE) this.needDatabase(sql, this.batchesSent + 1);
    let messages: Buffer[] | undefined;
    if (effects & DEALLOCATES) {
      const target = deallocateTarget(sql);
      const statement =
        target && 'name' in target ? this.options.state.prepared.get(target.name) : undefined;
      const onServer =
        statement !== undefined &&
        (this.server?.prepared.has(statement.serverName) ||
          this.pendingDefinition(statement.serverName));
      const mapped = this.deallocate(sql, 'define');
      if (mapped !== undefined && mapped !== ANSWERED && statement) {
        messages = [];
        if (!onServer) {
          messages.push(...this.evictIfFull());
          messages.push(parseMessage(statement.serverName, statement.definition));
          this.expect({ type: PARSE_COMPLETE, swallow: true });
        }
        messages.push(
          parseMessage('', Buffer.concat([cstring(mapped), definition.subarray(textEnd + 1)])),
        );
      }
    }
    this.expect({ type: PARSE_COMPLETE, swallow: false });
    return messages;
  }

  private expect(entry: Omit<Expected, 'batch'>): void {
    this.expected.push({ ...entry, batch: this.batchesSent });
  }

  private pendingDefinition(serverName: string): boolean {
    for (const e of this.expected) if (e.defines === serverName) return true;
    return false;
  }

  private evictIfFull(): Buffer[] {
    const prepared = this.server?.prepared;
    if (!prepared || prepared.size < this.options.maxPreparedStatements) return [];
    const oldest = prepared.keys().next().value as string;
    prepared.delete(oldest);
    this.expect({ type: CLOSE_COMPLETE, swallow: true });
    return [closeStatement(oldest)];
  }

  private send(messages: Buffer[]): void {
    const socket = this.conn!.session.socket;
    let ok: boolean;
    if (messages.length === 1) ok = socket.write(messages[0]!);
    else {
      // One system call for all of them.
      socket.cork();
      ok = true;
      for (const m of messages) ok = socket.write(m) && ok;
      socket.uncork();
    }
    if (!ok) this.options.client.pause();
  }

  /**
   * Finds a server connection for the bytes kept in `raw`: at once when one is idle, else when
   * one is given back. Once clients outnumber server connections that is most transactions: no
   * promise and no timer on the way.
   */
  private attach(): void {
    this.acquiring = true;
    this.options.pools.acquireThen(this.options.request, this.acquired);
  }

  private readonly acquired = (error: Error | undefined, conn: ServerConnection | undefined) => {
    if (!conn) {
      this.acquiring = false;
      this.fail(error instanceof PgError ? error : new PgError('08006', String(error)));
      return;
    }
    if (this.finished) {
      this.acquiring = false;
      this.options.pools.release(conn, true);
      return;
    }
    // Usually the connection already carries this client's settings: nothing to wait for.
    if (carriesSettings(serverState(conn), this.options.state)) {
      this.start(conn);
      return;
    }
    prepareServer(conn, this.options.state).then(
      () => {
        if (!this.finished) return this.start(conn);
        this.acquiring = false;
        this.options.pools.release(conn, true);
      },
      (failure: unknown) => {
        this.acquiring = false;
        this.options.pools.release(conn, false);
        this.fail(failure instanceof PgError ? failure : new PgError('08006', String(failure)));
      },
    );
  };

  /** Binds `conn` and sends it what the client said while it waited. */
  private start(conn: ServerConnection): void {
    this.bind(conn);
    this.acquiring = false;
    this.sendWaiting();
  }

  private sendWaiting(): void {
    const raw = this.raw;
    if (this.rawBytes > MAX_WAITING_BYTES) this.options.client.resume();
    this.rawBytes = 0;
    if (raw.length === 0) return;
    const bytes = raw.length === 1 ? raw[0]! : Buffer.concat(raw);
    raw.length = 0;
    this.fromClient(bytes);
  }

  /** Makes `conn` the client's server connection: its bytes now come to this relay. */
  private bind(conn: ServerConnection): void {
    this.conn = conn;
    this.server = serverState(conn);
    this.options.onServer(conn);
    conn.sink = this;
    // A quiet query of the relay's may have left it paused.
    conn.session.socket.resume();
  }

  /** Stops hearing the server connection; returns it (the caller releases it). */
  private unbind(): ServerConnection | undefined {
    const conn = this.conn;
    if (!conn) return undefined;
    conn.sink = undefined;
    this.conn = undefined;
    this.server = undefined;
    this.options.onServer(undefined);
    return conn;
  }

  serverData(conn: ServerConnection, data: Buffer): void {
    if (conn === this.conn) this.fromServer(data);
  }

  serverGone(conn: ServerConnection): void {
    if (conn === this.conn) this.serverEnded();
  }

  serverDrain(): void {
    if (!this.finished) this.options.client.resume();
  }

  private fromServer(data: Buffer): void {
    if (this.finished) return;
    // Frames are scanned in place. A header split across chunks is held back until it is whole,
    // so that a response to the proxy's own message can always be cut out before the client
    // sees any of it. At an idle ReadyForQuery with nothing pending the connection goes back.
    let chunk = data;
    if (this.hold) {
      chunk = Buffer.concat([this.hold, data]);
      this.hold = undefined;
    }
    const end = chunk.length;
    let i = 0;
    let writeFrom = 0;
    let stop = end;
    let release = false;
    /** What the client gets, when parts of the chunk are cut out or replaced. */
    let pieces: Buffer[] | undefined;
    while (i < end) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, end - i);
        if (this.status) this.status.push(chunk.subarray(i, i + take));
        else if (this.capture) this.capture.push(chunk.subarray(i, i + take));
        else if (this.frameType === READY) this.readyStatus = chunk[i]!;
        if (this.dropFrame) {
          pieces ??= [];
          if (i > writeFrom) pieces.push(chunk.subarray(writeFrom, i));
          writeFrom = i + take;
        }
        this.remaining -= take;
        i += take;
        if (this.remaining === 0) {
          if (this.capture) {
            const instead = this.captured();
            if (instead) (pieces ??= []).push(instead);
          }
          if (this.frameEnded()) {
            release = true;
            stop = i;
            break;
          }
          if (this.failing) {
            stop = i;
            break;
          }
        }
        continue;
      }
      if (end - i < 5) {
        this.hold = Buffer.from(chunk.subarray(i));
        stop = i;
        break;
      }
      const type = chunk[i]!;
      const length = chunk.readInt32BE(i + 1);
      const frameStart = i;
      i += 5;
      this.frameType = type;
      this.remaining = length - 4;
      const afterParameters = this.afterParameters;
      this.afterParameters = type === PARAMETER_DESCRIPTION;
      let cut = false;
      if (type === PARSE_COMPLETE || type === CLOSE_COMPLETE) {
        const e = this.expected.shift();
        if (e?.defines) {
          this.server?.prepared.set(e.defines, true);
          this.server?.shapes.delete(e.defines);
        }
        if (e?.removes) this.server?.prepared.delete(e.removes);
        cut = e?.swallow === true;
      } else if (type === PARAMETER_STATUS) {
        this.status = [];
      } else if (type === COPY_IN) {
        this.copyIn = true;
      } else if (type === COPY_OUT) {
        this.copyIn = false;
      } else if (type === PARAMETER_DESCRIPTION) {
        const sent = this.describeAnswered();
        if (sent) {
          this.describing = sent;
          this.capture = [chunk.subarray(frameStart, i)];
          cut = sent.swallow;
        }
      } else if (type === ROW_DESCRIPTION || type === NO_DATA) {
        // The end of a statement's description, or a portal's whole one (or, in a simple query's
        // batch, its rows' description, which no recorded Describe matches).
        const sent = afterParameters ? this.describing : this.describeAnswered();
        if (sent) {
          this.describing = sent;
          this.capture = [chunk.subarray(frameStart, i)];
          cut = sent.swallow;
        }
      } else if (type === ERROR) {
        if (this.replaceError) {
          this.capture = [chunk.subarray(frameStart, i)];
          cut = true;
        } else if (this.verifying) {
          // The batch failed before the proxy's Describe (which the server now skips, as it will
          // skip the client's messages up to its Sync): send those on unchecked.
          this.trustUntilSync = true;
          this.verifyDone = true;
        }
      }
      if (cut) {
        pieces ??= [];
        if (frameStart > writeFrom) pieces.push(chunk.subarray(writeFrom, frameStart));
        writeFrom = i;
        this.dropFrame = this.remaining > 0;
      }
      if (this.remaining === 0 && this.capture) {
        const instead = this.captured();
        if (instead) (pieces ??= []).push(instead);
      }
    }
    const client = this.options.client;
    let ok = true;
    if (pieces) {
      if (writeFrom < stop) pieces.push(chunk.subarray(writeFrom, stop));
      client.cork();
      for (const p of pieces) ok = client.write(p) && ok;
      client.uncork();
    } else if (stop > 0) {
      ok = client.write(stop === end ? chunk : chunk.subarray(0, stop));
    }
    if (this.verifyDone) this.sendHeld();
    if (release) {
      // Anything after the final ReadyForQuery (an async notice) belongs to this client too.
      // Backpressure no longer matters: the connection leaves this client.
      if (stop < end && !this.hold) client.write(chunk.subarray(stop));
      this.transactionEnded();
    } else if (!ok) this.conn?.session.socket.pause();
    if (this.failing && (release || (this.remaining === 0 && !this.hold))) this.fail(this.failing);
  }

  /**
   * A frame read whole (capture) has ended. A statement's description is recorded, for the
   * server connection and, when the client saw it, for the client's statement; an error that is
   * STALE_EXECUTE's becomes STALE_STATEMENT. Returns what the client gets in place of a frame
   * that was cut out, if anything.
   */
  private captured(): Buffer | undefined {
    const parts = this.capture!;
    this.capture = undefined;
    this.dropFrame = false;
    const frame = parts.length === 1 ? Buffer.from(parts[0]!) : Buffer.concat(parts);
    if (frame[0] === ERROR) {
      this.replaceError = false;
      return frame.includes(STALE_PORTAL) ? STALE_STATEMENT : frame;
    }
    if (frame[0] === PARAMETER_DESCRIPTION) {
      this.parameterFrame = frame;
      return undefined;
    }
    const sent = this.describing!;
    const row = rowShape(frame);
    const types = this.parameterFrame && parameterTypes(this.parameterFrame);
    this.describing = this.parameterFrame = undefined;
    const name = sent.statement.serverName;
    const known = this.server?.shapes.get(name);
    this.server?.shapes.set(name, { row, parameterTypes: types ?? known?.parameterTypes });
    if (!sent.swallow) {
      sent.statement.shape = row;
      if (types) sent.statement.parameterTypes = types;
    }
    if (sent === this.verifying) this.verifyDone = true;
    return undefined;
  }

  /** The statement the held bytes wait for is described (or moot): they go on now. */
  private sendHeld(): void {
    const held = this.held!;
    this.verifyDone = false;
    this.verifying = this.held = undefined;
    if (this.rawBytes > MAX_WAITING_BYTES) this.options.client.resume();
    this.rawBytes = 0;
    this.fromClient(held.length === 1 ? held[0]! : Buffer.concat(held));
  }

  /** Partial frame header held back from the last server chunk. */
  private hold: Buffer | undefined;

  /** A server frame's last byte has passed. True when the connection can go back now. */
  private frameEnded(): boolean {
    if (this.status) this.parameterStatus();
    if (this.frameType !== READY) return false;
    this.copyIn = false;
    if (this.pendingReady > 0) this.pendingReady--;
    this.batchesDone++;
    // Responses still expected from finished batches will not come (an error skipped them).
    while (this.expected.length > 0 && this.expected[0]!.batch < this.batchesDone) {
      this.expected.shift();
    }
    this.describesAnswered = 0;
    while (this.describes.length > 0 && this.describes[0]!.batch < this.batchesDone) {
      this.describes.shift();
    }
    if (this.databaseHolds.length > 0) this.endDatabaseHolds(this.batchesDone);
    if (this.readyStatus !== STATUS_IDLE && this.pendingReady === 0) this.idleTimer?.idle();
    return (
      this.readyStatus === STATUS_IDLE &&
      this.pendingReady === 0 &&
      !this.unsynced &&
      !this.options.state.pinned &&
      this.tail === undefined
    );
  }

  private parameterStatus(): void {
    const frame = Buffer.concat(this.status!);
    this.status = undefined;
    const nameEnd = frame.indexOf(0);
    const valueEnd = frame.indexOf(0, nameEnd + 1);
    if (nameEnd < 0 || valueEnd < 0) return;
    const name = frame.toString('utf8', 0, nameEnd);
    const value = frame.toString('utf8', nameEnd + 1, valueEnd);
    this.server?.reported.set(name, value);
    this.options.state.reported.set(name, value);
    this.options.state.version++;
    if (this.server) this.server.ownerVersion = this.options.state.version;
  }

  /** Whether the client is outside a transaction with nothing on its way: its connection can go. */
  private atTransactionEnd(): boolean {
    return (
      (this.readyStatus === STATUS_IDLE || this.readyStatus === 0) &&
      this.pendingReady === 0 &&
      !this.unsynced &&
      !this.options.state.pinned &&
      this.tail === undefined &&
      this.conn !== undefined
    );
  }

  /** The server connection goes back, after a look at what the transaction left where needed. */
  private transactionEnded(): void {
    if (this.runsCode && !this.check) {
      const verdict = codeVerdicts.get(this.conn!.pool);
      if (verdict && !verdict.risky && Date.now() - verdict.at < CODE_VERDICT_MS) {
        this.runsCode = false;
      }
    }
    if (this.settingsChanged || this.check || this.runsCode || this.resyncPrepared) {
      void this.afterTransaction();
    } else this.detach();
  }

  /** Gives the server connection back to the pool after a transaction that changed no settings. */
  private detach(): void {
    const conn = this.unbind();
    if (!conn) return;
    this.options.pools.release(conn, true);
    if (this.closing) return this.fail(this.closing);
    this.options.client.resume();
  }

  /**
   * After a transaction that may have left something on its server connection, reads back in one
   * query what the server kept: the session's settings (a SET that failed or was rolled back is
   * not there, one sent with the extended protocol is), then made the client's; whether it holds
   * temporary objects or statements prepared with SQL PREPARE, which are the client's alone and
   * pin it to this connection; and which prepared statements the connection still has after a
   * DEALLOCATE or DISCARD. The client's next messages wait meanwhile.
   */
  private async afterTransaction(): Promise<void> {
    const server = this.server!;
    const conn = this.unbind()!;
    const settings = this.settingsChanged;
    const resync = this.resyncPrepared;
    const sessionState = this.check || this.runsCode;
    const parts: string[] = [];
    if (settings) parts.push(SETTINGS_ROWS);
    if (sessionState) parts.push(SESSION_STATE_ROWS, RISKY_CODE_ROWS);
    if (resync) parts.push(PREPARED_ROWS);
    this.settingsChanged = this.check = this.runsCode = this.resyncPrepared = false;
    this.acquiring = true;
    let clean = true;
    let pin: string | undefined;
    try {
      const rows: string[][] = [];
      const sql = `${parts.join(' UNION ALL ')} ORDER BY 1, 2`;
      await runQuiet(conn, sql, server, 0, this.options.resetTimeoutMs, false, rows);
      const adopted: [string, string][] = [];
      const kept = new Set<string>();
      let risky = false;
      for (const [kind, name, value] of rows) {
        if (kind === 's') adopted.push([name!, value!]);
        else if (kind === 'f') risky = true;
        else if (kind === 't') pin = 'temporary objects';
        else if (kind === 'q') pin ??= `a statement prepared with SQL PREPARE (${name})`;
        else kept.add(name!);
      }
      if (sessionState) codeVerdicts.set(conn.pool, { risky, at: Date.now() });
      if (settings) {
        this.options.state.adoptSettings(adopted);
        server.appliedKey = this.options.state.statementsKey;
        server.owner = this.options.state;
        server.ownerVersion = this.options.state.version;
      }
      if (resync)
        for (const name of server.prepared.keys())
          if (!kept.has(name)) server.prepared.delete(name);
    } catch {
      clean = false;
    }
    this.acquiring = false;
    if (clean && pin) {
      this.options.state.pinned = pin;
      this.options.onPinned(pin);
      if (this.finished) {
        void this.cleanUp(conn);
        return;
      }
      this.bind(conn);
      this.sendWaiting();
      return;
    }
    this.options.pools.release(conn, clean);
    if (this.finished) return;
    if (this.closing) return this.fail(this.closing);
    this.options.client.resume();
    this.sendWaiting();
  }

  private readonly resumeServer = (): void => {
    if (!this.finished) this.conn?.session.socket.resume();
  };

  private readonly clientEnded = (): void => {
    this.finish('client');
  };

  private readonly serverEnded = (): void => {
    if (this.finished) return;
    const conn = this.unbind();
    if (conn) this.options.pools.release(conn, false);
    const client = this.options.client;
    // A server that says why it leaves (FATAL) has said it already; one that just vanished, we say.
    if (
      !client.destroyed &&
      this.remaining === 0 &&
      this.hold === undefined &&
      this.frameType !== ERROR
    ) {
      client.write(
        errorResponse(
          new PgError(
            '08006',
            'server connection lost in the middle of a transaction',
            undefined,
            'The transaction was rolled back by the server going away; retry it.',
          ),
        ),
      );
    }
    this.finish('server');
  };

  /** Whether the client waits for a server connection now (for SHOW CLIENTS; not per message). */
  waiting(): boolean {
    return this.acquiring && this.conn === undefined;
  }

  /** Disconnects the client with `error` (its branch was reset or deleted under it). */
  terminate(error: PgError): void {
    this.fail(error);
  }

  /**
   * Disconnects the client with `error` once its transaction has ended: at once when it holds no
   * server connection and waits for none, else when it gives its connection back.
   */
  terminateWhenIdle(error: PgError): void {
    if (this.conn === undefined && !this.acquiring) this.fail(error);
    else this.closing = error;
  }

  private failAtBoundary(error: PgError): void {
    if (this.conn && (this.remaining > 0 || this.hold !== undefined)) {
      this.failing = error;
      this.options.client.pause();
    } else this.fail(error);
  }

  private fail(error: PgError): void {
    const client = this.options.client;
    if (!client.destroyed) client.write(errorResponse(error));
    this.finish('error');
  }

  private finish(reason: 'client' | 'server' | 'error'): void {
    if (this.finished) return;
    this.finished = true;
    this.idleTimer?.stop();
    const client = this.options.client;
    client.removeListener('data', this.fromClient);
    client.removeListener('end', this.clientEnded);
    client.removeListener('close', this.clientEnded);
    client.removeListener('error', this.clientEnded);
    client.removeListener('drain', this.resumeServer);
    this.endDatabaseHolds(Infinity);
    const conn = this.unbind();
    if (conn) void this.cleanUp(conn);
    this.resolveEnd(reason);
  }

  /** A client that left mid-transaction: roll back on its server connection, then pool it. */
  private async cleanUp(conn: ServerConnection): Promise<void> {
    const server = serverState(conn);
    // After a deferred failure the rest of the server's chunk was never scanned: close it.
    const midFrame =
      this.remaining > 0 ||
      this.hold !== undefined ||
      this.tail !== undefined ||
      this.failing !== undefined;
    if (midFrame) {
      this.options.pools.release(conn, false);
      return;
    }
    const socket = conn.session.socket;
    try {
      if (this.copyIn) socket.write(copyFail('client disconnected'));
      await runQuiet(
        conn,
        this.unsynced ? null : 'ROLLBACK',
        server,
        this.pendingReady,
        this.options.resetTimeoutMs,
        this.unsynced,
      );
      if (this.options.state.pinned || this.check || this.runsCode) {
        // What pinned the client (temporary objects, SQL prepared statements, LISTEN, advisory
        // locks, WITH HOLD cursors), or what its unfinished transaction may have left (PREPARE
        // outlives a rollback), is its own: DISCARD ALL drops all of it, and its settings.
        await runQuiet(conn, 'DISCARD ALL', server, 0, this.options.resetTimeoutMs);
        server.prepared.clear();
        server.appliedKey = '';
        server.owner = undefined;
      } else server.appliedKey = this.options.state.statementsKey;
      this.options.pools.release(conn, true);
    } catch {
      this.options.pools.release(conn, false);
    }
  }
}

/** Makes a server connection carry a client's settings before the client uses it. */
export async function prepareServer(conn: ServerConnection, state: ClientState): Promise<void> {
  const server = serverState(conn);
  const settings = settingsFor(state, server);
  if (settings) await runQuiet(conn, settings, server);
  server.appliedKey = state.statementsKey;
  server.owner = state;
  server.ownerVersion = state.version;
}

/**
 * Runs SQL on an idle (or finishing) server connection and reads its responses without passing
 * them on: waits for `before` outstanding ReadyForQuery messages, then the query's own. Records
 * reported parameters. Rejects on an error or timeout.
 */
function runQuiet(
  conn: ServerConnection,
  sql: string | null,
  server: ServerState,
  before = 0,
  timeoutMs = 10_000,
  abortUnsynced = false,
  /** Collects the text columns of the query's rows. */
  rows?: string[][],
): Promise<void> {
  const socket = conn.session.socket;
  return new Promise((resolve, reject) => {
    let buffered: Buffer | undefined;
    let waiting = before + (sql ? 1 : 0) + (abortUnsynced ? 1 : 0);
    let failed = false;
    const done = (error?: Error) => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('close', onClose);
      socket.removeListener('error', onClose);
      socket.pause();
      if (error) reject(error);
      else resolve();
    };
    const timer = setTimeout(() => done(new Error('no answer from the server')), timeoutMs);
    const onClose = () => done(new Error('server connection closed'));
    const onData = (chunk: Buffer) => {
      buffered = buffered ? Buffer.concat([buffered, chunk]) : chunk;
      let i = 0;
      while (i + 5 <= buffered.length) {
        const length = buffered.readInt32BE(i + 1);
        if (i + 1 + length > buffered.length) break;
        const type = buffered[i]!;
        if (type === ERROR) failed = true;
        else if (type === DATA_ROW && rows && waiting === 1) rows.push(dataRow(buffered, i + 5));
        else if (type === PARAMETER_STATUS) {
          const nameEnd = buffered.indexOf(0, i + 5);
          const valueEnd = buffered.indexOf(0, nameEnd + 1);
          server.reported.set(
            buffered.toString('utf8', i + 5, nameEnd),
            buffered.toString('utf8', nameEnd + 1, valueEnd),
          );
        } else if (type === READY) {
          waiting--;
          if (waiting === 0) {
            const idle = buffered[i + 5] === STATUS_IDLE;
            done(failed || !idle ? new Error('the server connection is not clean') : undefined);
            return;
          }
          // Errors before our own query are the departed client's, not ours.
          failed = false;
        }
        i += 1 + length;
      }
      buffered = buffered.subarray(i);
    };
    socket.on('data', onData);
    socket.on('close', onClose);
    socket.on('error', onClose);
    socket.resume();
    if (abortUnsynced) socket.write(abortBatch());
    if (sql) socket.write(query(sql));
    if (waiting === 0) done();
  });
}

/** The columns of the DataRow whose body starts at `at`, as text (NULL as ''). */
function dataRow(buffer: Buffer, at: number): string[] {
  const count = buffer.readInt16BE(at);
  const columns: string[] = [];
  let i = at + 2;
  for (let c = 0; c < count; c++) {
    const length = buffer.readInt32BE(i);
    i += 4;
    columns.push(length < 0 ? '' : buffer.toString('utf8', i, i + length));
    if (length > 0) i += length;
  }
  return columns;
}

function parseMessage(serverName: string, definition: Buffer): Buffer {
  return message('P', Buffer.concat([cstring(serverName), definition]));
}

function describeStatement(serverName: string): Buffer {
  return message('D', Buffer.concat([Buffer.from('S', 'latin1'), cstring(serverName)]));
}

function closeStatement(serverName: string): Buffer {
  return message('C', Buffer.concat([Buffer.from('S', 'latin1'), cstring(serverName)]));
}

/** A message of `type` with the statement name between `before` and `after` replaced. */
function withName(type: number, before: Buffer, serverName: string, after: Buffer): Buffer {
  const nameLength = Buffer.byteLength(serverName);
  const out = Buffer.allocUnsafe(5 + before.length + nameLength + after.length);
  out[0] = type;
  out.writeInt32BE(4 + before.length + nameLength + after.length, 1);
  before.copy(out, 5);
  out.write(serverName, 5 + before.length, 'utf8');
  after.copy(out, 5 + before.length + nameLength);
  return out;
}
