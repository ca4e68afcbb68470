import { describe, expect, it } from 'vitest';
import { PgError } from '../errors.js';
import { ttlMs } from './ttl.js';

describe('ttlMs', () => {
  it('reads text as a duration, as the configuration does, and takes a number as milliseconds', () => {
    expect(ttlMs('7d')).toBe(7 * 86_400_000);
    expect(ttlMs('2h')).toBe(7_200_000);
    expect(ttlMs('90')).toBe(90_000);
    expect(ttlMs(1500)).toBe(1500);
  });

  it('refuses what is no duration with 22023, in words the console and the API share', () => {
    let error: unknown;
    try {
      ttlMs('soon');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(PgError);
    expect(error).toMatchObject({
      code: '22023',
      severity: 'ERROR',
      message: 'invalid ttl "soon": not a duration',
      hint: 'Write a duration such as 30m, 2h or 7d.',
    });
  });
});
