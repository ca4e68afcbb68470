// The admin API's bearer token. Compared in constant time, over digests of equal length, so that
// neither the bytes of the token nor its length can be learnt from how long a refusal takes.
import { createHash, timingSafeEqual } from 'node:crypto';

const digest = (text: string) => createHash('sha256').update(text).digest();

/** A check of an Authorization header against the token: `Bearer <token>`. */
export function bearerCheck(token: string): (authorization: string | undefined) => boolean {
  const expected = digest(token);
  return (authorization) => {
    const match = /^Bearer +(\S+) *$/i.exec(authorization ?? '');
    return match !== null && timingSafeEqual(digest(match[1]!), expected);
  };
}
