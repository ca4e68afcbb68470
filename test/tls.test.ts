// TLS on the proxy port (tls.cert, tls.key, tls.mode): clients that ask for TLS get it, and verify
// pgbranch's certificate against a CA as they would verify PostgreSQL's. Real clients: psql,
// pgbench, node-postgres, postgres.js, and a raw TLS client for direct TLS (PostgreSQL 17+
// sslnegotiation=direct, which the machine's psql 15 can't do).
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connectError, psql } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess, PGBRANCH_BIN } from './support/pgbranch.js';
import { codePacket, PROTOCOL_3_0, startupPacket, WireClient } from './support/wire-client.js';

const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;

interface Certificates {
  dir: string;
  ca: string;
  cert: string;
  key: string;
}

const ROOT = path.resolve(import.meta.dirname, '..');

/** `npx pgbranch tls init --dir DIR`, as a user runs it: a CA (kept if there is one) and a server certificate. */
async function tlsInit(dir: string, ...hosts: string[]): Promise<Certificates & { out: string }> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [...[PGBRANCH_BIN, 'tls', 'init', '--dir', dir], ...hosts.flatMap((host) => ['--host', host])],
    { cwd: ROOT },
  );
  const at = (name: string) => path.join(dir, name);
  return { dir, ca: at('ca.crt'), cert: at('server.crt'), key: at('server.key'), out: stdout };
}

/** psql's own account of its connection: "SSL connection (protocol: TLSv1.3, ...)" or none. */
function conninfo(url: string, env: Record<string, string> = {}) {
  return psql(url, '\\conninfo', { env });
}

let certs: Certificates;
let otherCa: Certificates;
let proxy: PgbranchProcess;

beforeAll(async () => {
  const dir = tempDir('tls');
  [certs, otherCa] = await Promise.all([
    tlsInit(path.join(dir, 'good')),
    tlsInit(path.join(dir, 'other')),
  ]);
  proxy = await startPgbranch({ args: ['--tls-cert', certs.cert, '--tls-key', certs.key] });
  expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
});

afterAll(async () => {
  await proxy?.stop();
  if (certs) fs.rmSync(path.dirname(certs.dir), { recursive: true, force: true });
});

/** A connection string to localhost (the certificate's name) with these libpq settings. */
function url(settings: string, host = 'localhost'): string {
  return `postgresql://postgres:${proxy.password}@${host}:${proxy.port}/app?${settings}`;
}

