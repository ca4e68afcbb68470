// What a branch costs on disk: the free space its filesystem lost (statfs before and after, which
// also counts whatever else wrote meanwhile), and the blocks a branch's files hold alone, shared
// with no other file (extents without FIEMAP's shared flag, read with filefrag -v): on a reflink
// filesystem, that is what the branch has written or its parent has changed since the copy.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Bytes free to an unprivileged writer on the filesystem of `dir`. */
export function freeBytes(dir: string): number {
  const stats = fs.statfsSync(dir);
  return stats.bavail * stats.bsize;
}

/**
 * Free bytes once they stop changing (two reads 100 ms apart agree), or after `maxMs`. XFS frees
 * the blocks of removed files in the background, after the unlink returned and syncfs does not
 * wait for it: a database dropped just before would otherwise be given back in the middle of the
 * next measurement and cancel out the next branch's cost.
 */
export async function settledFreeBytes(dir: string, maxMs = 3_000): Promise<number> {
  const deadline = Date.now() + maxMs;
  let last = freeBytes(dir);
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    const now = freeBytes(dir);
    if (now === last || Date.now() > deadline) return now;
    last = now;
  }
}

/** Files per filefrag run: well inside the argument list limit. */
const FILES_PER_RUN = 500;

/** Bytes of the files under `dir` in extents no other file shares; undefined without filefrag. */
export async function unsharedBytes(dir: string): Promise<number | undefined> {
  const files = fs
    .readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.join(entry.parentPath, entry.name));
  let total = 0;
  for (let i = 0; i < files.length; i += FILES_PER_RUN) {
    let stdout: string;
    try {
      ({ stdout } = await run('filefrag', ['-v', ...files.slice(i, i + FILES_PER_RUN)], {
        maxBuffer: 256 * 2 ** 20,
        env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` },
      }));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      // A file removed meanwhile (a temporary file of the server) fails the run: count what it said.
      stdout = (error as { stdout?: string }).stdout ?? '';
    }
    total += unsharedIn(stdout);
  }
  return total;
}

/**
 * filefrag -v: `File size of F is N (B blocks of S bytes)`, then one line per extent,
 * `0: 0.. 9: 24.. 33: 10: shared`, whose fourth field is its length in blocks.
 */
function unsharedIn(output: string): number {
  let blockSize = 4096;
  let total = 0;
  for (const line of output.split('\n')) {
    const size = /^File size of .* blocks of (\d+) bytes\)/.exec(line);
    if (size) {
      blockSize = Number(size[1]);
      continue;
    }
    const extent = /^\s*\d+:\s+\d+\.\.\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+):(.*)$/.exec(line);
    if (extent && !/\bshared\b/.test(extent[2]!)) total += Number(extent[1]) * blockSize;
  }
  return total;
}

/** Extents of the files together (filefrag's count): what a reflink copy walks, one by one. */
export async function extentCount(files: string[]): Promise<number | undefined> {
  if (files.length === 0) return 0;
  try {
    const { stdout } = await run('filefrag', files, {
      env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` },
    });
    let total = 0;
    for (const match of stdout.matchAll(/: (\d+) extents? found$/gm)) total += Number(match[1]);
    return total;
  } catch {
    return undefined;
  }
}

/** A relation's main fork: its first file and the 1 GB segments after it (.1, .2, ...). */
export function segmentFiles(first: string): string[] {
  const files: string[] = [];
  for (let n = 0; fs.existsSync(n === 0 ? first : `${first}.${n}`); n++) {
    files.push(n === 0 ? first : `${first}.${n}`);
  }
  return files;
}
