import { configDefaults, defineConfig } from 'vitest/config';
import { LongestFirst } from './test/support/sequencer.js';

/**
 * Slow suites, kept out of `npm test` (which must stay under 10 minutes on 2 cores) and run by
 * `npm run test:slow`: the minute-long soak (the 10-minute one is `npm run soak`), and the
 * installs of PostgreSQL 17 and 14 from npm for sources of those majors (downloads).
 */
export const SLOW_TESTS = ['test/soak.test.ts', 'test/source-binaries.test.ts'];

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    exclude: [...configDefaults.exclude, ...(process.env.PGBRANCH_SLOW_TESTS ? [] : SLOW_TESTS)],
    // As root with apt-get, installs xfsprogs for the copy-on-write tests.
    globalSetup: ['test/support/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Test files start their own PostgreSQL servers; two cores run two at a time.
    fileParallelism: true,
    maxWorkers: 2,
    // Longest files first (test/durations.json), so that both workers stay busy to the end.
    sequence: { sequencer: LongestFirst },
    reporters: ['default'],
  },
});
