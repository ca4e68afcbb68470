// Runs the protocol fuzzer's cases (fuzz-cases.ts) against a running pgbranch and judges what it
// did with each input: answered (with or without an ErrorResponse), closed, or waited for the rest
// of an input that was cut short and closed once the client left. Anything else is a failure: no
// answer within the deadline to an input that was whole (a hang), a connection still open after
// the client left (stuck), a malformed or unexpected message, or one of pgbranch's internal errors.
// Alongside it samples pgbranch's RSS and keeps well-behaved clients running `select 1`.
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import pg from 'pg';
import {
  generateCase,
  KINDS,
  MD5_USER,
  SCRAM_USER,
  type FuzzCase,
  type Kind,
  type Mode,
  type PlusLogin,
} from './fuzz-cases.js';
import { framing, msg, startupPacket } from './fuzz-messages.js';

/** How long a whole input may go unanswered before it counts as a hang. */
export const ANSWER_DEADLINE_MS = Number(process.env.FUZZ_DEADLINE_MS ?? 10_000);
/** An input cut short may rightly be waited on: how long the client waits before leaving. */
const QUIET_MS = 200;
/** How soon pgbranch must close a connection after the client has half-closed it. */
const CLOSE_DEADLINE_MS = 5_000;
/** A short input whose last message claims at most this many more bytes is completed with zeros. */
const PAD_LIMIT = 256 * 1024;
/** Failures kept for the report (all are counted in the outcomes). */
const MAX_FAILURES_KEPT = 1_000;
/** The well-behaved clients' pause between queries: they prove service, not throughput. */
const GOOD_CLIENT_PAUSE_MS = 20;

export type { Kind };

export type Outcome =
  | 'answered'
  | 'error'
  | 'error, closed'
  | 'closed'
  | 'logged in'
  | 'logged in over TLS'
  | 'SASL continued, closed when the client left'
  | 'waited, closed when the client left';

export interface Failure {
  case: number;
  kind: Kind;
  mode: Mode;
  input: string;
  what: string;
  bytes: string;
  /** When (Date.now()): failures while PostgreSQL itself crashed are told apart by it. */
  at: number;
}

export interface Tally {
  cases: number;
  inputs: number;
  byKind: Record<Kind, number>;
  byMode: Record<Mode, number>;
  /** Milliseconds spent on each kind's connections, summed over the workers. */
  timeMs: Record<Kind, number>;
  outcomes: Record<string, number>;
  /** SQLSTATEs of the ErrorResponses the inputs got. */
  codes: Record<string, number>;
  failures: Failure[];
}

export function emptyTally(): Tally {
  return {
    cases: 0,
    inputs: 0,
    byKind: Object.fromEntries(KINDS.map((k) => [k, 0])) as Record<Kind, number>,
    byMode: { session: 0, transaction: 0 },
    timeMs: Object.fromEntries(KINDS.map((k) => [k, 0])) as Record<Kind, number>,
    outcomes: {},
    codes: {},
    failures: [],
  };
}

export interface RunOptions {
  port: number;
  password: string;
  seed: number;
  /** Stop starting cases once this many inputs have been sent. */
  inputs: number;
  /** Connections in flight. */
  concurrency: number;
  /** Only this case (replay). */
  onlyCase?: number;
  /** The first case to run (later cases replay without the ones before). */
  firstCase?: number;
  /** Only cases of these kinds (the others are skipped, not counted). */
  kinds?: readonly Kind[];
  /** Told when each case starts and ends, so that a crash of PostgreSQL can be traced to one. */
  inFlight?: CasesInFlight;
  onProgress?: (tally: Tally) => void;
}

/**
 * The cases running now and those that ended in the last few seconds: when PostgreSQL crashes,
 * the case that crashed it is one of them (its own connection may have closed first).
 */
export class CasesInFlight {
  private readonly running = new Set<number>();
  private ended: { index: number; at: number }[] = [];
  start(index: number): void {
    this.running.add(index);
  }
  end(index: number): void {
    this.running.delete(index);
    const now = Date.now();
    this.ended.push({ index, at: now });
    if (this.ended.length > 1000) this.ended = this.ended.filter((e) => now - e.at < 2_000);
  }
  /**
   * Cases that may have caused what happened at `at`, likeliest first: a crash closes its
   * culprit's connection at once, so the case that ended last before it comes first.
   */
  around(at: number): number[] {
    const recent = this.ended
      .filter((e) => at - e.at < 2_000)
      .sort((a, b) => b.at - a.at)
      .map((e) => e.index);
    return [...new Set([...recent, ...this.running])];
  }
}

