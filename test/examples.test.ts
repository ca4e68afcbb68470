// The examples in examples/, run here. The GitHub Actions workflows' steps run as the runner would
// run them (bash -eo pipefail, the workflow's env, $GITHUB_ENV carried from step to step, steps
// after a failure skipped but for `if: always()`), against a real pgbranch; what cannot run here is
// replaced, and said so: `uses:` steps (checkout, setup-node: the app is a copy of examples/app,
// Node.js is this one), and $PGBRANCH, which fetches pgbranch with npx, is this checkout's
// bin/pgbranch.js. The compose file is checked by docker-compose config (Debian's docker-compose,
// which .ci/run installs; there is no Docker engine here to run it), and for what the example
// promises.
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { psql } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const EXAMPLES = path.join(ROOT, 'examples');
const PGBRANCH = `${process.execPath} ${path.join(ROOT, 'bin/pgbranch.js')}`;
const cleanups: (() => Promise<void> | void)[] = [];

afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

interface Step {
  name?: string;
  uses?: string;
  run?: string;
  if?: string;
  env?: Record<string, string | number>;
}

interface Workflow {
  on: unknown;
  env?: Record<string, string | number>;
  jobs: Record<string, { env?: Record<string, string | number>; steps: Step[] }>;
}

interface StepResult {
  step: string;
  /** undefined: not run (a step before it failed). */
  code: number | undefined;
  output: string;
}

/** `${{ github.run_id }}` and the like, from `context`; an unknown one fails the test. */
function expand(text: string, context: Record<string, string>): string {
  return text.replace(/\$\{\{\s*([^}]+?)\s*\}\}/g, (_, expression: string) => {
    const value = context[expression];
    if (value === undefined)
      throw new Error(`the example uses \${{ ${expression} }}, unknown here`);
    return value;
  });
}

const expandAll = (
  env: Record<string, string | number> | undefined,
  context: Record<string, string>,
) => Object.fromEntries(Object.entries(env ?? {}).map(([k, v]) => [k, expand(String(v), context)]));

