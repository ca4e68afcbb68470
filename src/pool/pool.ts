// Pools of server connections, one per (database, user, startup parameters), under a global cap
// (the server connection budget), and the janitor that keeps them within their limits: idle and lifetime timeouts, min_idle.
// Knows server connections and database names, nothing of branches or clients' sockets.
import { setTimeout as sleep } from 'node:timers/promises';
import type { ServerLogin, ServerSession } from '../upstream/server-connection.js';
import { errors } from '../errors.js';
import { fixedBudget, type ServerBudget } from './budget.js';

export interface PoolRequest {
  database: string;
  user: string;
  /** Startup parameters besides user and database; part of the pool's identity. */
  parameters: ReadonlyMap<string, string>;
  login: ServerLogin;
  /**
   * Transaction-mode pools are apart from session-mode ones: their connections are shared
   * between clients and are not reset with DISCARD ALL (which would drop prepared statements).
   */
  mode?: 'session' | 'transaction';
  /** The pool's identity, filled in on first use. */
  key?: string;
}

export interface PoolLimits {
  /** Server connections per pool. */
  size: number;
  /** Idle connections a pool keeps open once a client has used it (within size); 0 for none. */
  minIdle: number;
  /** Connections beyond size a pool may open for a client that has waited reserveTimeoutMs. */
  reserveSize: number;
  reserveTimeoutMs: number;
  /** Server connections in all pools together, until setBudget() says otherwise. */
  maxServerConnections: number;
  idleTimeoutMs: number;
  /** Connections older than this are closed when given back, and while idle; 0 keeps them. */
  serverLifetimeMs: number;
  waitTimeoutMs: number;
  /** How many times a connect that failed for a passing reason is tried again, with backoff. */
  connectRetries: number;
  /**
   * How long a connect the server refuses for lack of slots (53300) keeps being tried, while idle
   * connections of every pool are closed to make room.
   */
  connectTimeoutMs: number;
}

/** The first wait before a connect is tried again; it doubles each time, up to RETRY_MAX_DELAY_MS. */
const RETRY_FIRST_DELAY_MS = 200;
const RETRY_MAX_DELAY_MS = 5_000;
/** After the server refused for lack of slots: a closed backend frees its slot within milliseconds. */
const FULL_FIRST_DELAY_MS = 20;
const FULL_MAX_DELAY_MS = 500;

export type Connector = (request: PoolRequest) => Promise<ServerSession>;

/**
 * Who hears a server connection's socket now: the pool while the connection is idle, a
 * transaction-mode relay while a client holds it, nobody otherwise (session mode and the relay's
 * own quiet queries listen on the socket directly).
 */
export interface ServerSink {
  serverData(conn: ServerConnection, chunk: Buffer): void;
  /** The socket closed or failed. */
  serverGone(conn: ServerConnection): void;
  serverDrain(conn: ServerConnection): void;
}

/** A server connection and the pool it belongs to. */
export class ServerConnection {
  idleSince = 0;
  /** When it was last given back, as an order across all pools: clocks can tie. */
  idleOrder = 0;
  readonly openedAt = Date.now();
  sink: ServerSink | undefined;
  constructor(
    readonly pool: Pool,
    readonly session: ServerSession,
    /** The pool's generation when it began to open: older ones are closed instead of reused. */
    readonly generation: number,
  ) {
    // Installed once for the connection's life: a connection changes hands at every transaction,
    // and adding and removing listeners each time cost more than the relaying itself.
    const socket = session.socket;
    socket.on('data', (chunk: Buffer) => this.sink?.serverData(this, chunk));
    socket.on('close', () => this.sink?.serverGone(this));
    socket.on('error', () => this.sink?.serverGone(this));
    socket.on('drain', () => this.sink?.serverDrain(this));
  }
  get processId(): number {
    return this.session.processId;
  }
}

/** Called once, with the connection or with why there is none; possibly before acquire returns. */
export type Acquired = (error: Error | undefined, conn: ServerConnection | undefined) => void;

interface Waiter {
  request: PoolRequest;
  done: Acquired;
  /** When it gives up with 53300. */
  deadline: number;
  /** When it may have a reserve connection opened for it (Infinity when the pool has no reserve). */
  reserveAt: number;
  /** Waited long enough that the pool may open a reserve connection for it. */
  reserve: boolean;
}