/** Runs cases 0, 1, 2... until `inputs` inputs have been sent; returns what happened. */
export async function runFuzz(options: RunOptions): Promise<Tally> {
  const tally = emptyTally();
  const keys = new LiveKeys();
  const login = new ScramCache(options.password);
  let next = options.onlyCase ?? options.firstCase ?? 0;
  const last = options.onlyCase ?? Infinity;
  let lastProgress = Date.now();
  const worker = async () => {
    while (tally.inputs < options.inputs && next <= last) {
      const c = generateCase(options.seed, next++);
      if (options.kinds && !options.kinds.includes(c.kind)) continue;
      const started = Date.now();
      options.inFlight?.start(c.index);
      await runCase(options.port, c, tally, keys, login);
      options.inFlight?.end(c.index);
      tally.timeMs[c.kind] += Date.now() - started;
      tally.cases++;
      if (options.onProgress && Date.now() - lastProgress > 10_000) {
        lastProgress = Date.now();
        options.onProgress(tally);
      }
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  return tally;
}

// --- One case -----------------------------------------------------------------------------------

async function runCase(
  port: number,
  c: FuzzCase,
  tally: Tally,
  keys: LiveKeys,
  scram: ScramCache,
): Promise<void> {
  let conn: Connection;
  try {
    conn = await Connection.open(port);
  } catch (error) {
    tally.failures.push({
      case: c.index,
      kind: c.kind,
      mode: c.mode,
      input: c.name,
      what: `connect: ${(error as Error).message}`,
      bytes: '',
      at: Date.now(),
    });
    return;
  }
  const outcome = (input: string, what: Outcome) => {
    tally.inputs++;
    tally.byKind[c.kind]++;
    tally.byMode[c.mode]++;
    tally.outcomes[what] = (tally.outcomes[what] ?? 0) + 1;
    for (const code of conn.takeCodes()) tally.codes[code] = (tally.codes[code] ?? 0) + 1;
    void input;
  };
  const fail = (input: string, what: string, bytes: Buffer) => {
    tally.inputs++;
    tally.byKind[c.kind]++;
    tally.byMode[c.mode]++;
    tally.outcomes.failure = (tally.outcomes.failure ?? 0) + 1;
    if (tally.failures.length < MAX_FAILURES_KEPT) {
      tally.failures.push({
        case: c.index,
        kind: c.kind,
        mode: c.mode,
        input,
        what,
        bytes: hex(bytes),
        at: Date.now(),
      });
    }
  };
  try {
    if (c.cancel) {
      let bytes = c.cancel.bytes;
      const key = c.cancel.liveKey ? keys.any() : undefined;
      if (key) bytes = Buffer.concat([bytes.subarray(0, 8), key]);
      // A CancelRequest must be answered by a close. Mutated into something else (a packet
      // shorter than its length word says, an SSLRequest, a startup packet), it may rightly be
      // waited on: then pgbranch must close once the client leaves.
      const cancel =
        bytes.length === 16 && bytes.readInt32BE(0) === 16 && bytes.readInt32BE(4) === 80877102;
      conn.startupPhase = true;
      await conn.finish(c.name, bytes, !cancel, outcome, fail);
    } else if (c.auth) {
      await runAuth(conn, c, outcome, fail);
    } else if (c.tls) {
      if (!(await runTls(conn, c, scram, outcome, fail))) return;
      for (const [i, input] of c.inputs.entries()) {
        if (!(await conn.send(input.name, input.bytes, i, outcome, fail))) break;
      }
    } else {
      await conn.login(c, scram);
      const key = conn.key;
      if (key) keys.add(key);
      try {
        for (const [i, input] of c.inputs.entries()) {
          const more = await conn.send(input.name, input.bytes, i, outcome, fail);
          if (!more) break;
        }
      } finally {
        if (key) keys.remove(key);
      }
    }
  } catch (error) {
    fail(c.name, `harness: ${(error as Error).message}`, Buffer.alloc(0));
  } finally {
    conn.destroy();
  }
  const problems = conn.problems();
  for (const problem of problems) fail(c.name, problem, Buffer.alloc(0));
}

async function runAuth(
  conn: Connection,
  c: FuzzCase,
  outcome: (input: string, what: Outcome) => void,
  fail: (input: string, what: string, bytes: Buffer) => void,
): Promise<void> {
  const auth = c.auth!;
  const user = auth.method === 'md5' ? MD5_USER : SCRAM_USER;
  conn.write(startupPacket({ user, database: 'postgres' }));
  const request = await conn.authRequest();
  if (!request)
    return fail(c.name, 'no authentication request after the startup packet', Buffer.alloc(0));
  let bytes: Buffer;
  if (auth.method === 'md5') {
    if (request.code !== 5)
      return fail(
        c.name,
        `expected AuthenticationMD5Password, got ${request.code}`,
        Buffer.alloc(0),
      );
    bytes = auth.response(request.data.subarray(0, 4));
  } else {
    if (request.code !== 10)
      return fail(c.name, `expected AuthenticationSASL, got ${request.code}`, Buffer.alloc(0));
    if (auth.initial !== 'valid') {
      bytes = auth.initial;
    } else {
      const clientFirstBare = `n=,r=${randomBytes(18).toString('base64')}`;
      conn.write(msg.saslInitial('SCRAM-SHA-256', Buffer.from(`n,,${clientFirstBare}`)));
      const challenge = await conn.authRequest();
      if (challenge?.code !== 11)
        return fail(
          c.name,
          `expected AuthenticationSASLContinue, got ${challenge?.code}`,
          Buffer.alloc(0),
        );
      bytes = auth.final!(challenge.data.toString('utf8'));
    }
  }
  // Nothing at all (a mutation may cut everything) or a message cut short may be waited on.
  const mayWait = bytes.length === 0 || framing(bytes).state === 'short';
  const mayLogIn = auth.method === 'md5' && auth.mayLogIn === true;
  await conn.finish(c.name, bytes, mayWait, outcome, fail, mayLogIn ? 'either' : 'refused');
}

/**
 * A TLS case: TLS started after an SSLRequest or directly, then handshake bytes gone wrong (which
 * pgbranch must close on), or a SCRAM-SHA-256-PLUS login (which it must refuse unless its channel
 * binding is right). Returns whether the client is logged in over TLS, for the case's inputs.
 */
async function runTls(
  conn: Connection,
  c: FuzzCase,
  scram: ScramCache,
  outcome: (input: string, what: Outcome) => void,
  fail: (input: string, what: string, bytes: Buffer) => void,
): Promise<boolean> {
  const script = c.tls!;
  if (!script.direct && !(await conn.sslRequest())) {
    fail(c.name, 'SSLRequest not answered S by a pgbranch with a certificate', Buffer.alloc(0));
    return false;
  }
  if ('handshake' in script) {
    const bytes = script.handshake(await clientHello());
    // What pgbranch sends now is TLS records (alerts), not protocol messages.
    conn.opaque = true;
    await conn.finish(c.name, bytes, true, outcome, fail);
    return false;
  }
  let certificateHash: Buffer;
  try {
    certificateHash = await conn.startTls();
  } catch (error) {
    fail(c.name, `TLS handshake: ${(error as Error).message}`, Buffer.alloc(0));
    return false;
  }
  return conn.loginPlus(c, script.plus, certificateHash, scram, outcome, fail);
}

let helloSample: Promise<Buffer> | undefined;

/** A real ClientHello, as node:tls sends it (ALPN postgresql), for the handshakes to mutate. */
function clientHello(): Promise<Buffer> {
  return (helloSample ??= new Promise((resolve) => {
    const capture = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        resolve(Buffer.from(chunk));
        callback();
        setImmediate(() => secure.destroy());
      },
    });
    const secure = tls.connect({
      socket: capture,
      servername: 'localhost',
      ALPNProtocols: ['postgresql'],
    });
    secure.on('error', () => undefined);
  }));
}

