// Random bytes for what every login draws (its SCRAM nonce, or its md5 salt), taken from a buffer
// refilled from the CSPRNG 4 KiB at a time. A crypto.randomBytes call costs OpenSSL's work per call,
// not per byte: 2 µs in a loop here, 15-30 µs of a login on a busy machine (V8 profile of pgbench
// -C through pgbranch); this costs well under 1 µs.
import { randomBytes as cryptoRandomBytes, randomFillSync } from 'node:crypto';

const POOL_BYTES = 4096;
const pool = Buffer.allocUnsafe(POOL_BYTES);
let offset = POOL_BYTES;

/** `n` random bytes from the CSPRNG, in a buffer of their own (never shared with another caller). */
export function randomBytes(n: number): Buffer {
  if (n > POOL_BYTES / 4) return cryptoRandomBytes(n);
  if (offset + n > POOL_BYTES) {
    randomFillSync(pool);
    offset = 0;
  }
  const bytes = Buffer.from(pool.subarray(offset, offset + n));
  offset += n;
  return bytes;
}
