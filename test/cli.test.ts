// `pgbranch branch ...` and `pgbranch gc ...`: the real CLI binary as a child process, against a
// real pgbranch found through PGBRANCH_ADMIN_PORT and PGBRANCH_ADMIN_TOKEN, as a script would run it.
//
// Each CLI call is a process of its own (about a second when it runs through tsx), so the tests of
// a group run concurrently. They share one pgbranch but not branches: each makes its own, through
// the admin API when making them is not what it tests. pgbranch does the changes to one root's
// branches one at a time, so tests that wait on purpose (the progress group) run on their own.
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, it, vi } from 'vitest';
import { connect, queryOnce } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const BIN = path.join(ROOT, 'bin/pgbranch.js');
const TOKEN = 'cli-test-token';
/** The pgbranch every command talks to; its admin API requires TOKEN. */
let proxy: PgbranchProcess;
/** A pgbranch with its admin API turned off in a config file, which the CLI may read too. */
let apiOff: PgbranchProcess;
let configDir: string;
let apiOffConfig: string;

vi.setConfig({ testTimeout: 180_000 });

beforeAll(async () => {
  configDir = tempDir('cli-config');
  apiOffConfig = path.join(configDir, 'pgbranch.yaml');
  fs.writeFileSync(apiOffConfig, 'admin:\n  enabled: false\n');
  // Both run as the CLI does, from the build when it is current: that starts with less work.
  await Promise.all([
    startPgbranch({
      entry: 'bin',
      env: { PGBRANCH_ADMIN_TOKEN: TOKEN },
      // A drain that gives up after 2 s makes a reset under a busy client take that long.
      args: ['--branch-drain-timeout', '2s', '--pool-transaction-mode-for', '*@tx-*'],
    }).then(async (started) => {
      proxy = started;
      await queryOnce(proxy.url('postgres'), 'create database app');
      await queryOnce(
        proxy.url('app'),
        "create table items (name text); insert into items values ('root')",
      );
    }),
    startPgbranch({ entry: 'bin', env: { PGBRANCH_CONFIG: apiOffConfig } }).then((started) => {
      apiOff = started;
    }),
  ]);
});

