// A throwaway copy-on-write filesystem for tests: a sparse file formatted as XFS with reflink and
// loop-mounted. Needs root, xfsprogs (which the test setup installs as root where apt-get can) and
// a loop device; where any is missing it says why instead, so that tests can skip and print the
// reason.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface MountedXfs {
  /** The mount point: world-traversable, so the embedded server's postgres user can use it. */
  dir: string;
  /** Its loop device (/dev/loopN), or undefined where losetup could not name it. */
  device: string | undefined;
  /** Unmounts (lazily when something still holds it) and removes the image file. */
  unmount(): Promise<void>;
}

export type XfsMount = MountedXfs | { skipped: string };

export async function mountReflinkXfs(sizeMB: number): Promise<XfsMount> {
  if (process.getuid?.() !== 0) {
    return { skipped: 'not running as root: a loop-mounted XFS needs root' };
  }
  const mkfs = findTool('mkfs.xfs');
  const mount = findTool('mount');
  const umount = findTool('umount');
  if (!mkfs) return { skipped: 'mkfs.xfs is not installed (apt-get install -y xfsprogs)' };
  if (!mount || !umount) return { skipped: 'mount or umount is not installed' };
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbranch-xfs-'));
  fs.chmodSync(base, 0o755);
  const image = path.join(base, 'xfs.img');
  const dir = path.join(base, 'mnt');
  fs.mkdirSync(dir);
  let device: string | undefined;
  try {
    // Sparse: the image costs the host only what the test writes into it.
    fs.writeFileSync(image, '');
    fs.truncateSync(image, sizeMB * 1024 * 1024);
    await run(mkfs, ['-q', '-m', 'reflink=1', image]);
    await run(mount, ['-o', 'loop', image, dir]);
    device = await directIo(image);
  } catch (error) {
    fs.rmSync(base, { recursive: true, force: true });
    const e = error as { stderr?: string; message: string };
    return { skipped: `cannot make a loop-mounted XFS: ${(e.stderr || e.message).trim()}` };
  }
  fs.chmodSync(dir, 0o755);
  let unmounted: Promise<void> | undefined;
  return {
    dir,
    device,
    unmount: () =>
      (unmounted ??= (async () => {
        try {
          await run(umount, [dir]);
        } catch {
          // Busy (a server that has not quite exited): detach now, release when the last user goes.
          await run(umount, ['-l', dir]).catch(() => undefined);
        }
        fs.rmSync(base, { recursive: true, force: true });
      })()),
  };
}

/**
 * Switches the image's loop device to direct I/O on its backing file, as a disk of its own would
 * be. Buffered, every write reaches the host's page cache twice (the XFS's, then the image file's),
 * and every fsync in the XFS (a commit's WAL flush) becomes an fsync of the whole image file: it
 * writes out whatever any other server on it left dirty, so one instance's writes stall another's
 * commits. Where the kernel or losetup can't, the device stays as it was.
 */
async function directIo(image: string): Promise<string | undefined> {
  const losetup = findTool('losetup');
  if (!losetup) return undefined;
  let device: string | undefined;
  try {
    const { stdout } = await run(losetup, [
      '--noheadings',
      '--output',
      'NAME',
      '--associated',
      image,
    ]);
    device = stdout.trim().split('\n')[0] || undefined;
    if (device) await run(losetup, ['--direct-io=on', device]);
  } catch {
    // Buffered, then.
  }
  return device;
}

/**
 * Installs xfsprogs when it is missing and this process may: as root, on a system with apt-get
 * (Debian, as CI's and the README's machines are). Returns what it did, for the test run's output,
 * or undefined when there was nothing to do or no way to do it.
 */
export async function installXfsprogs(): Promise<string | undefined> {
  if (process.getuid?.() !== 0 || findTool('mkfs.xfs')) return undefined;
  const aptGet = findTool('apt-get');
  if (!aptGet) return undefined;
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  // Waits for another apt-get (a second test run's, say) instead of failing on its lock.
  const install = () =>
    run(aptGet, ['-o', 'DPkg::Lock::Timeout=300', 'install', '-y', '-qq', 'xfsprogs'], { env });
  try {
    try {
      await install();
    } catch {
      // A fresh machine has no package lists yet.
      await run(aptGet, ['-o', 'DPkg::Lock::Timeout=300', 'update', '-qq'], { env });
      await install();
    }
  } catch (error) {
    const e = error as { stderr?: string; message: string };
    return `could not install xfsprogs (apt-get install -y xfsprogs): ${(e.stderr || e.message).trim()}`;
  }
  return 'installed xfsprogs (apt-get) for the copy-on-write tests';
}

/** A program's full path, looking in the sbin directories too: a non-login shell may lack them. */
export function findTool(tool: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin'];
  return dirs
    .filter(Boolean)
    .map((dir) => path.join(dir, tool))
    .find((file) => {
      try {
        fs.accessSync(file, fs.constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
}