export class Pool {
  readonly idle: ServerConnection[] = [];
  /** Connections checked out by clients. */
  active = 0;
  /** Connections being opened. */
  opening = 0;
  readonly waiters: Waiter[] = [];
  /** Raised by closeDatabase(): connections of earlier generations are not reused. */
  generation = 0;
  /**
   * Whether the janitor keeps minIdle connections open: from a client's checkout until
   * closeDatabase(), or until a connect of the janitor's own fails.
   */
  warm = false;
  /** Failed warming connects in a row. */
  warmFailures = 0;
  /** One timer for all its waiters' deadlines, set for the earliest; and when it fires. */
  waitTimer: NodeJS.Timeout | undefined;
  waitTimerAt = 0;

  constructor(
    /** The manager it belongs to, which its connections go back to. */
    readonly manager: PoolManager,
    readonly key: string,
    readonly database: string,
    readonly user: string,
    /** Pools whose parameters include `replication` are never reused: such sessions can't be reset. */
    readonly reusable: boolean,
    /** The latest client's request: how the janitor opens connections of its own. */
    public request: PoolRequest,
  ) {}

  get name(): string {
    return `${this.database}/${this.user}`;
  }

  get total(): number {
    return this.idle.length + this.active + this.opening;
  }
}

/** Failed connects in a row after which the janitor stops keeping a pool warm. */
const WARM_ATTEMPTS = 3;
/** Pools named in a 53300 that says who holds the budget. */
const HOLDERS_SHOWN = 5;

export class PoolManager {
  private readonly pools = new Map<string, Pool>();
  /**
   * Paused databases: how many pauses hold each (a clone of it, a reset, an operator's PAUSE, which
   * may overlap), and the checkouts waiting for the last to end.
   */
  private readonly paused = new Map<string, { holds: number; wakers: (() => void)[] }>();
  /** Databases paused by an operator (console PAUSE), at most one hold each. */
  private readonly pausedByOperator = new Set<string>();
  private totalOpen = 0;
  /** Connections given back so far: the next one's idleOrder. */
  private givenBack = 0;
  private budget: ServerBudget;
  /** While the budget is read from the server: what checkouts wait for (see setBudgetFrom). */
  private budgetRead: Promise<void> | undefined;
  private readonly janitor: NodeJS.Timeout;
  /** Called when anything that a waiter waits for may have changed. */
  private readonly drainWatchers = new Set<() => void>();
  private closed = false;

  constructor(
    private readonly limits: PoolLimits,
    private readonly connect: Connector,
  ) {
    this.budget = fixedBudget(limits.maxServerConnections);
    this.janitor = setInterval(() => this.tidy(), 1000);
    this.janitor.unref();
  }

  /**
   * A new budget (read from the server at start and on RELOAD): idle connections beyond it are
   * closed, least recently used first; busy ones count against it until given back.
   */
  setBudget(budget: ServerBudget): void {
    this.budget = budget;
    while (this.totalOpen > budget.max && this.closeLeastRecentlyUsed());
    this.serveWaiters();
  }

  /**
   * A budget still being read from the server (a branch instance that just started): `until` holds
   * meanwhile, and checkouts wait for the read, so that none opens a connection past the real one.
   * If the read fails, `until` stays.
   */
  setBudgetFrom(read: Promise<ServerBudget>, until: ServerBudget): void {
    this.setBudget(until);
    const settled: Promise<void> = read
      .then(
        (budget) => {
          if (!this.closed) this.setBudget(budget);
        },
        () => undefined,
      )
      .finally(() => {
        if (this.budgetRead === settled) this.budgetRead = undefined;
      });
    this.budgetRead = settled;
  }

  serverBudget(): ServerBudget {
    return this.budget;
  }

  /** A server connection for this request: idle, new, or the next one released, within the wait timeout. */
  async acquire(request: PoolRequest): Promise<ServerConnection> {
    const started = Date.now();
    if (this.budgetRead) await this.budgetRead;
    while (this.paused.has(request.database)) {
      await this.waitForResume(request, started);
    }
    return new Promise<ServerConnection>((resolve, reject) =>
      this.take(request, started, (error, conn) => (conn ? resolve(conn) : reject(error))),
    );
  }

  /**
   * As acquire(), with a callback instead of a promise: the transaction-mode path, once per
   * transaction. An idle connection is handed over within the call; once clients outnumber
   * connections most wait, and a connection given back goes to the first waiter within release().
   */
  acquireThen(request: PoolRequest, done: Acquired): void {
    if (this.paused.has(request.database) || this.budgetRead) {
      this.acquire(request).then(
        (conn) => done(undefined, conn),
        (error: Error) => done(error, undefined),
      );
      return;
    }
    this.take(request, Date.now(), done);
  }

