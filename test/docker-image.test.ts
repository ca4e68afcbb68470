// The Docker image's settings, read from the Dockerfile and run here (no Docker engine needed):
// pgbranch listening on every interface prints addresses a user can connect to, not 0.0.0.0; its
// metrics answer at the address printed; and the image's HEALTHCHECK command, run as Docker would,
// says healthy while pgbranch runs and unhealthy once it has stopped.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { psql } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const dockerfile = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');

/** The Dockerfile's instructions, continuation lines joined, comments dropped. */
const instructions = dockerfile
  .replace(/\\\n/g, ' ')
  .split('\n')
  .map((line) => line.trim())
  .filter((line) => line !== '' && !line.startsWith('#'));

/** The final stage's ENV, as KEY=value pairs. */
function imageEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of instructions.filter((l) => l.startsWith('ENV '))) {
    for (const [, key, value] of line.slice(4).matchAll(/(\w+)=(\S+)/g)) env[key!] = value!;
  }
  return env;
}

/** The HEALTHCHECK's command, in exec form. */
function healthcheck(): string[] {
  const line = instructions.find((l) => l.startsWith('HEALTHCHECK '));
  expect(line, 'the Dockerfile has a HEALTHCHECK').toBeDefined();
  return JSON.parse(line!.slice(line!.indexOf(' CMD ') + 5)) as string[];
}

/** Runs the health check command as Docker would, in the image's environment; its exit code. */
function checkHealth(adminPort: string): Promise<number> {
  const [command, ...args] = healthcheck();
  return new Promise((resolve) => {
    execFile(
      command === 'node' ? process.execPath : command!,
      args,
      { env: { ...process.env, ...imageEnv(), PGBRANCH_ADMIN_PORT: adminPort }, timeout: 30_000 },
      (error) => resolve(error ? (typeof error.code === 'number' ? error.code : 1) : 0),
    );
  });
}

let proxy: PgbranchProcess;

beforeAll(async () => {
  // Every interface, as in the container; the test's own ports and data directory (its flags).
  const env = imageEnv();
  expect(env.PGBRANCH_HOST).toBe('0.0.0.0');
  proxy = await startPgbranch({ env });
});

afterAll(async () => {
  await proxy?.stop();
});

describe('the Docker image', () => {
  it('prints a connection string with an address to connect to, and says it listens everywhere', async () => {
    const banner = proxy.stderr();
    expect(banner).toContain(`is ready on 0.0.0.0:${proxy.port}`);
    expect(banner).toMatch(/\(every interface: 127\.0\.0\.1 below reaches it from this machine/);
    const at = /connect: +psql "postgres:\/\/[^@"]*@([^/"]+)\//.exec(banner)?.[1];
    expect(at).toBe(`127.0.0.1:${proxy.port}`);
    expect(banner.split('\n').filter((line) => /^ {2}\w+: /.test(line))).not.toContainEqual(
      expect.stringContaining('0.0.0.0'),
    );
    const url = `postgres://postgres:${encodeURIComponent(proxy.password)}@${at}/postgres`;
    expect(await psql(url, 'select 1')).toMatchObject({ code: 0, stdout: '1' });
  });

  it('serves metrics on every interface, so a published port reaches them, at the address it prints', async () => {
    expect(imageEnv().PGBRANCH_METRICS_HOST).toBe('0.0.0.0');
    const printed = proxy.ready.metricsUrl!;
    expect(printed).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    // Docker forwards a published port to the container's own address, not to its loopback.
    const external = Object.values(os.networkInterfaces())
      .flat()
      .find((address) => address?.family === 'IPv4' && !address.internal)?.address;
    for (const url of [printed, ...(external ? [printed.replace('127.0.0.1', external)] : [])]) {
      const response = await fetch(url);
      expect(response.status, url).toBe(200);
      expect(await response.text()).toContain('pgbranch_');
    }
  });

  it('is healthy by its HEALTHCHECK while pgbranch runs, and unhealthy once it stopped', async () => {
    const adminPort = new URL(proxy.ready.adminUrl!).port;
    expect(await checkHealth(adminPort)).toBe(0);
    await proxy.stop();
    expect(await checkHealth(adminPort)).toBe(1);
  });
});
