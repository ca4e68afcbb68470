// Writes the entries of a tar archive (tar.ts) into a directory as they stream in: file contents
// are copied into write buffers (write-buffers.ts), written on libuv's threads while the
// next bytes arrive; the memory of the buffers not yet written is counted, so that the reader can
// stop taking input while the disk catches up. Data handed in may be reused by the caller as soon
// as the call returns.
//
// Relation files (large, whole 8 kB pages) are written with O_DIRECT, from page-aligned buffers
// straight to the disk: through the page cache, each byte cost a copy into a newly allocated page
// and that page's writeback at the final sync, most of the backup's CPU and half its time; with
// O_DIRECT the final sync has little left. A file system that refuses O_DIRECT gets buffered writes.
import fs from 'node:fs';
import fsp, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { OsUser } from '../branch/instance/postmaster.js';
import type { TarEntry, TarHandler } from './tar.js';
import { DIRECT_ALIGNMENT, WRITE_BYTES, WriteBuffers } from './write-buffers.js';

/**
 * Files written with O_DIRECT: at least this large (small ones cost more in a synchronous write
 * than they would in the page cache) and a whole number of aligned blocks, so every write is too.
 */
const DIRECT_MIN_BYTES = WRITE_BYTES;
/** Writes of one file under way at once at most (see OpenFile.lanes). */
const LANES = 2;

export interface ArchiveWriterOptions {
  /** Exists; entries land under it. */
  root: string;
  owner?: OsUser | undefined;
  /** A symbolic link's target as it must be written (tablespaces move to pgbranch's disk). */
  linkTarget?: (entry: TarEntry) => string;
}

interface OpenFile {
  /** Opened on libuv's threads: creating a file can wait on the file system's journal. */
  handle: Promise<FileHandle>;
  path: string;
  /** Written with O_DIRECT from aligned buffers (until the file system refuses it). */
  direct: boolean;
  position: number;
  /** Without O_DIRECT, opened when a write with it was refused (EINVAL). */
  buffered: Promise<FileHandle> | undefined;
  /** Content not yet written: the first `fill` bytes of `buffer`. */
  buffer: Buffer | undefined;
  fill: number;
  /**
   * The file's writes, in lanes: one after another in each lane, the lanes side by side, so that
   * the disk always has the next write at hand instead of waiting for this thread to hand it over.
   */
  lanes: Promise<void>[];
  /** The lane of the next write. */
  lane: number;
}

export class ArchiveWriter implements TarHandler {
  private file: OpenFile | undefined;
  /** Bytes of the write buffers in use: being filled, or waiting for their write. */
  private queued = 0;
  private readonly unfinished = new Set<Promise<void>>();
  private failure: Error | undefined;
  private waiters: (() => void)[] = [];
  private readonly links = new Set<string>();
  private readonly buffers = new WriteBuffers();
  /** False once the file system refused O_DIRECT: buffered writes from then on. */
  private direct = true;
  /** Bytes of file content written so far. */
  written = 0;
  /** ... of which with O_DIRECT. */
  writtenDirect = 0;

  constructor(private readonly options: ArchiveWriterOptions) {}

  /**
   * Memory held by data not yet written: whole buffers, so that many small files can't pile up
   * a buffer each while their writes wait.
   */
  get backlog(): number {
    return this.queued;
  }

  entry(entry: TarEntry): void {
    this.throwIfFailed();
    const target = this.resolve(entry.path);
    const { owner } = this.options;
    switch (entry.type) {
      case 'directory':
        fs.mkdirSync(target, { recursive: true, mode: entry.mode & 0o777 });
        if (owner) fs.chownSync(target, owner.uid, owner.gid);
        return;
      case 'symlink': {
        const linkTarget = this.options.linkTarget?.(entry) ?? entry.linkTarget!;
        fs.symlinkSync(linkTarget, target);
        if (owner) fs.lchownSync(target, owner.uid, owner.gid);
        this.links.add(entry.path);
        return;
      }
      case 'file': {
        const direct =
          this.direct && entry.size >= DIRECT_MIN_BYTES && entry.size % DIRECT_ALIGNMENT === 0;
        const handle = openFile(target, entry.mode & 0o777, owner, direct).then((opened) => {
          if (direct && !opened.direct) this.refuseDirect(file);
          return opened.handle;
        });
        // A file that could not be opened fails its first write, or its close.
        const opened = handle.then(() => undefined);
        const file: OpenFile = {
          handle,
          path: target,
          direct,
          position: 0,
          buffered: undefined,
          buffer: undefined,
          fill: 0,
          lanes: Array.from({ length: LANES }, () => opened),
          lane: 0,
        };
        this.file = file;
      }
    }
  }

  data(chunk: Buffer): void {
    const file = this.file!;
    for (let at = 0; at < chunk.length;) {
      if (!file.buffer) {
        file.buffer = this.buffers.take(file.direct);
        this.queued += file.buffer.length;
      }
      const copied = chunk.copy(file.buffer, file.fill, at);
      file.fill += copied;
      at += copied;
      if (file.fill === file.buffer.length) this.flush(file);
    }
  }

  endFile(): void {
    const file = this.file!;
    this.file = undefined;
    this.flush(file);
    this.track(settled(file).finally(() => close(file)));
  }

