// source.url as pgbranch reads it, and what the standby's primary_conninfo and password file say,
// and the version check (sources older than 15 are refused; no such server runs here, so the check
// is shown on server_version strings as servers report them).
import { describe, expect, test } from 'vitest';
import { checkSourceVersion } from './refusals.js';
import { describeSource, parseSourceUrl, passfileLine, primaryConninfo } from './source-url.js';

describe('parseSourceUrl', () => {
  test('reads host, port, role, password, database and TLS settings', () => {
    const target = parseSourceUrl(
      'postgres://repl%40ops:p%40ss%3Aw0rd@db.prod.internal:6543/app?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=5',
    );
    expect(target).toEqual({
      host: 'db.prod.internal',
      port: 6543,
      user: 'repl@ops',
      password: 'p@ss:w0rd',
      database: 'app',
      sslmode: 'verify-full',
      sslrootcert: '/etc/ca.pem',
      params: { sslmode: 'verify-full', sslrootcert: '/etc/ca.pem', connect_timeout: '5' },
    });
    expect(describeSource(target)).toBe('repl@ops@db.prod.internal:6543');
  });

  test('defaults: port 5432, database postgres, sslmode prefer; IPv6 and socket hosts', () => {
    expect(parseSourceUrl('postgresql://r@[::1]/')).toMatchObject({
      host: '::1',
      port: 5432,
      database: 'postgres',
      sslmode: 'prefer',
    });
    const local = parseSourceUrl('postgres://r@localhost/postgres?host=/var/run/postgresql');
    expect(local.host).toBe('/var/run/postgresql');
    expect(describeSource(local)).toBe('r@/var/run/postgresql/.s.PGSQL.5432');
  });

  test.each([
    ['not a url', /not a URL/],
    ['mysql://r@h/db', /postgres:\/\//],
    ['postgres://h:5432/db', /names no role/],
    ['postgres://r@h/db?sslmode=sometimes', /sslmode=sometimes/],
    ['postgres://r@h/db?sslmode=verify-full', /needs sslrootcert=<CA certificate file>/],
  ])('refuses %s saying why', (url, why) => {
    expect(() => parseSourceUrl(url)).toThrow(why);
  });
});

test('primary_conninfo names a password file instead of the password, and keeps TLS settings', () => {
  const target = parseSourceUrl(
    "postgres://replicator:it's%20secret@db:5432/postgres?sslmode=require&application_name=x",
  );
  const conninfo = primaryConninfo(
    target,
    { passfile: "/data/source/pass'file", sslcert: '/data/c.crt', sslkey: '/data/c.key' },
    'pgbranch_standby',
  );
  expect(conninfo).toBe(
    "host='db' port='5432' user='replicator' dbname='postgres' passfile='/data/source/pass\\'file' application_name='pgbranch_standby' sslcert='/data/c.crt' sslkey='/data/c.key' sslmode='require'",
  );
  expect(conninfo).not.toContain('secret');
  expect(passfileLine(target)).toBe("*:*:*:replicator:it's secret\n");
  expect(passfileLine(parseSourceUrl('postgres://a%3Ab:c%5Cd%3A@db/postgres'))).toBe(
    '*:*:*:a\\:b:c\\\\d\\:\n',
  );
});

describe('the version check', () => {
  const target = parseSourceUrl('postgres://replicator@db.prod:5432/postgres');
  test.each(['15.8 (Debian 15.8-1.pgdg120+1)', '16.4', '18.4', '19beta1'])(
    'follows %s',
    (version) => {
      expect(checkSourceVersion(target, version)).toBe(Number(version.slice(0, 2)));
    },
  );
  test.each(['14.13', '9.6.24', 'unknown'])('refuses %s, naming it and what to do', (version) => {
    expect(() => checkSourceVersion(target, version)).toThrow(
      `the source replicator@db.prod:5432 runs PostgreSQL ${version}, and pgbranch follows PostgreSQL 15 or newer`,
    );
  });
});
