// Walks the message frames of a byte stream as it passes, without copying or allocating: it sees
// each frame's type and length (and a ReadyForQuery's status byte), never the bodies, so the relay
// can forward chunks as they arrived and still know where every message starts and ends.

export const READY_FOR_QUERY = 0x5a; // 'Z'
export const TERMINATE = 0x58; // 'X'

export class FrameScanner {
  /** Bytes of the current frame's body still to come. */
  private remaining = 0;
  /** Bytes of the current 5-byte header seen so far (0 when between frames). */
  private headerSeen = 0;
  private type = 0;
  private length = 0;
  /** Status byte of the last ReadyForQuery ('I', 'T' or 'E'); 0 before the first. */
  readyStatus = 0;

  /** True when the stream is between two frames: nothing half sent. */
  get atBoundary(): boolean {
    return this.remaining === 0 && this.headerSeen === 0;
  }

  /**
   * Scans `chunk`. Returns the offset at which a frame whose type `stopAt` names begins (that frame
   * is not consumed), or -1 when the whole chunk was scanned.
   */
  scan(chunk: Buffer, stopAt = -1): number {
    let i = 0;
    const end = chunk.length;
    while (i < end) {
      if (this.remaining > 0) {
        if (this.type === READY_FOR_QUERY && this.remaining === 1) {
          this.readyStatus = chunk[i]!;
          this.remaining = 0;
          i++;
          this.onReady(this.readyStatus);
          continue;
        }
        const take = Math.min(this.remaining, end - i);
        this.remaining -= take;
        i += take;
        continue;
      }
      const byte = chunk[i]!;
      if (this.headerSeen === 0) {
        if (byte === stopAt) return i;
        this.type = byte;
        this.length = 0;
      } else {
        this.length = (this.length << 8) | byte;
      }
      this.headerSeen++;
      i++;
      if (this.headerSeen === 5) {
        this.headerSeen = 0;
        if (this.length < 4) {
          this.onMalformed(this.type, this.length);
          return -1;
        }
        this.remaining = this.length - 4;
        this.onFrame(this.type, this.length, chunk, i);
      }
    }
    return -1;
  }

  /** Called at each frame header; the body starts at chunk[at] (and may go on in later chunks). */
  protected onFrame(_type: number, _length: number, _chunk: Buffer, _at: number): void {}
  /** Called when a ReadyForQuery's status byte has passed. */
  protected onReady(_status: number): void {}
  /** Called when a frame declares a length smaller than its own length word. */
  protected onMalformed(_type: number, _length: number): void {}
}
