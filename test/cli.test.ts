// `pgbranch branch ...` and `pgbranch gc ...`: the real CLI binary as a child process, against a
// real pgbranch found through PGBRANCH_ADMIN_PORT and PGBRANCH_ADMIN_TOKEN, as a script would run it.
import { execFile, spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect, queryOnce } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const BIN = path.join(ROOT, 'bin/pgbranch.js');
const TOKEN = 'cli-test-token';
let proxy: PgbranchProcess;

// Each test runs the CLI several times, each a process of its own that loads TypeScript through
// tsx: about a second apiece, and several on a machine busy with other test files.
vi.setConfig({ testTimeout: 180_000 });

beforeAll(async () => {
  proxy = await startPgbranch({
    env: { PGBRANCH_ADMIN_TOKEN: TOKEN },
    // A drain that gives up after 2 s makes a reset under a busy client take that long.
    args: ['--branch-drain-timeout', '2s', '--pool-transaction-mode-for', 'app@tx-*'],
  });
  await queryOnce(proxy.url('postgres'), 'create database app');
  await queryOnce(
    proxy.url('app'),
    "create table items (name text); insert into items values ('root')",
  );
});

afterAll(async () => {
  await proxy?.stop();
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The admin API's port, as PGBRANCH_ADMIN_PORT gives it to the CLI. */
const adminPort = () => new URL(proxy.ready.adminUrl!).port;

function cli(
  args: string[],
  options: { stdin?: string; env?: Record<string, string> } = {},
): Promise<Run> {
  return new Promise((resolve) => {
    const child = execFile(
      process.execPath,
      [BIN, ...args],
      {
        cwd: ROOT,
        env: {
          ...process.env,
          PGBRANCH_ADMIN_PORT: adminPort(),
          PGBRANCH_ADMIN_TOKEN: TOKEN,
          ...options.env,
        },
        timeout: 60_000,
      },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
        resolve({ code, stdout, stderr });
      },
    );
    child.stdin!.end(options.stdin ?? '');
  });
}

const json = async (args: string[]) => {
  const run = await cli([...args, '--json']);
  expect(run).toMatchObject({ code: 0, stderr: '' });
  return JSON.parse(run.stdout);
};

describe('pgbranch branch', () => {
  it('creates a branch, and says so when it existed; another parent fails with exit 1 and the SQLSTATE', async () => {
    const made = await cli(['branch', 'create', 'app@cli-dev', '--ttl', '7d']);
    expect(made.code).toBe(0);
    expect(made.stdout).toMatch(
      /^created app@cli-dev from app in \d+ ms, a (copy-on-write clone|copy)\n$/,
    );
    expect(await cli(['branch', 'create', 'app@cli-dev', '--from', 'app'])).toMatchObject({
      code: 0,
      stdout: 'app@cli-dev exists already, from app\n',
    });
    const other = await cli(['branch', 'create', 'app@cli-dev', '--from', 'app@elsewhere']);
    expect(other.code).toBe(1);
    expect(other.stderr).toContain('already exists, made from "main" (42P04)');
    expect(await cli(['branch', 'create', 'app@cli-feature', '--from', 'cli-dev'])).toMatchObject({
      code: 0,
    });
  });

  it('lists branches as a table, as a tree with --tree, and as the API’s JSON with --json', async () => {
    const table = await cli(['branch', 'list']);
    expect(table).toMatchObject({ code: 0, stderr: '' });
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(
      /^NAME\s+PARENT\s+CREATED\s+LAST CONNECTED\s+SIZE\s+CLIENTS\s+EXPIRES\s+NOTES$/,
    );
    expect(lines.find((l) => l.startsWith('app@cli-dev '))).toMatch(
      /^app@cli-dev\s+app\s+\S+ ago\s+-\s+\d+\.\d MB\s+0\s+in 6d \(7d idle\)/,
    );
    expect(lines.find((l) => l.startsWith('app@cli-feature '))).toMatch(
      /^app@cli-feature\s+app@cli-dev\s/,
    );

    const tree = await cli(['branch', 'list', '--tree', '--database', 'app']);
    expect(tree.stdout).toMatch(/^app {2,}\S.*root\n/);
    expect(tree.stdout).toMatch(/\n(├|└)── app@cli-dev {2,}.*\n {4}└── app@cli-feature {2,}/);

    const listed = await json(['branch', 'list']);
    expect(listed.branches.map((b: { name: string }) => b.name)).toEqual(
      expect.arrayContaining(['app', 'app@cli-dev', 'app@cli-feature']),
    );
    expect(await json(['branch', 'show', 'app@cli-feature'])).toMatchObject({
      name: 'app@cli-feature',
      parent: 'cli-dev',
    });
  });

  it('exits 4 for a branch that does not exist, and prints the error object on stdout with --json', async () => {
    const missing = await cli(['branch', 'show', 'app@nowhere']);
    expect(missing).toMatchObject({ code: 4, stdout: '' });
    expect(missing.stderr).toContain('(3D000)');
    const asJson = await cli(['branch', 'reset', 'app@nowhere', '--json']);
    expect(asJson.code).toBe(4);
    expect(JSON.parse(asJson.stdout)).toMatchObject({ error: { code: '3D000' } });
  });

  it('saves a restore point, restores it after a break, and deletes it', async () => {
    await cli(['branch', 'create', 'app@cli-points']);
    expect(await cli(['branch', 'snapshot', 'app@cli-points', 'before'])).toMatchObject({
      code: 0,
      stdout: 'saved restore point before of app@cli-points\n',
    });
    await queryOnce(proxy.url('app@cli-points'), 'drop table items');
    expect(await cli(['branch', 'restore', 'app@cli-points', 'before'])).toMatchObject({
      code: 0,
      stdout: 'restored app@cli-points to restore point before\n',
    });
    expect(await queryOnce(proxy.url('app@cli-points'), 'select name from items')).toEqual([
      { name: 'root' },
    ]);
    const show = await cli(['branch', 'show', 'app@cli-points']);
    expect(show.stdout).toMatch(/\nrestore points:\n {2}NAME\s+CREATED\s+SIZE\s*\n {2}before\s/);
    expect(await cli(['branch', 'restore', 'app@cli-points', 'never'])).toMatchObject({ code: 4 });
    expect(await cli(['branch', 'delete', 'app@cli-points', '--snapshot', 'before'])).toMatchObject(
      {
        code: 0,
        stdout: 'deleted app@cli-points:before\n',
      },
    );
  });

  it('deletes a branch with children only with --cascade, children first', async () => {
    await cli(['branch', 'create', 'app@cli-parent']);
    await cli(['branch', 'create', 'app@cli-child', '--from', 'app@cli-parent']);
    const refused = await cli(['branch', 'delete', 'app@cli-parent']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('(2BP01)');
    expect(refused.stderr).toContain('hint: Run again with --cascade to delete them as well.');
    expect(await cli(['branch', 'delete', 'app@cli-parent', '--cascade'])).toMatchObject({
      code: 0,
      stdout: 'deleted app@cli-child\ndeleted app@cli-parent\n',
    });
  });

  it('protects and unprotects, and sets and clears expiries', async () => {
    await cli(['branch', 'create', 'app@cli-kept']);
    expect((await cli(['branch', 'protect', 'app@cli-kept'])).stdout).toBe(
      'protected app@cli-kept\n',
    );
    const refused = await cli(['branch', 'delete', 'app@cli-kept']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('(42501)');
    expect((await cli(['branch', 'unprotect', 'app@cli-kept'])).stdout).toBe(
      'app@cli-kept is no longer protected\n',
    );

    const dated = await cli(['branch', 'expire', 'app@cli-kept', '--expires', '2030-12-01']);
    expect(dated.stdout).toMatch(
      /^app@cli-kept expires at 2030-12-01T00:00:00.000Z: deleted in \d+d \(2030-12-01T00:00:00.000Z\)\n$/,
    );
    expect(await json(['branch', 'expire', 'app@cli-kept', '--ttl', '2h'])).toMatchObject({
      expiresAt: '2030-12-01T00:00:00.000Z',
      ttlMs: 7_200_000,
    });
    expect((await cli(['branch', 'expire', 'app@cli-kept', '--never'])).stdout).toBe(
      'app@cli-kept never expires\n',
    );
    const bad = await cli(['branch', 'expire', 'app@cli-kept', '--ttl', 'soon']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('invalid ttl "soon"');
  });

  it('prints the schema diff for a person, or as JSON', async () => {
    await cli(['branch', 'create', 'app@cli-diff']);
    await queryOnce(proxy.url('app@cli-diff'), 'create table orders (id int primary key)');
    const text = await cli(['branch', 'diff', 'app', 'app@cli-diff']);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^--- app\n\+\+\+ app@cli-diff\n/);
    expect(text.stdout).toContain('+ table public.orders');
    const structured = await json(['branch', 'diff', 'app', 'app@cli-diff']);
    expect(structured.diff.added).toEqual(
      expect.arrayContaining([expect.objectContaining({ kind: 'table', name: 'public.orders' })]),
    );
  });
});

describe('pgbranch gc', () => {
  it('reads git ls-remote --heads from stdin: a dry run by default, deletes with --apply', async () => {
    await Promise.all([
      cli(['branch', 'create', 'app@pr-1']),
      cli(['branch', 'create', 'app@pr-2']),
    ]);
    const heads = [
      '5c8e0fcbd2a4b0d7f3c2d0a1e6f9b8c7d6e5f4a3\trefs/heads/main',
      'a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0\trefs/heads/pr-2',
      '',
    ].join('\n');
    const dry = await cli(['gc', '--keep-from', '-', '--pattern', 'pr-*'], { stdin: heads });
    expect(dry).toMatchObject({
      code: 0,
      stdout: 'would delete 1 branch (a dry run: --apply deletes them):\n  app@pr-1\n',
    });
    expect((await cli(['branch', 'show', 'app@pr-1'])).code).toBe(0);
    const applied = await cli(
      ['gc', '--keep-from', '-', '--pattern', 'pr-*', '--apply', '--json'],
      {
        stdin: heads,
      },
    );
    expect(JSON.parse(applied.stdout)).toEqual({ deleted: ['app@pr-1'], kept: [], applied: true });
    expect((await cli(['branch', 'show', 'app@pr-1'])).code).toBe(4);
    expect((await cli(['branch', 'show', 'app@pr-2'])).code).toBe(0);
  });
});

describe('progress', () => {
  /** A transaction-mode client in a transaction, which a reset waits for until the drain gives up. */
  async function busyClient(database: string): Promise<pg.Client> {
    const client = await connect(proxy.url(database));
    client.on('error', () => undefined);
    await client.query('begin');
    await client.query('select 1');
    return client;
  }

  it('prints one line on stderr for a request over a second when stderr is not a terminal, none when quick', async () => {
    await cli(['branch', 'create', 'app@tx-slow']);
    const client = await busyClient('app@tx-slow');
    const reset = await cli(['branch', 'reset', 'app@tx-slow']);
    await client.end().catch(() => undefined);
    expect(reset).toMatchObject({
      code: 0,
      stdout: 'reset app@tx-slow to the current state of app\n',
      stderr: 'resetting app@tx-slow …\n',
    });
    expect((await cli(['branch', 'show', 'app@tx-slow'])).stderr).toBe('');
  });

  it('shows a ticker with the elapsed time on a terminal, and clears it', async () => {
    const client = await busyClient('app@tx-slow');
    // script(1) gives the CLI a pseudo-terminal; what the terminal shows comes back on stdout.
    const command = `${process.execPath} ${BIN} branch reset app@tx-slow`;
    const run = await new Promise<{ code: number | null; output: string }>((resolve) => {
      const child = spawn('script', ['-qec', command, '/dev/null'], {
        cwd: ROOT,
        env: { ...process.env, PGBRANCH_ADMIN_PORT: adminPort(), PGBRANCH_ADMIN_TOKEN: TOKEN },
      });
      let output = '';
      child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
      child.once('exit', (code) => resolve({ code, output }));
    });
    await client.end().catch(() => undefined);
    expect(run.code).toBe(0);
    // Each tick redraws the line: back to its start, erase it, write it anew.
    const redraw = '\r\x1b[2K';
    expect(run.output).toContain(`${redraw}resetting app@tx-slow … 1.`);
    expect(run.output).toMatch(/resetting app@tx-slow … 1\.\d s/);
    expect(run.output.endsWith(`${redraw}reset app@tx-slow to the current state of app\r\n`)).toBe(
      true,
    );
  });
});

describe('exit codes', () => {
  it('exits 2 for a usage error, with what was meant', async () => {
    const [typo, ...others] = await Promise.all([
      cli(['branch', 'lsit']),
      cli(['branch', 'list', '--cascade']),
      cli(['gc']),
      cli(['branch', 'list'], { env: { PGBRANCH_ADMIN_PORT: 'x' } }),
    ]);
    expect(typo).toMatchObject({ code: 2, stdout: '' });
    expect(typo!.stderr).toBe(
      'pgbranch: unknown command "branch lsit"; did you mean list?\nSee pgbranch branch --help.\n',
    );
    expect(others.map((run) => run.code)).toEqual([2, 2, 2]);
    expect(others[2]!.stderr).toContain('admin.port (from PGBRANCH_ADMIN_PORT)');
  });

  it('exits 3 when nothing answers, naming the URL and how to start pgbranch, and without the token', async () => {
    const closed = await new Promise<number>((resolve) => {
      const probe = net.createServer().listen(0, '127.0.0.1', () => {
        const { port } = probe.address() as net.AddressInfo;
        probe.close(() => resolve(port));
      });
    });
    const down = await cli(['branch', 'list', '--admin-port', String(closed)]);
    expect(down.code).toBe(3);
    expect(down.stderr).toContain(
      `cannot reach pgbranch's admin API at http://127.0.0.1:${closed}: nothing is listening there`,
    );
    expect(down.stderr).toContain('Start pgbranch (npm start, or pgbranch)');

    const anonymous = await cli(['branch', 'list'], { env: { PGBRANCH_ADMIN_TOKEN: '' } });
    expect(anonymous.code).toBe(3);
    expect(anonymous.stderr).toContain('it requires an admin token: set PGBRANCH_ADMIN_TOKEN');
  });

  it('documents them in pgbranch branch --help and pgbranch --help', async () => {
    const [help, gcHelp, main] = await Promise.all([
      cli(['branch', '--help']),
      cli(['gc', '--help']),
      cli(['--help']),
    ]);
    expect(help).toMatchObject({ code: 0, stderr: '' });
    expect(help!.stdout).toContain('Exit codes:\n  0  done');
    expect(help!.stdout).toContain('4  not found');
    expect(gcHelp!.stdout).toContain('git ls-remote --heads origin | pgbranch gc --keep-from -');
    expect(main!.stdout).toContain('pgbranch branch list|show|create|reset');
  });
});
