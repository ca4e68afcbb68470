// How many branches one role may make by connecting: per minute (branch.max_creations_per_minute)
// and in all (branch.max_per_role). Both providers ask here before they make a branch for a client.
import { errors } from '../errors.js';
import { RateLimiter } from '../rate-limiter.js';

export interface CreationLimits {
  /** 0: no limit. */
  readonly maxCreationsPerMinute: number;
  /** 0: no limit. */
  readonly maxPerRole: number;
}

export class CreationQuota {
  private readonly recent: RateLimiter;

  constructor(
    /** The limits as configured now (after a RELOAD too). */
    private readonly limits: () => CreationLimits,
    now: () => number = Date.now,
  ) {
    this.recent = new RateLimiter(60_000, now);
  }

  /**
   * Throws 53400 when `role` may not make another branch now; otherwise counts this creation.
   * `made` counts the branches that the role made and that still exist.
   */
  admit(role: string, made: () => number): void {
    const { maxCreationsPerMinute, maxPerRole } = this.limits();
    if (maxPerRole > 0 && made() >= maxPerRole) throw errors.roleBranchLimit(role, maxPerRole);
    if (maxCreationsPerMinute > 0 && !this.recent.take(role, maxCreationsPerMinute)) {
      throw errors.creationRateLimit(
        role,
        maxCreationsPerMinute,
        this.recent.secondsUntilFree(role),
      );
    }
  }
}