describe('a pgbranch with tls.cert and tls.key', () => {
  it('says in the banner and the ready line that TLS is on, and where the certificate is', () => {
    expect(proxy.stderr()).toContain(`  tls:       on (for clients that ask`);
    expect(proxy.stderr()).toContain(`certificate ${certs.cert}`);
    expect(proxy.ready).toMatchObject({ tls: { mode: 'allow', certFile: certs.cert } });
  });

  it('answers SSLRequest with S, and GSSENCRequest still with N', async () => {
    const ssl = await WireClient.open(proxy.port);
    ssl.write(codePacket(SSL_REQUEST));
    expect(await ssl.byte()).toBe('S');
    ssl.socket.destroy();
    const gss = await WireClient.open(proxy.port);
    gss.write(codePacket(GSSENC_REQUEST));
    expect(await gss.byte()).toBe('N');
    gss.socket.destroy();
  });

  it.each([
    ['sslmode=require', 'localhost'],
    [`sslmode=verify-ca&sslrootcert=CA`, 'localhost'],
    [`sslmode=verify-full&sslrootcert=CA`, 'localhost'],
    [`sslmode=verify-full&sslrootcert=CA`, '127.0.0.1'],
  ])('serves psql with %s on %s over TLS 1.2 or newer', async (settings, host) => {
    const result = await conninfo(url(settings.replace('CA', certs.ca), host));
    expect(result).toMatchObject({ code: 0 });
    expect(result.stdout).toMatch(/SSL connection \(protocol: TLSv1\.[23]/);
  });

  it('serves psql with sslmode from PGSSLMODE and the CA from PGSSLROOTCERT', async () => {
    const result = await conninfo(url(''), {
      PGSSLMODE: 'verify-full',
      PGSSLROOTCERT: certs.ca,
    });
    expect(result).toMatchObject({ code: 0 });
    expect(result.stdout).toContain('SSL connection');
  });

  it('fails verify-full against another CA', async () => {
    const result = await psql(url(`sslmode=verify-full&sslrootcert=${otherCa.ca}`), 'select 1');
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/certificate verify failed/);
  });

  it('serves node-postgres with ssl: { ca, servername }', async () => {
    const client = new pg.Client({
      ...proxy.config('app'),
      host: '127.0.0.1',
      ssl: { ca: fs.readFileSync(certs.ca, 'utf8'), servername: 'localhost' },
    });
    await client.connect();
    try {
      const stream = (client as unknown as { connection: { stream: tls.TLSSocket } }).connection
        .stream;
      expect(stream.encrypted).toBe(true);
      expect(stream.authorized).toBe(true);
      expect((await client.query('select 41 + 1 as n')).rows).toEqual([{ n: 42 }]);
    } finally {
      await client.end();
    }
  });

  it('refuses node-postgres that checks the certificate against another CA', async () => {
    const failed = await connectError({
      ...proxy.config('app'),
      ssl: { ca: fs.readFileSync(otherCa.ca, 'utf8'), servername: 'localhost' },
    });
    expect(failed?.message).toMatch(/self[- ]signed|unable to verify|certificate/i);
  });

  it('serves postgres.js with ssl', async () => {
    const sql = postgres({
      ...proxy.config('app'),
      host: 'localhost',
      ssl: { ca: fs.readFileSync(certs.ca, 'utf8') },
      max: 1,
      onnotice: () => undefined,
    });
    try {
      expect(await sql`select 'over tls' as said`).toEqual([{ said: 'over tls' }]);
    } finally {
      await sql.end();
    }
  });

  it('serves pgbench with PGSSLMODE=verify-full', async () => {
    const script = path.join(certs.dir, 'select.sql');
    fs.writeFileSync(script, 'select 1;\n');
    const run = await new Promise<{ code: number; out: string }>((resolve) => {
      execFile(
        'pgbench',
        [
          ...['-n', '-h', 'localhost', '-p', String(proxy.port), '-U', 'postgres'],
          ...['-c', '4', '-t', '25', '-f', script, 'app'],
        ],
        {
          env: {
            ...process.env,
            PGPASSWORD: proxy.password,
            PGSSLMODE: 'verify-full',
            PGSSLROOTCERT: certs.ca,
          },
          timeout: 60_000,
        },
        (error, stdout, stderr) => resolve({ code: error ? 1 : 0, out: stdout + stderr }),
      );
    });
    expect(run.out).toContain('number of transactions actually processed: 100/100');
    expect(run.code).toBe(0);
  });

  it('offers SCRAM-SHA-256-PLUS over TLS, so psql with channel_binding=require logs in (and the login still passes through to the server)', async () => {
    const result = await psql(
      url(`sslmode=verify-full&sslrootcert=${certs.ca}&channel_binding=require`),
      'select current_user',
    );
    expect(result).toMatchObject({ code: 0, stdout: 'postgres' });
    // Without TLS there is no channel to bind to: libpq itself refuses to go on.
    const plain = await psql(url('sslmode=disable&channel_binding=require'), 'select 1');
    expect(plain.code).not.toBe(0);
    expect(plain.stderr).toMatch(/channel binding/);
  });

  it('serves node-postgres with enableChannelBinding over TLS', async () => {
    const client = new pg.Client({
      ...proxy.config('app'),
      host: 'localhost',
      ssl: { ca: fs.readFileSync(certs.ca, 'utf8') },
      enableChannelBinding: true,
    });
    const mechanisms: string[] = [];
    client.connection.on('authenticationSASL', (message: { mechanisms: string[] }) =>
      mechanisms.push(...message.mechanisms),
    );
    await client.connect();
    try {
      expect(mechanisms).toEqual(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']);
      expect((await client.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
    } finally {
      await client.end();
    }
  });

  it('serves direct TLS (no SSLRequest) to a client that offers ALPN postgresql', async () => {
    const socket = await directTls(['postgresql']);
    expect(socket.alpnProtocol).toBe('postgresql');
    const client = WireClient.over(socket);
    await client.login({ user: 'postgres', password: proxy.password, database: 'app' });
    client.write(simpleQuery('select 7 as seven'));
    const messages = await client.until('Z');
    expect(
      messages
        .find((m) => m.type === 'D')
        ?.body.subarray(6)
        .toString(),
    ).toBe('7');
    socket.destroy();
  });

  it('closes a direct TLS connection without ALPN, as PostgreSQL 17+ does', async () => {
    const socket = await directTls(undefined);
    const client = WireClient.over(socket);
    // A StartupMessage over that TLS: it must not be answered.
    client.write(startupPacket(PROTOCOL_3_0, { user: 'postgres', database: 'app' }));
    expect(await client.next()).toBeUndefined();
    // The log line comes on another pipe than the close: wait for it.
    await vi.waitFor(
      () =>
        expect(
          proxy
            .events('client_dropped')
            .some((entry) => String(entry.reason).includes('without ALPN')),
        ).toBe(true),
      { timeout: 10_000 },
    );
  });

  it('fails the handshake of a direct TLS client that offers another protocol', async () => {
    await expect(directTls(['http/1.1'])).rejects.toThrow(/no application protocol/);
  });
});

describe('pgbranch tls init', () => {
  it('writes a CA and a server certificate for localhost, 127.0.0.1, ::1 and each --host, and prints how to use them', async () => {
    const dir = path.join(path.dirname(certs.dir), 'init');
    const made = await tlsInit(dir, 'db.example.test', '10.1.2.3');
    const ca = new X509Certificate(fs.readFileSync(made.ca));
    const cert = new X509Certificate(fs.readFileSync(made.cert));
    expect(cert.checkIssued(ca) && cert.verify(ca.publicKey)).toBe(true);
    expect(ca.ca).toBe(true);
    expect(cert.ca).toBe(false);
    for (const host of ['localhost', 'db.example.test']) expect(cert.checkHost(host)).toBe(host);
    for (const ip of ['127.0.0.1', '::1', '10.1.2.3']) expect(cert.checkIP(ip)).toBe(ip);
    for (const key of [made.key, path.join(dir, 'ca.key')]) {
      expect(fs.statSync(key).mode & 0o777).toBe(0o600);
    }
    expect(made.out).toContain(`--tls-cert ${made.cert} --tls-key ${made.key}`);
    expect(made.out).toContain(`tls:\n    cert: ${made.cert}\n    key: ${made.key}\n`);
    expect(made.out).toContain(
      `psql "postgres://postgres@localhost:6432/postgres?sslmode=verify-full&sslrootcert=${made.ca}"`,
    );
    expect(fs.readdirSync(dir).sort()).toEqual(['ca.crt', 'ca.key', 'server.crt', 'server.key']);

    // Again: the same CA signs a new certificate.
    const again = await tlsInit(dir);
    expect(again.out).toMatch(/^Kept the CA/);
    const renewed = new X509Certificate(fs.readFileSync(again.cert));
    expect(renewed.fingerprint256).not.toBe(cert.fingerprint256);
    expect(renewed.checkIssued(ca)).toBe(true);
    expect(new X509Certificate(fs.readFileSync(again.ca)).fingerprint256).toBe(ca.fingerprint256);
  });
});

describe('a new certificate, read again on RELOAD and SIGHUP', () => {
  /** The certificate a new client sees: node-postgres over SSLRequest, checked against the CA. */
  async function servedCertificate(): Promise<{ fingerprint: string; client: pg.Client }> {
    const client = new pg.Client({
      ...proxy.config('app'),
      ssl: { ca: fs.readFileSync(certs.ca, 'utf8'), servername: 'localhost' },
    });
    await client.connect();
    const stream = (client as unknown as { connection: { stream: tls.TLSSocket } }).connection
      .stream;
    return { fingerprint: stream.getPeerCertificate().fingerprint256, client };
  }

  const fingerprintOf = (file: string) => new X509Certificate(fs.readFileSync(file)).fingerprint256;

  it('serves new handshakes with the new certificate, and sessions already open keep working', async () => {
    const first = await servedCertificate();
    expect(first.fingerprint).toBe(fingerprintOf(certs.cert));
    const opened: pg.Client[] = [first.client];
    try {
      // RELOAD in the console.
      await tlsInit(certs.dir);
      const second = fingerprintOf(certs.cert);
      expect(second).not.toBe(first.fingerprint);
      const reload = await psql(proxy.url('pgbranch'), 'RELOAD');
      expect(reload).toMatchObject({ code: 0 });
      const afterReload = await servedCertificate();
      opened.push(afterReload.client);
      expect(afterReload.fingerprint).toBe(second);

      // SIGHUP.
      const loaded = proxy.events('tls_loaded').length;
      await tlsInit(certs.dir);
      const third = fingerprintOf(certs.cert);
      proxy.child.kill('SIGHUP');
      await vi.waitFor(() => expect(proxy.events('tls_loaded').length).toBe(loaded + 1), {
        timeout: 10_000,
      });
      expect(proxy.events('tls_loaded').at(-1)).toMatchObject({
        certFile: certs.cert,
        fingerprint256: third,
      });
      const afterHangup = await servedCertificate();
      opened.push(afterHangup.client);
      expect(afterHangup.fingerprint).toBe(third);

      // The first session, on the first certificate all along, still works.
      expect((await first.client.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
      expect((await afterReload.client.query('select 2 as two')).rows).toEqual([{ two: 2 }]);
    } finally {
      await Promise.all(opened.map((client) => client.end().catch(() => undefined)));
    }
  });

  it('keeps the certificate it has when the new files are broken, and says why', async () => {
    const good = fs.readFileSync(certs.cert);
    fs.writeFileSync(certs.cert, 'not a certificate\n');
    try {
      const reload = await psql(proxy.url('pgbranch'), 'RELOAD');
      expect(reload.code).not.toBe(0);
      expect(reload.stderr).toContain(
        `configuration not reloaded: tls.cert: ${certs.cert} is not a PEM certificate`,
      );
    } finally {
      fs.writeFileSync(certs.cert, good);
    }
    const still = await servedCertificate();
    await still.client.end();
    expect(still.fingerprint).toBe(fingerprintOf(certs.cert));
  });
});

describe('tls.mode require, listening on every interface', () => {
  let strict: PgbranchProcess;
  let socketDir: string;
  // This machine's address on a network (as `hostname -I` lists them): not loopback.
  const address = Object.values(os.networkInterfaces())
    .flat()
    .find((entry) => entry && entry.family === 'IPv4' && !entry.internal)?.address;

  beforeAll(async () => {
    socketDir = tempDir('tls-socket');
    strict = await startPgbranch({
      args: [
        ...['--host', '0.0.0.0', '--socket-dir', socketDir, '--tls-mode', 'require'],
        ...['--tls-cert', certs.cert, '--tls-key', certs.key],
      ],
    });
  });

  afterAll(async () => {
    await strict?.stop();
    if (socketDir) fs.rmSync(socketDir, { recursive: true, force: true });
  });

  it.runIf(address)(
    'refuses plain text from a non-loopback address with 28000 saying to use sslmode=require',
    async () => {
      const failed = await connectError({ ...strict.config('postgres'), host: address! });
      expect(failed).toMatchObject({ code: '28000' });
      expect(failed?.message).toContain('use sslmode=require');
      const result = await psql(
        `postgresql://postgres:${strict.password}@${address}:${strict.port}/postgres?sslmode=disable`,
        'select 1',
      );
      expect(result.stderr).toContain('use sslmode=require');
    },
  );

  it.runIf(address)('serves the same address over TLS', async () => {
    const result = await conninfo(
      `postgresql://postgres:${strict.password}@${address}:${strict.port}/postgres?sslmode=require`,
    );
    expect(result).toMatchObject({ code: 0 });
    expect(result.stdout).toContain('SSL connection');
  });

  it('still serves plain text on loopback and on the Unix socket', async () => {
    const loopback = await psql(
      `postgresql://postgres:${strict.password}@127.0.0.1:${strict.port}/postgres?sslmode=disable`,
      'select 1',
    );
    expect(loopback).toMatchObject({ code: 0, stdout: '1' });
    const socket = await psql(`dbname=postgres`, 'select 2', {
      args: ['-h', socketDir, '-p', String(strict.port), '-U', 'postgres'],
      env: { PGPASSWORD: strict.password },
    });
    expect(socket).toMatchObject({ code: 0, stdout: '2' });
  });
});

/** Opens a TLS connection at once, as sslnegotiation=direct does, trusting the test CA. */
function directTls(alpn: string[] | undefined): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port: proxy.port,
      servername: 'localhost',
      ca: fs.readFileSync(certs.ca),
      ...(alpn ? { ALPNProtocols: alpn } : {}),
    });
    socket.once('secureConnect', () => {
      socket.removeListener('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

function simpleQuery(sql: string): Buffer {
  const body = Buffer.from(`${sql}\0`);
  const header = Buffer.alloc(5);
  header.write('Q');
  header.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([header, body]);
}
