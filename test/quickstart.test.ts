// The README's first command, as a user runs it: `npm start` with nothing configured.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import { psql } from './support/clients.js';
import { bannerWritten, startPgbranch, tempDir } from './support/pgbranch.js';

const ROOT = path.resolve(import.meta.dirname, '..');

interface Started {
  child: ChildProcess;
  banner: string;
  ready: Record<string, unknown>;
  logs: Record<string, unknown>[];
}

/** Starts a command in its own process group, as a terminal would, and waits for the banner. */
async function start(
  command: string,
  args: string[],
  cwd: string,
  env: Record<string, string>,
): Promise<Started> {
  const child = spawn(command, args, {
    cwd,
    env: {
      ...process.env,
      PGBRANCH_PASSWORD: '',
      PGBRANCH_METRICS_PORT: '0',
      PGBRANCH_ADMIN_PORT: '0',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const logs: Record<string, unknown>[] = [];
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not ready:\n${stderr}`)), 90_000);
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      if (!line.startsWith('{')) return;
      const entry = JSON.parse(line) as Record<string, unknown>;
      logs.push(entry);
      if (entry.event === 'ready') {
        clearTimeout(timer);
        resolve(entry);
      }
    });
    child.once('exit', (code) => reject(new Error(`exited with ${code}:\n${stderr}`)));
  });
  await bannerWritten(() => stderr);
  return { child, banner: stderr, ready, logs };
}

/**
 * Ctrl-C in a terminal: SIGINT to the whole foreground process group. Resolves with the exit code,
 * or the signal's name when the process re-raised it (npm does, after its script has exited).
 */
async function ctrlC(started: Started): Promise<number | string> {
  const exited = new Promise<number | string>((resolve) =>
    started.child.once('exit', (code, signal) => resolve(code ?? String(signal))),
  );
  // Every process of the group has exited once nothing holds its stdout open any more.
  const drained = new Promise((resolve) => started.child.stdout!.once('close', resolve));
  process.kill(-started.child.pid!, 'SIGINT');
  const [result] = await Promise.all([exited, drained]);
  // pgbranch itself stopped in order, whatever npm made of the signal.
  expect(started.logs.map((l) => l.event)).toContain('stopped');
  return result;
}

function postgresRunningOn(dataDir: string): boolean {
  try {
    return (
      execFileSync('pgrep', ['-f', `postgres -D ${dataDir}`])
        .toString()
        .trim().length > 0
    );
  } catch {
    return false;
  }
}

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

describe('npm start with no configuration', () => {
  it('starts the embedded PostgreSQL 18 and the proxy, prints how to connect, and stops both on Ctrl-C', async () => {
    const dataDir = path.join(tempDir('quickstart'), 'data');
    dirs.push(path.dirname(dataDir));
    const first = await start('npm', ['start', '--', '--port', '0', '--log-format', 'json'], ROOT, {
      PGBRANCH_DATA_DIR: dataDir,
    });
    const port = first.ready.port as number;
    expect(first.logs.some((l) => String(l.msg).startsWith('initialising PostgreSQL 18'))).toBe(
      true,
    );
    // A connection string to copy, the data directory, and how branches will be made. Not at a
    // terminal, the banner says where the password is instead of showing it.
    const banner =
      /connect:\s+psql "(postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres)" +\(password in (\S+)\)/.exec(
        first.banner,
      );
    expect(banner).not.toBeNull();
    const [, url, passwordFile] = banner!;
    expect(passwordFile).toBe(path.join(dataDir, 'superuser-password'));
    const password = fs.readFileSync(passwordFile!, 'utf8').trim();
    const psqlAsSuperuser = (target: string, sql: string) =>
      psql(target, sql, { env: { PGPASSWORD: password } });
    expect(url).toContain(`:${port}/`);
    expect(first.banner).toContain(`data:      ${path.join(dataDir, 'pg')}`);
    expect(first.banner).toMatch(
      /branches:\s+(cloned \(copy-on-write\)|copied \(no copy-on-write\)): \S+/,
    );
    expect(first.ready.serverVersion).toMatch(/^18\./);

    expect(await psqlAsSuperuser(url!, 'create database app')).toMatchObject({ code: 0 });
    expect(
      await psqlAsSuperuser(
        url!.replace(/\/postgres$/, '/app@feature-x'),
        'select current_database()',
      ),
    ).toMatchObject({
      code: 0,
      stdout: 'app@feature-x',
    });

    expect([0, 'SIGINT']).toContain(await ctrlC(first));
    expect(postgresRunningOn(path.join(dataDir, 'pg'))).toBe(false);
    expect(fs.existsSync(path.join(dataDir, 'pg', 'postmaster.pid'))).toBe(false);

    // A second start reuses the same data and the same generated password.
    const second = await start(
      'npm',
      ['start', '--', '--port', '0', '--log-format', 'json'],
      ROOT,
      {
        PGBRANCH_DATA_DIR: dataDir,
      },
    );
    expect(second.logs.some((l) => String(l.msg).startsWith('initialising'))).toBe(false);
    const secondUrl = url!.replace(`:${port}/`, `:${second.ready.port as number}/`);
    expect(second.banner).toContain(secondUrl);
    expect(
      await psqlAsSuperuser(
        secondUrl.replace(/\/postgres$/, '/app@feature-x'),
        'select current_database()',
      ),
    ).toMatchObject({
      code: 0,
      stdout: 'app@feature-x',
    });
    expect([0, 'SIGINT']).toContain(await ctrlC(second));
    expect(postgresRunningOn(path.join(dataDir, 'pg'))).toBe(false);
  });

  it('after a pgbranch was killed, the next start stops the server it left and serves the same data', async () => {
    const dataDir = tempDir('killed');
    dirs.push(dataDir);
    const first = await startPgbranch({ dataDir });
    expect(await psql(first.url('postgres'), 'create database survivor')).toMatchObject({
      code: 0,
    });
    first.child.kill('SIGKILL');
    await first.stop();
    expect(postgresRunningOn(path.join(dataDir, 'pg'))).toBe(true);

    const second = await startPgbranch({ dataDir });
    try {
      expect(second.events('orphan_stopped')).toHaveLength(1);
      const result = await psql(second.url('survivor'), 'select current_database()');
      expect(result).toMatchObject({ code: 0, stdout: 'survivor' });
      // While one runs, another on the same data directory is refused, and harms nothing.
      await expect(startPgbranch({ dataDir, timeoutMs: 30_000 })).rejects.toThrow(
        /another pgbranch \(pid \d+\) is using/,
      );
      expect(await psql(second.url('survivor'), 'select 1')).toMatchObject({ code: 0 });
    } finally {
      await second.stop();
    }
    expect(postgresRunningOn(path.join(dataDir, 'pg'))).toBe(false);
  });

  it('keeps its data under .pgbranch in the directory it was started from', async () => {
    const cwd = tempDir('cwd');
    dirs.push(cwd);
    const started = await start(
      process.execPath,
      [path.join(ROOT, 'bin/pgbranch.js'), '--port', '0', '--log-format', 'json'],
      cwd,
      {},
    );
    expect(started.ready.dataDir).toBe(path.join(cwd, '.pgbranch', 'pg'));
    expect(await ctrlC(started)).toBe(0);
  });

  it('answers --help with every option and its environment variable', () => {
    const help = execFileSync(process.execPath, [
      path.join(ROOT, 'bin/pgbranch.js'),
      '--help',
    ]).toString();
    for (const text of [
      '--port',
      'PGBRANCH_PORT',
      '--data-dir',
      'PGBRANCH_DATA_DIR',
      '--upstream',
      'PGBRANCH_UPSTREAM',
      '--auth',
      'PGBRANCH_AUTH',
      'PGBRANCH_PASSWORD',
    ]) {
      expect(help).toContain(text);
    }
  });

  it('refuses a bad setting at start with a message naming the key', () => {
    let output = '';
    try {
      execFileSync(process.execPath, [path.join(ROOT, 'bin/pgbranch.js'), '--port', 'seventy'], {
        stdio: 'pipe',
      });
    } catch (error) {
      output = String((error as { stderr: Buffer }).stderr);
    }
    expect(output).toMatch(/listen\.port \(from --port\)/);
  });
});
