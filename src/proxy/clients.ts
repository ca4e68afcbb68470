// The clients past login, as the admin side sees them: who is connected to which branch, in which
// mode, on which server connection; and the way to disconnect them when their branch is reset or
// deleted. Updated on connect and disconnect only, never per query.
import type net from 'node:net';
import type { PgError } from '../errors.js';

export interface ConnectedClient {
  /** Unique for this pgbranch's life. */
  readonly id: number;
  readonly user: string;
  /** The database name as the client wrote it (`app@feature-x`). */
  readonly requested: string;
  /** The database it is served from. */
  readonly database: string;
  /** `console`: a session with pgbranch's own SQL console (database pgbranch), no server. */
  readonly mode: 'session' | 'transaction' | 'console';
  readonly address: string;
  readonly port: number;
  readonly connectedAt: Date;
  /** Transaction mode: holds its server connection for good (advisory lock, LISTEN, WITH HOLD). */
  pinned(): boolean;
  /** The backend serving it now; undefined while a transaction-mode client is between transactions. */
  serverPid(): number | undefined;
  /** When the server connection serving it now was opened. */
  serverOpenedAt(): number | undefined;
  /** Waiting for a server connection (pool full, or its database paused). */
  waiting(): boolean;
  /** Disconnects the client with this error (FATAL), and leaves its server connection unpooled. */
  terminate(error: PgError): void;
  /**
   * Disconnects the client with this error once it is outside a transaction with nothing on its
   * way (at once if it is now), for a shutdown that lets transactions finish. Without it: at once.
   */
  terminateWhenIdle?(error: PgError): void;
}

export class ClientRegistry {
  private readonly byId = new Map<number, ConnectedClient>();
  private nextId = 1;

  /** Adds a client that just logged in on `socket`; delete() it when it leaves. */
  add(
    socket: net.Socket,
    client: Omit<ConnectedClient, 'id' | 'address' | 'port' | 'connectedAt'>,
  ): ConnectedClient {
    const added: ConnectedClient = {
      ...client,
      id: this.nextId++,
      address: socket.remoteAddress ?? '',
      port: socket.remotePort ?? 0,
      connectedAt: new Date(),
    };
    this.byId.set(added.id, added);
    return added;
  }

  delete(client: ConnectedClient): void {
    this.byId.delete(client.id);
  }

  all(): Iterable<ConnectedClient> {
    return this.byId.values();
  }

  on(database: string): ConnectedClient[] {
    return [...this.byId.values()].filter((c) => c.database === database);
  }

  /** Clients per database served. */
  counts(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const client of this.byId.values()) {
      counts.set(client.database, (counts.get(client.database) ?? 0) + 1);
    }
    return counts;
  }
}
