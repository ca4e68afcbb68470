// Pausing a database's connections in every proxy of the server, not only this one: what this
// proxy pauses, the others are told to pause (through Peers), and what they pause, this one does
// until they resume it or Peers finds they went quiet. Without Redis it is this proxy's pools alone.
import { errors } from '../errors.js';
import type { PoolManager } from '../pool/pool.js';
import type { ClientRegistry } from '../proxy/clients.js';
import type { Peers, Termination } from './peers.js';

export class SharedDrain {
  /** Databases closed (replaced or dropped) since this proxy paused them. */
  private readonly closed = new Set<string>();

  constructor(
    private readonly pools: PoolManager,
    private readonly clients: ClientRegistry,
    private readonly peers: Peers | undefined,
    /** How long a pause waits for transactions in flight, as branch.drain_timeout says now. */
    private readonly drainTimeoutMs: () => number,
  ) {
    peers?.listen({
      pause: (database, terminate) => {
        if (terminate) this.disconnect(database, terminate);
        // As in pause(): clients that were still logging in go once the pause has drained.
        void this.pools.pause(database, this.drainTimeoutMs()).then(() => {
          if (terminate) this.disconnect(database, terminate);
        });
      },
      resume: (database) => this.pools.resume(database),
      close: (database) => this.pools.closeDatabase(database),
    });
  }

  /**
   * Pauses `database` here and in the other proxies. With `terminate`, the clients that can't wait
   * for the branch to come back are disconnected, everywhere, saying why.
   */
  async pause(database: string, timeoutMs: number, terminate?: Termination): Promise<number> {
    await this.peers?.pause(database, terminate);
    if (terminate) this.disconnect(database, terminate);
    const busy = await this.pools.pause(database, timeoutMs);
    // A client still logging in had its first server connection out when the pause began, so it
    // was not listed yet; the pause waited for that connection, and by now the client is listed.
    if (terminate) this.disconnect(database, terminate);
    return busy;
  }

  /**
   * Session-mode and pinned clients hold a server connection that a pause can't take back; when
   * the branch is deleted, every client goes.
   */
  private disconnect(database: string, { name, verb }: Termination): void {
    const error = errors.branchTerminated(name, verb);
    for (const client of this.clients.on(database)) {
      if (verb === 'deleted' || client.mode === 'session' || client.pinned()) {
        client.terminate(error);
      }
    }
  }

  resume(database: string): void {
    this.pools.resume(database);
    this.peers?.resume(database, this.closed.delete(database));
  }

  closeDatabase(database: string): void {
    this.pools.closeDatabase(database);
    this.closed.add(database);
  }

  /** Stops coordinating (at shutdown): the pauses of other proxies no longer matter here. */
  close(): void {
    this.peers?.close();
  }
}