// --- A connection -------------------------------------------------------------------------------

/** Backend message types pgbranch may send. */
const BACKEND_TYPES = new Set([...'RKSZTDCENA123nstIGHWdcVv']);

class Connection {
  private buffer: Buffer = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  private closed = false;
  private readonly errors: string[] = [];
  private codes: string[] = [];
  key: Buffer | undefined;
  /**
   * Before a startup packet: an SSLRequest or GSSENCRequest is answered with one byte, 'N', or
   * for an SSLRequest 'S', after which only TLS records come (see opaque).
   */
  startupPhase = false;
  /** What pgbranch sends is TLS records, not messages: only its close is waited for. */
  opaque = false;
  private socket: net.Socket;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.listen(socket);
  }

  private readonly onData = (chunk: Buffer) => {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    this.wake?.();
  };

  private readonly onClose = () => {
    this.closed = true;
    this.wake?.();
  };

  private listen(socket: net.Socket): void {
    socket.setNoDelay(true);
    socket.on('data', this.onData);
    socket.on('error', () => undefined);
    socket.on('close', this.onClose);
  }

  /** Sends an SSLRequest and reads the one-byte answer: whether it is S. */
  async sslRequest(): Promise<boolean> {
    this.write(Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]));
    const deadline = Date.now() + ANSWER_DEADLINE_MS;
    while (this.buffer.length === 0 && !this.closed && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, deadline - Date.now());
        this.wake = () => {
          clearTimeout(timer);
          this.wake = undefined;
          resolve();
        };
      });
    }
    const answer = this.buffer[0];
    this.buffer = this.buffer.subarray(1);
    return answer === 0x53;
  }

  /**
   * The client side of the TLS handshake over this connection (ALPN postgresql, so that direct TLS
   * is accepted too); afterwards the connection speaks over TLS. Resolves with the hash of
   * pgbranch's certificate that tls-server-end-point binds (SHA-256 for its ECDSA-with-SHA256
   * certificate).
   */
  async startTls(): Promise<Buffer> {
    const raw = this.socket;
    raw.removeListener('data', this.onData);
    raw.removeListener('close', this.onClose);
    const secure = tls.connect({
      socket: raw,
      servername: 'localhost',
      ALPNProtocols: ['postgresql'],
      rejectUnauthorized: false,
    });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    this.socket = secure;
    this.listen(secure);
    return createHash('sha256').update(secure.getPeerX509Certificate()!.raw).digest();
  }

  /**
   * A SCRAM-SHA-256-PLUS login as `login` says; fails the case if pgbranch does not offer PLUS
   * first over TLS, refuses a valid login, or lets a wrong one in. Returns whether it is in.
   */
  async loginPlus(
    c: FuzzCase,
    login: PlusLogin,
    certificateHash: Buffer,
    scram: ScramCache,
    outcome: (input: string, what: Outcome) => void,
    fail: (input: string, what: string, bytes: Buffer) => void,
  ): Promise<boolean> {
    const options = `-c statement_timeout=5000${c.mode === 'transaction' ? ' -c pgbranch.pool_mode=transaction' : ''}`;
    this.write(startupPacket({ user: SCRAM_USER, database: c.database, options }));
    const sasl = await this.authRequest();
    if (sasl?.code !== 10) {
      fail(c.name, `expected AuthenticationSASL over TLS, got ${sasl?.code}`, Buffer.alloc(0));
      return false;
    }
    const mechanisms = sasl.data.toString('utf8').split('\0').filter(Boolean);
    if (mechanisms[0] !== 'SCRAM-SHA-256-PLUS') {
      fail(c.name, `SCRAM-SHA-256-PLUS not offered first over TLS: ${mechanisms}`, Buffer.alloc(0));
      return false;
    }
    const clientFirstBare = `n=,r=${randomBytes(18).toString('base64')}`;
    const initial = msg.saslInitial(login.mechanism, Buffer.from(login.header + clientFirstBare));
    this.write(initial);
    const challenge = await this.message(ANSWER_DEADLINE_MS);
    if (challenge?.type !== 'R' || challenge.body.readInt32BE(0) !== 11) {
      if (login.expect === 'logged in' || challenge?.type !== 'E') {
        fail(
          c.name,
          `${login.name}: expected ${login.expect === 'logged in' ? 'AuthenticationSASLContinue' : 'an ErrorResponse'}, got ${challenge?.type ?? 'nothing'}`,
          initial,
        );
        return false;
      }
      // Refused at the client-first-message, as it must be: the error, then the close.
      await this.finish(
        c.name,
        Buffer.alloc(0),
        true,
        (input, what) => outcome(input, what === 'closed' ? 'error, closed' : what),
        fail,
        'refused',
      );
      return false;
    }
    const binding = Buffer.concat([Buffer.from(login.header), login.binding(certificateHash)]);
    let final = msg.saslResponse(
      scram.clientFinal(clientFirstBare, challenge.body.subarray(4).toString('utf8'), binding),
    );
    if (login.mutate) final = login.mutate(final);
    const mayWait = final.length === 0 || framing(final).state === 'short';
    const what = await this.finish(c.name, final, mayWait, outcome, fail, login.expect);
    return what === 'logged in over TLS';
  }

  static open(port: number): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.removeListener('error', reject);
        resolve(new Connection(socket));
      });
    });
  }

  write(bytes: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  destroy(): void {
    this.socket.destroy();
  }

  takeCodes(): string[] {
    const codes = this.codes;
    this.codes = [];
    return codes;
  }

  problems(): string[] {
    return this.errors;
  }

  /** Logs in as the superuser with SCRAM, in the case's pool mode. */
  async login(c: FuzzCase, scram: ScramCache): Promise<void> {
    const options = `-c statement_timeout=5000${c.mode === 'transaction' ? ' -c pgbranch.pool_mode=transaction' : ''}`;
    this.write(startupPacket({ user: SCRAM_USER, database: c.database, options }));
    const sasl = await this.authRequest();
    if (sasl?.code !== 10) throw new Error(`login: expected AuthenticationSASL, got ${sasl?.code}`);
    const clientFirstBare = `n=,r=${randomBytes(18).toString('base64')}`;
    this.write(msg.saslInitial('SCRAM-SHA-256', Buffer.from(`n,,${clientFirstBare}`)));
    const challenge = await this.authRequest();
    if (challenge?.code !== 11)
      throw new Error(`login: expected AuthenticationSASLContinue, got ${challenge?.code}`);
    this.write(
      msg.saslResponse(scram.clientFinal(clientFirstBare, challenge.data.toString('utf8'))),
    );
    for (;;) {
      const message = await this.message(ANSWER_DEADLINE_MS);
      if (!message) throw new Error('login: closed or timed out');
      if (message.type === 'E') throw new Error(`login: ${errorFields(message.body)?.M}`);
      if (message.type === 'K') this.key = Buffer.from(message.body);
      if (message.type === 'Z') return;
    }
  }

  /** The next Authentication request (code and data), or undefined on an error or a close. */
  async authRequest(): Promise<{ code: number; data: Buffer } | undefined> {
    const message = await this.message(ANSWER_DEADLINE_MS);
    if (message?.type !== 'R' || message.body.length < 4) {
      if (message?.type === 'E') {
        const fields = errorFields(message.body);
        this.errors.push(`refused before authentication: ${fields?.C} ${fields?.M}`);
      } else if (message)
        this.errors.push(`expected an Authentication request, got '${message.type}'`);
      return undefined;
    }
    return { code: message.body.readInt32BE(0), data: message.body.subarray(4) };
  }

  /**
   * Sends one input after login, then a probe that ends whatever state the input left (CopyFail
   * ends a COPY IN and is ignored elsewhere, Sync ends an extended batch) and sends a token; the
   * input is answered once the error naming the token has come, followed by ReadyForQuery. Returns whether the
   * connection can take another input.
   */
  async send(
    name: string,
    input: Buffer,
    n: number,
    outcome: (input: string, what: Outcome) => void,
    fail: (input: string, what: string, bytes: Buffer) => void,
  ): Promise<boolean> {
    let bytes = input;
    const frames = framing(bytes);
    let mayWait = frames.state === 'short';
    if (frames.state === 'short' && frames.missing > 0 && frames.missing <= PAD_LIMIT) {
      bytes = Buffer.concat([bytes, Buffer.alloc(frames.missing)]);
      mayWait = false;
    }
    const tag = `fuzzprobe${n}x${randomBytes(4).toString('hex')}`;
    const [first, token] = [`${tag}a`, `${tag}b`];
    // A word that is no command: PostgreSQL (even in a failed transaction, since it parses
    // first) and the console both answer it with a syntax error that names it. Twice, because
    // PostgreSQL 18 answers the first Query after some broken batches with an XX000 instead
    // ("StartTransactionCommand: unexpected state STARTED"), on its own as through pgbranch.
    const probe = Buffer.concat([
      msg.copyFail('probe'),
      msg.sync(),
      msg.query(first),
      msg.query(token),
    ]);
    await this.writeInPieces(bytes);
    this.write(probe);
    const deadline = Date.now() + (mayWait ? QUIET_MS : ANSWER_DEADLINE_MS);
    let errors = 0;
    let tokenSeen = false;
    for (;;) {
      const message = await this.message(deadline - Date.now());
      if (!message) {
        if (this.closed) {
          outcome(name, errors > 0 ? 'error, closed' : 'closed');
          return false;
        }
        if (mayWait) {
          await this.leave(name, input, outcome, fail);
          return false;
        }
        fail(name, `no answer within ${ANSWER_DEADLINE_MS} ms`, input);
        return false;
      }
      if (message.type === 'E' && message.body.includes(token)) tokenSeen = true;
      else if (message.type === 'E' && !message.body.includes(first)) errors++;
      if (message.type === 'Z' && tokenSeen) {
        outcome(name, errors > 0 ? 'error' : 'answered');
        return true;
      }
    }
  }

  /**
   * For inputs without a login after them (authentication, cancel requests): sends `bytes` and
   * waits for pgbranch to close (with or without an error) or to log the client in.
   */
  async finish(
    name: string,
    bytes: Buffer,
    mayWait: boolean,
    outcome: (input: string, what: Outcome) => void,
    fail: (input: string, what: string, bytes: Buffer) => void,
    /** What the input must lead to: a refusal (no login), a login, or either. */
    expected: 'refused' | 'logged in' | 'either' = 'either',
  ): Promise<Outcome | undefined> {
    await this.writeInPieces(bytes);
    const deadline = Date.now() + (mayWait ? QUIET_MS : ANSWER_DEADLINE_MS);
    let errors = 0;
    const end = (_input: string, what: Outcome): Outcome | undefined => {
      if (expected === 'logged in') {
        fail(name, `a valid login was refused (${what})`, bytes);
        return undefined;
      }
      outcome(name, what);
      return what;
    };
    for (;;) {
      const message = await this.message(deadline - Date.now());
      if (!message) {
        if (this.closed) return end(name, errors > 0 ? 'error, closed' : 'closed');
        if (errors > 0) return this.leave(name, bytes, end, fail, 'error, closed');
        if (mayWait) return this.leave(name, bytes, end, fail);
        fail(name, `no answer within ${ANSWER_DEADLINE_MS} ms`, bytes);
        return undefined;
      }
      if (message.type === 'E') errors++;
      if (message.type === 'Z') {
        if (expected === 'refused') {
          fail(name, 'logged in with an input that must be refused', bytes);
          return undefined;
        }
        const what: Outcome =
          this.socket instanceof tls.TLSSocket ? 'logged in over TLS' : 'logged in';
        outcome(name, what);
        return what;
      }
      // A client-first-message pgbranch took (extensions are ignored, as PostgreSQL does): it now
      // waits for the client-final-message, and must close once the client leaves instead.
      if (message.type === 'R' && message.body.readInt32BE(0) === 11) {
        return this.leave(name, bytes, end, fail, 'SASL continued, closed when the client left');
      }
    }
  }

  /** The client half-closes after a quiet spell; pgbranch must close within CLOSE_DEADLINE_MS. */
  private async leave<T>(
    name: string,
    bytes: Buffer,
    outcome: (input: string, what: Outcome) => T,
    fail: (input: string, what: string, bytes: Buffer) => void,
    then: Outcome = 'waited, closed when the client left',
  ): Promise<T | undefined> {
    this.socket.end();
    const deadline = Date.now() + CLOSE_DEADLINE_MS;
    while (!this.closed && Date.now() < deadline) await this.message(deadline - Date.now());
    if (!this.closed) {
      fail(name, `still open ${CLOSE_DEADLINE_MS} ms after the client left`, bytes);
      return undefined;
    }
    return outcome(name, then);
  }

  /** Writes in up to three pieces (chosen from the bytes, so a seed replays it). */
  private async writeInPieces(bytes: Buffer): Promise<void> {
    const pieces = bytes.length < 2 ? 1 : 1 + (bytes[bytes.length >> 1]! % 3);
    const size = Math.ceil(bytes.length / pieces);
    for (let at = 0; at < bytes.length; at += size) {
      this.write(bytes.subarray(at, at + size));
      if (at + size < bytes.length) await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /** The next message within `timeoutMs`; undefined on a close or a timeout. Checks its form. */
  private async message(timeoutMs: number): Promise<{ type: string; body: Buffer } | undefined> {
    const deadline = Date.now() + Math.max(0, timeoutMs);
    for (;;) {
      while (this.startupPhase && this.buffer[0] === 0x4e) this.buffer = this.buffer.subarray(1);
      // An SSLRequest (a cancel request mutated into one) answered S: TLS records follow.
      if (this.startupPhase && this.buffer[0] === 0x53) this.opaque = true;
      if (this.opaque) this.buffer = Buffer.alloc(0);
      if (this.buffer.length >= 5) {
        const type = String.fromCharCode(this.buffer[0]!);
        const length = this.buffer.readInt32BE(1);
        if (length < 4 || !BACKEND_TYPES.has(type)) {
          this.errors.push(`malformed message from pgbranch: ${hex(this.buffer.subarray(0, 64))}`);
          this.buffer = Buffer.alloc(0);
          this.socket.destroy();
          return undefined;
        }
        if (this.buffer.length >= length + 1) {
          const body = this.buffer.subarray(5, length + 1);
          this.buffer = this.buffer.subarray(length + 1);
          if (type === 'E') this.checkError(body);
          return { type, body };
        }
      }
      if (this.closed || Date.now() >= deadline) {
        if (this.closed && this.buffer.length > 0) {
          this.errors.push(
            `closed in the middle of a message: ${hex(this.buffer.subarray(0, 64))}`,
          );
          this.buffer = Buffer.alloc(0);
        }
        return undefined;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.wake = undefined;
          resolve();
        }, deadline - Date.now());
        this.wake = () => {
          clearTimeout(timer);
          this.wake = undefined;
          resolve();
        };
      });
    }
  }

  private checkError(body: Buffer): void {
    const fields = errorFields(body);
    if (!fields) return void this.errors.push(`malformed ErrorResponse ${hex(body)}`);
    if (!/^[0-9A-Z]{5}$/.test(fields.C ?? '')) this.errors.push(`bad SQLSTATE "${fields.C}"`);
    if (!fields.M) this.errors.push('ErrorResponse without a message');
    if (fields.M?.startsWith('pgbranch internal error'))
      this.errors.push(`internal error: ${fields.M}`);
    // XX000 is an internal error: which one goes into the report (PostgreSQL has a few of its own).
    this.codes.push(fields.C === 'XX000' ? `XX000 (${fields.M})` : (fields.C ?? '?'));
  }
}

