// Counts events per key (a client address, a role) over a sliding window, for the limits on failed
// logins and on branch creations. Memory is bounded by what the limits allow: at most `max` times
// per key, and keys with nothing recent are dropped.

export class RateLimiter {
  private readonly recent = new Map<string, number[]>();
  private lastSweep: number;

  constructor(
    private readonly windowMs: number,
    private readonly now: () => number = Date.now,
  ) {
    this.lastSweep = now();
  }

  /** Events of `key` within the window. */
  count(key: string): number {
    return this.live(key).length;
  }

  /** Records one event of `key`, unless `max` are already within the window; says whether it did. */
  take(key: string, max: number): boolean {
    const times = this.live(key);
    if (times.length >= max) return false;
    times.push(this.now());
    this.recent.set(key, times);
    return true;
  }

  /** Whole seconds until one event of `key` leaves the window (at least 1). */
  secondsUntilFree(key: string): number {
    const oldest = this.live(key)[0];
    if (oldest === undefined) return 1;
    return Math.max(1, Math.ceil((oldest + this.windowMs - this.now()) / 1000));
  }

  /** The key's events within the window; older ones are forgotten, and idle keys once a window. */
  private live(key: string): number[] {
    const now = this.now();
    const since = now - this.windowMs;
    if (now - this.lastSweep >= this.windowMs) {
      this.lastSweep = now;
      for (const [other, times] of this.recent) {
        if (times.at(-1)! <= since) this.recent.delete(other);
      }
    }
    const times = this.recent.get(key) ?? [];
    const first = times.findIndex((time) => time > since);
    if (first !== 0) times.splice(0, first === -1 ? times.length : first);
    if (times.length === 0) this.recent.delete(key);
    return times;
  }
}
