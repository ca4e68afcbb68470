// The quick start's first command, `npm ci`, on the Node.js that runs the tests (CI's is 20, the
// oldest that package.json's engines admit): it installs without a warning to puzzle over (a locked
// package that wants a newer Node, install scripts npm would skip unasked). A dry run from the
// lockfile alone says what a real one would.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from './support/pgbranch.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const run = promisify(execFile);

const dir = tempDir('npm-ci');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('npm ci', () => {
  it('installs without a warning', async () => {
    for (const file of ['package.json', 'package-lock.json']) {
      fs.copyFileSync(path.join(ROOT, file), path.join(dir, file));
    }
    const { stdout, stderr } = await run(
      'npm',
      ['ci', '--dry-run', '--offline', '--no-audit', '--no-fund'],
      {
        cwd: dir,
        // Its own cache: the dry run needs nothing but the lockfile, and so must not lean on one.
        env: { ...process.env, npm_config_cache: path.join(dir, 'cache') },
      },
    );
    expect(stdout).toMatch(/added \d+ packages/);
    expect(stderr).toBe('');
  });
});