export function errorFields(body: Buffer): Record<string, string> | undefined {
  const fields: Record<string, string> = {};
  let at = 0;
  for (;;) {
    if (at >= body.length) return undefined;
    const code = body[at]!;
    if (code === 0) return at === body.length - 1 ? fields : undefined;
    const end = body.indexOf(0, at + 1);
    if (end < 0) return undefined;
    fields[String.fromCharCode(code)] = body.toString('utf8', at + 1, end);
    at = end + 1;
  }
}

function hex(bytes: Buffer): string {
  const text = bytes.subarray(0, 300).toString('hex');
  return bytes.length > 300 ? `${text}... (${bytes.length} bytes)` : text;
}

/** Cancel keys of the fuzzer's own sessions that are open now (never the good clients'). */
class LiveKeys {
  private readonly keys = new Map<string, Buffer>();
  add(key: Buffer): void {
    this.keys.set(key.toString('hex'), key);
  }
  remove(key: Buffer): void {
    this.keys.delete(key.toString('hex'));
  }
  any(): Buffer | undefined {
    const all = [...this.keys.values()];
    return all[Math.floor(Math.random() * all.length)];
  }
}

/** SCRAM-SHA-256 with the salted password kept, so that a login costs two HMACs, not PBKDF2. */
class ScramCache {
  private readonly salted = new Map<string, Buffer>();
  constructor(private readonly password: string) {}

