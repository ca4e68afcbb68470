// pool.idle_in_transaction_timeout: in transaction mode a client that holds a server connection
// inside a transaction and sends nothing keeps that connection from every other client. The relay
// says when the server starts waiting for the client inside a transaction (idle) and when the
// client sends anything (touch); after timeoutMs of silence in between, onExpired is called. One
// timer per client, re-armed only when it fires, so a busy transaction sets no timers at all.

export class IdleInTransactionTimer {
  /** When the server began waiting for the client inside a transaction; undefined while it isn't. */
  private idleSince: number | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly timeoutMs: number,
    private readonly onExpired: () => void,
  ) {}

  /** The server has answered everything and waits for the client, inside a transaction. */
  idle(): void {
    this.idleSince = Date.now();
    this.timer ??= this.arm(this.timeoutMs);
  }

  /** The client sent something: it is not idle until the next idle(). */
  touch(): void {
    this.idleSince = undefined;
  }

  /** The client is gone. */
  stop(): void {
    this.idleSince = undefined;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(ms: number): NodeJS.Timeout {
    const timer = setTimeout(this.check, ms);
    timer.unref();
    return timer;
  }

  private readonly check = (): void => {
    this.timer = undefined;
    if (this.idleSince === undefined) return;
    const left = this.idleSince + this.timeoutMs - Date.now();
    if (left > 0) {
      this.timer = this.arm(left);
      return;
    }
    this.idleSince = undefined;
    this.onExpired();
  };
}
