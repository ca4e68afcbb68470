// PostgreSQL's md5 password scheme. The stored hash stands in for the password: whoever holds it
// can answer the server's challenge, which is how the proxy logs in to md5 roles for its clients.

import { createHash, timingSafeEqual } from 'node:crypto';

const MD5_HASH = /^md5[0-9a-f]{32}$/;

/** PostgreSQL's md5 scheme. storedHash is pg_authid.rolpassword: 'md5' + hex(md5(password + user)). */
export function isMd5Hash(rolpassword: string): boolean {
  return MD5_HASH.test(rolpassword);
}

/** What a client must send for this salt: 'md5' + hex(md5(hex-part-of-storedHash + salt)). */
export function md5Response(storedHash: string, salt: Buffer): string {
  if (!isMd5Hash(storedHash)) throw new Error('not an md5 password hash');
  return 'md5' + md5Hex(Buffer.concat([Buffer.from(storedHash.slice(3), 'latin1'), salt]));
}

/** Constant-time check of a client's PasswordMessage against the stored hash. */
export function md5Verify(storedHash: string, salt: Buffer, response: string): boolean {
  const expected = Buffer.from(md5Response(storedHash, salt), 'latin1');
  const actual = Buffer.from(response, 'utf8');
  return actual.length === expected.length && timingSafeEqual(actual, expected);
}

/** For tests: the stored hash of a password. */
export function md5StoredHash(user: string, password: string): string {
  return 'md5' + md5Hex(Buffer.from(password + user, 'utf8'));
}

function md5Hex(data: Buffer): string {
  return createHash('md5').update(data).digest('hex');
}
