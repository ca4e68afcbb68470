// CancelRequest routing. Session-mode clients get BackendKeyData with their server connection's
// real process id, transaction-mode clients one of the proxy's, each with a secret of pgbranch's; a
// cancel that matches both is forwarded, with the server's own key, to the server connection that
// runs the client's query at that moment. The secret is as long as the client's protocol version
// allows: 4 bytes in 3.0, 32 in 3.2 (as PostgreSQL 18 makes them); the server's own key, whatever
// its length, never leaves pgbranch. Console sessions, which pgbranch answers itself, get one of the
// proxy's ids too, and their cancel reaches the console instead of a server. With several proxies
// (Redis), a key this proxy does not know is asked of the others (SharedCancels).
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { connectSocket, describeEndpoint, type Endpoint } from '../upstream/endpoint.js';
import { asksForTls, startServerTls } from '../upstream/server-tls.js';
import { cancelRequest } from '../wire/frontend.js';

/** The key of the server process that runs a client's query now. */
export interface ServerKey {
  processId: number;
  secret: Buffer;
  /** Where that server process is, when not on the main server (a branch instance). */
  endpoint?: Endpoint | undefined;
}

interface Target {
  secret: Buffer;
  /** Cancels what the client runs now; false when it runs nothing. */
  cancel: () => Promise<boolean>;
}

/**
 * Cancel keys this proxy handed out, known to the other proxies of the same server, so that a
 * CancelRequest that reaches another proxy is sent on to this one (coordination/cancel-keys.ts).
 */
export interface SharedCancels {
  /** A key was handed to a client of this proxy. */
  add(processId: number, secret: Buffer): void;
  /** Its client left. */
  remove(processId: number, secret: Buffer): void;
  /** A key this proxy does not know: another proxy's, if any has it, cancels. */
  cancel(processId: number, secret: Buffer): Promise<boolean>;
}

/** Process ids the proxy makes up for transaction-mode clients: above any Linux pid (2^22). */
const FIRST_OWN_ID = 1 << 23;

/** The length of the cancel secret for a client of protocol 3.`minor`, as PostgreSQL 18 makes it. */
export function secretLengthFor(minor: number): number {
  return minor >= 2 ? 32 : 4;
}

export class CancelRegistry {
  private readonly targets = new Map<number, Target>();
  private nextId = FIRST_OWN_ID;
  private shared: SharedCancels | undefined;

  constructor(private readonly endpoint: Endpoint) {}

  /** Shares this proxy's keys with other proxies, and asks them about keys it does not know. */
  share(shared: SharedCancels): void {
    this.shared = shared;
    for (const [processId, { secret }] of this.targets) shared.add(processId, secret);
  }

  /**
   * Registers a client under a process id: its server connection's real one (session mode), or
   * undefined to get one of the proxy's (transaction mode). Returns the key to hand the client,
   * with a secret of `secretLength` bytes.
   */
  register(
    processId: number | undefined,
    /** Undefined when the client holds no server connection (transaction mode, between transactions). */
    server: () => ServerKey | undefined,
    secretLength = 4,
  ): ServerKey {
    return this.add(processId ?? this.ownId(), secretLength, () => this.forward(server()));
  }

  /**
   * Registers a session that pgbranch answers itself (the console) under one of the proxy's ids:
   * a cancel calls `cancel`, which says whether anything was running.
   */
  registerOwn(cancel: () => boolean, secretLength = 4): ServerKey {
    return this.add(this.ownId(), secretLength, () => Promise.resolve(cancel()));
  }

  unregister(key: ServerKey): void {
    if (this.targets.get(key.processId)?.secret !== key.secret) return;
    this.targets.delete(key.processId);
    this.shared?.remove(key.processId, key.secret);
  }

  /**
   * Cancels what the session a client's CancelRequest names runs now, if any. Resolves (with
   * whether it did) once the cancel has landed: for a server session, once the server has closed
   * the forwarded request's connection, by when PostgreSQL has signalled the backend, as it has when
   * it closes a client's own cancel connection. A client may send its next query as soon as its
   * cancel connection closes, and that query must not be the one canceled.
   */
  async cancel(processId: number, secret: Buffer): Promise<boolean> {
    const here = this.cancelHere(processId, secret);
    if (here) return here;
    // Not a key of this proxy's (another proxy's ids can be the same, with another secret).
    return this.shared ? this.shared.cancel(processId, secret) : false;
  }

  /** Cancels with a key of this proxy's; undefined when the key is not one of its own. */
  cancelHere(processId: number, secret: Buffer): Promise<boolean> | undefined {
    const target = this.targets.get(processId);
    if (!target || target.secret.length !== secret.length) return undefined;
    if (!timingSafeEqual(target.secret, secret)) return undefined;
    return target.cancel();
  }

  private add(processId: number, secretLength: number, cancel: Target['cancel']): ServerKey {
    const secret = randomBytes(secretLength);
    this.targets.set(processId, { secret, cancel });
    this.shared?.add(processId, secret);
    return { processId, secret };
  }

  private ownId(): number {
    let id: number;
    do {
      id = this.nextId;
      this.nextId = this.nextId >= 0x7fffffff ? FIRST_OWN_ID : this.nextId + 1;
    } while (this.targets.has(id));
    return id;
  }

  private async forward(server: ServerKey | undefined): Promise<boolean> {
    // A transaction-mode client between transactions runs nothing: there is nothing to cancel.
    if (!server) return false;
    const endpoint = server.endpoint ?? this.endpoint;
    const tls = 'host' in endpoint ? endpoint.tls : undefined;
    const request = cancelRequest(server.processId, server.secret);
    await new Promise<void>((resolve) => {
      const socket = connectSocket(endpoint);
      socket.on('error', () => socket.destroy());
      socket.setTimeout(5000, () => socket.destroy());
      socket.once('connect', () => {
        if (!asksForTls(tls)) return void socket.end(request);
        // Over TLS too, as libpq 17 sends it: the server's key stays off the wire.
        startServerTls(socket, tls!, describeEndpoint(endpoint)).then(
          (on) => on.end(request),
          () => socket.destroy(),
        );
      });
      socket.once('close', () => resolve());
    });
    return true;
  }
}