  /** `binding`: the GS2 header and channel-binding data (c=); n,, without. */
  clientFinal(clientFirstBare: string, serverFirst: string, binding?: Buffer): string {
    const attrs = Object.fromEntries(serverFirst.split(',').map((a) => [a[0], a.slice(2)]));
    const cacheKey = `${attrs.s}:${attrs.i}`;
    let salted = this.salted.get(cacheKey);
    if (!salted) {
      salted = pbkdf2Sync(
        this.password,
        Buffer.from(attrs.s!, 'base64'),
        Number(attrs.i),
        32,
        'sha256',
      );
      this.salted.set(cacheKey, salted);
    }
    const clientKey = createHmac('sha256', salted).update('Client Key').digest();
    const storedKey = createHash('sha256').update(clientKey).digest();
    const withoutProof = `c=${binding ? binding.toString('base64') : 'biws'},r=${attrs.r}`;
    const authMessage = `${clientFirstBare},${serverFirst},${withoutProof}`;
    const signature = createHmac('sha256', storedKey).update(authMessage).digest();
    const proof = Buffer.alloc(32);
    for (let i = 0; i < 32; i++) proof[i] = clientKey[i]! ^ signature[i]!;
    return `${withoutProof},p=${proof.toString('base64')}`;
  }
}

