// A streaming reader of tar archives as PostgreSQL's BASE_BACKUP writes them (ustar: regular
// files, directories and symbolic links, sizes past 8 GB in base-256), plus the long-name forms
// other tars write (pax `x` headers and GNU `L`/`K` entries), so that a name never gets cut at
// 100 bytes. Bytes go in as they arrive, in any split; entries and file contents come out in order,
// file contents as slices of the input (valid as long as the input is).

export type TarEntryType = 'file' | 'directory' | 'symlink';

export interface TarEntry {
  /** Relative, with no trailing slash, `/`-separated. */
  path: string;
  type: TarEntryType;
  /** Permission bits (07777). */
  mode: number;
  /** Bytes of content (files only; 0 otherwise). */
  size: number;
  /** Symbolic links: where the link points, as written in the archive. */
  linkTarget?: string;
}

export interface TarHandler {
  entry(entry: TarEntry): void;
  /** The next bytes of the current file's content. */
  data(chunk: Buffer): void;
  /** The current file's content is complete. */
  endFile(): void;
}

const BLOCK = 512;

/** What the parser is reading now. */
type State =
  | { kind: 'header' }
  /** Content of a file (to the handler) or of a pax/GNU extension (collected). */
  | { kind: 'content'; left: number; padding: number; collect: Buffer[] | undefined }
  | { kind: 'padding'; left: number }
  | { kind: 'end' };

/** An extension header's content: applies to the entry that follows it. */
interface Pending {
  path?: string;
  linkTarget?: string;
  size?: number;
}

export class TarParser {
  private state: State = { kind: 'header' };
  private readonly header = Buffer.alloc(BLOCK);
  private headerFill = 0;
  /** The kind of extension whose content is being collected. */
  private collecting: 'pax' | 'gnu-name' | 'gnu-link' | undefined;
  private pending: Pending = {};

  constructor(private readonly handler: TarHandler) {}

  /** Takes the next bytes of the archive; throws on a malformed archive. */
  push(chunk: Buffer): void {
    let offset = 0;
    while (offset < chunk.length) {
      const state = this.state;
      switch (state.kind) {
        case 'header': {
          const count = Math.min(BLOCK - this.headerFill, chunk.length - offset);
          chunk.copy(this.header, this.headerFill, offset, offset + count);
          this.headerFill += count;
          offset += count;
          if (this.headerFill === BLOCK) {
            this.headerFill = 0;
            this.readHeader();
          }
          break;
        }
        case 'content': {
          const count = Math.min(state.left, chunk.length - offset);
          const piece = chunk.subarray(offset, offset + count);
          offset += count;
          state.left -= count;
          if (state.collect) state.collect.push(Buffer.from(piece));
          else this.handler.data(piece);
          if (state.left === 0) this.endContent(state);
          break;
        }
        case 'padding': {
          const count = Math.min(state.left, chunk.length - offset);
          offset += count;
          state.left -= count;
          if (state.left === 0) this.state = { kind: 'header' };
          break;
        }
        case 'end':
          // Zero blocks after the end marker (PostgreSQL writes two); anything else is garbage.
          for (; offset < chunk.length; offset++) {
            if (chunk[offset] !== 0) throw new Error('data after the end of the tar archive');
          }
          break;
      }
    }
  }

  /** The archive is over: throws unless it ended between entries. */
  end(): void {
    if (this.state.kind === 'end') return;
    if (this.state.kind === 'header' && this.headerFill === 0 && !this.collecting) return;
    throw new Error('the tar archive ended in the middle of an entry');
  }

  private readHeader(): void {
    const h = this.header;
    if (h.every((byte) => byte === 0)) {
      this.state = { kind: 'end' };
      return;
    }
    const stored = readNumber(h, 148, 8);
    if (stored !== checksum(h)) throw new Error('a tar header has a wrong checksum');
    const typeflag = String.fromCharCode(h[156]!);
    const ownSize = readNumber(h, 124, 12);
    const extension =
      typeflag === 'x'
        ? 'pax'
        : typeflag === 'L'
          ? 'gnu-name'
          : typeflag === 'K'
            ? 'gnu-link'
            : typeflag === 'g'
              ? 'global'
              : undefined;
    if (extension) {
      // A global pax header (`g`) sets defaults PostgreSQL never uses: read and dropped.
      this.collecting = extension === 'global' ? undefined : extension;
      return this.startContent(ownSize, []);
    }
    const size = this.pending.size ?? ownSize;
    const name = this.pending.path ?? headerName(h);
    const linkTarget = this.pending.linkTarget ?? text(h, 157, 100);
    this.pending = {};
    const path = safePath(name);
    const mode = readNumber(h, 100, 8) & 0o7777;
    switch (typeflag) {
      case '0':
      case '\0':
      case '7':
        this.handler.entry({ path, type: 'file', mode, size });
        if (size === 0) this.handler.endFile();
        return this.startContent(size, undefined);
      case '5':
        this.handler.entry({ path, type: 'directory', mode, size: 0 });
        return;
      case '2':
        this.handler.entry({ path, type: 'symlink', mode, size: 0, linkTarget });
        return;
      default:
        throw new Error(
          `tar entry ${path} has type ${JSON.stringify(typeflag)}, which a base backup never holds`,
        );
    }
  }

