// HTTPS for the admin API and the metrics with the proxy's certificate: on by themselves where
// they listen beyond loopback (a token must not cross a network in clear), by admin.tls and
// metrics.tls anywhere; renewed with the proxy's certificate on SIGHUP. The CLI reaches an HTTPS
// admin API with the CA beside the certificate (as tls init writes it) or PGBRANCH_ADMIN_CACERT,
// and says what to do when it can't. Real HTTPS requests (node:https) and the real CLI.
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { writeDevCertificates, type DevCertificates } from '../src/cli/tls-init.js';
import { runCli, startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';

const TOKEN = 'tls-admin-token';

let dir: string;
let certs: DevCertificates;
let otherCa: string;
/** Admin API and metrics on every interface, with a token: HTTPS without being asked. */
let exposed: PgbranchProcess;
/** Both on loopback: plain HTTP unless asked (admin.tls, metrics.tls). */
let local: PgbranchProcess;

beforeAll(async () => {
  dir = tempDir('tls-admin');
  [certs, { ca: otherCa }] = await Promise.all([
    writeDevCertificates(path.join(dir, 'tls'), []),
    writeDevCertificates(path.join(dir, 'other'), []),
  ]);
  const tlsArgs = ['--tls-cert', certs.cert, '--tls-key', certs.key];
  [exposed, local] = await Promise.all([
    startPgbranch({
      args: [...tlsArgs, '--admin-host', '0.0.0.0', '--metrics-host', '0.0.0.0'],
      env: { PGBRANCH_ADMIN_TOKEN: TOKEN },
    }),
    startPgbranch({ args: tlsArgs }),
  ]);
});

afterAll(async () => {
  await Promise.all([exposed?.stop(), local?.stop()]);
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

interface Answer {
  status: number;
  body: string;
  /** The certificate the server showed. */
  fingerprint: string;
}

/** One HTTPS GET, checking the server's certificate against `ca`. */
function httpsGet(url: string, ca: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const request = https.get(url, { ca: fs.readFileSync(ca), headers, agent: false }, (res) => {
      const fingerprint = (res.socket as tls.TLSSocket).getPeerCertificate().fingerprint256;
      let body = '';
      res.on('data', (chunk: Buffer) => (body += chunk.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, fingerprint }));
    });
    request.on('error', reject);
  });
}

/** A plain HTTP GET; rejects with the error when the server does not speak plain HTTP. */
function httpGet(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const request = http.get(url, { agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    request.on('error', reject);
  });
}

/** The settings pgbranch runs with, as the CLI reads them from the environment. */
function settingsOf(proxy: PgbranchProcess): Record<string, string> {
  const admin = new URL(proxy.ready.adminUrl!);
  return {
    PGBRANCH_TLS_CERT: certs.cert,
    PGBRANCH_TLS_KEY: certs.key,
    PGBRANCH_ADMIN_HOST: proxy === exposed ? '0.0.0.0' : '127.0.0.1',
    PGBRANCH_ADMIN_PORT: admin.port,
    ...(proxy === exposed ? { PGBRANCH_ADMIN_TOKEN: TOKEN } : {}),
  };
}

