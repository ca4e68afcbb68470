// The Docker image, built and run here as the Dockerfile says but without a Docker engine (there
// is none on this project's machines): its two stages are laid out in a temporary directory, each
// COPY from the checkout and each build step run (npm ci and npm prune aside: node_modules is this
// checkout's, linked), and the final stage's CMD runs with its ENV. Then: pgbranch listening on
// every interface prints addresses a user can connect to, not 0.0.0.0; its metrics answer at the
// address printed; the branch page is served from the built files alone; the image runs as a user
// other than root; and its HEALTHCHECK, run as Docker would, asks /readyz (over HTTPS when the
// admin API serves HTTPS) and says healthy while pgbranch runs and unhealthy once it has stopped.
import { execFile, execSync } from 'node:child_process';
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

/**
 * Runs the health check command as Docker would: in the image's WORKDIR (/app, here the laid-out
 * image), with its ENV and the container's own (`env`: what `docker run -e` adds); its exit code
 * and what it printed (Docker keeps that in the container's health log).
 */
function checkHealth(env: Record<string, string>): Promise<{ code: number; output: string }> {
  const [command, ...args] = healthcheck();
  return new Promise((resolve) => {
    execFile(
      command === 'node' ? process.execPath : command!,
      args,
      { cwd: image, env: { ...process.env, ...imageEnv(), ...env }, timeout: 30_000 },
      (error, stdout, stderr) =>
        resolve({
          code: error ? (typeof error.code === 'number' ? error.code : 1) : 0,
          output: stdout + stderr,
        }),
    );
  });
}

/** A self-signed certificate for a public name only, as a production server has: not loopback's. */
function publicCertificate(dir: string): { cert: string; key: string } {
  const cert = path.join(dir, 'server.crt');
  const key = path.join(dir, 'server.key');
  execSync(
    `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 ` +
      `-keyout ${key} -out ${cert} -subj /CN=pgbranch.example -addext subjectAltName=DNS:pgbranch.example`,
    { stdio: 'pipe' },
  );
  return { cert, key };
}

/** The instructions of the stage that starts with the index-th FROM (0: build, 1: the image). */
function stage(index: number): string[] {
  const starts = instructions.flatMap((line, i) => (line.startsWith('FROM ') ? [i] : []));
  return instructions.slice(starts[index], starts[index + 1]);
}

/** COPY's sources into `into` (its WORKDIR), as Docker copies: a directory's contents go under dest. */
function copy(line: string, from: string, into: string): void {
  const words = line.split(/\s+/).slice(1);
  const fromStage = words[0]!.startsWith('--from=');
  const [dest, ...sources] = words.slice(fromStage ? 1 : 0).reverse();
  for (const source of sources.reverse()) {
    const src = path.join(from, fromStage ? path.relative('/app', source) : source);
    const target = dest!.endsWith('/')
      ? path.join(into, dest!, path.basename(source))
      : path.join(into, dest!);
    fs.cpSync(src, target, { recursive: true, verbatimSymlinks: true });
  }
}

/** Lays out both stages as the Dockerfile builds them; returns the final stage's /app. */
function buildImage(root: string): string {
  const build = path.join(root, 'build');
  const image = path.join(root, 'image');
  fs.mkdirSync(build);
  fs.mkdirSync(image);
  for (const line of stage(0)) {
    if (line.startsWith('COPY ')) copy(line, ROOT, build);
    if (!line.startsWith('RUN ')) continue;
    for (const command of line
      .slice(4)
      .split('&&')
      .map((c) => c.trim())) {
      if (command.startsWith('npm ci')) {
        fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(build, 'node_modules'));
      } else if (!command.startsWith('npm prune')) {
        execSync(command, { cwd: build, stdio: 'pipe', timeout: 240_000 });
      }
    }
  }
  for (const line of stage(1).filter((l) => l.startsWith('COPY '))) {
    copy(line, line.includes('--from=build') ? build : ROOT, image);
  }
  return image;
}

let proxy: PgbranchProcess;
let buildRoot: string;
let image: string;