  /** Resolves once the backlog is at most `bytes` (or a write failed: then rejects). */
  async drained(bytes: number): Promise<void> {
    while (this.queued > bytes && !this.failure) {
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    this.throwIfFailed();
  }

  /** Closes the file left open by an archive that broke off, once its writes have settled. */
  async abandon(): Promise<void> {
    const file = this.file;
    this.file = undefined;
    if (file) this.track(settled(file).finally(() => close(file)));
    while (this.unfinished.size > 0) await Promise.allSettled([...this.unfinished]);
  }

  /** Resolves once every file is written and closed; rejects with the first failure. */
  async finish(): Promise<void> {
    if (this.file) throw new Error('the archive ended in the middle of a file');
    while (this.unfinished.size > 0) await Promise.allSettled([...this.unfinished]);
    this.throwIfFailed();
  }

  private flush(file: OpenFile): void {
    const { buffer, fill: bytes, position } = file;
    if (!buffer) return;
    file.buffer = undefined;
    file.fill = 0;
    file.position += bytes;
    const lane = file.lane;
    file.lane = (lane + 1) % LANES;
    file.lanes[lane] = file.lanes[lane]!.then(async () => {
      try {
        const data = buffer.subarray(0, bytes);
        const direct = file.direct;
        try {
          await writeAll(await (file.buffered ?? file.handle), data, position);
        } catch (error) {
          if (!direct || (error as NodeJS.ErrnoException).code !== 'EINVAL') throw error;
          // O_DIRECT refused on this file system after all: the file goes on without it.
          this.refuseDirect(file);
          file.buffered ??= fsp.open(file.path, fs.constants.O_WRONLY);
          await writeAll(await file.buffered, data, position);
        }
        this.written += bytes;
        if (direct && file.direct) this.writtenDirect += bytes;
        this.buffers.give(buffer);
      } catch (error) {
        this.failure ??= new Error(`could not write ${file.path}: ${(error as Error).message}`, {
          cause: error,
        });
        throw this.failure;
      } finally {
        this.queued -= buffer.length;
        this.wake();
      }
    });
  }

  private refuseDirect(file: OpenFile): void {
    file.direct = false;
    this.direct = false;
  }

  private track(work: Promise<void>): void {
    const tracked = work.catch((error: unknown) => {
      this.failure ??= error as Error;
      this.wake();
    });
    this.unfinished.add(tracked);
    void tracked.finally(() => this.unfinished.delete(tracked));
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  /** The entry's place on disk; never through a link the archive made (that could lead anywhere). */
  private resolve(relative: string): string {
    for (let at = relative.indexOf('/'); at >= 0; at = relative.indexOf('/', at + 1)) {
      if (this.links.has(relative.slice(0, at))) {
        throw new Error(`tar entry ${relative} lies behind a symbolic link of the archive`);
      }
    }
    return path.join(this.options.root, relative);
  }
}

/**
 * A new file, owned as the entries are; its directory made first when the archive did not list it
 * (tar allows that). With O_DIRECT if asked and the file system takes it (`direct` says).
 */
async function openFile(
  file: string,
  mode: number,
  owner: OsUser | undefined,
  direct: boolean,
): Promise<{ handle: FileHandle; direct: boolean }> {
  let opened: { handle: FileHandle; direct: boolean };
  try {
    opened = await create(file, mode, direct);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    const made = await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    if (owner && made) {
      for (let dir = path.dirname(file); dir.startsWith(made); dir = path.dirname(dir)) {
        await fsp.chown(dir, owner.uid, owner.gid);
      }
    }
    opened = await create(file, mode, direct);
  }
  if (owner) {
    await opened.handle.chown(owner.uid, owner.gid).catch(async (error: unknown) => {
      await opened.handle.close();
      throw error;
    });
  }
  return opened;
}

/** open(2) of a new file; EINVAL to O_DIRECT (tmpfs before Linux 6.6, say): opened without. */
async function create(
  file: string,
  mode: number,
  direct: boolean,
): Promise<{ handle: FileHandle; direct: boolean }> {
  const { O_WRONLY, O_CREAT, O_TRUNC, O_DIRECT } = fs.constants;
  try {
    return {
      handle: await fsp.open(file, O_WRONLY | O_CREAT | O_TRUNC | (direct ? O_DIRECT : 0), mode),
      direct,
    };
  } catch (error) {
    if (!direct || (error as NodeJS.ErrnoException).code !== 'EINVAL') throw error;
    return { handle: await fsp.open(file, 'w', mode), direct: false };
  }
}

/** write until every byte is down: a write may take fewer bytes than it was given. */
async function writeAll(handle: FileHandle, data: Buffer, position: number): Promise<void> {
  for (let at = 0; at < data.length;) {
    at += (await handle.write(data, at, data.length - at, position + at)).bytesWritten;
  }
}

/** Once every write of the file has settled (none is under way); rejects with a failed one. */
async function settled(file: OpenFile): Promise<void> {
  const failed = (await Promise.allSettled(file.lanes)).find((lane) => lane.status === 'rejected');
  if (failed) throw failed.reason;
}

/** Closes a file once it was opened; one that never opened has nothing to close. */
async function close(file: OpenFile): Promise<void> {
  for (const opening of [file.handle, file.buffered]) {
    const handle = await opening?.catch(() => undefined);
    await handle?.close();
  }
}
