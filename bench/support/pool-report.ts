// Number formats and statistics of the pooling benchmark's report; the table and the progress
// lines are report.ts's.
import type { PgbenchFailure, PgbenchRun } from './pool-pgbench.js';
import { summarize } from './report.js';

export function succeeded(runs: (PgbenchRun | PgbenchFailure)[]): PgbenchRun[] {
  return runs.filter((run): run is PgbenchRun => !('failed' in run));
}

export function failures(runs: (PgbenchRun | PgbenchFailure)[]): PgbenchFailure[] {
  return runs.filter((run): run is PgbenchFailure => 'failed' in run);
}

/** `14,520`. */
export function tps(value: number): string {
  return Math.round(value).toLocaleString('en');
}

/** Milliseconds with three significant digits: `0.712`, `2.41`, `14.2`, `153`. */
export function ms(value: number): string {
  if (value < 1) return value.toFixed(3);
  if (value < 10) return value.toFixed(2);
  if (value < 100) return value.toFixed(1);
  return value.toFixed(0);
}

/** `14,520 (13,910–15,100)`: median and range. */
export function range(values: number[], format: (n: number) => string): string {
  const { median, min, max } = summarize(values);
  return values.length === 1 ? format(median) : `${format(median)} (${format(min)}–${format(max)})`;
}

/**
 * Median of the per-round ratios a[i] / b[i], over rounds where both ran: paired, since a round
 * runs its targets back to back. Undefined when no round has both.
 */
export function pairedRatio(
  a: (PgbenchRun | PgbenchFailure)[],
  b: (PgbenchRun | PgbenchFailure)[],
  pick: (run: PgbenchRun) => number,
): number | undefined {
  const ratios: number[] = [];
  a.forEach((run, i) => {
    const other = b[i];
    if (other && !('failed' in run) && !('failed' in other)) ratios.push(pick(run) / pick(other));
  });
  return ratios.length > 0 ? summarize(ratios).median : undefined;
}

export function ratio(value: number | undefined): string {
  return value === undefined ? 'n/a' : `${value.toFixed(2)}×`;
}

/** Decimal megabytes, as targets are written: `212 MB`. */
export function megabytes(bytes: number): string {
  return `${(bytes / 1e6).toFixed(bytes < 10e6 ? 1 : 0)} MB`;
}
