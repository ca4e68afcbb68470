// What the benchmark says: progress on stderr while it works, statistics and a markdown table on
// stdout at the end.
const started = performance.now();

export function progress(message: string): void {
  const seconds = ((performance.now() - started) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[${seconds} s] ${message}\n`);
}

export interface Summary {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function summarize(samples: number[]): Summary {
  if (samples.length === 0) throw new Error('no samples to summarize');
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { median, min: sorted[0]!, max: sorted.at(-1)!, n: sorted.length };
}

/** Median of a[i] - b[i]: the difference between two measurements taken side by side. */
export function pairedMedianDifference(a: number[], b: number[]): number {
  return summarize(a.map((value, i) => value - b[i]!)).median;
}

/** A duration in the unit that suits it: `87 ms`, `2.41 s`. */
export function duration(ms: number): string {
  return Math.abs(ms) >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

/** `87 ms (80–95)`: median, then min–max in the median's unit. */
export function cell(samples: number[]): string {
  const { median, min, max } = summarize(samples);
  if (median >= 1000) {
    return `${(median / 1000).toFixed(2)} s (${(min / 1000).toFixed(2)}–${(max / 1000).toFixed(2)})`;
  }
  return `${Math.round(median)} ms (${Math.round(min)}–${Math.round(max)})`;
}

export function signedDuration(ms: number): string {
  return `${ms < 0 ? '−' : '+'}${duration(Math.abs(ms))}`;
}

export function bytes(n: number): string {
  if (Math.abs(n) >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (Math.abs(n) >= 2 ** 20) return `${(n / 2 ** 20).toFixed(n >= 100 * 2 ** 20 ? 0 : 1)} MiB`;
  return `${Math.round(n / 1024)} KiB`;
}

export function markdownTable(header: string[], rows: string[][]): string {
  const escape = (text: string) => text.replace(/\|/g, '\\|');
  const lines = [
    `| ${header.map(escape).join(' | ')} |`,
    `| ${header.map(() => '---').join(' | ')} |`,
    ...rows.map((row) => `| ${row.map(escape).join(' | ')} |`),
  ];
  return lines.join('\n');
}