  private take(request: PoolRequest, started: number, done: Acquired): void {
    // Looked up only now: the janitor drops empty pools, also while a client waited for a resume.
    const pool = this.poolFor(request);
    pool.request = request;
    pool.warm = true;
    const idle = this.takeIdle(pool);
    if (idle) return done(undefined, idle);
    if (pool.total < this.limits.size && this.makeRoom()) {
      this.open(pool, request).then(
        (conn) => done(undefined, conn),
        (error: Error) => done(error, undefined),
      );
      return;
    }
    const waiter: Waiter = {
      request,
      done,
      deadline: started + this.limits.waitTimeoutMs,
      reserveAt: this.limits.reserveSize > 0 ? started + this.limits.reserveTimeoutMs : Infinity,
      reserve: false,
    };
    pool.waiters.push(waiter);
    this.armWaitTimer(pool, Math.min(waiter.deadline, waiter.reserveAt));
  }

  /** Makes the pool's wait timer fire by `at`: one timer per pool, not one per waiter. */
  private armWaitTimer(pool: Pool, at: number): void {
    if (pool.waitTimer && pool.waitTimerAt <= at) return;
    clearTimeout(pool.waitTimer);
    pool.waitTimerAt = at;
    pool.waitTimer = setTimeout(() => this.checkWaiters(pool), Math.max(0, at - Date.now()));
  }

  /** Refuses waiters past their deadline, lets those past the reserve timeout use the reserve. */
  private checkWaiters(pool: Pool): void {
    pool.waitTimer = undefined;
    const now = Date.now();
    let expired: Waiter[] | undefined;
    let reserved = false;
    let next = Infinity;
    for (let i = 0; i < pool.waiters.length;) {
      const waiter = pool.waiters[i]!;
      if (waiter.deadline <= now) {
        pool.waiters.splice(i, 1);
        (expired ??= []).push(waiter);
        continue;
      }
      if (!waiter.reserve && waiter.reserveAt <= now) {
        waiter.reserve = true;
        reserved = true;
      }
      next = Math.min(next, waiter.deadline, waiter.reserve ? Infinity : waiter.reserveAt);
      i++;
    }
    if (next < Infinity) this.armWaitTimer(pool, next);
    for (const waiter of expired ?? []) waiter.done(this.timedOut(pool), undefined);
    if (reserved) this.serveWaiters();
  }

  /**
   * Gives a connection back. `clean` means the relay left it idle with nothing pending and reset,
   * so the next client of the same pool may use it; otherwise it is closed.
   */
  release(conn: ServerConnection, clean: boolean): void {
    const pool = conn.pool;
    pool.active--;
    if (
      clean &&
      pool.reusable &&
      conn.generation === pool.generation &&
      !this.paused.has(pool.database) &&
      !conn.session.socket.destroyed &&
      !this.pastLifetime(conn, Date.now())
    ) {
      const waiter = pool.waiters.shift();
      if (waiter) {
        pool.active++;
        waiter.done(undefined, conn);
        return;
      }
      // Beyond size, it was a reserve connection: nobody waits for it any more.
      if (pool.total < this.limits.size) {
        conn.idleSince = Date.now();
        conn.idleOrder = ++this.givenBack;
        this.watchIdle(conn);
        pool.idle.push(conn);
        this.notifyDrainWatchers();
        // Nobody of this pool waits (it would have had the connection). Another pool's waiters
        // can use it only by closing it, which they need only at max_server_connections: the
        // usual release, once per transaction, does not look at every pool.
        if (this.totalOpen >= this.budget.max) this.serveWaiters();
        return;
      }
    }
    this.destroy(conn);
    this.notifyDrainWatchers();
    this.serveWaiters();
  }