  private startContent(size: number, collect: Buffer[] | undefined): void {
    const padding = (BLOCK - (size % BLOCK)) % BLOCK;
    if (size > 0) this.state = { kind: 'content', left: size, padding, collect };
    else if (collect) this.endContent({ kind: 'content', left: 0, padding, collect });
    else this.state = { kind: 'header' };
  }

  private endContent(state: Extract<State, { kind: 'content' }>): void {
    if (state.collect) this.applyExtension(Buffer.concat(state.collect));
    else this.handler.endFile();
    this.state = state.padding > 0 ? { kind: 'padding', left: state.padding } : { kind: 'header' };
  }

  private applyExtension(content: Buffer): void {
    const kind = this.collecting;
    this.collecting = undefined;
    if (kind === 'gnu-name') this.pending.path = cString(content);
    else if (kind === 'gnu-link') this.pending.linkTarget = cString(content);
    else if (kind === 'pax') Object.assign(this.pending, paxRecords(content));
  }
}

/** `prefix/name` of a ustar header (the prefix field is empty in PostgreSQL's). */
function headerName(h: Buffer): string {
  const name = text(h, 0, 100);
  const isUstar = h.toString('latin1', 257, 262) === 'ustar';
  const prefix = isUstar ? text(h, 345, 155) : '';
  return prefix ? `${prefix}/${name}` : name;
}

/** pax records, `<length> <key>=<value>\n`: path, linkpath and size are the ones that matter. */
function paxRecords(content: Buffer): Pending {
  const out: Pending = {};
  let offset = 0;
  while (offset < content.length) {
    const space = content.indexOf(0x20, offset);
    const length = Number(content.toString('latin1', offset, space));
    if (space < 0 || !Number.isInteger(length) || length <= 0) {
      throw new Error('a pax header of the tar archive is malformed');
    }
    const record = content.toString('utf8', space + 1, offset + length - 1);
    const eq = record.indexOf('=');
    const key = record.slice(0, eq);
    const value = record.slice(eq + 1);
    if (key === 'path') out.path = value;
    else if (key === 'linkpath') out.linkTarget = value;
    else if (key === 'size') out.size = Number(value);
    offset += length;
  }
  return out;
}

/** A numeric field: octal, or base-256 when its first byte has the high bit (past 8 GB). */
function readNumber(h: Buffer, offset: number, length: number): number {
  if (h[offset]! & 0x80) {
    let value = 0n;
    for (let i = 1; i < length; i++) value = (value << 8n) | BigInt(h[offset + i]!);
    return Number(value);
  }
  const digits = h
    .toString('latin1', offset, offset + length)
    .replace(/[\0 ]+$/, '')
    .trim();
  return digits === '' ? 0 : parseInt(digits, 8);
}

/** The sum of the header's bytes with the checksum field taken as eight spaces. */
function checksum(h: Buffer): number {
  let sum = 8 * 0x20;
  for (let i = 0; i < BLOCK; i++) if (i < 148 || i >= 156) sum += h[i]!;
  return sum;
}

function text(h: Buffer, offset: number, length: number): string {
  return cString(h.subarray(offset, offset + length));
}

function cString(bytes: Buffer): string {
  const end = bytes.indexOf(0);
  return bytes.toString('utf8', 0, end < 0 ? bytes.length : end);
}

/**
 * The entry's path as a relative path inside the target: PostgreSQL marks directories and links
 * with a trailing slash; an absolute path or a `..` would write outside the target, and is refused.
 */
function safePath(name: string): string {
  const path = name.replace(/\/+$/, '').replace(/^\.\//, '');
  const parts = path.split('/');
  if (path === '' || path.startsWith('/') || parts.includes('..') || parts.includes('')) {
    throw new Error(`tar entry "${name}" would be written outside the data directory`);
  }
  return path;
}
