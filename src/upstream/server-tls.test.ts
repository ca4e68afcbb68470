import { describe, expect, it } from 'vitest';
import { parseUpstreamTls } from './server-tls.js';

const parse = (query: string) =>
  parseUpstreamTls(new URL(`postgres://u:p@db.example:5432/postgres?${query}`));

describe('the TLS an upstream URL asks for', () => {
  it('is none without sslmode, and with sslmode=disable', () => {
    expect(parse('')).toBeUndefined();
    expect(parse('sslmode=disable')).toBeUndefined();
    expect(parse('application_name=x')).toBeUndefined();
  });

  it('is the mode given, with the files named and the host to check', () => {
    expect(parse('sslmode=verify-full&sslrootcert=/ca.crt&sslcert=/c.crt&sslkey=/c.key')).toEqual({
      mode: 'verify-full',
      host: 'db.example',
      rootCert: '/ca.crt',
      certFile: '/c.crt',
      keyFile: '/c.key',
    });
    expect(parse('sslmode=prefer')).toMatchObject({ mode: 'prefer' });
  });

  it('checks the chain for require with a root certificate, and means verify-full for sslrootcert=system, as libpq does', () => {
    expect(parse('sslmode=require&sslrootcert=/ca.crt')).toMatchObject({ mode: 'verify-ca' });
    expect(parse('sslrootcert=system')).toMatchObject({ mode: 'verify-full', rootCert: 'system' });
  });

  it.each([
    ['sslmode=verify_full', 'sslmode=verify_full in the upstream URL is not a mode'],
    ['sslmode=verify-ca', 'sslmode=verify-ca in the upstream URL needs sslrootcert'],
    ['sslrootcert=/ca.crt', 'sslrootcert in the upstream URL needs an sslmode too'],
    ['sslkey=/c.key', 'sslkey in the upstream URL needs an sslmode too'],
    [
      'sslmode=require&sslrootcert=system',
      'sslrootcert=system in the upstream URL needs sslmode=verify-full (it has sslmode=require)',
    ],
    ['sslmode=require&sslcert=/c.crt', 'sslcert in the upstream URL needs sslkey too'],
    ['sslmode=require&sslcrl=/crl.pem', 'sslcrl in the upstream URL is not supported by pgbranch'],
    ['sslmode=require&sslpassword=x', 'sslpassword in the upstream URL is not supported'],
  ])('refuses %s, saying what to change', (query, message) => {
    expect(() => parse(query)).toThrow(message);
  });
});
