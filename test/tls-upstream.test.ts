// TLS from pgbranch to its upstream server when the URL asks for it (sslmode, sslrootcert, sslcert,
// sslkey, as libpq reads them): against a PostgreSQL started here with ssl = on, a CA made here, and
// a pg_hba.conf that takes TCP logins over TLS only. Every connection pgbranch makes (pooled,
// administrative, cancel requests) uses TLS; a wrong CA, a certificate for another name and a
// server without TLS stop pgbranch at start with the reason.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serverOwner } from '../src/branch/instance/postmaster.js';
import { writeDevCertificates } from '../src/cli/tls-init.js';
import { connect } from './support/clients.js';
import { sendCancel } from './support/wire-client.js';
import { ownServer, type OwnServer } from './support/own-server.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';

const openssl = (...args: string[]) => promisify(execFile)('openssl', args);

let dir: string;
let ca: string;
let otherCa: string;
/** A client certificate the CA signed, and its key (sslcert, sslkey). */
let client: { cert: string; key: string };
let server: OwnServer;
const proxies: PgbranchProcess[] = [];

/** A certificate signed by the CA in `caDir` for these subjectAltNames, and its key. */
async function issue(caDir: string, name: string, altNames: string, usage: string) {
  const key = path.join(dir, `${name}.key`);
  const csr = path.join(dir, `${name}.csr`);
  const cert = path.join(dir, `${name}.crt`);
  const ext = path.join(dir, `${name}.ext`);
  fs.writeFileSync(
    ext,
    `${altNames ? `subjectAltName=${altNames}\n` : ''}extendedKeyUsage=${usage}\n`,
  );
  await openssl(
    ...['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'],
    ...['-keyout', key, '-out', csr, '-subj', `/CN=${name}`],
  );
  await openssl(
    ...['x509', '-req', '-in', csr, '-CA', path.join(caDir, 'ca.crt')],
    ...['-CAkey', path.join(caDir, 'ca.key'), '-days', '30', '-extfile', ext, '-out', cert],
  );
  return { cert, key };
}

beforeAll(async () => {
  dir = tempDir('tls-upstream');
  const [good, other] = await Promise.all([
    writeDevCertificates(path.join(dir, 'ca'), []),
    writeDevCertificates(path.join(dir, 'other'), []),
  ]);
  ca = good.ca;
  otherCa = other.ca;
  // The server's certificate names localhost only, so that verify-full to 127.0.0.1 must fail.
  const serverCert = await issue(path.join(dir, 'ca'), 'server', 'DNS:localhost', 'serverAuth');
  client = await issue(path.join(dir, 'ca'), 'certadmin', '', 'clientAuth');
  const owner = serverOwner();
  if (owner) fs.chownSync(serverCert.key, owner.uid, owner.gid);
  fs.chmodSync(serverCert.key, 0o600);
  // tls init keeps its directory to its owner; the server (another user) reads a copy.
  const serverCa = path.join(dir, 'client-ca.crt');
  fs.copyFileSync(ca, serverCa);
  const hba = path.join(dir, 'pg_hba.conf');
  fs.writeFileSync(
    hba,
    [
      'local all all trust',
      // certadmin must show a client certificate the CA signed, and its password.
      'hostssl all certadmin 127.0.0.1/32 scram-sha-256 clientcert=verify-ca',
      'hostssl all all 127.0.0.1/32 scram-sha-256',
      '',
    ].join('\n'),
  );
  server = await ownServer({
    ssl: 'on',
    ssl_cert_file: serverCert.cert,
    ssl_key_file: serverCert.key,
    ssl_ca_file: serverCa,
    hba_file: hba,
  });
  const admin = await connect(server.url().replace('127.0.0.1', 'localhost'), {
    ssl: { ca: fs.readFileSync(ca) },
  });
  try {
    await admin.query(`create role certadmin superuser login password '${server.password}'`);
    await admin.query('create database app');
  } finally {
    await admin.end();
  }
}, 120_000);

