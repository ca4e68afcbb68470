// Building blocks for the few messages pgbranch writes itself (never on the relay's path).

/** A typed message: type byte, length word, body. */
export function message(type: string, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out.write(type, 0, 'latin1');
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

export function int32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeInt32BE(value, 0);
  return b;
}

/** A zero-terminated UTF-8 string. */
export function cstring(text: string): Buffer {
  const length = Buffer.byteLength(text, 'utf8');
  const out = Buffer.allocUnsafe(length + 1);
  out.write(text, 0, 'utf8');
  out[length] = 0;
  return out;
}
