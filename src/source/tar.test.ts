// The tar reader against archives GNU tar writes (ustar, pax and GNU long names, symbolic links),
// fed whole, byte by byte and in random pieces, and written out by the archive writer.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { ArchiveWriter } from './archive-writer.js';
import { TarParser, type TarEntry } from './tar.js';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbranch-tar-'));
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

const LONG_DIR = `${'d'.repeat(70)}/${'e'.repeat(70)}`;
const LONG_FILE = `${LONG_DIR}/${'f'.repeat(90)}`;
const contents = new Map<string, Buffer>([
  ['PG_VERSION', Buffer.from('18\n')],
  ['global/pg_control', randomBytes(8192)],
  ['base/1/1259', randomBytes(3 * 8192 + 17)],
  ['base/1/empty', Buffer.alloc(0)],
  [LONG_FILE, randomBytes(1000)],
]);

/** A tree with files, an empty directory, a long path and a symbolic link, archived by tar. */
function archive(format: 'ustar' | 'pax' | 'gnu'): Buffer {
  const tree = fs.mkdtempSync(path.join(work, 'tree-'));
  for (const [name, data] of contents) {
    if (format === 'ustar' && name === LONG_FILE) continue;
    fs.mkdirSync(path.dirname(path.join(tree, name)), { recursive: true });
    fs.writeFileSync(path.join(tree, name), data, { mode: 0o600 });
  }
  fs.mkdirSync(path.join(tree, 'pg_wal', 'archive_status'), { recursive: true });
  fs.mkdirSync(path.join(tree, 'pg_tblspc'));
  fs.symlinkSync('/somewhere/else', path.join(tree, 'pg_tblspc', '16384'));
  const out = path.join(work, `${format}.tar`);
  execFileSync('tar', [`--format=${format}`, '-cf', out, '-C', tree, '.']);
  return fs.readFileSync(out);
}

function read(bytes: Buffer, split: (bytes: Buffer) => Buffer[]) {
  const entries: TarEntry[] = [];
  const files = new Map<string, Buffer[]>();
  let current: Buffer[] | undefined;
  const parser = new TarParser({
    entry: (entry) => {
      entries.push(entry);
      if (entry.type === 'file') files.set(entry.path, (current = []));
    },
    data: (chunk) => current!.push(Buffer.from(chunk)),
    endFile: () => (current = undefined),
  });
  for (const piece of split(bytes)) parser.push(piece);
  parser.end();
  return {
    entries,
    files: new Map([...files].map(([name, parts]) => [name, Buffer.concat(parts)])),
  };
}

const whole = (bytes: Buffer) => [bytes];
const byteByByte = (bytes: Buffer) => [...bytes].map((byte) => Buffer.from([byte]));
const randomPieces = (bytes: Buffer) => {
  const pieces: Buffer[] = [];
  for (let at = 0; at < bytes.length;) {
    const size = 1 + Math.floor(Math.random() * 1500);
    pieces.push(bytes.subarray(at, at + size));
    at += size;
  }
  return pieces;
};

describe.each(['ustar', 'pax', 'gnu'] as const)('a %s archive', (format) => {
  const bytes = archive(format);
  test.each([
    ['whole', whole],
    ['byte by byte', byteByByte],
    ['in random pieces', randomPieces],
  ])('read %s gives every entry with its content', (_how, split) => {
    const { entries, files } = read(bytes, split);
    for (const [name, data] of contents) {
      if (format === 'ustar' && name === LONG_FILE) continue;
      expect(files.get(name)?.equals(data), name).toBe(true);
      expect(entries.find((e) => e.path === name)).toMatchObject({ type: 'file', mode: 0o600 });
    }
    expect(entries).toContainEqual(
      expect.objectContaining({ path: 'pg_wal/archive_status', type: 'directory' }),
    );
    expect(entries).toContainEqual(
      expect.objectContaining({
        path: 'pg_tblspc/16384',
        type: 'symlink',
        linkTarget: '/somewhere/else',
      }),
    );
  });
});

test('a size in base-256 (PostgreSQL writes files past 8 GB so) is read as such', () => {
  const bytes = Buffer.from(archive('ustar'));
  // The first regular file's header (directories and links before it have no content), its
  // size field rewritten as 0x80 and a big-endian number, its checksum made again.
  const { entries } = read(bytes, whole);
  let offset = 0;
  while (bytes[offset + 156] !== 0x30 /* '0' */) offset += 512;
  const size = parseInt(bytes.toString('latin1', offset + 124, offset + 135), 8);
  bytes.fill(0, offset + 124, offset + 136);
  bytes[offset + 124] = 0x80;
  bytes.writeUInt32BE(size, offset + 132);
  let sum = 8 * 0x20;
  for (let i = 0; i < 512; i++) if (i < 148 || i >= 156) sum += bytes[offset + i]!;
  bytes.write(`${sum.toString(8).padStart(6, '0')}\0 `, offset + 148, 'latin1');
  expect(read(bytes, randomPieces).entries).toEqual(entries);
});

