// Pausing a database's connections in every proxy of the server, not only this one: what this
// proxy pauses, the others are told to pause (through Peers), and what they pause, this one does.
// Without Redis it is this proxy's pools alone.
import { errors } from '../errors.js';
import type { PoolManager } from '../pool/pool.js';
import type { ClientRegistry } from '../proxy/clients.js';
import type { DrainVerb, PeerMessage, Peers } from './peers.js';

/**
 * A pause another proxy asked for ends when it says so, or after this long if it never does (it
 * died mid-clone): far longer than any drain and clone, short enough not to strand clients.
 */
const REMOTE_PAUSE_LIMIT_MS = 60_000;

export class SharedDrain {
  /** Pauses other proxies hold here, by sender and database, each with its deadline. */
  private readonly remote = new Map<string, NodeJS.Timeout>();
  /** Databases closed (replaced or dropped) since this proxy paused them. */
  private readonly closed = new Set<string>();

  constructor(
    private readonly pools: PoolManager,
    private readonly clients: ClientRegistry,
    private readonly peers: Peers | undefined,
    /** How long a pause waits for transactions in flight, as branch.drain_timeout says now. */
    private readonly drainTimeoutMs: () => number,
  ) {
    peers?.listen((message) => this.onPeer(message));
  }

  /**
   * Pauses `database` here and in the other proxies. With `terminate`, the clients that can't wait
   * for the branch to come back are disconnected, everywhere, saying why.
   */
  async pause(
    database: string,
    timeoutMs: number,
    terminate?: { name: string; verb: DrainVerb },
  ): Promise<number> {
    await this.peers?.send({ kind: 'pause', database, ...(terminate ? { terminate } : {}) });
    if (terminate) this.disconnect(database, terminate);
    return this.pools.pause(database, timeoutMs);
  }

  /**
   * Session-mode and pinned clients hold a server connection that a pause can't take back; when
   * the branch is deleted, every client goes.
   */
  private disconnect(database: string, { name, verb }: { name: string; verb: DrainVerb }): void {
    const error = errors.branchTerminated(name, verb);
    for (const client of this.clients.on(database)) {
      if (verb === 'deleted' || client.mode === 'session' || client.pinned()) {
        client.terminate(error);
      }
    }
  }

  resume(database: string): void {
    this.pools.resume(database);
    const closed = this.closed.delete(database);
    void this.peers?.send({ kind: 'resume', database, ...(closed ? { closed } : {}) });
  }

  closeDatabase(database: string): void {
    this.pools.closeDatabase(database);
    this.closed.add(database);
  }

  private onPeer(message: PeerMessage): void {
    const key = `${message.from}\0${message.database}`;
    if (message.kind === 'pause') {
      if (this.remote.has(key)) return;
      if (message.terminate) this.disconnect(message.database, message.terminate);
      void this.pools.pause(message.database, this.drainTimeoutMs());
      const limit = setTimeout(() => this.endRemote(key, message.database), REMOTE_PAUSE_LIMIT_MS);
      limit.unref();
      this.remote.set(key, limit);
    } else {
      if (message.closed) this.pools.closeDatabase(message.database);
      this.endRemote(key, message.database);
    }
  }

  private endRemote(key: string, database: string): void {
    const limit = this.remote.get(key);
    if (limit === undefined) return;
    clearTimeout(limit);
    this.remote.delete(key);
    this.pools.resume(database);
  }

  /** Ends every pause other proxies hold here (at shutdown). */
  close(): void {
    for (const limit of this.remote.values()) clearTimeout(limit);
    this.remote.clear();
    this.peers?.close();
  }
}
