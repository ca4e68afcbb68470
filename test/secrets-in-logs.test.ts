// Secrets never go to the logs: not the superuser's password (in the `ready` line's connection
// string, or quoted back by the server), not an upstream URL's or Redis URL's password, not the admin
// token. The banner shows the password to a person at a terminal only.
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { connectError, psql } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess, PGBRANCH_BIN } from './support/pgbranch.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const suffix = randomBytes(6).toString('hex');
/** With characters URLs encode, so that both forms are looked for. */
const PASSWORD = `pg/${suffix}+pw`;
const REDIS_PASSWORD = `redis-${suffix}`;
const TOKEN = `token-${suffix}`;
const SECRETS = [PASSWORD, encodeURIComponent(PASSWORD), REDIS_PASSWORD, TOKEN];
/** Redis on 127.0.0.1:6379 takes AUTH default <anything> when its default user has no password. */
const REDIS_URL = `redis://default:${REDIS_PASSWORD}@127.0.0.1:6379`;

const started: PgbranchProcess[] = [];
afterAll(async () => {
  await Promise.all(started.map((proxy) => proxy.stop()));
});

/** Everything a process wrote where logs go: its JSON lines (as read) and its stderr. */
function output(proxy: PgbranchProcess): string {
  return proxy.logs.map((entry) => JSON.stringify(entry)).join('\n') + '\n' + proxy.stderr();
}

function leaked(text: string): string[] {
  return SECRETS.filter((secret) => text.includes(secret));
}

describe('secrets', () => {
  it('stay out of every log line and of a banner that is not at a terminal, embedded or upstream, with Redis and an admin token', async () => {
    const common = ['--log-level', 'debug', '--redis-url', REDIS_URL];
    const env = { PGBRANCH_ADMIN_TOKEN: TOKEN };
    const embedded = await startPgbranch({ password: PASSWORD, args: common, env });
    started.push(embedded);
    // The embedded server of the first, through a URL with the password in it.
    const upstream = await startPgbranch({
      password: PASSWORD,
      args: [...common, '--upstream', embedded.directUrl('postgres')],
      env,
    });
    started.push(upstream);

    expect(embedded.ready.connectionString).toBe(
      `postgres://postgres@127.0.0.1:${embedded.port}/postgres`,
    );
    expect(embedded.stderr()).toContain(
      `connect:   psql "postgres://postgres@127.0.0.1:${embedded.port}/postgres"   (password in ${path.join(embedded.dataDir, 'superuser-password')})`,
    );

    // Work that logs: logins good and bad, a branch (drained through Redis), the server quoting
    // the password back in its own log (debug level), admin requests with and without the token.
    for (const proxy of [embedded, upstream]) {
      expect(await psql(proxy.url('postgres'), 'select 1')).toMatchObject({ code: 0 });
      expect(await connectError(proxy.config('postgres', 'postgres', 'wrong'))).toMatchObject({
        code: '28P01',
      });
    }
    expect(await psql(embedded.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
    expect(await psql(upstream.url('app@feature'), 'select 1')).toMatchObject({ code: 0 });
    const quoted = await psql(embedded.url('postgres'), `select '${PASSWORD}'::int`);
    expect(quoted.code).not.toBe(0);
    const admin = embedded.ready.adminUrl!;
    expect(
      (await fetch(`${admin}/v1/branches`, { headers: { authorization: `Bearer ${TOKEN}` } }))
        .status,
    ).toBe(200);
    expect((await fetch(`${admin}/v1/branches?token=${TOKEN}`)).status).toBe(401);

    // The server's line quoting the password was logged, without it.
    await waitFor(() => embedded.logs.some((l) => /invalid input syntax/.test(String(l.server))));
    expect(embedded.events('peers_joined')).toHaveLength(1);
    expect(upstream.events('peers_joined')).toHaveLength(1);
    expect(await Promise.all(started.map((proxy) => proxy.stop()))).toEqual([0, 0]);
    expect(leaked(output(embedded))).toEqual([]);
    expect(leaked(output(upstream))).toEqual([]);
  });

  it('stay out of the log of a start that fails on the upstream URL', async () => {
    const url = `postgres://postgres:${REDIS_PASSWORD}@127.0.0.1:notaport/postgres`;
    const result = await new Promise<{ stdout: string; stderr: string }>((resolve) => {
      execFile(
        process.execPath,
        [PGBRANCH_BIN, '--log-format', 'json'],
        {
          cwd: ROOT,
          timeout: 60_000,
          env: {
            ...process.env,
            PGBRANCH_UPSTREAM: url,
            PGBRANCH_PORT: '0',
            PGBRANCH_METRICS_PORT: '0',
            PGBRANCH_ADMIN_PORT: '0',
          },
        },
        (_error, stdout, stderr) => resolve({ stdout, stderr }),
      );
    });
    // It failed at the configuration check, saying which setting, without repeating the URL.
    expect(result.stderr).toContain('upstream (from PGBRANCH_UPSTREAM): not a valid URL');
    expect(leaked(result.stdout + result.stderr)).toEqual([]);
  });

  it('are shown in the banner to a person at a terminal', async () => {
    const dataDir = tempDir('terminal');
    // script(1) runs pgbranch on a pseudo-terminal and copies what it shows to stdout.
    const child = spawn(
      'script',
      [
        '-qfec',
        [
          process.execPath,
          PGBRANCH_BIN,
          '--port 0 --metrics-port 0 --admin-port 0 --log-format json --data-dir',
          dataDir,
        ].join(' '),
        '/dev/null',
      ],
      { cwd: ROOT, env: { ...process.env, PGBRANCH_PASSWORD: PASSWORD } },
    );
    child.stdin.on('error', () => undefined);
    let shown = '';
    child.stdout.on('data', (chunk: Buffer) => (shown += chunk.toString()));
    const exited = new Promise((resolve) => child.once('exit', resolve));
    try {
      await waitFor(
        () => /\n {2}branches: /.test(shown) && shown.includes('"event":"ready"'),
        60_000,
      );
      expect(shown).toMatch(
        new RegExp(`connect: +psql "postgres://postgres:${escape(encodeURIComponent(PASSWORD))}@`),
      );
      // The log line beside it, on the same terminal, is still without it.
      const ready = shown.split(/\r?\n/).find((line) => line.includes('"event":"ready"'));
      expect(ready).toBeDefined();
      expect(leaked(ready!)).toEqual([]);
    } finally {
      // Ctrl-C typed on the terminal.
      child.stdin.write('\x03');
      await exited;
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