// --- The oracles around a run -------------------------------------------------------------------

/** pgbranch's resident memory, sampled every 250 ms: the first sample, the peak, the last. */
export interface ProcessSample {
  firstMb: number;
  peakMb: number;
  lastMb: number;
  /** CPU time (user and system) the process used meanwhile. */
  cpuSeconds: number;
}

export function sampleRss(pid: number): { stop(): ProcessSample } {
  const cpu = () => {
    const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  };
  const cpuBefore = cpu();
  const read = () => {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
  };
  const first = read();
  let peak = first;
  let last = first;
  const timer = setInterval(() => {
    try {
      last = read();
      peak = Math.max(peak, last);
    } catch {
      // The process is gone; the crash oracle reports it.
    }
  }, 250);
  return {
    stop() {
      clearInterval(timer);
      let cpuSeconds = NaN;
      try {
        cpuSeconds = cpu() - cpuBefore;
      } catch {
        // Gone, as above.
      }
      return {
        firstMb: Math.round(first),
        peakMb: Math.round(peak),
        lastMb: Math.round(last),
        cpuSeconds,
      };
    },
  };
}

/**
 * CPU seconds (user and system) used so far by a process and its children, living and reaped: for
 * the postmaster, the whole server with every backend it forked.
 */
export function treeCpuSeconds(pid: number): number {
  const ticks = (stat: string, withChildren: boolean) => {
    const fields = stat.split(') ')[1]!.split(' ');
    const own = Number(fields[11]) + Number(fields[12]);
    return withChildren ? own + Number(fields[13]) + Number(fields[14]) : own;
  };
  let total = ticks(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'), true);
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.split(') ')[1]!.split(' ')[1]) === pid) total += ticks(stat, false);
    } catch {
      // Gone meanwhile: its time is in the parent's reaped children now.
    }
  }
  return total / 100;
}

