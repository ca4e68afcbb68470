import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    // As root with apt-get, installs xfsprogs for the copy-on-write tests.
    globalSetup: ['test/support/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Test files start their own PostgreSQL servers; two cores run two at a time.
    fileParallelism: true,
    maxWorkers: 2,
    reporters: ['default'],
  },
});
