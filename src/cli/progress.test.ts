import { afterEach, describe, expect, it, vi } from 'vitest';
import { describe as describeCopy, withProgress } from './progress.js';

afterEach(() => {
  vi.useRealTimers();
});

describe('describe', () => {
  it('draws a bar with percent, sizes and rate while a copy reports, and the time otherwise', () => {
    expect(describeCopy(undefined, 2500)).toBe('2.5 s');
    expect(describeCopy({ bytes: 512 * 1024 ** 2, totalBytes: 2048 * 1024 ** 2 }, 2000)).toBe(
      '[######..................]  25%  512 MB of 2.0 GB, 256 MB/s, 2.0 s',
    );
    expect(describeCopy({ bytes: 10, totalBytes: 0 }, 1000)).toBe('1.0 s');
  });
});

describe('withProgress', () => {
  it('stays silent for a second, then draws the copy’s progress as pgbranch reports it', async () => {
    vi.useFakeTimers();
    const written: string[] = [];
    const stream = { isTTY: true, write: (text: string) => written.push(text) > 0 };
    let finish!: (value: string) => void;
    const work = new Promise<string>((resolve) => (finish = resolve));
    let reported = { bytes: 0, totalBytes: 100 * 1024 ** 2 };
    const polls: number[] = [];
    const waiting = withProgress(stream, 'creating app@x', work, () => {
      polls.push(Date.now());
      return Promise.resolve(reported);
    });
    await vi.advanceTimersByTimeAsync(900);
    expect(written).toEqual([]);
    reported = { bytes: 50 * 1024 ** 2, totalBytes: 100 * 1024 ** 2 };
    await vi.advanceTimersByTimeAsync(700);
    expect(polls.length).toBeGreaterThanOrEqual(2);
    expect(written.at(-1)).toContain(
      'creating app@x … [############............]  50%  50 MB of 100 MB',
    );
    finish('done');
    expect(await waiting).toBe('done');
    expect(written.at(-1)).toBe('\r\x1b[2K');
  });
});
