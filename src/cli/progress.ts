// Progress on stderr for a request that takes more than a second (a reset waiting for a drain, a
// large copy): a ticker with the elapsed time on a terminal, one line in a log otherwise. Faster
// requests print nothing, so scripts' stderr stays quiet.

/** Silent until then. */
const AFTER_MS = 1000;
const TICK_MS = 100;

/** What progress writes to: process.stderr, whose isTTY says whether a ticker can redraw. */
export interface ProgressStream {
  isTTY?: boolean;
  write(text: string): boolean;
}

/** How far a copy is, as pgbranch tells it. */
export interface CopyProgress {
  bytes: number;
  totalBytes: number;
}

/** How often the copy's progress is asked for while a bar is drawn. */
const POLL_MS = 500;
const BAR_WIDTH = 24;

/**
 * Waits for `work`, showing progress once it takes more than a second: with `poll` (how far a
 * copy is, or undefined when none runs), a bar with percent, size and rate; otherwise the time.
 */
export async function withProgress<T>(
  stream: ProgressStream,
  label: string,
  work: Promise<T>,
  poll?: () => Promise<CopyProgress | undefined>,
): Promise<T> {
  const started = Date.now();
  let ticker: NodeJS.Timeout | undefined;
  let poller: NodeJS.Timeout | undefined;
  let copy: CopyProgress | undefined;
  const draw = () => stream.write(`\r\x1b[2K${label} … ${describe(copy, Date.now() - started)}`);
  const timer = setTimeout(() => {
    if (poll) {
      const ask = () =>
        void poll().then(
          (p) => (copy = p),
          () => undefined,
        );
      ask();
      poller = setInterval(ask, POLL_MS);
    }
    if (!stream.isTTY) {
      stream.write(`${label} …\n`);
      return;
    }
    draw();
    ticker = setInterval(draw, TICK_MS);
  }, AFTER_MS);
  try {
    return await work;
  } finally {
    clearTimeout(timer);
    clearInterval(poller);
    if (ticker !== undefined) {
      clearInterval(ticker);
      stream.write('\r\x1b[2K');
    }
  }
}

/** `[#########.......]  45%  1.2 of 2.6 GB, 310 MB/s, 12.3 s`, or the time alone. */
export function describe(copy: CopyProgress | undefined, elapsedMs: number): string {
  const seconds = `${(elapsedMs / 1000).toFixed(1)} s`;
  if (!copy || copy.totalBytes <= 0) return seconds;
  const share = Math.min(1, copy.bytes / copy.totalBytes);
  const filled = Math.round(share * BAR_WIDTH);
  const rate = copy.bytes / 1024 ** 2 / Math.max(0.001, elapsedMs / 1000);
  return (
    `[${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}] ${String(Math.floor(share * 100)).padStart(3)}%  ` +
    `${size(copy.bytes)} of ${size(copy.totalBytes)}, ${rate.toFixed(0)} MB/s, ${seconds}`
  );
}

function size(bytes: number): string {
  return bytes >= 1024 ** 3
    ? `${(bytes / 1024 ** 3).toFixed(1)} GB`
    : `${(bytes / 1024 ** 2).toFixed(0)} MB`;
}
