// Runs once before any test file (vitest's globalSetup): gets from the system what the suite needs
// and a fresh machine may lack, where it can, so that `npm test` runs every test there; and builds
// dist/ when src/ is newer, since tests run pgbranch as users do (bin/pgbranch.js runs the build
// when it is current, and src/ through tsx, three times the CPU per start, when it is not).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { startPgbranch, TEMPLATE_DIR } from './pgbranch.js';
import { installXfsprogs } from './xfs.js';

const ROOT = path.resolve(import.meta.dirname, '../..');

/** The newest modification time of the files the build reads (src/ and web/, tests aside). */
function newestSource(dir: string): number {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestSource(file));
    else if (!entry.name.endsWith('.test.ts')) newest = Math.max(newest, fs.statSync(file).mtimeMs);
  }
  return newest;
}

function buildIsCurrent(): boolean {
  try {
    const builtAt = fs.statSync(path.join(ROOT, 'dist', 'main.js')).mtimeMs;
    return builtAt >= Math.max(...['src', 'web'].map((dir) => newestSource(path.join(ROOT, dir))));
  } catch {
    return false;
  }
}

export default async function setup(): Promise<() => void> {
  const done = await installXfsprogs();
  if (done) console.info(`test setup: ${done}`);
  if (!buildIsCurrent()) {
    console.info('test setup: building dist/ (npm run build), which the tests run');
    execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: ['ignore', 2, 2] });
  }
  // The cluster a first start of pgbranch makes, copied into each fresh data directory.
  fs.rmSync(TEMPLATE_DIR, { recursive: true, force: true });
  fs.mkdirSync(TEMPLATE_DIR, { mode: 0o755 });
  const first = await startPgbranch({ dataDir: TEMPLATE_DIR, timeoutMs: 120_000 });
  await first.stop();
  return () => fs.rmSync(TEMPLATE_DIR, { recursive: true, force: true });
}
