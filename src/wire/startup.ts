// The first packet of a connection: StartupMessage, SSLRequest, GSSENCRequest or CancelRequest.
// Untrusted bytes from anyone who can reach the port: every length is checked before it is used.
import { errors, PgError } from '../errors.js';

export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;
/**
 * PostgreSQL's own limit (MAX_STARTUP_PACKET_LENGTH) on a startup packet after its length word;
 * longer packets are refused unread.
 */
export const MAX_STARTUP_PACKET = 10_000;
/**
 * The newest minor version of protocol 3 that pgbranch speaks, with clients and with servers: 3.2
 * (PostgreSQL 18), whose only change is a cancel key of up to 256 bytes.
 */
export const NEWEST_MINOR_VERSION = 2;

export type StartupPacket =
  | { kind: 'ssl' }
  | { kind: 'gssenc' }
  | { kind: 'cancel'; processId: number; secret: Buffer }
  | {
      kind: 'startup';
      major: number;
      minor: number;
      /** Ordinary parameters (user, database, options, application_name, ...), in the client's order. */
      parameters: Map<string, string>;
      /** `_pq_.` protocol extension options the client asked for; we support none yet. */
      protocolOptions: string[];
    };

/** The encryption requests already answered on a connection. */
export type EncryptionRequest = 'ssl' | 'gssenc';

/**
 * Length of the packet at the start of `buffer`, once its 4-byte length word has arrived. A
 * length no packet may have is a CommError: PostgreSQL closes such a connection without an answer.
 */
export function startupPacketLength(buffer: Buffer): number | undefined {
  if (buffer.length < 4) return undefined;
  const length = buffer.readInt32BE(0);
  // The limit is on what follows the length word, as PostgreSQL counts it.
  if (length < 8 || length - 4 > MAX_STARTUP_PACKET) throw errors.invalidStartupLength(length);
  return length;
}

/**
 * Parses one complete startup-phase packet (`packet` holds exactly its length), in the order and
 * with the answers of PostgreSQL's ProcessStartupPacket. An encryption request already answered
 * (`answered`) is read as what its code says as a protocol version, as PostgreSQL reads it.
 */
export function parseStartupPacket(
  packet: Buffer,
  answered: ReadonlySet<EncryptionRequest> = new Set(),
): StartupPacket {
  const code = packet.readInt32BE(4);
  if (code === CANCEL_REQUEST_CODE) {
    if (packet.length < 12) throw errors.invalidCancelLength(packet.length);
    // 3.0 clients send a 4-byte secret; 3.2 allows up to 256 bytes, and PostgreSQL takes any length
    // from 1 (a key of another length matches no session).
    const secret = packet.subarray(12);
    if (secret.length === 0 || secret.length > 256) {
      throw errors.invalidCancelKeyLength(secret.length);
    }
    return { kind: 'cancel', processId: packet.readInt32BE(8), secret };
  }
  // Whatever follows the code in an encryption request is ignored, as PostgreSQL ignores it.
  if (code === SSL_REQUEST_CODE && !answered.has('ssl')) return { kind: 'ssl' };
  if (code === GSSENC_REQUEST_CODE && !answered.has('gssenc')) return { kind: 'gssenc' };
  const major = code >>> 16;
  const minor = code & 0xffff;
  if (major !== 3) throw errors.unsupportedProtocol(major, minor, NEWEST_MINOR_VERSION);

  // name\0value\0 pairs up to a zero byte that must be the packet's last. A string that runs to
  // the end is taken as ended there, as PostgreSQL's extra zero byte ends it.
  const end = packet.length;
  const zeroFrom = (at: number) => {
    const zero = packet.indexOf(0, at);
    return zero < 0 ? end : zero;
  };
  const pairs: [number, number, number, number][] = [];
  let offset = 8;
  let layout = 'no terminator after the last parameter';
  while (offset < end) {
    const nameEnd = zeroFrom(offset);
    if (nameEnd === offset) {
      layout = 'data after the terminator';
      break;
    }
    if (nameEnd + 1 >= end) {
      layout = 'a parameter name without a value';
      break;
    }
    const valueEnd = zeroFrom(nameEnd + 1);
    pairs.push([offset, nameEnd, nameEnd + 1, valueEnd]);
    offset = valueEnd + 1;
  }
  if (offset !== end - 1) throw errors.startupLayout(layout);

  const parameters = new Map<string, string>();
  const protocolOptions: string[] = [];
  for (const [nameStart, nameEnd, valueStart, valueEnd] of pairs) {
    const key = utf8(packet, nameStart, nameEnd, 'parameter name');
    const value = utf8(packet, valueStart, valueEnd, `value of parameter "${key}"`);
    if (key.startsWith('_pq_.')) protocolOptions.push(key);
    else {
      if (key === 'replication' && value !== 'database' && parseBool(value) === undefined) {
        throw errors.invalidReplicationValue(value);
      }
      // A parameter named twice takes its last value, as in PostgreSQL.
      parameters.set(key, value);
    }
  }
  if (!parameters.get('user')) {
    throw new PgError('28000', 'no PostgreSQL user name specified in startup packet');
  }
  return { kind: 'startup', major, minor, parameters, protocolOptions };
}

/**
 * A boolean as PostgreSQL's parse_bool reads one: true, false, yes, no and any prefix of them that
 * is not ambiguous, on, off, 1 and 0, in any case.
 */
function parseBool(text: string): boolean | undefined {
  const word = text.toLowerCase();
  if (word.length === 0) return undefined;
  for (const [whole, value, shortest] of [
    ['true', true, 1],
    ['false', false, 1],
    ['yes', true, 1],
    ['no', false, 1],
    ['on', true, 2],
    ['off', false, 2],
    ['1', true, 1],
    ['0', false, 1],
  ] as const) {
    if (word.length >= shortest && whole.startsWith(word)) return value;
  }
  return undefined;
}

const decoder = new TextDecoder('utf-8', { fatal: true });

function utf8(packet: Buffer, start: number, end: number, what: string): string {
  try {
    return decoder.decode(packet.subarray(start, end));
  } catch {
    throw errors.protocolViolation(`${what} in startup packet is not valid UTF-8`);
  }
}

/** Splits the `options` parameter like PostgreSQL does: spaces separate, backslash escapes. */
export function splitOptions(options: string): string[] {
  const words: string[] = [];
  let word = '';
  let inWord = false;
  for (let i = 0; i < options.length; i++) {
    const c = options[i]!;
    if (c === '\\' && i + 1 < options.length) {
      word += options[++i];
      inWord = true;
    } else if (c === ' ' || c === '\t' || c === '\n' || c === '\r') {
      if (inWord) words.push(word);
      word = '';
      inWord = false;
    } else {
      word += c;
      inWord = true;
    }
  }
  if (inWord) words.push(word);
  return words;
}

/** Joins words back into an `options` value that splitOptions reads as the same words. */
export function joinOptions(words: string[]): string {
  return words.map((w) => w.replace(/[\\ \t\n\r]/g, (c) => `\\${c}`)).join(' ');
}