beforeAll(async () => {
  buildRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbranch-image-'));
  image = buildImage(buildRoot);
  // Every interface, as in the container; the test's own ports and data directory (its flags).
  const env = imageEnv();
  expect(env.PGBRANCH_HOST).toBe('0.0.0.0');
  const cmd = JSON.parse(
    stage(1)
      .find((l) => l.startsWith('CMD '))!
      .slice(4),
  ) as string[];
  expect(cmd.slice(0, 1)).toEqual(['node']);
  proxy = await startPgbranch({ env, entry: { script: path.join(image, cmd[1]!) } });
}, 300_000);

afterAll(async () => {
  await proxy?.stop();
  if (buildRoot) fs.rmSync(buildRoot, { recursive: true, force: true });
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

  it('serves the branch page from its built files, with no sources in the image', async () => {
    expect(fs.readdirSync(image).sort()).toEqual(['bin', 'dist', 'node_modules', 'package.json']);
    expect(fs.readdirSync(path.join(image, 'dist', 'web')).sort()).toEqual([
      'app.css',
      'app.js',
      'favicon.svg',
      'index.html',
    ]);
    const page = await fetch(proxy.ready.adminUrl + '/');
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<script type="module" src="/app.js"></script>');
    const script = await fetch(proxy.ready.adminUrl + '/app.js');
    expect(script.status).toBe(200);
    expect(await script.text()).toBe(
      fs.readFileSync(path.join(image, 'dist', 'web', 'app.js'), 'utf8'),
    );
  });

  it('runs as an unprivileged user that owns the data volume', () => {
    const final = stage(1);
    const user = final
      .filter((l) => l.startsWith('USER '))
      .at(-1)
      ?.slice(5);
    expect(user).toBeDefined();
    expect(['root', '0']).not.toContain(user!.split(':')[0]);
    expect(final).toContain(`RUN mkdir /data && chown ${user}:${user} /data`);
    expect(final).toContain('VOLUME /data');
    expect(imageEnv().PGBRANCH_DATA_DIR).toBe('/data');
  });

  it('is healthy by its HEALTHCHECK while pgbranch runs, and unhealthy once it stopped', async () => {
    expect(healthcheck()).toEqual(['node', 'dist/main.js', 'health']);
    const adminPort = new URL(proxy.ready.adminUrl!).port;
    expect(proxy.ready.adminUrl).toMatch(/^http:/);
    const healthy = await checkHealth({ PGBRANCH_ADMIN_PORT: adminPort });
    expect(healthy).toEqual({ code: 0, output: expect.stringContaining('/readyz answered 200') });
    await proxy.stop();
    const down = await checkHealth({ PGBRANCH_ADMIN_PORT: adminPort });
    expect(down.code).toBe(1);
    expect(down.output).toContain('unhealthy');
  });

  it('is healthy by its HEALTHCHECK when the admin API serves HTTPS, whatever names its certificate holds', async () => {
    const tls = publicCertificate(buildRoot);
    // Published with a token, as the Dockerfile's comment shows: HTTPS by itself off loopback.
    const env = {
      ...imageEnv(),
      PGBRANCH_TLS_CERT: tls.cert,
      PGBRANCH_TLS_KEY: tls.key,
      PGBRANCH_ADMIN_HOST: '0.0.0.0',
      PGBRANCH_ADMIN_TOKEN: 'docker-health-token',
    };
    const secure = await startPgbranch({
      env,
      entry: { script: path.join(image, 'dist/main.js') },
    });
    try {
      expect(secure.ready.adminUrl).toMatch(/^https:/);
      const adminPort = new URL(secure.ready.adminUrl!).port;
      // A plain HTTP request, as the image's health check once made, gets no answer from it.
      await expect(fetch(`http://127.0.0.1:${adminPort}/readyz`)).rejects.toThrow();
      const run = { ...env, PGBRANCH_ADMIN_PORT: adminPort };
      expect(await checkHealth(run)).toEqual({
        code: 0,
        output: `healthy: https://127.0.0.1:${adminPort}/readyz answered 200\n`,
      });
      await secure.stop();
      expect((await checkHealth(run)).code).toBe(1);
    } finally {
      await secure.stop();
    }
  });
});
