// Frontend messages the proxy sends to servers on its own behalf (resetting a pooled connection,
// forwarding a cancel). Client traffic is relayed as it came and never rebuilt here.
import { cstring, message } from './build.js';

export function query(sql: string): Buffer {
  return message('Q', cstring(sql));
}

export function sync(): Buffer {
  return message('S', Buffer.alloc(0));
}

/**
 * Ends an unsynced extended-protocol batch without committing it: Execute of a portal that cannot
 * exist fails, which rolls back the batch's implicit transaction (or fails an explicit one), then Sync.
 */
export function abortBatch(): Buffer {
  const portal = cstring('pgbranch: client disconnected');
  const execute = Buffer.allocUnsafe(portal.length + 4);
  portal.copy(execute);
  execute.writeInt32BE(0, portal.length);
  return Buffer.concat([message('E', execute), sync()]);
}

export function copyFail(reason: string): Buffer {
  return message('f', cstring(reason));
}

export function terminate(): Buffer {
  return message('X', Buffer.alloc(0));
}

export function cancelRequest(processId: number, secret: Buffer): Buffer {
  const out = Buffer.allocUnsafe(12 + secret.length);
  out.writeInt32BE(12 + secret.length, 0);
  out.writeInt32BE(80877102, 4);
  out.writeInt32BE(processId, 8);
  secret.copy(out, 12);
  return out;
}

/** StartupMessage for protocol 3.`minor` with exactly these parameters, in this order. */
export function startupMessage(parameters: Iterable<[string, string]>, minor = 0): Buffer {
  const parts: Buffer[] = [Buffer.alloc(8)];
  for (const [key, value] of parameters) parts.push(cstring(key), cstring(value));
  parts.push(Buffer.alloc(1));
  const out = Buffer.concat(parts);
  out.writeInt32BE(out.length, 0);
  out.writeInt32BE((3 << 16) | minor, 4);
  return out;
}
