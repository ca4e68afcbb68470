// A start that can't succeed (ports taken, the Unix socket held, the data directory another
// pgbranch's) fails before pgbranch does any work, with every conflict in one line and no stack.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { psql } from './support/clients.js';
import { startPgbranch, tempDir, PGBRANCH_BIN } from './support/pgbranch.js';

const ROOT = path.resolve(import.meta.dirname, '..');

const dirs: string[] = [];
const servers: net.Server[] = [];
afterAll(async () => {
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** Something else listening: on a free TCP port of 127.0.0.1, or on a Unix socket file. */
async function occupy(where: { port: 0 } | { file: string }): Promise<number> {
  const server = net.createServer((socket) => socket.destroy());
  servers.push(server);
  await new Promise<void>((resolve) =>
    'file' in where ? server.listen(where.file, resolve) : server.listen(0, '127.0.0.1', resolve),
  );
  const address = server.address();
  return typeof address === 'object' && address ? address.port : 0;
}

/** Runs `pgbranch args...` to its end, as a user would. */
function runPgbranch(
  args: string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [PGBRANCH_BIN, '--log-format', 'json', ...args],
      { cwd: ROOT, timeout: 60_000, env: { ...process.env, PGBRANCH_PASSWORD: 'test-password' } },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

const portOf = (url: string | undefined) => new URL(url!).port;

describe('a start that cannot succeed', () => {
  it('names every port in use and a held Unix socket in one line, before initialising a server', async () => {
    const [proxyPort, metricsPort, adminPort] = [
      await occupy({ port: 0 }),
      await occupy({ port: 0 }),
      await occupy({ port: 0 }),
    ];
    const socketDir = tempDir('conflict-socket');
    const dataDir = path.join(tempDir('conflict-data'), 'data');
    dirs.push(socketDir, path.dirname(dataDir));
    const socketFile = path.join(socketDir, `.s.PGSQL.${proxyPort}`);
    await occupy({ file: socketFile });

    const result = await runPgbranch([
      '--data-dir',
      dataDir,
      '--port',
      String(proxyPort),
      '--metrics-port',
      String(metricsPort),
      '--admin-port',
      String(adminPort),
      '--socket-dir',
      socketDir,
    ]);

    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      `pgbranch: port ${proxyPort} on 127.0.0.1 is already in use: stop what uses it or pick another with --port; ` +
        `metrics port ${metricsPort} on 127.0.0.1 is already in use: pick another with --metrics-port (0 picks a free one) or turn metrics off with --metrics-enabled false; ` +
        `admin port ${adminPort} on 127.0.0.1 is already in use: pick another with --admin-port (0 picks a free one) or turn the admin API off with --admin-enabled false; ` +
        `another process listens on ${socketFile}: stop it, or pick another listen.socket_dir or port\n`,
    );
    // Nothing was logged (no JSON error with a stack) and no server was initialised.
    expect(result.stdout).toBe('');
    expect(fs.existsSync(path.join(dataDir, 'pg'))).toBe(false);
    // The socket is still the other process's.
    expect(fs.lstatSync(socketFile).isSocket()).toBe(true);
  });

  it('names the running pgbranch whose data directory and ports a second one was given, and leaves it serving', async () => {
    const socketDir = tempDir('conflict-running');
    dirs.push(socketDir);
    const first = await startPgbranch({ args: ['--socket-dir', socketDir] });
    try {
      const result = await runPgbranch([
        '--data-dir',
        first.dataDir,
        '--port',
        String(first.port),
        '--metrics-port',
        portOf(first.ready.metricsUrl),
        '--admin-port',
        portOf(first.ready.adminUrl),
        '--socket-dir',
        socketDir,
      ]);
      expect(result.code).toBe(1);
      const lines = result.stderr.split('\n').filter((line) => line.length > 0);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/^pgbranch: /);
      for (const part of [
        `another pgbranch (pid ${first.child.pid}) is using ${first.dataDir}: stop it first, or use another --data-dir`,
        `port ${first.port} on 127.0.0.1 is already in use`,
        `metrics port ${portOf(first.ready.metricsUrl)} on 127.0.0.1 is already in use`,
        `admin port ${portOf(first.ready.adminUrl)} on 127.0.0.1 is already in use`,
        `another process listens on ${first.ready.socketPath}`,
      ]) {
        expect(lines[0]).toContain(part);
      }
      expect(result.stdout).toBe('');
      expect(await psql(first.url('postgres'), 'select 1')).toMatchObject({ code: 0, stdout: '1' });
      expect(fs.lstatSync(first.ready.socketPath!).isSocket()).toBe(true);
    } finally {
      expect(await first.stop()).toBe(0);
    }
  });

  it('names two settings given the same port', async () => {
    const [port] = [await occupy({ port: 0 })];
    // The port is freed again: only the clash between the two settings is left.
    await new Promise((resolve) => servers.pop()!.close(resolve));
    const dataDir = path.join(tempDir('conflict-same'), 'data');
    dirs.push(path.dirname(dataDir));
    const result = await runPgbranch([
      '--data-dir',
      dataDir,
      '--port',
      String(port),
      '--admin-port',
      String(port),
      '--metrics-port',
      '0',
    ]);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      `pgbranch: admin.port ${port} is listen.port too: give each its own port\n`,
    );
    expect(fs.existsSync(path.join(dataDir, 'pg'))).toBe(false);
  });
});