export interface GoodClientResult {
  queries: Record<Mode, number>;
  /** Each failed connect or query, and when: the client connects again and goes on. */
  failures: { at: number; what: string }[];
  /** When each client was last served (Date.now()). */
  lastServedAt: Record<Mode, number>;
  slowestMs: number;
}

/**
 * One node-postgres client per pool mode running `select 1` in a loop; every query must succeed
 * (but while PostgreSQL itself crashes: then it connects again and goes on).
 */
export function startGoodClients(config: pg.ClientConfig): { stop(): Promise<GoodClientResult> } {
  const result: GoodClientResult = {
    queries: { session: 0, transaction: 0 },
    failures: [],
    lastServedAt: { session: 0, transaction: 0 },
    slowestMs: 0,
  };
  let running = true;
  const loop = async (mode: Mode) => {
    while (running) {
      const client = new pg.Client({
        ...config,
        options: mode === 'transaction' ? '-c pgbranch.pool_mode=transaction' : undefined,
      });
      // A connection that ends between queries says why here; the next query only that it ended.
      let ended: Error | undefined;
      client.on('error', (error) => (ended ??= error));
      try {
        await client.connect();
        while (running) {
          const started = Date.now();
          const { rows } = await client.query<{ one: number }>('select 1 as one');
          result.slowestMs = Math.max(result.slowestMs, Date.now() - started);
          if (rows[0]?.one !== 1) {
            result.failures.push({
              at: Date.now(),
              what: `${mode} client: got ${JSON.stringify(rows)}`,
            });
          }
          result.queries[mode]++;
          result.lastServedAt[mode] = Date.now();
          await new Promise((resolve) => setTimeout(resolve, GOOD_CLIENT_PAUSE_MS));
        }
      } catch (error) {
        result.failures.push({
          at: Date.now(),
          what: `${mode} client: ${(ended ?? (error as Error)).message}`,
        });
        await new Promise((resolve) => setTimeout(resolve, 200));
      } finally {
        await client.end().catch(() => undefined);
      }
    }
  };
  const loops = [loop('session'), loop('transaction')];
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      return result;
    },
  };
}