/** Runs one job's steps as GitHub's runner would, in `cwd`; `replace` overrides env values. */
async function runJob(
  file: string,
  context: Record<string, string>,
  replace: Record<string, string>,
  cwd: string,
): Promise<StepResult[]> {
  const workflow = YAML.parse(fs.readFileSync(path.join(EXAMPLES, file), 'utf8')) as Workflow;
  const [jobId, job] = Object.entries(workflow.jobs)[0]!;
  const ctx = { ...context, 'github.job': jobId };
  const runnerTemp = context['runner.temp']!;
  const githubEnv = path.join(runnerTemp, 'github-env');
  fs.writeFileSync(githubEnv, '');
  const base = {
    ...process.env,
    ...expandAll(workflow.env, ctx),
    ...expandAll(job.env, ctx),
    ...replace,
    RUNNER_TEMP: runnerTemp,
    GITHUB_ENV: githubEnv,
    CI: 'true',
  };
  const results: StepResult[] = [];
  let failed = false;
  for (const [i, step] of job.steps.entries()) {
    const name = step.name ?? step.uses ?? `step ${i + 1}`;
    if (step.uses !== undefined || step.run === undefined) continue;
    if (failed && step.if !== 'always()') {
      results.push({ step: name, code: undefined, output: '' });
      continue;
    }
    // What earlier steps appended to $GITHUB_ENV (NAME=value lines) holds for the later ones.
    const exported = Object.fromEntries(
      fs
        .readFileSync(githubEnv, 'utf8')
        .split('\n')
        .filter((line) => line.includes('='))
        .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
    );
    const script = path.join(runnerTemp, `step-${i}.sh`);
    fs.writeFileSync(script, expand(step.run, ctx));
    const result = await new Promise<StepResult>((resolve) => {
      execFile(
        'bash',
        ['--noprofile', '--norc', '-eo', 'pipefail', script],
        {
          cwd,
          env: { ...base, ...exported, ...expandAll(step.env, ctx) },
          timeout: 180_000,
        },
        (error, stdout, stderr) =>
          resolve({
            step: name,
            code: error ? Number(error.code ?? 1) : 0,
            output: stdout + stderr,
          }),
      );
    });
    results.push(result);
    if (result.code !== 0) failed = true;
  }
  return results;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Resolves once no process has `pid`. */
async function exited(pid: number): Promise<void> {
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe('examples/github-actions/ci.yml', () => {
  it('starts pgbranch, migrates and tests the app in a fresh branch of its own, and deletes the branch', async () => {
    const runnerTemp = tempDir('runner');
    const checkout = tempDir('checkout');
    fs.cpSync(path.join(EXAMPLES, 'app'), checkout, { recursive: true });
    cleanups.push(() => {
      fs.rmSync(runnerTemp, { recursive: true, force: true });
      fs.rmSync(checkout, { recursive: true, force: true });
    });
    const pidFile = path.join(runnerTemp, 'pgbranch.pid');
    cleanups.push(() => {
      // Only if the workflow's own last step did not stop it.
      if (fs.existsSync(pidFile)) {
        try {
          process.kill(Number(fs.readFileSync(pidFile, 'utf8')), 'SIGKILL');
        } catch {
          // gone already
        }
      }
    });
    const [port, adminPort] = [await freePort(), await freePort()];
    const results = await runJob(
      'github-actions/ci.yml',
      { 'runner.temp': runnerTemp, 'github.run_id': '4242' },
      {
        PGBRANCH,
        PGBRANCH_PORT: String(port),
        PGBRANCH_ADMIN_PORT: String(adminPort),
        PGBRANCH_METRICS_PORT: '0',
      },
      checkout,
    );
    const report = results.map((r) => `${r.step}: ${r.code}\n${r.output}`).join('\n');
    expect(
      results.map((r) => [r.step, r.code]),
      report,
    ).toEqual([
      ['Start pgbranch', 0],
      ['The database to branch from', 0],
      ['A fresh branch for this job', 0],
      ['Migrations', 0],
      ['Tests', 0],
      ['Delete the branch', 0],
      ['Stop pgbranch', 0],
    ]);
    expect(results.find((r) => r.step === 'Tests')!.output).toContain(
      'testing in app@ci-4242-test',
    );
    expect(fs.readFileSync(path.join(runnerTemp, 'github-env'), 'utf8')).toBe(
      `DATABASE_URL=postgres://postgres:ci-only-password@127.0.0.1:${port}/app@ci-4242-test\n`,
    );
    await exited(Number(fs.readFileSync(pidFile, 'utf8')));
    const log = fs
      .readFileSync(path.join(runnerTemp, 'pgbranch.log'), 'utf8')
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { event?: string; branch?: string; name?: string });
    const events = log.filter((e) => e.event === 'branch_created' || e.event === 'branch_deleted');
    expect(events.map((e) => e.event)).toEqual(['branch_created', 'branch_deleted']);
    expect(JSON.stringify(events)).toContain('ci-4242-test');
  });
});

describe('examples/github-actions/pr-closed.yml', () => {
  let proxy: PgbranchProcess;
  const TOKEN = 'examples-admin-token';

  it('deletes the pull request’s branch and those made from it, and succeeds when it is gone already', async () => {
    proxy = await startPgbranch({ env: { PGBRANCH_ADMIN_TOKEN: TOKEN } });
    cleanups.push(() => proxy.stop().then(() => undefined));
    expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
    expect(await psql(proxy.url('app@feature/preview-x'), 'select 1')).toMatchObject({ code: 0 });
    const child = await psql(proxy.url('app@preview-x-child'), 'select 1', {
      env: { PGOPTIONS: '-c pgbranch.parent=feature/preview-x' },
    });
    expect(child.code, child.stderr).toBe(0);
    const runnerTemp = tempDir('runner');
    cleanups.push(() => fs.rmSync(runnerTemp, { recursive: true, force: true }));
    const admin = new URL(proxy.ready.adminUrl!);
    const context = {
      'runner.temp': runnerTemp,
      'github.head_ref': 'feature/preview-x',
      'secrets.PGBRANCH_ADMIN_HOST': admin.hostname,
      'secrets.PGBRANCH_ADMIN_PORT': admin.port,
      'secrets.PGBRANCH_ADMIN_TOKEN': TOKEN,
    };
    const on = YAML.parse(
      fs.readFileSync(path.join(EXAMPLES, 'github-actions/pr-closed.yml'), 'utf8'),
    ).on;
    expect(on).toEqual({ pull_request: { types: ['closed'] } });

    const first = await runJob('github-actions/pr-closed.yml', context, { PGBRANCH }, runnerTemp);
    expect(
      first.map((r) => r.code),
      first.map((r) => r.output).join('\n'),
    ).toEqual([0]);
    expect(first[0]!.output).toContain('app@preview-x-child');
    for (const name of ['app@feature/preview-x', 'app@preview-x-child']) {
      const asked = await fetch(`${proxy.ready.adminUrl}/v1/branches/${encodeURIComponent(name)}`, {
        headers: { authorization: `Bearer ${TOKEN}` },
      });
      expect(asked.status, name).toBe(404);
    }

    const again = await runJob('github-actions/pr-closed.yml', context, { PGBRANCH }, runnerTemp);
    expect(again.map((r) => r.code)).toEqual([0]);
    expect(again[0]!.output).toContain('app@feature/preview-x does not exist: nothing to delete');
  });
});

describe('examples/docker-compose.yml', () => {
  const file = path.join(EXAMPLES, 'docker-compose.yml');

  it('is a valid compose file by docker-compose config', () => {
    // Debian's docker-compose (1.29) validates against the compose specification without an
    // engine; docker compose (v2) is not packaged for this Debian.
    const normalized = execFileSync('docker-compose', ['-f', file, 'config'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    expect(YAML.parse(normalized).services).toHaveProperty('pgbranch');
  });

  it('builds pgbranch from this repository, branches the source, and starts the app on a branch once pgbranch is healthy', () => {
    const compose = YAML.parse(fs.readFileSync(file, 'utf8'));
    expect(Object.keys(compose.services).sort()).toEqual(['app', 'pgbranch', 'source']);
    const { pgbranch, app, source } = compose.services;
    expect(fs.existsSync(path.join(EXAMPLES, pgbranch.build.context, 'Dockerfile'))).toBe(true);
    const upstream = new URL(pgbranch.environment.PGBRANCH_UPSTREAM);
    expect(upstream.hostname).toBe('source');
    expect(decodeURIComponent(upstream.password)).toBe(source.environment.POSTGRES_PASSWORD);
    // On every interface of the container, the admin API (and the page) must have a token.
    expect(pgbranch.environment.PGBRANCH_ADMIN_HOST).toBe('0.0.0.0');
    expect(pgbranch.environment.PGBRANCH_ADMIN_TOKEN).toBeTruthy();
    expect(pgbranch.volumes).toContain('pgbranch-data:/data');
    expect(pgbranch.depends_on.source.condition).toBe('service_healthy');
    expect(app.depends_on.pgbranch.condition).toBe('service_healthy');
    const url = new URL(app.environment.DATABASE_URL);
    expect(url.host).toBe('pgbranch:6432');
    expect(url.pathname).toBe(`/${source.environment.POSTGRES_DB}@preview`);
    // What the app runs is what the example app's scripts are.
    const scripts = JSON.parse(fs.readFileSync(path.join(EXAMPLES, 'app/package.json'), 'utf8'))
      .scripts as Record<string, string>;
    expect(app.command.join(' ')).toContain('migrations/001_users.sql');
    expect(scripts.migrate).toContain('migrations/001_users.sql');
    expect(app.volumes).toContain('./app:/app:ro');
  });
});