afterAll(async () => {
  await Promise.all([proxy?.stop(), apiOff?.stop()]);
  if (configDir) fs.rmSync(configDir, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The admin API's URL and port, as PGBRANCH_ADMIN_PORT gives it to the CLI. */
const adminUrl = () => proxy.ready.adminUrl!;
const adminPort = () => new URL(adminUrl()).port;

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

/** The CLI with --json: its exit code, stderr, and stdout parsed. */
async function json(args: string[]) {
  const run = await cli([...args, '--json']);
  return { code: run.code, stderr: run.stderr, value: JSON.parse(run.stdout) };
}

/** The admin API itself, for what a test needs but does not test: making branches, checking them. */
async function api(method: string, route: string, body?: unknown) {
  const response = await fetch(adminUrl() + route, {
    method,
    headers: {
      authorization: `Bearer ${TOKEN}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as unknown };
}

async function createBranch(name: string, options: { parent?: string; ttl?: string } = {}) {
  const { status, body } = await api('POST', '/v1/branches', { name, ...options });
  if (status !== 201) throw new Error(`creating ${name}: HTTP ${status} ${JSON.stringify(body)}`);
}

const exists = async (name: string) =>
  (await api('GET', `/v1/branches/${encodeURIComponent(name)}`)).status === 200;

/** Ports that nothing listens on: each was free a moment ago. */
async function closedPorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<net.Server>((resolve) => {
          const server = net.createServer().listen(0, '127.0.0.1', () => resolve(server));
        }),
    ),
  );
  const ports = servers.map((server) => (server.address() as net.AddressInfo).port);
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  return ports;
}

/** What the CLI says to do when it must be told where pgbranch's admin API is. */
const WHERE =
  'admin.host and admin.port (--admin-host, --admin-port, PGBRANCH_ADMIN_HOST, PGBRANCH_ADMIN_PORT), ' +
  "as the admin: line of pgbranch's banner shows";

describe.concurrent('pgbranch branch', () => {
  it('creates a branch, and says so when it existed; another parent fails with exit 1 and the SQLSTATE', async ({
    expect,
  }) => {
    const made = await cli(['branch', 'create', 'app@cli-dev', '--ttl', '7d']);
    expect(made.code).toBe(0);
    expect(made.stdout).toMatch(
      /^created app@cli-dev from app in \d+ ms, a (copy-on-write clone|copy)\n$/,
    );
    const [again, other, child] = await Promise.all([
      cli(['branch', 'create', 'app@cli-dev', '--from', 'app']),
      cli(['branch', 'create', 'app@cli-dev', '--from', 'app@elsewhere']),
      cli(['branch', 'create', 'app@cli-feature', '--from', 'cli-dev']),
    ]);
    expect(again).toMatchObject({ code: 0, stdout: 'app@cli-dev exists already, from app\n' });
    expect(other.code).toBe(1);
    expect(other.stderr).toContain('already exists, made from "app" (42P04)');
    expect(child.code).toBe(0);
    expect(child.stdout).toMatch(/^created app@cli-feature from app@cli-dev in \d+ ms/);
    // Parents are named in full on both sides of the refusal, as they were typed.
    const fromRoot = await cli(['branch', 'create', 'app@cli-feature', '--from', 'app']);
    expect(fromRoot.code).toBe(1);
    // A request that takes more than a second (a loaded machine) first says what it waits for.
    expect(fromRoot.stderr.replace(/^creating app@cli-feature …\n/, '')).toBe(
      'pgbranch: branch "app@cli-feature" already exists, made from "app@cli-dev" (42P04)\n' +
        '  hint: Delete it first, or use it as it is: it was not made from "app".\n',
    );
  });

  it('lists branches as a table, as a tree with --tree, and as the API’s JSON with --json', async ({
    expect,
  }) => {
    await createBranch('app@list-dev', { ttl: '7d' });
    await createBranch('app@list-feature', { parent: 'list-dev' });
    const [table, tree, listed, shown] = await Promise.all([
      cli(['branch', 'list']),
      cli(['branch', 'list', '--tree', '--database', 'app']),
      json(['branch', 'list']),
      json(['branch', 'show', 'app@list-feature']),
    ]);
    expect(table).toMatchObject({ code: 0, stderr: '' });
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(
      /^NAME\s+PARENT\s+CREATED\s+LAST CONNECTED\s+SIZE\s+CLIENTS\s+EXPIRES\s+NOTES$/,
    );
    expect(lines.find((l) => l.startsWith('app@list-dev '))).toMatch(
      /^app@list-dev\s+app\s+(now|\S+ ago)\s+-\s+\d+\.\d MB\s+0\s+in 6d \(7d idle\)/,
    );
    expect(lines.find((l) => l.startsWith('app@list-feature '))).toMatch(
      /^app@list-feature\s+app@list-dev\s/,
    );

    expect(tree.stdout).toMatch(/^app {2,}\S.*root\n/);
    // Other tests' branches of app may be drawn below app@list-dev, which then continues the line.
    const drawn = /\n([├└])── app@list-dev {2,}.*\n(.{4})└── app@list-feature {2,}/.exec(
      tree.stdout,
    );
    expect(drawn?.[2]).toBe(drawn?.[1] === '├' ? '│   ' : '    ');

    expect(listed).toMatchObject({ code: 0, stderr: '' });
    expect(listed.value.branches.map((b: { name: string }) => b.name)).toEqual(
      expect.arrayContaining(['app', 'app@list-dev', 'app@list-feature']),
    );
    expect(shown).toMatchObject({
      code: 0,
      stderr: '',
      value: { name: 'app@list-feature', parent: 'app@list-dev' },
    });
  });

  it('exits 4 for a branch that does not exist, and prints the error object on stdout with --json', async ({
    expect,
  }) => {
    const [missing, asJson] = await Promise.all([
      cli(['branch', 'show', 'app@nowhere']),
      cli(['branch', 'reset', 'app@nowhere', '--json']),
    ]);
    expect(missing).toMatchObject({ code: 4, stdout: '' });
    expect(missing.stderr).toContain('(3D000)');
    expect(asJson.code).toBe(4);
    expect(JSON.parse(asJson.stdout)).toMatchObject({ error: { code: '3D000' } });
  });

  it('saves a restore point, restores it after a break, and deletes it', async ({ expect }) => {
    await createBranch('app@cli-points');
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
    const [show, never] = await Promise.all([
      cli(['branch', 'show', 'app@cli-points']),
      cli(['branch', 'restore', 'app@cli-points', 'never']),
    ]);
    expect(show.stdout).toMatch(/\nrestore points:\n {2}NAME\s+CREATED\s+SIZE\s*\n {2}before\s/);
    expect(never).toMatchObject({ code: 4 });
    expect(await cli(['branch', 'delete', 'app@cli-points', '--snapshot', 'before'])).toMatchObject(
      {
        code: 0,
        stdout: 'deleted app@cli-points:before\n',
      },
    );
  });

  it('deletes a branch with children only with --cascade, children first', async ({ expect }) => {
    await createBranch('app@cli-parent');
    await createBranch('app@cli-child', { parent: 'cli-parent' });
    const refused = await cli(['branch', 'delete', 'app@cli-parent']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('(2BP01)');
    expect(refused.stderr).toContain('hint: Run again with --cascade to delete them as well.');
    expect(await cli(['branch', 'delete', 'app@cli-parent', '--cascade'])).toMatchObject({
      code: 0,
      stdout: 'deleted app@cli-child\ndeleted app@cli-parent\n',
    });
  });

  it('protects and unprotects', async ({ expect }) => {
    await createBranch('app@cli-kept');
    expect((await cli(['branch', 'protect', 'app@cli-kept'])).stdout).toBe(
      'protected app@cli-kept\n',
    );
    const refused = await cli(['branch', 'delete', 'app@cli-kept']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('(42501)');
    expect((await cli(['branch', 'unprotect', 'app@cli-kept'])).stdout).toBe(
      'app@cli-kept is no longer protected\n',
    );
  });

  it('sets and clears expiries, and refuses a duration it can’t read', async ({ expect }) => {
    await createBranch('app@cli-expiring');
    const [dated, bad] = await Promise.all([
      cli(['branch', 'expire', 'app@cli-expiring', '--expires', '2030-12-01']),
      cli(['branch', 'expire', 'app@cli-expiring', '--ttl', 'soon']),
    ]);
    expect(dated.stdout).toMatch(
      /^app@cli-expiring expires at 2030-12-01T00:00:00.000Z: deleted in \d+d \(2030-12-01T00:00:00.000Z\)\n$/,
    );
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('invalid ttl "soon"');
    expect(await json(['branch', 'expire', 'app@cli-expiring', '--ttl', '2h'])).toMatchObject({
      code: 0,
      value: { expiresAt: '2030-12-01T00:00:00.000Z', ttlMs: 7_200_000 },
    });
    expect((await cli(['branch', 'expire', 'app@cli-expiring', '--never'])).stdout).toBe(
      'app@cli-expiring never expires\n',
    );
  });

  it('prints the schema diff for a person, or as JSON', async ({ expect }) => {
    // A root of its own: reading a root's schema connects to it, which a branch being made from
    // it at the same moment would not allow.
    await queryOnce(proxy.url('postgres'), 'create database shop');
    await createBranch('shop@orders');
    await queryOnce(proxy.url('shop@orders'), 'create table orders (id int primary key)');
    const [text, structured] = await Promise.all([
      cli(['branch', 'diff', 'shop', 'shop@orders']),
      json(['branch', 'diff', 'shop', 'shop@orders']),
    ]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^--- shop\n\+\+\+ shop@orders\n/);
    expect(text.stdout).toContain('+ table public.orders');
    expect(structured.code).toBe(0);
    expect(structured.value.diff.added).toEqual(
      expect.arrayContaining([expect.objectContaining({ kind: 'table', name: 'public.orders' })]),
    );
  });
});

describe.concurrent('pgbranch gc', () => {
  it('reads git ls-remote --heads from stdin: a dry run by default, deletes with --apply', async ({
    expect,
  }) => {
    await Promise.all([createBranch('app@pr-1'), createBranch('app@pr-2')]);
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
    expect(await exists('app@pr-1')).toBe(true);
    const applied = await cli(
      ['gc', '--keep-from', '-', '--pattern', 'pr-*', '--apply', '--json'],
      {
        stdin: heads,
      },
    );
    expect(JSON.parse(applied.stdout)).toEqual({ deleted: ['app@pr-1'], kept: [], applied: true });
    expect([await exists('app@pr-1'), await exists('app@pr-2')]).toEqual([false, true]);
  });
});

// Not concurrent with the groups above: its resets would hold up their changes to app's branches.
describe('progress', () => {
  /** A transaction-mode client in a transaction, which a reset waits for until the drain gives up. */
  async function busyClient(database: string): Promise<pg.Client> {
    const client = await connect(proxy.url(database));
    client.on('error', () => undefined);
    await client.query('begin');
    await client.query('select 1');
    return client;
  }

  it.concurrent(
    'prints one line on stderr for a request over a second when stderr is not a terminal, none when quick',
    async ({ expect }) => {
      await createBranch('app@tx-slow');
      const client = await busyClient('app@tx-slow');
      const reset = await cli(['branch', 'reset', 'app@tx-slow']);
      await client.end().catch(() => undefined);
      expect(reset).toMatchObject({
        code: 0,
        stdout: 'reset app@tx-slow to the current state of app\n',
        stderr: 'resetting app@tx-slow …\n',
      });
      expect((await cli(['branch', 'show', 'app@tx-slow'])).stderr).toBe('');
    },
  );

  it.concurrent(
    'shows a ticker with the elapsed time on a terminal, and clears it',
    async ({ expect }) => {
      // A root of its own, so that this reset does not wait for the other test's.
      await queryOnce(proxy.url('postgres'), 'create database term');
      await createBranch('term@tx-tty');
      const client = await busyClient('term@tx-tty');
      // script(1) gives the CLI a pseudo-terminal; what the terminal shows comes back on stdout.
      const command = `${process.execPath} ${BIN} branch reset term@tx-tty`;
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
      expect(run.output).toContain(`${redraw}resetting term@tx-tty … 1.`);
      expect(run.output).toMatch(/resetting term@tx-tty … 1\.\d s/);
      expect(
        run.output.endsWith(`${redraw}reset term@tx-tty to the current state of term\r\n`),
      ).toBe(true);
    },
  );
});

describe.concurrent('exit codes', () => {
  it('exits 2 for a usage error, with what was meant', async ({ expect }) => {
    const [typo, ...others] = await Promise.all([
      cli(['branch', 'lsit']),
      cli(['branch', 'list', '--cascade']),
      cli(['gc']),
      cli(['branch', 'list'], { env: { PGBRANCH_ADMIN_PORT: 'x' } }),
    ]);
    expect(typo).toMatchObject({ code: 2, stdout: '' });
    expect(typo!.stderr).toBe(
      'pgbranch: unknown command "branch lsit"; did you mean list?\nSee npx pgbranch branch --help.\n',
    );
    expect(others.map((run) => run.code)).toEqual([2, 2, 2]);
    expect(others[2]!.stderr).toContain('admin.port (from PGBRANCH_ADMIN_PORT)');
  });

  it('exits 3 when nothing answers, naming the URL and saying to start pgbranch or where it runs', async ({
    expect,
  }) => {
    const [admin, proxyPort] = await closedPorts(2);
    const down = await cli(['branch', 'list', '--admin-port', String(admin)], {
      env: { PGBRANCH_PORT: String(proxyPort) },
    });
    expect(down).toEqual({
      code: 3,
      stdout: '',
      stderr:
        `pgbranch: cannot reach pgbranch's admin API at http://127.0.0.1:${admin}: nothing is ` +
        `listening there, nor on the proxy port 127.0.0.1:${proxyPort}.\n` +
        `Start pgbranch (npm start, or npx pgbranch), or say where it runs: ${WHERE}.\n`,
    });
  });

  it('exits 3 when something else answers at the admin URL, such as the proxy or the metrics port', async ({
    expect,
  }) => {
    const metricsPort = new URL(proxy.ready.metricsUrl!).port;
    const [proxyPort, metrics] = await Promise.all([
      cli(['branch', 'list', '--admin-port', String(proxy.port)]),
      cli(['branch', 'list', '--admin-port', metricsPort]),
    ]);
    const notTheApi = `, so it is not pgbranch's admin API.\nSay where pgbranch's admin API is: ${WHERE}.\n`;
    expect(proxyPort).toMatchObject({ code: 3, stdout: '' });
    // PostgreSQL (and the proxy, as it does) closes on an HTTP request without a word: the CLI
    // asks the port whether it speaks PostgreSQL's protocol.
    expect(proxyPort.stderr).toBe(
      `pgbranch: cannot reach pgbranch's admin API at http://127.0.0.1:${proxy.port}: ` +
        `it speaks PostgreSQL's protocol (a PostgreSQL server, or pgbranch's proxy port)${notTheApi}`,
    );
    expect(metrics).toEqual({
      code: 3,
      stdout: '',
      stderr:
        `pgbranch: cannot reach pgbranch's admin API at http://127.0.0.1:${metricsPort}: ` +
        `it answered HTTP 404 with something other than JSON${notTheApi}`,
    });
  });

  it('exits 3 when the connection ends before an answer, saying the request may have been carried out', async ({
    expect,
  }) => {
    // What a pgbranch that stops mid-request looks like from the CLI.
    const server = net.createServer((socket) => socket.once('data', () => socket.destroy()));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    try {
      expect(await cli(['branch', 'create', 'app@cut-off', '--admin-port', String(port)])).toEqual({
        code: 3,
        stdout: '',
        stderr:
          `pgbranch: cannot reach pgbranch's admin API at http://127.0.0.1:${port}: the connection ` +
          `ended before an answer came (pgbranch stopped, or something between cut it off).\n` +
          `What it was asked may have happened or still be under way: look with npx pgbranch branch list once it runs.\n`,
      });
    } finally {
      server.close();
    }
  });

  it('exits 3 for a pgbranch whose admin API is off: at once with its settings, else it finds the proxy port', async ({
    expect,
  }) => {
    const [admin] = await closedPorts(1);
    const [sameSettings, otherSettings] = await Promise.all([
      cli(['branch', 'list'], { env: { PGBRANCH_CONFIG: apiOffConfig } }),
      // The CLI knows only the proxy port: it finds pgbranch there, but no admin API.
      cli(['branch', 'list', '--admin-port', String(admin)], {
        env: { PGBRANCH_PORT: String(apiOff.port) },
      }),
    ]);
    expect(sameSettings).toEqual({
      code: 3,
      stdout: '',
      stderr:
        `pgbranch: the admin API is turned off (admin.enabled is false in the settings read from ` +
        `${apiOffConfig} and PGBRANCH_* variables), and npx pgbranch branch and gc work through it.\n` +
        `Take admin.enabled: false out of those settings (the API is on by default) and restart ` +
        `pgbranch with them.\n`,
    });
    expect(otherSettings).toEqual({
      code: 3,
      stdout: '',
      stderr:
        `pgbranch: cannot reach pgbranch's admin API at http://127.0.0.1:${admin}: nothing is ` +
        `listening there, though something is on the proxy port 127.0.0.1:${apiOff.port}.\n` +
        `If that is pgbranch, it serves no admin API (admin.enabled is false) or serves it ` +
        `elsewhere: restart it with admin.enabled true, or say where the API is: ${WHERE}.\n`,
    });
  });

  it('exits 3 without the token or with another, naming PGBRANCH_ADMIN_TOKEN, and prints nothing on stdout', async ({
    expect,
  }) => {
    const [anonymous, wrong, wrongJson] = await Promise.all([
      cli(['branch', 'list'], { env: { PGBRANCH_ADMIN_TOKEN: '' } }),
      cli(['branch', 'list'], { env: { PGBRANCH_ADMIN_TOKEN: 'not-the-token' } }),
      cli(['branch', 'show', 'app', '--json'], { env: { PGBRANCH_ADMIN_TOKEN: 'not-the-token' } }),
    ]);
    const remedy =
      'Give the token pgbranch was started with: PGBRANCH_ADMIN_TOKEN (admin.token, --admin-token).\n';
    expect(anonymous).toEqual({
      code: 3,
      stdout: '',
      stderr: `pgbranch: cannot use pgbranch's admin API at ${adminUrl()}: it requires a token, and none was given.\n${remedy}`,
    });
    const refused = `pgbranch: cannot use pgbranch's admin API at ${adminUrl()}: it refused the token given.\n${remedy}`;
    expect(wrong).toEqual({ code: 3, stdout: '', stderr: refused });
    expect(wrongJson).toEqual({ code: 3, stdout: '', stderr: refused });
  });

  it('documents them in pgbranch branch --help and pgbranch --help', async ({ expect }) => {
    const [help, gcHelp, main] = await Promise.all([
      cli(['branch', '--help']),
      cli(['gc', '--help']),
      cli(['--help']),
    ]);
    expect(help).toMatchObject({ code: 0, stderr: '' });
    expect(help!.stdout).toContain('Exit codes:\n  0  done');
    expect(help!.stdout).toContain('3  pgbranch cannot be reached');
    expect(help!.stdout).toContain('4  not found');
    expect(gcHelp!.stdout).toContain(
      'git ls-remote --heads origin | npx pgbranch gc --keep-from -',
    );
    expect(main!.stdout).toContain('npx pgbranch branch list|show|create|reset');
  });
});
