// Messages the proxy itself writes to clients. Built rarely (startup, errors), so clarity wins here;
// the relay never goes through this file.
import { cstring, int32, message } from './build.js';
import type { PgError } from '../errors.js';

function fields(entries: [string, string | undefined][]): Buffer {
  const parts: Buffer[] = [];
  for (const [code, value] of entries) {
    if (value === undefined) continue;
    parts.push(Buffer.from(code, 'latin1'), cstring(value));
  }
  parts.push(Buffer.alloc(1));
  return Buffer.concat(parts);
}

export function errorResponse(error: PgError): Buffer {
  return message(
    'E',
    fields([
      ['S', error.severity],
      ['V', error.severity],
      ['C', error.code],
      ['M', error.message],
      ['D', error.detail],
      ['H', error.hint],
    ]),
  );
}

/**
 * An error as protocol 2 sent one: 'E' and a line of text, no fields. PostgreSQL answers so a
 * client that asked for a protocol older than 3.
 */
export function legacyErrorResponse(error: PgError): Buffer {
  return Buffer.concat([Buffer.from('E'), cstring(`${error.severity}:  ${error.message}\n`)]);
}

export function noticeResponse(text: string, detail?: string): Buffer {
  return message(
    'N',
    fields([
      ['S', 'NOTICE'],
      ['V', 'NOTICE'],
      ['C', '00000'],
      ['M', text],
      ['D', detail],
    ]),
  );
}

export function authenticationOk(): Buffer {
  return message('R', int32(0));
}

export function authenticationMd5(salt: Buffer): Buffer {
  return message('R', Buffer.concat([int32(5), salt]));
}

export function authenticationSasl(mechanisms: string[]): Buffer {
  return message('R', Buffer.concat([int32(10), ...mechanisms.map(cstring), Buffer.alloc(1)]));
}

export function authenticationSaslContinue(data: Buffer): Buffer {
  return message('R', Buffer.concat([int32(11), data]));
}

export function authenticationSaslFinal(data: Buffer): Buffer {
  return message('R', Buffer.concat([int32(12), data]));
}

export function parameterStatus(name: string, value: string): Buffer {
  return message('S', Buffer.concat([cstring(name), cstring(value)]));
}

export function backendKeyData(processId: number, secret: Buffer): Buffer {
  return message('K', Buffer.concat([int32(processId), secret]));
}

export function readyForQuery(status: 'I' | 'T' | 'E'): Buffer {
  return message('Z', Buffer.from(status, 'latin1'));
}

/** Type OIDs of the columns pgbranch answers with itself, and their sizes (-1: variable). */
const COLUMN_TYPES = {
  text: { oid: 25, size: -1 },
  int8: { oid: 20, size: 8 },
  float8: { oid: 701, size: 8 },
  bool: { oid: 16, size: 1 },
  timestamptz: { oid: 1184, size: 8 },
} as const;

export interface Column {
  name: string;
  type: keyof typeof COLUMN_TYPES;
}

/** Columns of a result that is not a table's: no table OID, no typmod, text format. */
export function rowDescription(columns: readonly Column[]): Buffer {
  const parts: Buffer[] = [int16(columns.length)];
  for (const column of columns) {
    const type = COLUMN_TYPES[column.type];
    const attributes = Buffer.alloc(18);
    attributes.writeInt32BE(type.oid, 6);
    attributes.writeInt16BE(type.size, 10);
    attributes.writeInt32BE(-1, 12);
    parts.push(cstring(column.name), attributes);
  }
  return message('T', Buffer.concat(parts));
}

/** One row in text format; null is SQL NULL. */
export function dataRow(values: readonly (string | null)[]): Buffer {
  const parts: Buffer[] = [int16(values.length)];
  for (const value of values) {
    if (value === null) {
      parts.push(int32(-1));
    } else {
      const bytes = Buffer.from(value, 'utf8');
      parts.push(int32(bytes.length), bytes);
    }
  }
  return message('D', Buffer.concat(parts));
}

export function commandComplete(tag: string): Buffer {
  return message('C', cstring(tag));
}

export function emptyQueryResponse(): Buffer {
  return message('I', Buffer.alloc(0));
}

function int16(value: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeInt16BE(value, 0);
  return b;
}

/** Tells a client that asked for a newer minor version or `_pq_` options what we speak instead. */
export function negotiateProtocolVersion(minor: number, unsupported: string[]): Buffer {
  return message(
    'v',
    Buffer.concat([
      int32((3 << 16) | minor),
      int32(unsupported.length),
      ...unsupported.map(cstring),
    ]),
  );
}
