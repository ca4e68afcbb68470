// The order test files start in: the longest first, by what they took in a recorded run
// (test/durations.json, written by `npm run test:durations` after a full run). Two workers share
// the files, and a long file that starts last keeps one of them busy alone at the end; longest
// first is what keeps both busy to the end. A fresh clone has no vitest cache to order by, so
// without this CI ran files in the order of their size, which puts some of the slowest late.
import fs from 'node:fs';
import path from 'node:path';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

export const DURATIONS_FILE = path.resolve(import.meta.dirname, '..', 'durations.json');

/** Seconds each file took, by its path from the repository's root. */
export function recordedDurations(): Record<string, number> {
  try {
    return JSON.parse(fs.readFileSync(DURATIONS_FILE, 'utf8')) as Record<string, number>;
  } catch {
    return {};
  }
}

export class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const durations = recordedDurations();
    const root = this.ctx.config.root;
    // Files not recorded yet (new ones) first, as vitest itself runs unknown files first.
    const seconds = (file: TestSpecification) =>
      durations[path.relative(root, file.moduleId)] ?? Number.POSITIVE_INFINITY;
    // The base order (vitest's cache, then size) breaks ties: Array.prototype.sort is stable.
    return (await super.sort(files)).sort((a, b) => seconds(b) - seconds(a));
  }
}
