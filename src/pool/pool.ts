// Pools of server connections, one per (database, user, startup parameters), under a global cap.
// Knows server connections and database names, nothing of branches or clients' sockets.
import type { ServerLogin, ServerSession } from '../upstream/server-connection.js';
import { errors } from '../errors.js';

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
  /** Server connections in all pools together. */
  maxServerConnections: number;
  idleTimeoutMs: number;
  waitTimeoutMs: number;
}

export type Connector = (request: PoolRequest) => Promise<ServerSession>;

/** A server connection and the pool it belongs to. */
export class ServerConnection {
  idleSince = 0;
  /** The pool's generation when it was opened: older ones are closed instead of reused. */
  readonly generation: number;
  constructor(
    readonly pool: Pool,
    readonly session: ServerSession,
  ) {
    this.generation = pool.generation;
  }
  get processId(): number {
    return this.session.processId;
  }
}

interface Waiter {
  request: PoolRequest;
  resolve: (conn: ServerConnection) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
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

  constructor(
    readonly key: string,
    readonly database: string,
    readonly user: string,
    /** Pools whose parameters include `replication` are never reused: such sessions can't be reset. */
    readonly reusable: boolean,
  ) {}

  get name(): string {
    return `${this.database}/${this.user}`;
  }

  get total(): number {
    return this.idle.length + this.active + this.opening;
  }
}

export class PoolManager {
  private readonly pools = new Map<string, Pool>();
  private readonly paused = new Map<string, (() => void)[]>();
  private totalOpen = 0;
  private readonly janitor: NodeJS.Timeout;
  /** Called when anything that a waiter waits for may have changed. */
  private readonly drainWatchers = new Set<() => void>();

  constructor(
    private readonly limits: PoolLimits,
    private readonly connect: Connector,
  ) {
    this.janitor = setInterval(() => this.closeExpiredIdle(), 1000);
    this.janitor.unref();
  }

