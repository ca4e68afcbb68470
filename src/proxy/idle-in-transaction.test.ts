import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { IdleInTransactionTimer } from './idle-in-transaction.js';

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('IdleInTransactionTimer', () => {
  test('expires once the client has been silent for the timeout since the server went idle', () => {
    const expired = vi.fn();
    const timer = new IdleInTransactionTimer(1000, expired);
    timer.idle();
    vi.advanceTimersByTime(999);
    expect(expired).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(expired).toHaveBeenCalledOnce();
    vi.advanceTimersByTime(5000);
    expect(expired).toHaveBeenCalledOnce();
  });

  test('counts from the latest idle(): a client that keeps talking is never cut off', () => {
    const expired = vi.fn();
    const timer = new IdleInTransactionTimer(1000, expired);
    for (let i = 0; i < 10; i++) {
      timer.idle();
      vi.advanceTimersByTime(600);
      timer.touch();
      vi.advanceTimersByTime(300);
    }
    expect(expired).not.toHaveBeenCalled();
    timer.idle();
    vi.advanceTimersByTime(1000);
    expect(expired).toHaveBeenCalledOnce();
  });

  test('does not count while the client has sent something the server has not answered', () => {
    const expired = vi.fn();
    const timer = new IdleInTransactionTimer(1000, expired);
    timer.idle();
    timer.touch();
    vi.advanceTimersByTime(10_000);
    expect(expired).not.toHaveBeenCalled();
  });

  test('never fires after stop()', () => {
    const expired = vi.fn();
    const timer = new IdleInTransactionTimer(1000, expired);
    timer.idle();
    timer.stop();
    vi.advanceTimersByTime(10_000);
    expect(expired).not.toHaveBeenCalled();
  });
});
