// `pgbranch url`, run as a user runs it (bin/pgbranch.js) in real git repositories made in temp
// directories, and the strings it prints used by psql against a real pgbranch.
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BRANCH_VARIABLES, currentBranch } from '../src/cli/url.js';
import { psql } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';

const BIN = path.resolve(import.meta.dirname, '../bin/pgbranch.js');
let proxy: PgbranchProcess;
const dirs: string[] = [];

beforeAll(async () => {
  proxy = await startPgbranch();
  expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
});

afterAll(async () => {
  await proxy?.stop();
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** A git repository with one commit, on `branch`. */
function repo(branch: string): string {
  const dir = tempDir('git');
  dirs.push(dir);
  const git = (...args: string[]) => execFileSync('git', args, { cwd: dir, stdio: 'pipe' });
  git('init', '-q', '-b', branch);
  git(
    '-c',
    'user.name=t',
    '-c',
    'user.email=t@example.com',
    'commit',
    '-q',
    '--allow-empty',
    '-m',
    'first',
  );
  return dir;
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `pgbranch url ...` in `cwd` with no CI variables but those given. */
function url(cwd: string, args: string[], env: Record<string, string> = {}): Promise<Run> {
  const clean = { ...process.env };
  for (const { name } of BRANCH_VARIABLES) delete clean[name];
  for (const name of Object.keys(clean)) {
    if (/^(PG|PGBRANCH_|GITHUB_)/.test(name)) delete clean[name];
  }
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [BIN, 'url', ...args],
      { cwd, env: { ...clean, ...env }, timeout: 60_000 },
      (error, stdout, stderr) =>
        resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** The proxy of this test, and its password, as a user's settings would give them. */
const settings = () => ['--port', String(proxy.port)];
const withPassword = () => ({ PGBRANCH_PASSWORD: proxy.password });

describe('pgbranch url', () => {
  it('prints the connection string of the checked-out git branch, which psql connects to', async () => {
    const dir = repo('feature/login-v2');
    const run = await url(dir, ['app', ...settings()], withPassword());
    expect(run).toMatchObject({ code: 0, stderr: '' });
    const printed = run.stdout.trim();
    expect(printed).toBe(
      `postgres://postgres:${encodeURIComponent(proxy.password)}@127.0.0.1:${proxy.port}/app@feature/login-v2`,
    );
    expect(await psql(printed, 'select current_database()')).toMatchObject({
      code: 0,
      stdout: 'app@feature/login-v2',
    });
  });

  it('prints DATABASE_URL=... with --env', async () => {
    const run = await url(repo('pr-88'), ['app', '--env', ...settings()], withPassword());
    expect(run.stdout).toBe(
      `DATABASE_URL=postgres://postgres:${encodeURIComponent(proxy.password)}@127.0.0.1:${proxy.port}/app@pr-88\n`,
    );
  });

  it('reads the branch from CI variables before git, and --branch before both', () => {
    const dir = repo('local-branch');
    // In-process: the same function the command runs, without a process start per case.
    const branchOf = (env: NodeJS.ProcessEnv, given?: string) => currentBranch(given, env, dir);
    expect(branchOf({})).toEqual({ branch: 'local-branch', from: 'git' });
    expect(branchOf({ GITHUB_HEAD_REF: 'feature/pr-branch', GITHUB_REF_NAME: '12/merge' })).toEqual(
      { branch: 'feature/pr-branch', from: 'GITHUB_HEAD_REF' },
    );
    // On a push GitHub sets GITHUB_HEAD_REF empty and the branch in GITHUB_REF_NAME.
    expect(
      branchOf({ GITHUB_HEAD_REF: '', GITHUB_REF_NAME: 'main-line', GITHUB_REF_TYPE: 'branch' }),
    ).toEqual({ branch: 'main-line', from: 'GITHUB_REF_NAME' });
    // A tag is not a branch: git's answer stands.
    expect(branchOf({ GITHUB_REF_NAME: 'v1.2.0', GITHUB_REF_TYPE: 'tag' })).toEqual({
      branch: 'local-branch',
      from: 'git',
    });
    expect(branchOf({ CI_COMMIT_REF_NAME: 'gitlab/topic' })).toEqual({
      branch: 'gitlab/topic',
      from: 'CI_COMMIT_REF_NAME',
    });
    expect(branchOf({ VERCEL_GIT_COMMIT_REF: 'preview-x' })).toEqual({
      branch: 'preview-x',
      from: 'VERCEL_GIT_COMMIT_REF',
    });
    expect(branchOf({ GITHUB_HEAD_REF: 'x' }, 'ci-42')).toEqual({
      branch: 'ci-42',
      from: '--branch',
    });
  });

  it('names the root itself on the branch main', async () => {
    const run = await url(repo('main'), ['app', ...settings()], withPassword());
    expect(run.stdout.trim()).toMatch(new RegExp(`@127\\.0\\.0\\.1:${proxy.port}/app$`));
    expect(await psql(run.stdout.trim(), 'select current_database()')).toMatchObject({
      stdout: 'app',
    });
  });

  it('reads the embedded server’s generated password from the data directory', async () => {
    const run = await url(repo('pw'), ['app', ...settings(), '--data-dir', proxy.dataDir]);
    expect(run.stdout).toContain(`postgres://postgres:${encodeURIComponent(proxy.password)}@`);
    // Another role gets no password but PGPASSWORD; PGDATABASE names the database.
    const other = await url(repo('pw2'), ['--user', 'ci', ...settings()], { PGDATABASE: 'app' });
    expect(other.stdout.trim()).toBe(`postgres://ci@127.0.0.1:${proxy.port}/app@pw2`);
    const given = await url(repo('pw3'), ['app', '--user', 'ci', ...settings()], {
      PGPASSWORD: 's3cret/x',
    });
    expect(given.stdout.trim()).toBe(`postgres://ci:s3cret%2Fx@127.0.0.1:${proxy.port}/app@pw3`);
  });

  it('says what to do when it cannot tell the branch or the database (exit 2)', async () => {
    const detached = repo('topic');
    execFileSync('git', ['checkout', '-q', '--detach'], { cwd: detached });
    const run = await url(detached, ['app']);
    expect(run).toMatchObject({ code: 2, stdout: '' });
    expect(run.stderr).toContain('HEAD is detached');
    expect(run.stderr).toContain('--branch NAME');

    const nowhere = tempDir('not-git');
    dirs.push(nowhere);
    const outside = await url(nowhere, ['app']);
    expect(outside).toMatchObject({ code: 2, stdout: '' });
    expect(outside.stderr).toContain('cannot tell the git branch');

    const noDatabase = await url(repo('x'), []);
    expect(noDatabase).toMatchObject({ code: 2 });
    expect(noDatabase.stderr).toContain('url needs the database');

    const bad = await url(repo('z'), ['app', '--branch', 'x:y']);
    expect(bad).toMatchObject({ code: 2, stdout: '' });
    expect(bad.stderr).toContain('(--branch)');
  });
});