  /**
   * Stops handing out connections to `database`, closes its idle ones, and waits up to timeoutMs
   * for those in use to come back. Returns how many are still in use (0 means drained). Checkouts
   * wait until resume(); the caller must call it.
   */
  async pause(database: string, timeoutMs: number): Promise<number> {
    const paused = this.paused.get(database);
    if (paused) paused.holds++;
    else this.paused.set(database, { holds: 1, wakers: [] });
    for (const pool of this.poolsOf(database)) {
      for (const conn of pool.idle.splice(0)) this.destroy(conn);
    }
    const busy = () =>
      [...this.poolsOf(database)].reduce((n, pool) => n + pool.active + pool.opening, 0);
    const deadline = Date.now() + timeoutMs;
    while (busy() > 0 && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const watcher = () => {
          this.drainWatchers.delete(watcher);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(watcher, Math.max(1, deadline - Date.now()));
        this.drainWatchers.add(watcher);
      });
    }
    return busy();
  }

  /** Ends one pause(); checkouts go on when every pause of the database has ended. */
  resume(database: string): void {
    const paused = this.paused.get(database);
    if (!paused || --paused.holds > 0) return;
    this.paused.delete(database);
    for (const wake of paused.wakers) wake();
    // Clients that queued before the pause, while its connections were closed instead of reused.
    this.serveWaiters();
  }

  /**
   * Closes every connection to `database`: idle ones now, busy ones (and those being opened) when
   * they come back. Its pools are not kept warm again until a client next uses them.
   */
  closeDatabase(database: string): void {
    for (const pool of this.poolsOf(database)) {
      pool.generation++;
      pool.warm = false;
      for (const conn of pool.idle.splice(0)) this.destroy(conn);
    }
  }

  /** Every pool, for the admin console's SHOW POOLS and SHOW SERVERS. */
  list(): Iterable<Pool> {
    return this.pools.values();
  }

  /** Databases that are paused now, for whatever reason. */
  pausedDatabases(): Iterable<string> {
    return this.paused.keys();
  }

  /**
   * An operator's PAUSE: like pause(), but a second one of the same database adds nothing, and
   * only resumeByOperator() ends it. Returns undefined when it was paused by an operator already.
   */
  async pauseByOperator(database: string, timeoutMs: number): Promise<number | undefined> {
    if (this.pausedByOperator.has(database)) return undefined;
    this.pausedByOperator.add(database);
    return this.pause(database, timeoutMs);
  }

  /** Ends an operator's PAUSE; false when there was none. */
  resumeByOperator(database: string): boolean {
    if (!this.pausedByOperator.delete(database)) return false;
    this.resume(database);
    return true;
  }

  /** Databases an operator paused. */
  operatorPaused(): Iterable<string> {
    return this.pausedByOperator;
  }

  stats(): {
    pools: number;
    open: number;
    idle: number;
    active: number;
    waiting: number;
    budget: number;
  } {
    let idle = 0;
    let active = 0;
    let waiting = 0;
    for (const pool of this.pools.values()) {
      idle += pool.idle.length;
      active += pool.active;
      waiting += pool.waiters.length;
    }
    return {
      pools: this.pools.size,
      open: this.totalOpen,
      idle,
      active,
      waiting,
      budget: this.budget.max,
    };
  }

  close(): void {
    this.closed = true;
    clearInterval(this.janitor);
    for (const pool of this.pools.values()) {
      for (const conn of pool.idle.splice(0)) this.destroy(conn);
      clearTimeout(pool.waitTimer);
      for (const waiter of pool.waiters.splice(0)) waiter.done(errors.shuttingDown(), undefined);
    }
  }

  private poolFor(request: PoolRequest): Pool {
    // A transaction-mode client asks once per transaction: compute its key once.
    const key = (request.key ??= poolKey(request));
    let pool = this.pools.get(key);
    if (!pool) {
      pool = new Pool(
        this,
        key,
        request.database,
        request.user,
        !request.parameters.has('replication'),
        request,
      );
      this.pools.set(key, pool);
    }
    return pool;
  }

  private *poolsOf(database: string): Iterable<Pool> {
    for (const pool of this.pools.values()) if (pool.database === database) yield pool;
  }

  private waitForResume(request: PoolRequest, started: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const remaining = this.limits.waitTimeoutMs - (Date.now() - started);
      const timer = setTimeout(
        () =>
          reject(
            errors.poolTimeout(`${request.database}/${request.user}`, this.limits.waitTimeoutMs),
          ),
        Math.max(0, remaining),
      );
      this.paused.get(request.database)!.wakers.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private takeIdle(pool: Pool): ServerConnection | undefined {
    // Newest first: the oldest age out through the idle timeout.
    const conn = pool.idle.pop();
    if (!conn) return undefined;
    this.unwatchIdle(conn);
    pool.active++;
    return conn;
  }

  /** True when one more server connection fits in the budget, closing an idle one if needed. */
  private makeRoom(): boolean {
    if (this.totalOpen < this.budget.max) return true;
    return this.closeLeastRecentlyUsed() && this.totalOpen < this.budget.max;
  }

  /**
   * Closes the idle connection, of any pool, given back longest ago; false when none is idle.
   * A pool's idle list is in the order its connections were given back.
   */
  private closeLeastRecentlyUsed(): boolean {
    let oldest: ServerConnection | undefined;
    for (const pool of this.pools.values()) {
      const candidate = pool.idle[0];
      if (candidate && (!oldest || candidate.idleOrder < oldest.idleOrder)) oldest = candidate;
    }
    if (!oldest) return false;
    oldest.pool.idle.shift();
    this.destroy(oldest);
    return true;
  }

  /**
   * Why a waiter of `pool` got nothing within the wait timeout: the budget is spent (every slot
   * busy), or its own pool is full.
   */
  private timedOut(pool: Pool): Error {
    if (this.totalOpen < this.budget.max) {
      return errors.poolTimeout(pool.name, this.limits.waitTimeoutMs);
    }
    return errors.budgetSpent(pool.name, this.limits.waitTimeoutMs, this.budget, this.holders());
  }

  /** The pools that hold server connections, most first: `app/alice 5, app@x/bob 3`. */
  private holders(): string {
    const held = [...this.pools.values()]
      .filter((pool) => pool.total > 0)
      .sort((a, b) => b.total - a.total);
    const shown = held.slice(0, HOLDERS_SHOWN).map((pool) => `${pool.name} ${pool.total}`);
    if (held.length > HOLDERS_SHOWN) shown.push(`${held.length - HOLDERS_SHOWN} more pools`);
    return shown.join(', ');
  }

  /** Opens a connection for a client, trying again after failures that may pass. */
  private async open(pool: Pool, request: PoolRequest): Promise<ServerConnection> {
    const generation = pool.generation;
    pool.opening++;
    this.totalOpen++;
    try {
      const session = await this.connectRetrying(request);
      pool.opening--;
      pool.active++;
      return new ServerConnection(pool, session, generation);
    } catch (error) {
      pool.opening--;
      this.totalOpen--;
      this.notifyDrainWatchers();
      this.serveWaiters();
      throw error;
    }
  }

  /**
   * Connects, and after a failure that may pass (the server starting up or shutting down, or not
   * answering) tries again up to connectRetries times, waiting 200 ms, 400 ms, 800 ms, ... in
   * between. Other failures (authentication, a missing database) are final. A server out of
   * connection slots (something outside pgbranch took them) is asked again until
   * connectTimeoutMs has passed, after closing an idle connection of any pool each time.
   */
  private async connectRetrying(request: PoolRequest): Promise<ServerSession> {
    const fullUntil = Date.now() + this.limits.connectTimeoutMs;
    let refusals = 0;
    for (let attempt = 0; ;) {
      try {
        return await this.connect(request);
      } catch (error) {
        if (this.closed) throw error;
        if (outOfSlots(error)) {
          this.closeLeastRecentlyUsed();
          const delay = Math.min(FULL_MAX_DELAY_MS, FULL_FIRST_DELAY_MS * 2 ** refusals++);
          if (Date.now() + delay > fullUntil) {
            throw errors.serverFull(
              this.limits.connectTimeoutMs,
              (error as Error).message,
              this.budget,
              this.holders(),
            );
          }
          await sleep(delay);
          continue;
        }
        if (attempt >= this.limits.connectRetries || !mayPass(error)) throw error;
        await sleep(Math.min(RETRY_MAX_DELAY_MS, RETRY_FIRST_DELAY_MS * 2 ** attempt++));
      }
    }
  }

  /** After capacity frees up, lets waiting clients open connections. */
  private serveWaiters(): void {
    for (const pool of this.pools.values()) {
      while (pool.waiters.length > 0 && !this.paused.has(pool.database)) {
        if (!this.mayOpenFor(pool) || !this.makeRoom()) break;
        const waiter = pool.waiters.shift()!;
        this.open(pool, waiter.request).then(
          (conn) => waiter.done(undefined, conn),
          (error: Error) => waiter.done(error, undefined),
        );
      }
    }
  }

  /** Whether `pool` may open one more connection for its waiters: within size, or the reserve. */
  private mayOpenFor(pool: Pool): boolean {
    if (pool.total < this.limits.size) return true;
    return (
      pool.total < this.limits.size + this.limits.reserveSize && pool.waiters.some((w) => w.reserve)
    );
  }

  private destroy(conn: ServerConnection): void {
    this.unwatchIdle(conn);
    const socket = conn.session.socket;
    if (!socket.destroyed) socket.destroy();
    this.totalOpen--;
  }

  /**
   * What hears idle connections: one whose server goes away is dropped from the pool at once. A
   * server says nothing to an idle session but why it ends it (FATAL 57P01, idle timeout...), and
   * says it before it closes the socket: the connection is dropped at the first byte.
   */
  private readonly idleSink: ServerSink = {
    serverData: (conn) => this.dropIdle(conn),
    serverGone: (conn) => this.dropIdle(conn),
    serverDrain: () => {},
  };

  private dropIdle(conn: ServerConnection): void {
    const i = conn.pool.idle.indexOf(conn);
    if (i >= 0) {
      conn.pool.idle.splice(i, 1);
      this.destroy(conn);
    }
  }

  private watchIdle(conn: ServerConnection): void {
    conn.sink = this.idleSink;
    conn.session.socket.resume();
  }

  private unwatchIdle(conn: ServerConnection): void {
    if (conn.sink === this.idleSink) conn.sink = undefined;
  }

  /**
   * The janitor, every second: closes idle connections past their lifetime, and those idle longer
   * than the idle timeout beyond a pool's minIdle; opens connections up to minIdle; drops pools
   * that are empty and need not be kept warm.
   */
  private tidy(): void {
    const now = Date.now();
    const cutoff = now - this.limits.idleTimeoutMs;
    for (const pool of this.pools.values()) {
      for (const conn of pool.idle.filter((c) => this.pastLifetime(c, now))) {
        pool.idle.splice(pool.idle.indexOf(conn), 1);
        this.destroy(conn);
      }
      while (pool.idle.length > this.limits.minIdle && pool.idle[0]!.idleSince < cutoff) {
        this.destroy(pool.idle.shift()!);
      }
      this.warmUp(pool);
      const keep = pool.warm && this.limits.minIdle > 0;
      if (pool.total === 0 && pool.waiters.length === 0 && !keep) {
        clearTimeout(pool.waitTimer);
        this.pools.delete(pool.key);
      }
    }
  }

  private pastLifetime(conn: ServerConnection, now: number): boolean {
    return this.limits.serverLifetimeMs > 0 && now - conn.openedAt >= this.limits.serverLifetimeMs;
  }

  /**
   * Opens connections until `pool` has minIdle idle (or opening), within its size and the spare
   * room under the global cap: warming a pool never closes another's connections. A few failed
   * connects in a row stop it until a client uses the pool again, so a pool whose database went
   * away does not knock on the server every second.
   */
  private warmUp(pool: Pool): void {
    if (!pool.warm || !pool.reusable || this.paused.has(pool.database)) return;
    while (
      pool.idle.length + pool.opening < this.limits.minIdle &&
      pool.total < this.limits.size &&
      this.totalOpen < this.budget.max
    ) {
      const generation = pool.generation;
      pool.opening++;
      this.totalOpen++;
      this.connect(pool.request).then(
        (session) => {
          pool.opening--;
          pool.active++;
          pool.warmFailures = 0;
          // As if a client gave it back: a waiter gets it, else it waits idle.
          this.release(new ServerConnection(pool, session, generation), true);
        },
        () => {
          pool.opening--;
          this.totalOpen--;
          // A passing failure (a busy server) is tried again next second; a pool whose
          // database went away stops after a few.
          if (++pool.warmFailures >= WARM_ATTEMPTS) pool.warm = false;
          this.notifyDrainWatchers();
          this.serveWaiters();
        },
      );
    }
  }

  private notifyDrainWatchers(): void {
    // Called at every release: no copy unless someone is draining.
    if (this.drainWatchers.size === 0) return;
    for (const watcher of [...this.drainWatchers]) watcher();
  }
}

function poolKey(request: PoolRequest): string {
  const params = [...request.parameters].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return [request.mode ?? 'session', request.database, request.user, ...params.flat()].join('\0');
}

function codeOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * The server has no slot left for anyone but superusers (or pg_use_reserved_connections): 53300
 * with these messages. A role's or a database's connection limit is 53300 too, but closing idle
 * connections of other pools does nothing for it.
 */
function outOfSlots(error: unknown): boolean {
  return (
    codeOf(error) === '53300' &&
    /too many clients already|remaining connection slots are reserved/.test(
      (error as Error).message,
    )
  );
}

/** Server refusals that may pass: starting up or shutting down, a connection limit, no answer. */
function mayPass(error: unknown): boolean {
  const code = codeOf(error);
  if (code === undefined) return false;
  return code === '57P03' || code === '53300' || (code.startsWith('08') && code !== '08P01');
}
