// The buffers a base backup's file contents are gathered in before they are written, used again
// once written so that gigabytes cost a few dozen. Those for O_DIRECT writes must start on a page
// boundary, which no Buffer allocation promises: WebAssembly memory does (it is mapped whole
// pages), so aligned buffers are carved out of it.

/** A plain buffer's size: the largest buffered write of a file's content. */
export const WRITE_BYTES = 1024 * 1024;
/**
 * An aligned buffer's size: O_DIRECT writes wait for the disk, so they are few and large (measured
 * on ext4: a 1 GB backup's COPY took 2.0-2.5 s with 4 MB writes against 2.5-2.8 s with 1 MB).
 */
export const DIRECT_WRITE_BYTES = 4 * WRITE_BYTES;
/** What O_DIRECT asks of memory, file offsets and lengths (a page; more than any disk's sector). */
export const DIRECT_ALIGNMENT = 4096;
/** Plain buffers kept for reuse at most (base-backup.ts stops reading at 32 MB of them in use). */
const POOLED = 40;
/** Aligned buffers are mapped this many at a time (64 MB of address space, touched as used). */
const ALIGNED_PER_MAPPING = 16;
const WASM_PAGE = 64 * 1024;

export class WriteBuffers {
  private readonly plain: Buffer[] = [];
  private readonly aligned: Buffer[] = [];
  private readonly isAligned = new WeakSet<Buffer>();

  /** False once WebAssembly memory could not be had. */
  private mappable = true;

  /**
   * A buffer of WRITE_BYTES, or of DIRECT_WRITE_BYTES `aligned` for O_DIRECT writes: then aligned
   * unless no WebAssembly memory could be mapped (an address space limit, `ulimit -v`), and the
   * O_DIRECT write refused with EINVAL goes on buffered (archive-writer.ts).
   */
  take(aligned: boolean): Buffer {
    if (aligned && this.aligned.length === 0 && this.mappable) this.map();
    if (aligned && this.aligned.length > 0) return this.aligned.pop()!;
    return this.plain.pop() ?? Buffer.allocUnsafeSlow(WRITE_BYTES);
  }

  /** The buffer is free again. */
  give(buffer: Buffer): void {
    // Aligned ones are all kept: how many are mapped is bounded by how many were in use at once.
    if (this.isAligned.has(buffer)) this.aligned.push(buffer);
    else if (this.plain.length < POOLED) this.plain.push(buffer);
  }

  private map(): void {
    let memory: WebAssembly.Memory;
    try {
      memory = new WebAssembly.Memory({
        initial: (ALIGNED_PER_MAPPING * DIRECT_WRITE_BYTES) / WASM_PAGE,
      });
    } catch {
      this.mappable = false;
      return;
    }
    for (let i = 0; i < ALIGNED_PER_MAPPING; i++) {
      const buffer = Buffer.from(memory.buffer, i * DIRECT_WRITE_BYTES, DIRECT_WRITE_BYTES);
      this.isAligned.add(buffer);
      this.aligned.push(buffer);
    }
  }
}
