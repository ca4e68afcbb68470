// The protocol fuzzer's raw material: a seeded random source, frontend messages built the way a
// driver builds them, and mutations of their bytes (bit flips, length changes, truncation,
// duplication, splicing) that keep track of whether the result still ends on a message boundary.

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
export class Random {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  bytes(n: number): Buffer {
    const out = Buffer.alloc(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
  /** Printable ASCII without ',' (as a SCRAM nonce must be). */
  text(n: number): string {
    let out = '';
    for (let i = 0; i < n; i++) {
      const c = 0x21 + this.int(0x7e - 0x21);
      out += String.fromCharCode(c === 0x2c ? 0x2d : c);
    }
    return out;
  }
}

/** The random source of case `index` of a run: every case replays alone from (seed, index). */
export function caseRandom(seed: number, index: number): Random {
  let h = (seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return new Random((h ^ (h >>> 16)) >>> 0);
}

// --- Frontend messages --------------------------------------------------------------------------

export function int16(n: number): Buffer {
  const out = Buffer.alloc(2);
  out.writeInt16BE(n, 0);
  return out;
}

export function int32(n: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeInt32BE(n | 0, 0);
  return out;
}

export function cstring(s: string): Buffer {
  return Buffer.from(`${s}\0`);
}

/** A typed message: its type byte, a length word counting itself, the body. */
export function typed(type: string, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from(type, 'latin1'), int32(4 + body.length), body]);
}

export const msg = {
  query: (sql: string) => typed('Q', cstring(sql)),
  parse: (name: string, sql: string, types: number[] = []) =>
    typed('P', cstring(name), cstring(sql), int16(types.length), ...types.map(int32)),
  bind: (
    portal: string,
    statement: string,
    params: (Buffer | null)[] = [],
    formats: number[] = [],
    resultFormats: number[] = [],
  ) =>
    typed(
      'B',
      cstring(portal),
      cstring(statement),
      int16(formats.length),
      ...formats.map(int16),
      int16(params.length),
      ...params.map((p) => (p === null ? int32(-1) : Buffer.concat([int32(p.length), p]))),
      int16(resultFormats.length),
      ...resultFormats.map(int16),
    ),
  describe: (kind: 'S' | 'P', name: string) => typed('D', Buffer.from(kind), cstring(name)),
  execute: (portal: string, maxRows = 0) => typed('E', cstring(portal), int32(maxRows)),
  close: (kind: 'S' | 'P', name: string) => typed('C', Buffer.from(kind), cstring(name)),
  sync: () => typed('S'),
  flush: () => typed('H'),
  terminate: () => typed('X'),
  copyData: (data: Buffer | string) => typed('d', Buffer.from(data)),
  copyDone: () => typed('c'),
  copyFail: (why: string) => typed('f', cstring(why)),
  functionCall: (oid: number, args: (Buffer | null)[], formats: number[] = [], result = 0) =>
    typed(
      'F',
      int32(oid),
      int16(formats.length),
      ...formats.map(int16),
      int16(args.length),
      ...args.map((a) => (a === null ? int32(-1) : Buffer.concat([int32(a.length), a]))),
      int16(result),
    ),
  password: (text: Buffer | string) =>
    typed('p', Buffer.isBuffer(text) ? text : Buffer.from(`${text}\0`)),
  saslInitial: (mechanism: string, data: Buffer, length = data.length) =>
    typed('p', cstring(mechanism), int32(length), data),
  saslResponse: (data: Buffer | string) => typed('p', Buffer.from(data)),
};

/** A startup packet for protocol 3.0 with these parameters. */
export function startupPacket(parameters: Record<string, string>): Buffer {
  const body = Buffer.from(
    Object.entries(parameters)
      .map(([k, v]) => `${k}\0${v}\0`)
      .join('') + '\0',
  );
  return Buffer.concat([int32(8 + body.length), int32(0x30000), body]);
}

export function cancelPacket(processId: number, secret: Buffer): Buffer {
  return Buffer.concat([int32(12 + secret.length), int32(80877102), int32(processId), secret]);
}

// --- Mutations ----------------------------------------------------------------------------------

/**
 * Message-level mutations of a sequence: drop, duplicate, swap, or splice in messages from another
 * sequence. Returns the names of what was done.
 */
export function mutateSequence(rng: Random, messages: Buffer[], donors: Buffer[]): string[] {
  const done: string[] = [];
  const count = 1 + rng.int(3);
  for (let m = 0; m < count; m++) {
    const at = rng.int(messages.length + 1);
    switch (rng.int(4)) {
      case 0:
        if (messages.length > 1) {
          messages.splice(Math.min(at, messages.length - 1), 1);
          done.push('dropped a message');
        }
        break;
      case 1:
        if (messages.length > 0) {
          const i = Math.min(at, messages.length - 1);
          messages.splice(i, 0, messages[i]!);
          done.push('duplicated a message');
        }
        break;
      case 2:
        if (messages.length > 1) {
          const i = Math.min(at, messages.length - 2);
          [messages[i], messages[i + 1]] = [messages[i + 1]!, messages[i]!];
          done.push('swapped two messages');
        }
        break;
      default:
        if (donors.length > 0) {
          messages.splice(at, 0, rng.pick(donors));
          done.push('spliced in a message');
        }
    }
  }
  return done;
}

/**
 * Byte-level mutations of one message or stream: bit flips, random bytes, a length word changed
 * (off by a little, zero, negative, huge), truncation, insertion, deletion, a type byte changed.
 */
export function mutateBytes(rng: Random, input: Buffer): { bytes: Buffer; done: string[] } {
  let bytes: Buffer = Buffer.from(input);
  const done: string[] = [];
  const count = 1 + rng.int(3);
  for (let m = 0; m < count && bytes.length > 0; m++) {
    const at = rng.int(bytes.length);
    switch (rng.int(8)) {
      case 0:
        bytes[at] = bytes[at]! ^ (1 << rng.int(8));
        done.push('bit flip');
        break;
      case 1:
        bytes[at] = rng.int(256);
        done.push('random byte');
        break;
      case 2:
      case 3: {
        const starts = frameStarts(bytes);
        if (starts.length === 0) break;
        const start = rng.pick(starts);
        if (start + 5 > bytes.length) break;
        const length = bytes.readInt32BE(start + 1);
        const lie = rng.pick([
          length + 1,
          length - 1,
          length + 1 + rng.int(64),
          Math.max(0, length - 1 - rng.int(64)),
          rng.int(4),
          -1 - rng.int(0x7fffffff),
          0x7fffffff - rng.int(1000),
          10_001 + rng.int(100_000),
          (1 << 30) + 1 + rng.int(1000),
        ]);
        bytes.writeInt32BE(lie | 0, start + 1);
        done.push(`length ${length} -> ${lie | 0}`);
        break;
      }
      case 4:
        bytes = bytes.subarray(0, at);
        done.push('truncated');
        break;
      case 5:
        bytes = Buffer.concat([
          bytes.subarray(0, at),
          rng.bytes(1 + rng.int(8)),
          bytes.subarray(at),
        ]);
        done.push('inserted bytes');
        break;
      case 6:
        bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + 1 + rng.int(8))]);
        done.push('deleted bytes');
        break;
      default: {
        const starts = frameStarts(bytes);
        if (starts.length === 0) break;
        const start = rng.pick(starts);
        bytes[start] = rng.pick(
          [...'BCDEFHPQSXcdfpv'].map((c) => c.charCodeAt(0)).concat(rng.int(256)),
        );
        done.push('type byte changed');
      }
    }
  }
  return { bytes, done };
}

/** Where each message starts, walking the length words as a reader would (stops at a lie). */
export function frameStarts(bytes: Buffer): number[] {
  const starts: number[] = [];
  let at = 0;
  while (at + 5 <= bytes.length) {
    starts.push(at);
    const length = bytes.readInt32BE(at + 1);
    if (length < 4) break;
    at += 1 + length;
  }
  return starts;
}

export type Framing =
  { state: 'whole' } | { state: 'short'; missing: number } | { state: 'broken' };

/**
 * How a stream of typed messages ends: on a message boundary (`whole`), with a last message that
 * claims `missing` more bytes than were sent (`short`; -1 when its length word itself is cut), or with a length word below 4 (`broken`,
 * which a reader must refuse).
 */
export function framing(bytes: Buffer): Framing {
  let at = 0;
  while (at < bytes.length) {
    if (at + 5 > bytes.length) return { state: 'short', missing: -1 };
    const length = bytes.readInt32BE(at + 1);
    if (length < 4) return { state: 'broken' };
    if (at + 1 + length > bytes.length) {
      return { state: 'short', missing: at + 1 + length - bytes.length };
    }
    at += 1 + length;
  }
  return { state: 'whole' };
}
