// The WAL archive of a source's standby, `<data_dir>/source/wal-archive`: the standby runs with
// archive_mode = always and copies every segment it has received here (PostgreSQL keeps a segment
// in pg_wal until it is archived, and retries a failed copy), so that the WAL since the oldest
// restore point is at hand when a branch of a past moment is recovered. Pruned with the points.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { OsUser } from '../branch/instance/postmaster.js';

export const ARCHIVE_DIR = 'wal-archive';

const SEGMENT = /^[0-9A-F]{8}([0-9A-F]{8})([0-9A-F]{8})$/;
const HISTORY = /^[0-9A-F]{8}\.history$/;

/**
 * The standby's archive_command: a segment is copied aside, synced and renamed into place, so
 * that the archive never holds half a segment; one archived already (the standby was stopped
 * before it heard so) is accepted when it is the same, and refused (retried, logged) otherwise.
 */
export function archiveCommand(archiveDir: string): string {
  const file = `${shellQuote(archiveDir)}/%f`;
  return (
    `if [ -f ${file} ]; then cmp -s %p ${file}; ` +
    `else cp %p ${file}.tmp && sync ${file}.tmp && mv ${file}.tmp ${file}; fi`
  );
}

/** The restore_command of a recovery that reads only the segments gathered in `dir`. */
export function restoreCommand(dir: string): string {
  const file = `${shellQuote(dir)}/%f`;
  return `test -f ${file} && cp ${file} %p`;
}

/** Makes the archive directory, the standby's to write (it runs as the owner). */
export function prepareArchive(archiveDir: string, owner: OsUser | undefined): void {
  fs.mkdirSync(archiveDir, { recursive: true, mode: 0o700 });
  if (owner) fs.chownSync(archiveDir, owner.uid, owner.gid);
}

/** A segment file's number (whatever its timeline), or undefined for any other name. */
export function segmentNumber(name: string, segmentSize: number): number | undefined {
  const match = SEGMENT.exec(name);
  if (!match) return undefined;
  return parseInt(match[1]!, 16) * (0x1_0000_0000 / segmentSize) + parseInt(match[2]!, 16);
}

/** Removes archived segments numbered below `keepFrom` (and copies left half made); returns how many. */
export async function pruneArchive(
  archiveDir: string,
  keepFrom: number,
  segmentSize: number,
): Promise<number> {
  let removed = 0;
  for (const name of await listOrEmpty(archiveDir)) {
    const number = segmentNumber(name.replace(/\.tmp$/, ''), segmentSize);
    if (number === undefined || number >= keepFrom) continue;
    await fsp.rm(path.join(archiveDir, name), { force: true });
    removed++;
  }
  return removed;
}

export interface GatherOptions {
  archiveDir: string;
  /** The standby's pg_wal: segments not archived yet are taken from there. */
  pgWal: string;
  /** Segment numbers to gather, first to last. */
  first: number;
  last: number;
  segmentSize: number;
  /**
   * Where the WAL ends for this recovery: what follows it in its segment is zeroed, so that
   * recovery finds the end of the WAL there and goes no further.
   */
  endLsn: bigint;
  /** Made here; a recovery's restore_command reads it (restoreCommand). */
  target: string;
  owner: OsUser | undefined;
}

/**
 * Gathers the WAL a recovery needs into one directory: archived segments as hard links (the
 * archive's files are never written again), segments only in the standby's pg_wal as copies (it
 * recycles them), every timeline history file, and the last segment cut at endLsn.
 */
export async function gatherWal(options: GatherOptions): Promise<{ segments: number }> {
  const { target, first, last, segmentSize, owner } = options;
  await fsp.mkdir(target, { mode: 0o700 });
  if (owner) await fsp.chown(target, owner.uid, owner.gid);
  const have = new Set<string>();
  const wanted = (name: string) => {
    if (HISTORY.test(name)) return true;
    const number = segmentNumber(name, segmentSize);
    return number !== undefined && number >= first && number <= last;
  };
  for (const name of await listOrEmpty(options.archiveDir)) {
    if (!wanted(name)) continue;
    const cut = segmentNumber(name, segmentSize) === last;
    await place(path.join(options.archiveDir, name), path.join(target, name), !cut, owner);
    have.add(name);
  }
  for (const name of await listOrEmpty(options.pgWal)) {
    if (have.has(name) || !wanted(name)) continue;
    try {
      await place(path.join(options.pgWal, name), path.join(target, name), false, owner);
    } catch (error) {
      // Archived and removed meanwhile: the archive's copy was listed first, or is not needed.
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      continue;
    }
    have.add(name);
  }
  const offset = Number(options.endLsn % BigInt(segmentSize));
  let segments = 0;
  for (const name of have) {
    if (segmentNumber(name, segmentSize) === undefined) continue;
    segments++;
    if (offset === 0 || segmentNumber(name, segmentSize) !== last) continue;
    // Zeros from endLsn on: the record header there reads as the end of the WAL.
    const file = path.join(target, name);
    await fsp.truncate(file, offset);
    await fsp.truncate(file, segmentSize);
  }
  return { segments };
}

/** A hard link where `link` (and the filesystem) allows, else a clone or copy. */
async function place(
  from: string,
  to: string,
  link: boolean,
  owner: OsUser | undefined,
): Promise<void> {
  if (link) {
    try {
      await fsp.link(from, to);
      return;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'EXDEV' && code !== 'EPERM' && code !== 'EMLINK') throw error;
    }
  }
  await fsp.copyFile(from, to, fs.constants.COPYFILE_EXCL | fs.constants.COPYFILE_FICLONE);
  if (owner) await fsp.chown(to, owner.uid, owner.gid);
}

async function listOrEmpty(dir: string): Promise<string[]> {
  try {
    return await fsp.readdir(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}

function shellQuote(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}
