// SCRAM channel binding of type tls-server-end-point (RFC 5929), the one PostgreSQL offers: the
// hash of the server's certificate, which a client in the middle of a relayed TLS connection
// can't match because it sees another certificate.
import { createHash } from 'node:crypto';

/**
 * The certificate's signature algorithm (its DER OID, in hex) -> the hash to bind with: the
 * signature's own hash, and SHA-256 in place of MD5 and SHA-1 (RFC 5929 section 4.1).
 */
const HASH_OF_SIGNATURE: Record<string, string> = {
  '2a864886f70d010104': 'sha256', // md5WithRSAEncryption
  '2a864886f70d010105': 'sha256', // sha1WithRSAEncryption
  '2a864886f70d01010e': 'sha224',
  '2a864886f70d01010b': 'sha256',
  '2a864886f70d01010c': 'sha384',
  '2a864886f70d01010d': 'sha512',
  '2a8648ce3d0401': 'sha256', // ecdsa-with-SHA1
  '2a8648ce3d040301': 'sha224',
  '2a8648ce3d040302': 'sha256',
  '2a8648ce3d040303': 'sha384',
  '2a8648ce3d040304': 'sha512',
};

/**
 * The tls-server-end-point binding data of a DER certificate, or undefined where its signature
 * algorithm names no hash (Ed25519, RSASSA-PSS): channel binding is then not offered, as
 * PostgreSQL can't offer it either.
 */
export function tlsServerEndPoint(certificate: Buffer): Buffer | undefined {
  const hash = HASH_OF_SIGNATURE[signatureAlgorithm(certificate) ?? ''];
  return hash ? createHash(hash).update(certificate).digest() : undefined;
}

/** Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, ... }, ... } */
function signatureAlgorithm(der: Buffer): string | undefined {
  const certificate = readTlv(der, 0, 0x30);
  if (!certificate) return undefined;
  const tbs = readTlv(der, certificate.start, 0x30);
  if (!tbs) return undefined;
  const algorithm = readTlv(der, tbs.end, 0x30);
  if (!algorithm) return undefined;
  const oid = readTlv(der, algorithm.start, 0x06);
  return oid && der.subarray(oid.start, oid.end).toString('hex');
}

/** A DER element of the given tag at `at`: where its contents start and end. */
function readTlv(der: Buffer, at: number, tag: number): { start: number; end: number } | undefined {
  if (der[at] !== tag || at + 2 > der.length) return undefined;
  let length = der[at + 1]!;
  let start = at + 2;
  if (length & 0x80) {
    const bytes = length & 0x7f;
    if (bytes === 0 || bytes > 4 || start + bytes > der.length) return undefined;
    length = 0;
    for (let i = 0; i < bytes; i++) length = length * 256 + der[start + i]!;
    start += bytes;
  }
  const end = start + length;
  return end <= der.length ? { start, end } : undefined;
}
