// `npm run test:durations`: writes test/durations.json, the seconds each test file took in the
// last full run, from vitest's own results cache; test/support/sequencer.ts starts the longest
// first. Run after a full `npm test` on a quiet machine, and commit the file.
import fs from 'node:fs';
import path from 'node:path';
import { DURATIONS_FILE } from './sequencer.js';

const cacheDir = path.resolve(import.meta.dirname, '..', '..', 'node_modules', '.vite', 'vitest');
const caches = fs.existsSync(cacheDir)
  ? fs
      .readdirSync(cacheDir)
      .map((dir) => path.join(cacheDir, dir, 'results.json'))
      .filter((file) => fs.existsSync(file))
  : [];
if (caches.length === 0) {
  console.error(`no vitest results in ${cacheDir}: run npm test first`);
  process.exit(1);
}
interface Results {
  results: [string, { duration: number; failed: boolean }][];
}
const durations: Record<string, number> = {};
for (const file of caches) {
  for (const [key, result] of (JSON.parse(fs.readFileSync(file, 'utf8')) as Results).results) {
    // Keys are `<project>:<path>`; the project has no name here.
    const name = key.slice(key.indexOf(':') + 1);
    // Files removed or renamed since stay in the cache.
    const exists = fs.existsSync(path.join(cacheDir, '..', '..', '..', name));
    if (exists && result.duration > 0) durations[name] = Math.round(result.duration / 100) / 10;
  }
}
const sorted = Object.fromEntries(Object.entries(durations).sort(([, a], [, b]) => b - a));
fs.writeFileSync(DURATIONS_FILE, JSON.stringify(sorted, null, 2) + '\n');
console.log(`wrote ${Object.keys(sorted).length} files' durations to ${DURATIONS_FILE}`);
