// auth_max_failures: failed logins per client address and minute, so that passwords can't be
// guessed at wire speed. Unix socket clients are one address, `[local]`, as PostgreSQL logs them.
import type { Logger } from 'pino';
import { errors, type PgError } from '../errors.js';
import { RateLimiter } from '../rate-limiter.js';

const MINUTE_MS = 60_000;

/** The address a client is counted by: IPv4 clients of a dual-stack listener as IPv4. */
export function clientAddress(remoteAddress: string | undefined): string {
  if (remoteAddress === undefined || remoteAddress === '') return '[local]';
  return remoteAddress.startsWith('::ffff:') && remoteAddress.includes('.')
    ? remoteAddress.slice('::ffff:'.length)
    : remoteAddress;
}

export class LoginFailures {
  private readonly failures: RateLimiter;
  /** When each blocked address was last logged, so that it is logged once a minute at most. */
  private readonly logged = new Map<string, number>();

  constructor(
    /** auth_max_failures as it is now (0: no limit). */
    private readonly max: () => number,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.failures = new RateLimiter(MINUTE_MS, now);
  }

  /** The error for a client of an address that failed too often in the last minute, if it has. */
  blocked(address: string): PgError | undefined {
    const max = this.max();
    if (max === 0 || this.failures.count(address) < max) return undefined;
    const seconds = this.failures.secondsUntilFree(address);
    const now = this.now();
    const last = this.logged.get(address);
    if (last === undefined || now - last >= MINUTE_MS) {
      for (const [other, at] of this.logged) if (now - at >= MINUTE_MS) this.logged.delete(other);
      this.logged.set(address, now);
      this.log.warn(
        { event: 'logins_blocked', address, failures: max, retryInSeconds: seconds },
        `too many failed logins from ${address} (${max} in a minute, auth_max_failures): refusing its logins for ${seconds} s`,
      );
    }
    return errors.tooManyLoginFailures(address, seconds);
  }

  /** Counts a failed login of a client from `address`. */
  failed(address: string): void {
    const max = this.max();
    if (max > 0) this.failures.take(address, max);
  }
}
