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

export async function withProgress<T>(
  stream: ProgressStream,
  label: string,
  work: Promise<T>,
): Promise<T> {
  const started = Date.now();
  let ticker: NodeJS.Timeout | undefined;
  const draw = () =>
    stream.write(`\r\x1b[2K${label} … ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const timer = setTimeout(() => {
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
    if (ticker !== undefined) {
      clearInterval(ticker);
      stream.write('\r\x1b[2K');
    }
  }
}
