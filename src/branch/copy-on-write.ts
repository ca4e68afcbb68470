// Whether a directory's filesystem can clone files (reflink): the difference between branches made
// in milliseconds with no extra disk, and branches that copy every byte.
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';

export interface CloneSupport {
  supported: boolean;
  /** The filesystem type when known (xfs, btrfs, ...), for messages. */
  filesystem: string;
  detail: string;
}

/** What FICLONE fails with where the filesystem (or the kernel) has no reflink. */
const NO_CLONE = new Set(['ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EINVAL', 'ENOSYS', 'ENOTTY']);

/** Clones a scratch file inside `dir` with FICLONE; only a real clone counts. */
export function detectCloneSupport(dir: string): CloneSupport {
  const filesystem = filesystemType(dir);
  const source = path.join(dir, `.pgbranch-reflink-${randomBytes(4).toString('hex')}`);
  const target = `${source}.clone`;
  try {
    fs.writeFileSync(source, randomBytes(4096));
    fs.copyFileSync(source, target, fs.constants.COPYFILE_FICLONE_FORCE);
    return { supported: true, filesystem, detail: `${filesystem} supports reflink clones` };
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    const code = e.code ?? String(error);
    if (!NO_CLONE.has(code)) {
      // A full disk or a directory we may not write to says nothing about the filesystem.
      return {
        supported: false,
        filesystem,
        detail: `could not check whether ${filesystem} can clone files: ${e.message}`,
      };
    }
    return {
      supported: false,
      filesystem,
      detail: `${filesystem} cannot clone files (${code}); use XFS with reflink=1, btrfs or ZFS 2.2+ for copy-on-write branches`,
    };
  } finally {
    fs.rmSync(source, { force: true });
    fs.rmSync(target, { force: true });
  }
}

/** The type of the filesystem mounted at or above `dir`, read from /proc/self/mounts. */
export function filesystemType(dir: string): string {
  let mounts: string;
  try {
    mounts = fs.readFileSync('/proc/self/mounts', 'utf8');
  } catch {
    return 'unknown filesystem';
  }
  const real = fs.realpathSync(dir);
  let best = { point: '', type: 'unknown filesystem' };
  for (const line of mounts.split('\n')) {
    const [, point, type] = line.split(' ');
    if (!point || !type) continue;
    // The kernel writes space, tab, newline and backslash in mount points as octal escapes.
    const decoded = point.replace(/\\([0-7]{3})/g, (_, octal: string) =>
      String.fromCharCode(parseInt(octal, 8)),
    );
    const inside =
      real === decoded || real.startsWith(decoded.endsWith('/') ? decoded : `${decoded}/`);
    if (inside && decoded.length >= best.point.length) best = { point: decoded, type };
  }
  return best.type;
}