/** A crash of PostgreSQL during a run: when, until when, and which case caused it. */
export interface ServerCrash {
  at: number;
  /** When a connection to the server worked again. */
  recoveredAt?: number;
  /** The cases in flight or just ended then. */
  candidates: number[];
  /** The case that crashes the server again when replayed alone, if one does. */
  culprit?: number;
}

/**
 * Watches PostgreSQL behind pgbranch through a connection of its own: when its `select 1` fails,
 * the server crashed (a backend died and the postmaster ended every session and recovered), and
 * the cases in flight are noted; it connects again until the server is back.
 */
export function watchServer(
  directUrl: string,
  inFlight: CasesInFlight,
): { crashes: ServerCrash[]; stop(): Promise<void> } {
  const crashes: ServerCrash[] = [];
  let running = true;
  let current: ServerCrash | undefined;
  const loop = (async () => {
    let client: pg.Client | undefined;
    while (running) {
      try {
        if (!client) {
          client = new pg.Client({ connectionString: directUrl });
          client.on('error', () => undefined);
          await client.connect();
        }
        await client.query('select 1');
        if (current) current.recoveredAt = Date.now();
        current = undefined;
      } catch {
        await client?.end().catch(() => undefined);
        client = undefined;
        if (!current) {
          current = { at: Date.now(), candidates: inFlight.around(Date.now()) };
          crashes.push(current);
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    await client?.end().catch(() => undefined);
  })();
  return {
    crashes,
    async stop() {
      running = false;
      await loop;
    },
  };
}

/** How far around a crash failures are put down to it: its sessions end and logins fail. */
const CRASH_MARGIN_MS = 3_000;

/** Whether something at `at` happened while PostgreSQL crashed and recovered. */
export function duringCrash(crashes: readonly ServerCrash[], at: number): boolean {
  return crashes.some(
    (crash) =>
      at >= crash.at - CRASH_MARGIN_MS && at <= (crash.recoveredAt ?? Infinity) + CRASH_MARGIN_MS,
  );
}

/** Makes what the cases need: the md5 role and the table (on the server directly). */
export async function prepareServer(directUrl: string): Promise<void> {
  const client = new pg.Client({ connectionString: directUrl });
  await client.connect();
  try {
    await client.query("set password_encryption = 'md5'");
    await client.query(`drop role if exists ${MD5_USER}`);
    await client.query(`create role ${MD5_USER} login password 'fuzz-md5-password'`);
    await client.query('create table if not exists fuzz_t (a int, b text)');
  } finally {
    await client.end();
  }
}

export function formatTally(tally: Tally, elapsedMs: number): string {
  const list = (record: Record<string, number>) =>
    Object.entries(record)
      .sort((a, b) => b[1] - a[1])
      .map(([k, n]) => `${k} ${n}`)
      .join(', ');
  return [
    `${tally.inputs} inputs on ${tally.cases} connections in ${(elapsedMs / 1000).toFixed(1)} s (${Math.round(tally.inputs / (elapsedMs / 1000))}/s)`,
    `  kinds:    ${list(tally.byKind)}`,
    `  modes:    ${list(tally.byMode)}`,
    `  ms per input by kind (per connection in flight): ${KINDS.map((k) => `${k} ${(tally.timeMs[k] / Math.max(1, tally.byKind[k])).toFixed(1)}`).join(', ')}`,
    `  outcomes: ${list(tally.outcomes)}`,
    `  SQLSTATEs: ${list(tally.codes)}`,
  ].join('\n');
}