test('an entry that would land outside the target is refused', () => {
  const tree = fs.mkdtempSync(path.join(work, 'escape-'));
  fs.writeFileSync(path.join(tree, 'x'), 'x');
  const out = path.join(work, 'escape.tar');
  execFileSync('tar', ['-cf', out, '-C', tree, '--transform', 's,^x,../x,', 'x']);
  expect(() => read(fs.readFileSync(out), whole)).toThrow(/outside the data directory/);
});

test('a damaged header is refused, and so is an archive cut short', () => {
  const bytes = Buffer.from(archive('ustar'));
  bytes[0] = bytes[0]! ^ 0xff;
  expect(() => read(bytes, whole)).toThrow(/checksum/);
  const cut = archive('ustar').subarray(0, 512 + 100);
  expect(() => read(cut, whole)).toThrow(/ended in the middle/);
});

test('the archive writer lays the tree out on disk, links pointed where asked', async () => {
  const target = fs.mkdtempSync(path.join(work, 'out-'));
  const writer = new ArchiveWriter({
    root: target,
    linkTarget: (entry) => (entry.path === 'pg_tblspc/16384' ? '/moved/here' : entry.linkTarget!),
  });
  const parser = new TarParser(writer);
  for (const piece of randomPieces(archive('pax'))) parser.push(piece);
  parser.end();
  await writer.finish();
  for (const [name, data] of contents) {
    expect(fs.readFileSync(path.join(target, name)).equals(data), name).toBe(true);
    expect(fs.statSync(path.join(target, name)).mode & 0o777).toBe(0o600);
  }
  expect(fs.readlinkSync(path.join(target, 'pg_tblspc', '16384'))).toBe('/moved/here');
  expect(fs.statSync(path.join(target, 'pg_wal', 'archive_status')).isDirectory()).toBe(true);
});

test('relation files go to the disk with O_DIRECT where the file system takes it, whole', async () => {
  const tree = fs.mkdtempSync(path.join(work, 'large-'));
  const files = new Map<string, Buffer>([
    // A relation segment: whole 8 kB pages, large (written in several pieces, side by side).
    ['base/1/16384', randomBytes(1280 * 8192)],
    // Large but not whole blocks, and small: through the page cache.
    ['base/1/odd', randomBytes(1536 * 1024 + 17)],
    ['base/1/small', randomBytes(8192)],
  ]);
  for (const [name, data] of files) {
    fs.mkdirSync(path.dirname(path.join(tree, name)), { recursive: true });
    fs.writeFileSync(path.join(tree, name), data, { mode: 0o600 });
  }
  const out = path.join(work, 'large.tar');
  execFileSync('tar', ['-cf', out, '-C', tree, '.']);
  const target = fs.mkdtempSync(path.join(work, 'large-out-'));
  const writer = new ArchiveWriter({ root: target });
  const parser = new TarParser(writer);
  for (const piece of randomPieces(fs.readFileSync(out))) parser.push(piece);
  parser.end();
  await writer.finish();
  for (const [name, data] of files) {
    expect(fs.readFileSync(path.join(target, name)).equals(data), name).toBe(true);
  }
  const direct = takesDirect(target);
  console.log(`${target}: ${direct ? 'O_DIRECT' : 'no O_DIRECT here: buffered writes'}`);
  expect(writer.writtenDirect).toBe(direct ? files.get('base/1/16384')!.length : 0);
  expect(writer.written).toBe([...files.values()].reduce((sum, data) => sum + data.length, 0));
});

/** Whether the file system under `dir` opens files with O_DIRECT. */
function takesDirect(dir: string): boolean {
  const probe = path.join(dir, 'probe');
  try {
    fs.closeSync(
      fs.openSync(probe, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_DIRECT),
    );
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EINVAL') throw error;
    return false;
  } finally {
    fs.rmSync(probe, { force: true });
  }
}

test('a file whose directories the archive does not list gets them made', async () => {
  const tree = fs.mkdtempSync(path.join(work, 'bare-'));
  fs.mkdirSync(path.join(tree, 'a', 'b'), { recursive: true });
  fs.writeFileSync(path.join(tree, 'a', 'b', 'c'), 'content');
  const out = path.join(work, 'bare.tar');
  execFileSync('tar', ['-cf', out, '-C', tree, 'a/b/c']);
  const target = fs.mkdtempSync(path.join(work, 'bare-out-'));
  const writer = new ArchiveWriter({ root: target });
  const parser = new TarParser(writer);
  parser.push(fs.readFileSync(out));
  parser.end();
  await writer.finish();
  expect(fs.readFileSync(path.join(target, 'a', 'b', 'c'), 'utf8')).toBe('content');
});
