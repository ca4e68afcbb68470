// The commands pgbranch tells a person to run (in an error's hint, the banner, a usage message)
// work as written, pasted into a new user's shell in the project directory: one with no global
// install of pgbranch and no node_modules/.bin on its PATH. Only where pgbranch runs is given, as
// the help says: PGBRANCH_ADMIN_PORT, since the test's pgbranch has a port of its own.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { psql, queryOnce } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

const ROOT = path.resolve(import.meta.dirname, '..');

let proxy: PgbranchProcess;

vi.setConfig({ testTimeout: 120_000 });

beforeAll(async () => {
  proxy = await startPgbranch();
  await queryOnce(proxy.url('postgres'), 'create database app');
  await queryOnce(proxy.url('app@hinted'), 'create table t (x int)');
});

afterAll(async () => {
  await proxy?.stop();
});

/** The environment of a new user's shell: npm's variables and its .bin directories are npm run's. */
function userShellEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.toLowerCase().startsWith('npm_')) env[key] = value;
  }
  env.PATH = (process.env.PATH ?? '')
    .split(path.delimiter)
    .filter((dir) => !dir.split(path.sep).includes('node_modules'))
    .join(path.delimiter);
  env.PGBRANCH_ADMIN_PORT = new URL(proxy.ready.adminUrl!).port;
  return env;
}

/** The first pgbranch command in a text, as a person would select and copy it. */
function commandIn(text: string): string {
  const command = /(?:npx )?pgbranch (?:branch|gc|--help)[^\n,;()]*[^\n,;().\s]/.exec(text)?.[0];
  if (command === undefined) throw new Error(`no pgbranch command in:\n${text}`);
  return command;
}

/** Runs a command line through sh from the project directory; never throws. */
function inShell(command: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      'sh',
      ['-c', command],
      { cwd: ROOT, env: userShellEnv(), timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** What the console answers to `sql`, hint included (psql's stderr). */
async function consoleError(sql: string): Promise<string> {
  const result = await psql(proxy.url('pgbranch'), sql);
  expect(result.code).not.toBe(0);
  return result.stderr;
}

describe('a command pgbranch suggests', () => {
  it('in the banner runs as written', async () => {
    const command = commandIn(/ {2}admin: .*/.exec(proxy.stderr())![0]);
    expect(command).toBe('npx pgbranch branch --help');
    const run = await inShell(command);
    expect(run).toMatchObject({ code: 0 });
    expect(run.stdout).toContain('Usage: npx pgbranch branch COMMAND');
  });

  it('in a usage error runs as written', async () => {
    const wrong = await inShell('npx pgbranch branch lsit');
    expect(wrong.code).toBe(2);
    const run = await inShell(commandIn(wrong.stderr));
    expect(run).toMatchObject({ code: 0 });
    expect(run.stdout).toContain('Commands:');
  });

  it('to unprotect a protected branch runs as written', async () => {
    await queryOnce(proxy.url('pgbranch'), 'PROTECT BRANCH app@hinted');
    const hint = await consoleError('DROP BRANCH app@hinted');
    expect(hint).toContain('the branch is protected');
    const command = commandIn(hint);
    expect(command).toBe('npx pgbranch branch unprotect app@hinted');
    expect(await inShell(command)).toMatchObject({ code: 0 });
    const shown = await queryOnce(proxy.url('pgbranch'), 'SHOW BRANCHES app@hinted');
    expect(shown[0]).toMatchObject({ name: 'app@hinted', protected: false });
  });

  it('to make a branch from a restore point runs as written', async () => {
    await queryOnce(proxy.url('pgbranch'), 'SNAPSHOT BRANCH app@hinted AS before');
    const connect = await psql(proxy.url('app@hinted:before'), 'select 1');
    expect(connect.code).not.toBe(0);
    const command = commandIn(connect.stderr);
    expect(command).toBe('npx pgbranch branch create app@try --from app@hinted --snapshot before');
    expect(await inShell(command)).toMatchObject({ code: 0 });
    expect(await psql(proxy.url('app@try'), 'select count(*) from t')).toMatchObject({
      code: 0,
      stdout: '0',
    });
  });

  it('to see the branches runs as written', async () => {
    const hint = await consoleError('RESET BRANCH app@no-such-branch');
    const run = await inShell(commandIn(hint));
    expect(run).toMatchObject({ code: 0 });
    expect(run.stdout).toContain('app@hinted');
  });
});