afterAll(async () => {
  await Promise.all(proxies.map((proxy) => proxy.stop()));
  await server?.remove();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** The upstream URL with these query parameters, to `host` (localhost, the certificate's name). */
function upstream(query: string, host = 'localhost', user = 'postgres'): string {
  return `postgres://${user}:${server.password}@${host}:${server.port}/postgres?${query}`;
}

async function proxyTo(url: string, ...args: string[]): Promise<PgbranchProcess> {
  const proxy = await startPgbranch({ args: ['--upstream', url, ...args] });
  proxies.push(proxy);
  return proxy;
}

/** What `startPgbranch` rejects with when pgbranch exits before it is ready: its stderr. */
async function refusedStart(url: string): Promise<string> {
  const error = await startPgbranch({ args: ['--upstream', url] }).then(
    (proxy) => {
      proxies.push(proxy);
      throw new Error('pgbranch started');
    },
    (e: Error) => e.message,
  );
  return error;
}

/** Runs `sql` on the server through its Unix socket (trust): the one connection not pgbranch's. */
async function onServer<T extends pg.QueryResultRow>(sql: string): Promise<T[]> {
  const direct = new pg.Client({
    host: server.postmaster()!.endpoint.socketDir,
    port: server.port,
    user: 'postgres',
    database: 'postgres',
  });
  await direct.connect();
  try {
    return (await direct.query<T>(sql)).rows;
  } finally {
    await direct.end();
  }
}

/** Client backends on the server (this query's own left out): how many use TLS and how many don't. */
async function backendsOnServer(): Promise<{ tls: number; plain: number; pgbranch: number }> {
  const [row] = await onServer<{ tls: number; plain: number; pgbranch: number }>(
    `select count(*) filter (where s.ssl)::int as tls,
            count(*) filter (where not s.ssl)::int as plain,
            count(*) filter (where a.application_name = 'pgbranch')::int as pgbranch
       from pg_stat_activity a join pg_stat_ssl s using (pid)
      where a.backend_type = 'client backend' and a.pid <> pg_backend_pid()`,
  );
  return row!;
}

/** Whether a session through `proxy` runs on an encrypted server connection. */
async function queryThrough(proxy: PgbranchProcess, user = 'postgres'): Promise<unknown[]> {
  const session = await connect(proxy.config('postgres', user, server.password));
  try {
    return (await session.query('select ssl from pg_stat_ssl where pid = pg_backend_pid()')).rows;
  } finally {
    await session.end();
  }
}

describe('an upstream URL with sslmode=verify-full and sslrootcert', () => {
  it('serves clients in both pool modes, creates branches and cancels queries, every server connection over TLS', async () => {
    const proxy = await proxyTo(upstream(`sslmode=verify-full&sslrootcert=${ca}`));
    const settings = proxy.config('app', 'postgres', server.password);
    // The branch first: a session-mode client on app would keep it from being cloned.
    const branch = await connect({ ...settings, database: 'app@tls-feature' });
    const session = await connect(settings);
    const transaction = await connect({
      ...settings,
      options: '-c pgbranch.pool_mode=transaction',
    });
    try {
      expect((await session.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
      expect((await transaction.query('select 2 as two')).rows).toEqual([{ two: 2 }]);
      expect((await branch.query('select current_database() as db')).rows).toEqual([
        { db: 'app@tls-feature' },
      ]);
      // The session's own server connection says it is encrypted.
      expect(
        (await session.query('select ssl from pg_stat_ssl where pid = pg_backend_pid()')).rows,
      ).toEqual([{ ssl: true }]);
      // Its cancel request reaches the server, over TLS too.
      // Its outcome is taken at once: a rejection nobody awaits yet would be an unhandled one.
      const slow = session.query('select pg_sleep(120)').then(
        () => 'finished',
        (error: unknown) => error,
      );
      await expect
        .poll(
          async () =>
            (
              await onServer(
                `select 1 from pg_stat_activity where query = 'select pg_sleep(120)' and state = 'active'`,
              )
            ).length,
          { timeout: 60_000 },
        )
        .toBe(1);
      const { processID, secretKey } = session as unknown as {
        processID: number;
        secretKey: number;
      };
      await sendCancel(proxy.port, processID, secretKey);
      expect(await slow).toMatchObject({ code: '57014' });
      const backends = await backendsOnServer();
      expect(backends.plain).toBe(0);
      expect(backends.tls).toBeGreaterThanOrEqual(3);
      expect(backends.pgbranch).toBeGreaterThan(0);
    } finally {
      await Promise.all([session.end(), transaction.end(), branch.end()]);
    }
  });
});

describe('what the upstream URL asks for, checked when pgbranch starts', () => {
  it('without sslmode uses no TLS, so a server that takes TLS logins only refuses it (the server is set up right)', async () => {
    const stderr = await refusedStart(upstream(''));
    expect(stderr).toMatch(/no pg_hba\.conf entry .* no encryption/);
  });

  it('refuses to start when the server certificate is not signed by the CA in sslrootcert, and says so', async () => {
    const stderr = await refusedStart(upstream(`sslmode=verify-full&sslrootcert=${otherCa}`));
    expect(stderr).toContain(
      `pgbranch could not reach the PostgreSQL server over TLS: the certificate of localhost:${server.port} was not signed by the CA in sslrootcert=${otherCa} (sslmode=verify-full)`,
    );
    expect(stderr).toContain('Give the CA that signed the server certificate in sslrootcert');
  });

  it('with verify-full refuses a certificate for another name than the URL host; verify-ca accepts it', async () => {
    const stderr = await refusedStart(
      upstream(`sslmode=verify-full&sslrootcert=${ca}`, '127.0.0.1'),
    );
    expect(stderr).toContain(
      `the certificate of 127.0.0.1:${server.port} is not for "127.0.0.1" (sslmode=verify-full)`,
    );
    const proxy = await proxyTo(upstream(`sslmode=verify-ca&sslrootcert=${ca}`, '127.0.0.1'));
    const rows = await queryThrough(proxy);
    expect(rows).toEqual([{ ssl: true }]);
  });

  it('shows the client certificate of sslcert and sslkey to a server that asks for one', async () => {
    const withCert = upstream(
      `sslmode=verify-full&sslrootcert=${ca}&sslcert=${client.cert}&sslkey=${client.key}`,
      'localhost',
      'certadmin',
    );
    const proxy = await proxyTo(withCert);
    expect(await queryThrough(proxy, 'certadmin')).toEqual([{ ssl: true }]);
    const without = await refusedStart(
      upstream(`sslmode=verify-full&sslrootcert=${ca}`, 'localhost', 'certadmin'),
    );
    expect(without).toMatch(/connection requires a valid client certificate/);
  });

  it('with sslmode=allow, prefer and require reaches a server that takes TLS logins only, over TLS', async () => {
    // allow tries plain text first and falls back on TLS when the server refuses it.
    const started = await Promise.all(
      ['allow', 'prefer', 'require'].map((mode) => proxyTo(upstream(`sslmode=${mode}`))),
    );
    for (const proxy of started) expect(await queryThrough(proxy)).toEqual([{ ssl: true }]);
    expect((await backendsOnServer()).plain).toBe(0);
  });

  it('refuses a URL it can not honour as a bad setting (exit 2), naming what to change', async () => {
    const stderr = await refusedStart(upstream('sslmode=verify_full'));
    expect(stderr).toContain('exited with 2');
    expect(stderr).toContain(
      'upstream (from --upstream): sslmode=verify_full in the upstream URL is not a mode: use one of disable, allow, prefer, require, verify-ca, verify-full',
    );
  });
});

describe('a server without TLS', () => {
  let plainServer: OwnServer;
  beforeAll(async () => {
    plainServer = await ownServer();
  }, 120_000);
  afterAll(async () => {
    await plainServer?.remove();
  });
  const plainUrl = (query: string) => `${plainServer.url()}?${query}`;

  it('with sslmode=require stops pgbranch at start, saying the server does not do TLS', async () => {
    const stderr = await refusedStart(plainUrl('sslmode=require'));
    expect(stderr).toContain(
      `pgbranch could not reach the PostgreSQL server over TLS: 127.0.0.1:${plainServer.port} does not accept TLS connections, and the upstream URL has sslmode=require`,
    );
  });

  it('with sslmode=prefer is reached in plain text', async () => {
    const proxy = await proxyTo(plainUrl('sslmode=prefer'));
    const session = await connect(proxy.config('postgres', 'postgres', plainServer.password));
    try {
      expect(
        (await session.query('select ssl from pg_stat_ssl where pid = pg_backend_pid()')).rows,
      ).toEqual([{ ssl: false }]);
    } finally {
      await session.end();
    }
  });
});
