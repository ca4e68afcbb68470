// An idle expiry (TTL) as an operator gives it, in the console (`TTL 7d`) or to the admin API.
import { duration } from '../config/schema.js';
import { errors } from '../errors.js';

/**
 * A TTL in milliseconds. Text is a duration as in the configuration (30m, 2h, 7d; digits alone are
 * seconds); a number, which only the API's JSON can give, is milliseconds already. Throws 22023.
 */
export function ttlMs(value: string | number): number {
  if (typeof value === 'number') return value;
  const parsed = duration.safeParse(value);
  if (!parsed.success) throw errors.invalidTtl(value);
  return parsed.data;
}
