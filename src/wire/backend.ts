// Messages the proxy itself writes to clients. Built rarely (startup, errors), so clarity wins here;
// the relay never goes through this file.
import type { PgError } from '../errors.js';

function message(type: string, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out.write(type, 0, 'latin1');
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

function int32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeInt32BE(value, 0);
  return b;
}

function cstring(text: string): Buffer {
  return Buffer.concat([Buffer.from(text, 'utf8'), Buffer.alloc(1)]);
}

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