  /** A server connection for this request: idle, new, or the next one released, within the wait timeout. */
  async acquire(request: PoolRequest): Promise<ServerConnection> {
    const started = Date.now();
    while (this.paused.has(request.database)) {
      await this.waitForResume(request, started);
    }
    // Looked up only now: the janitor drops empty pools, also while a client waited above.
    const pool = this.poolFor(request);
    const idle = this.takeIdle(pool);
    if (idle) return idle;
    if (pool.total < this.limits.size && this.makeRoom()) return this.open(pool, request);
    return new Promise<ServerConnection>((resolve, reject) => {
      const remaining = Math.max(0, this.limits.waitTimeoutMs - (Date.now() - started));
      const waiter: Waiter = {
        request,
        resolve,
        reject,
        timer: setTimeout(() => {
          const i = pool.waiters.indexOf(waiter);
          if (i >= 0) pool.waiters.splice(i, 1);
          reject(errors.poolTimeout(pool.name, this.limits.waitTimeoutMs));
        }, remaining),
      };
      pool.waiters.push(waiter);
    });
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
      !conn.session.socket.destroyed
    ) {
      const waiter = pool.waiters.shift();
      if (waiter) {
        clearTimeout(waiter.timer);
        pool.active++;
        waiter.resolve(conn);
        return;
      }
      conn.idleSince = Date.now();
      this.watchIdle(conn);
      pool.idle.push(conn);
    } else {
      this.destroy(conn);
    }
    this.notifyDrainWatchers();
    this.serveWaiters();
  }

  /**
   * Stops handing out connections to `database`, closes its idle ones, and waits up to timeoutMs
   * for those in use to come back. Returns how many are still in use (0 means drained). Checkouts
   * wait until resume(); the caller must call it.
   */
  async pause(database: string, timeoutMs: number): Promise<number> {
    if (!this.paused.has(database)) this.paused.set(database, []);
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

  resume(database: string): void {
    const wakers = this.paused.get(database);
    this.paused.delete(database);
    for (const wake of wakers ?? []) wake();
    // Clients that queued before the pause, while its connections were closed instead of reused.
    this.serveWaiters();
  }

  /** Closes every connection to `database`: idle ones now, busy ones when they come back. */
  closeDatabase(database: string): void {
    for (const pool of this.poolsOf(database)) {
      pool.generation++;
      for (const conn of pool.idle.splice(0)) this.destroy(conn);
    }
  }

  stats(): { pools: number; open: number; idle: number; active: number; waiting: number } {
    let idle = 0;
    let active = 0;
    let waiting = 0;
    for (const pool of this.pools.values()) {
      idle += pool.idle.length;
      active += pool.active;
      waiting += pool.waiters.length;
    }
    return { pools: this.pools.size, open: this.totalOpen, idle, active, waiting };
  }

  close(): void {
    clearInterval(this.janitor);
    for (const pool of this.pools.values()) {
      for (const conn of pool.idle.splice(0)) this.destroy(conn);
      for (const waiter of pool.waiters.splice(0)) {
        clearTimeout(waiter.timer);
        waiter.reject(errors.shuttingDown());
      }
    }
  }

  private poolFor(request: PoolRequest): Pool {
    // A transaction-mode client asks once per transaction: compute its key once.
    const key = (request.key ??= poolKey(request));
    let pool = this.pools.get(key);
    if (!pool) {
      pool = new Pool(key, request.database, request.user, !request.parameters.has('replication'));
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
      this.paused.get(request.database)!.push(() => {
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

  /** True when one more server connection fits under the global cap, closing an idle one if needed. */
  private makeRoom(): boolean {
    if (this.totalOpen < this.limits.maxServerConnections) return true;
    let oldest: ServerConnection | undefined;
    for (const pool of this.pools.values()) {
      const candidate = pool.idle[0];
      if (candidate && (!oldest || candidate.idleSince < oldest.idleSince)) oldest = candidate;
    }
    if (!oldest) return false;
    oldest.pool.idle.shift();
    this.destroy(oldest);
    return this.totalOpen < this.limits.maxServerConnections;
  }

  private async open(pool: Pool, request: PoolRequest): Promise<ServerConnection> {
    pool.opening++;
    this.totalOpen++;
    try {
      const session = await this.connect(request);
      pool.opening--;
      pool.active++;
      return new ServerConnection(pool, session);
    } catch (error) {
      pool.opening--;
      this.totalOpen--;
      this.notifyDrainWatchers();
      this.serveWaiters();
      throw error;
    }
  }

  /** After capacity frees up, lets waiting clients open connections. */
  private serveWaiters(): void {
    for (const pool of this.pools.values()) {
      while (pool.waiters.length > 0 && !this.paused.has(pool.database)) {
        if (pool.total >= this.limits.size || !this.makeRoom()) break;
        const waiter = pool.waiters.shift()!;
        clearTimeout(waiter.timer);
        this.open(pool, waiter.request).then(waiter.resolve, waiter.reject);
      }
    }
  }

  private destroy(conn: ServerConnection): void {
    this.unwatchIdle(conn);
    const socket = conn.session.socket;
    if (!socket.destroyed) socket.destroy();
    this.totalOpen--;
  }

  private readonly onIdleGone = new WeakMap<ServerConnection, () => void>();

  /** An idle connection whose server goes away is dropped from the pool at once. */
  private watchIdle(conn: ServerConnection): void {
    const gone = () => {
      const i = conn.pool.idle.indexOf(conn);
      if (i >= 0) {
        conn.pool.idle.splice(i, 1);
        this.destroy(conn);
      }
    };
    this.onIdleGone.set(conn, gone);
    conn.session.socket.on('close', gone);
    conn.session.socket.on('error', gone);
    // A server says nothing to an idle session but why it ends it (FATAL 57P01, idle timeout...),
    // and says it before it closes the socket: drop the connection at the first byte.
    conn.session.socket.on('data', gone);
    conn.session.socket.resume();
  }

  private unwatchIdle(conn: ServerConnection): void {
    const gone = this.onIdleGone.get(conn);
    if (!gone) return;
    this.onIdleGone.delete(conn);
    conn.session.socket.removeListener('close', gone);
    conn.session.socket.removeListener('error', gone);
    conn.session.socket.removeListener('data', gone);
  }

  private closeExpiredIdle(): void {
    const cutoff = Date.now() - this.limits.idleTimeoutMs;
    for (const pool of this.pools.values()) {
      while (pool.idle.length > 0 && pool.idle[0]!.idleSince < cutoff) {
        this.destroy(pool.idle.shift()!);
      }
      if (pool.total === 0 && pool.waiters.length === 0) this.pools.delete(pool.key);
    }
  }

  private notifyDrainWatchers(): void {
    for (const watcher of [...this.drainWatchers]) watcher();
  }
}

function poolKey(request: PoolRequest): string {
  const params = [...request.parameters].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return [request.mode ?? 'session', request.database, request.user, ...params.flat()].join('\0');
}