describe('with tls.cert, the admin API and metrics listening beyond loopback', () => {
  it('serve HTTPS with the proxy certificate, and the ready line says so', async () => {
    expect(exposed.ready.adminUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(exposed.ready.metricsUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const fingerprint = new X509Certificate(fs.readFileSync(certs.cert)).fingerprint256;

    const health = await httpsGet(`${exposed.ready.adminUrl}/healthz`, certs.ca);
    expect(health).toMatchObject({ status: 200, fingerprint });
    const list = await httpsGet(`${exposed.ready.adminUrl}/v1/branches`, certs.ca, {
      authorization: `Bearer ${TOKEN}`,
    });
    expect(list.status).toBe(200);
    expect(JSON.parse(list.body)).toHaveProperty('branches');
    const denied = await httpsGet(`${exposed.ready.adminUrl}/v1/branches`, certs.ca);
    expect(denied.status).toBe(401);

    const metrics = await httpsGet(exposed.ready.metricsUrl!, certs.ca);
    expect(metrics).toMatchObject({ status: 200, fingerprint });
    expect(metrics.body).toContain('pgbranch_clients_connected');
  });

  it('answer no plain HTTP request, and are refused by a client that trusts another CA', async () => {
    const plain = (url: string) => httpGet(url.replace('https:', 'http:'));
    await expect(plain(`${exposed.ready.adminUrl}/healthz`)).rejects.toThrow();
    await expect(plain(exposed.ready.metricsUrl!)).rejects.toThrow();
    await expect(httpsGet(`${exposed.ready.adminUrl}/healthz`, otherCa)).rejects.toThrow(
      'unable to verify the first certificate',
    );
  });

  it('are reached by the CLI with the CA beside the certificate (as tls init writes it)', async () => {
    const run = await runCli(['branch', 'list', '--json'], settingsOf(exposed));
    expect(run).toMatchObject({ code: 0, stderr: '' });
    expect(JSON.parse(run.stdout)).toHaveProperty('branches');
  });

  it('are reached by the CLI with PGBRANCH_ADMIN_CACERT, and refused with a CA that did not sign the certificate', async () => {
    const copy = path.join(dir, 'copy-of-ca.crt');
    fs.copyFileSync(certs.ca, copy);
    const good = await runCli(['branch', 'list'], {
      ...settingsOf(exposed),
      PGBRANCH_ADMIN_CACERT: copy,
    });
    expect(good).toMatchObject({ code: 0, stderr: '' });

    const wrong = await runCli(['branch', 'list'], {
      ...settingsOf(exposed),
      PGBRANCH_ADMIN_CACERT: otherCa,
    });
    expect(wrong.code).toBe(3);
    expect(wrong.stdout).toBe('');
    expect(wrong.stderr).toContain(
      `pgbranch: cannot reach pgbranch's admin API at ${exposed.ready.adminUrl}: its certificate is not trusted: unable to verify the first certificate.`,
    );
    expect(wrong.stderr).toContain('Give PGBRANCH_ADMIN_CACERT (admin.cacert, --admin-cacert)');
  });

  it('tell a CLI that read no certificate setting that the API serves HTTPS', async () => {
    const withoutTls = settingsOf(exposed);
    delete withoutTls.PGBRANCH_TLS_CERT;
    delete withoutTls.PGBRANCH_TLS_KEY;
    const run = await runCli(['branch', 'list'], withoutTls);
    expect(run.code).toBe(3);
    expect(run.stderr).toContain(
      `cannot reach pgbranch's admin API at http://127.0.0.1:${new URL(exposed.ready.adminUrl!).port}: it serves HTTPS, and the settings this command read say HTTP.`,
    );
  });

  it('take a renewed certificate on SIGHUP for new connections', async () => {
    const before = await httpsGet(`${exposed.ready.adminUrl}/healthz`, certs.ca);
    // A new server certificate from the same CA, written over the old files.
    await writeDevCertificates(certs.dir, []);
    const renewed = new X509Certificate(fs.readFileSync(certs.cert)).fingerprint256;
    expect(renewed).not.toBe(before.fingerprint);
    const reloads = exposed.events('reloaded').length;
    exposed.child.kill('SIGHUP');
    await vi.waitFor(() => expect(exposed.events('reloaded')).toHaveLength(reloads + 1), {
      timeout: 20_000,
    });
    expect(await httpsGet(`${exposed.ready.adminUrl}/healthz`, certs.ca)).toMatchObject({
      status: 200,
      fingerprint: renewed,
    });
    expect(await httpsGet(exposed.ready.metricsUrl!, certs.ca)).toMatchObject({
      status: 200,
      fingerprint: renewed,
    });
  });
});

describe('with tls.cert, the admin API and metrics on loopback', () => {
  it('stay plain HTTP, which the CLI reaches as before', async () => {
    expect(local.ready.adminUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(local.ready.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    expect(await httpGet(`${local.ready.adminUrl}/healthz`)).toBe(200);
    const run = await runCli(['branch', 'list', '--json'], {
      ...settingsOf(local),
    });
    expect(run).toMatchObject({ code: 0 });
  });

  it('serve HTTPS when admin.tls and metrics.tls say so, and the CLI follows the same setting', async () => {
    const asked = await startPgbranch({
      args: ['--tls-cert', certs.cert, '--tls-key', certs.key, '--admin-tls', 'true'],
      env: { PGBRANCH_METRICS_TLS: 'yes' },
    });
    try {
      expect(asked.ready.adminUrl).toMatch(/^https:/);
      expect(asked.ready.metricsUrl).toMatch(/^https:/);
      expect((await httpsGet(asked.ready.metricsUrl!, certs.ca)).status).toBe(200);
      const run = await runCli(['branch', 'list'], {
        ...settingsOf(asked),
        PGBRANCH_ADMIN_TLS: 'true',
      });
      expect(run).toMatchObject({ code: 0, stderr: '' });
      // The CLI asked for HTTPS where pgbranch serves plain HTTP.
      const mismatch = await runCli(['branch', 'list'], {
        ...settingsOf(local),
        PGBRANCH_ADMIN_TLS: 'true',
      });
      expect(mismatch.code).toBe(3);
      expect(mismatch.stderr).toContain(
        'it answered an HTTPS request with plain HTTP: the settings this command read say HTTPS',
      );
    } finally {
      await asked.stop();
    }
  });

  it('refuses admin.tls without a certificate as a bad setting', async () => {
    const run = await runCli(['--admin-tls', 'true', '--port', '0'], {});
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('admin.tls (from --admin-tls) needs tls.cert and tls.key');
  });
});
