import { describe, expect, it } from 'vitest';
import { RateLimiter } from './rate-limiter.js';

describe('RateLimiter', () => {
  it('takes up to max events of a key within the window, then none until the oldest leaves it', () => {
    let now = 1_000_000;
    const limiter = new RateLimiter(60_000, () => now);
    expect(limiter.take('a', 2)).toBe(true);
    now += 10_000;
    expect(limiter.take('a', 2)).toBe(true);
    expect(limiter.take('a', 2)).toBe(false);
    expect(limiter.take('b', 2)).toBe(true);
    expect(limiter.secondsUntilFree('a')).toBe(50);
    now += 49_999;
    expect(limiter.secondsUntilFree('a')).toBe(1);
    expect(limiter.take('a', 2)).toBe(false);
    now += 1;
    expect(limiter.count('a')).toBe(1);
    expect(limiter.take('a', 2)).toBe(true);
  });

  it('forgets keys with nothing in the window, so that many addresses cost no lasting memory', () => {
    let now = 0;
    const limiter = new RateLimiter(1_000, () => now);
    for (let i = 0; i < 10_000; i++) limiter.take(`10.0.${i >> 8}.${i & 255}`, 5);
    now += 1_000;
    limiter.take('one more', 5);
    expect((limiter as unknown as { recent: Map<string, number[]> }).recent.size).toBe(1);
  });
});
