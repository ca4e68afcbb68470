// The first packet of a connection: StartupMessage, SSLRequest, GSSENCRequest or CancelRequest.
// Untrusted bytes from anyone who can reach the port: every length is checked before it is used.
import { errors, PgError } from '../errors.js';

export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;
/** PostgreSQL's own limit (MAX_STARTUP_PACKET_LENGTH); longer packets are refused unread. */
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

/**
 * Length of the packet at the start of `buffer`, once its 4-byte length word has arrived;
 * throws on a length no valid packet has.
 */
export function startupPacketLength(buffer: Buffer): number | undefined {
  if (buffer.length < 4) return undefined;
  const length = buffer.readInt32BE(0);
  if (length < 8 || length > MAX_STARTUP_PACKET) {
    throw errors.protocolViolation(`invalid length of startup packet: ${length}`);
  }
  return length;
}

/** Parses one complete startup-phase packet (`packet` holds exactly its length). */
export function parseStartupPacket(packet: Buffer): StartupPacket {
  const code = packet.readInt32BE(4);
  if (code === SSL_REQUEST_CODE || code === GSSENC_REQUEST_CODE) {
    if (packet.length !== 8) throw errors.protocolViolation('invalid length of encryption request');
    return { kind: code === SSL_REQUEST_CODE ? 'ssl' : 'gssenc' };
  }
  if (code === CANCEL_REQUEST_CODE) {
    // 3.0 clients send a 4-byte secret; 3.2 allows up to 256 bytes.
    if (packet.length < 16 || packet.length > 12 + 256) {
      throw errors.protocolViolation('invalid length of cancel request');
    }
    return { kind: 'cancel', processId: packet.readInt32BE(8), secret: packet.subarray(12) };
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  if (major !== 3) throw errors.unsupportedProtocol(major, minor);
  const parameters = new Map<string, string>();
  const protocolOptions: string[] = [];
  let offset = 8;
  for (;;) {
    const keyEnd = packet.indexOf(0, offset);
    if (keyEnd < 0)
      throw errors.protocolViolation('startup packet is not terminated by a zero byte');
    if (keyEnd === offset) {
      if (keyEnd !== packet.length - 1) {
        throw errors.protocolViolation('startup packet has data after its terminator');
      }
      break;
    }
    const valueEnd = packet.indexOf(0, keyEnd + 1);
    if (valueEnd < 0) {
      throw errors.protocolViolation('startup packet has a parameter name without a value');
    }
    const key = utf8(packet, offset, keyEnd, 'parameter name');
    const value = utf8(packet, keyEnd + 1, valueEnd, `value of parameter "${key}"`);
    if (key.startsWith('_pq_.')) protocolOptions.push(key);
    else if (parameters.has(key)) {
      throw errors.protocolViolation(`startup packet names parameter "${key}" twice`);
    } else parameters.set(key, value);
    offset = valueEnd + 1;
  }
  if (!parameters.get('user')) {
    throw new PgError('28000', 'no PostgreSQL user name specified in startup packet');
  }
  return { kind: 'startup', major, minor, parameters, protocolOptions };
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
