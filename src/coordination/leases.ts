// The pauses other proxies hold here, as leases: each ends once, on its holder's resume or when
// nothing has been heard of it for LEASE_MS (its holder died or lost Redis), whichever is first.
import type { Logger } from 'pino';
import type { PeerMessage, RemotePauseHandler } from './peers.js';

/**
 * How often a proxy holding a pause says so again: one small PUBLISH a second per pause held, and
 * none when nothing is paused.
 */
export const HEARTBEAT_MS = 1_000;
/**
 * How long the others wait for word of a pause before they end it: five heartbeats, so that a
 * reconnect to Redis or a busy moment on either side is no reason to resume mid-clone, and a proxy
 * that died keeps the others' clients of the database waiting a few seconds, not minutes.
 */
export const LEASE_MS = 5 * HEARTBEAT_MS;

export class RemotePauses {
  /** By sender and pause number: the database, the sender, and the timer that ends the lease. */
  private readonly leases = new Map<
    string,
    { database: string; from: string; expiry: NodeJS.Timeout }
  >();

  /**
   * Pauses resumed here lately, by the same key: a heartbeat of one of them (a duplicate after a
   * Redis reconnect) must not start it again. Kept for a lease's length.
   */
  private readonly resumed = new Map<string, NodeJS.Timeout>();

  constructor(
    private readonly handler: RemotePauseHandler,
    private readonly log: Logger,
  ) {}

  receive(message: PeerMessage): void {
    const key = `${message.from}\0${message.pause}`;
    const lease = this.leases.get(key);
    if (message.kind === 'resume') {
      if (message.closed) this.handler.close(message.database);
      // A resume after the lease ran out: the pause was ended here then, and ending it again would
      // end another pause of the database.
      if (!lease) return;
      clearTimeout(lease.expiry);
      this.leases.delete(key);
      this.remember(key);
      this.handler.resume(lease.database);
      return;
    }
    if (lease) {
      lease.expiry.refresh();
      return;
    }
    if (message.kind === 'held') {
      if (this.resumed.has(key)) return;
      // A pause this proxy did not hear begin (it started, or its Redis connection came back, while
      // the pause was held), or one whose lease ran out while its holder was only slow: the holder
      // still clones, and this proxy's connections would fail it.
      this.log.info(
        { event: 'peer_pause_joined', database: message.database, peer: message.from },
        `proxy ${message.from} holds a pause of ${message.database}: pausing it here too`,
      );
    }
    this.handler.pause(message.database, message.kind === 'pause' ? message.terminate : undefined);
    const expiry = setTimeout(() => this.expire(key), LEASE_MS);
    expiry.unref();
    this.leases.set(key, { database: message.database, from: message.from, expiry });
  }

  private expire(key: string): void {
    const lease = this.leases.get(key);
    if (!lease) return;
    this.leases.delete(key);
    this.log.warn(
      { event: 'peer_pause_expired', database: lease.database, peer: lease.from },
      `proxy ${lease.from} paused ${lease.database} and has not been heard from for ${LEASE_MS / 1000} s (it stopped or lost Redis): resuming ${lease.database} here`,
    );
    this.handler.resume(lease.database);
  }

  private remember(key: string): void {
    clearTimeout(this.resumed.get(key));
    const forget = setTimeout(() => this.resumed.delete(key), LEASE_MS);
    forget.unref();
    this.resumed.set(key, forget);
  }

  /** Forgets every lease without resuming (at shutdown, when the pools close anyway). */
  close(): void {
    for (const { expiry } of this.leases.values()) clearTimeout(expiry);
    this.leases.clear();
    for (const forget of this.resumed.values()) clearTimeout(forget);
    this.resumed.clear();
  }
}
