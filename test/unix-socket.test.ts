// listen.socket_dir: pgbranch listens on a Unix socket as well as TCP, named as PostgreSQL names
// its own (DIR/.s.PGSQL.PORT), so that local clients reach it as they reach PostgreSQL:
// `psql -h DIR`, node-postgres `host: DIR`. Branches, pool modes and everything else are the same.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { psql } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';

let dir: string;
let proxy: PgbranchProcess;
let socketFile: string;

beforeAll(async () => {
  dir = tempDir('socket');
  proxy = await startPgbranch({ args: ['--socket-dir', dir] });
  socketFile = path.join(dir, `.s.PGSQL.${proxy.port}`);
  expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
  expect(await psql(proxy.url('app'), 'create table t (x int); insert into t values (1)')).toEqual(
    expect.objectContaining({ code: 0 }),
  );
});

afterAll(async () => {
  await proxy?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** psql through the socket: `-h DIR -p PORT`, as local clients of PostgreSQL connect. */
function psqlSocket(database: string, sql: string, options = '') {
  return psql(`dbname=${database}${options ? ` options='${options}'` : ''}`, sql, {
    args: ['-q', '-h', dir, '-p', String(proxy.port), '-U', 'postgres'],
    env: { PGPASSWORD: proxy.password },
  });
}

/** A node-postgres client through the socket: `host` is the directory, as with PostgreSQL. */
async function pgSocket(database: string, options?: string): Promise<pg.Client> {
  const client = new pg.Client({
    host: dir,
    port: proxy.port,
    user: 'postgres',
    password: proxy.password,
    database,
    options,
  });
  await client.connect();
  return client;
}

const TRANSACTION_MODE = '-c pgbranch.pool_mode=transaction';

function connects(branch: string): Record<string, unknown>[] {
  return proxy.events('client_connected').filter((entry) => entry.branch === branch);
}

/** The pool mode of the next client on `branch` after `before` of them, once it is logged. */
async function modeOfNext(branch: string, before: number): Promise<unknown> {
  await vi.waitFor(() => expect(connects(branch).length).toBeGreaterThan(before), {
    timeout: 10_000,
    interval: 20,
  });
  return connects(branch)[before]!.mode ?? 'session';
}

describe('a pgbranch with listen.socket_dir', () => {
  it('listens on DIR/.s.PGSQL.PORT, open to every local user, and names it in the banner and the ready line', () => {
    const stat = fs.lstatSync(socketFile);
    expect(stat.isSocket()).toBe(true);
    expect(stat.mode & 0o777).toBe(0o777);
    expect(proxy.ready.socketPath).toBe(socketFile);
    expect(proxy.stderr()).toContain(
      `  socket:    ${socketFile}   (psql -h ${dir} -p ${proxy.port})\n`,
    );
  });

  it.each([
    ['session', ''],
    ['transaction', TRANSACTION_MODE],
  ])(
    'serves psql -h DIR on the root and on a branch made on connect, in %s mode',
    async (mode, options) => {
      const before = connects('app').length;
      const root = await psqlSocket('app', 'select current_database(), count(*) from t', options);
      expect(root).toMatchObject({ code: 0, stdout: 'app|1' });
      expect(await modeOfNext('app', before)).toBe(mode);

      const branch = `app@psql-${mode}`;
      const made = await psqlSocket(
        branch,
        'insert into t values (2); select current_database(), count(*) from t',
        options,
      );
      expect(made).toMatchObject({ code: 0, stdout: `${branch}|2` });
      expect(made.stderr).toContain(`created branch "psql-${mode}" of "app"`);
      expect(await modeOfNext(branch, 0)).toBe(mode);
      // The branch's write stayed in the branch.
      expect(await psqlSocket('app', 'select count(*) from t')).toMatchObject({ stdout: '1' });
    },
  );

  it.each([
    ['session', undefined],
    ['transaction', TRANSACTION_MODE],
  ])(
    'serves node-postgres with host: DIR on the root and on a branch made on connect, in %s mode',
    async (mode, options) => {
      const before = connects('app').length;
      const root = await pgSocket('app', options);
      try {
        expect((await root.query('select count(*)::int as n from t')).rows).toEqual([{ n: 1 }]);
      } finally {
        await root.end();
      }
      expect(await modeOfNext('app', before)).toBe(mode);

      const branch = `app@pg-${mode}`;
      const client = await pgSocket(branch, options);
      try {
        await client.query('begin');
        await client.query('insert into t values (2), (3)');
        await client.query('commit');
        const { rows } = await client.query<{ db: string; n: number }>(
          'select current_database() as db, count(*)::int as n from t',
        );
        expect(rows).toEqual([{ db: branch, n: 3 }]);
      } finally {
        await client.end();
      }
      expect(await modeOfNext(branch, 0)).toBe(mode);
    },
  );
});

describe('the socket file', () => {
  /** A port no one listens on now, for a pgbranch whose socket name must be known in advance. */
  async function freePort(): Promise<number> {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    await new Promise((resolve) => server.close(resolve));
    return port;
  }

  it('is replaced when a killed process left it behind, and clients then reach pgbranch (trust, as on loopback)', async () => {
    const port = await freePort();
    const stale = path.join(dir, `.s.PGSQL.${port}`);
    // A process that dies by SIGKILL while listening leaves its socket file with no one behind it.
    const child = spawn(process.execPath, [
      '-e',
      `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`,
    ]);
    await new Promise((resolve) => child.once('exit', resolve));
    expect(fs.lstatSync(stale).isSocket()).toBe(true);

    const second = await startPgbranch({
      args: ['--port', String(port), '--socket-dir', dir, '--auth', 'trust'],
    });
    try {
      expect(second.ready.socketPath).toBe(stale);
      expect(fs.lstatSync(stale).mode & 0o777).toBe(0o777);
      // Socket clients are local: trust, allowed with a loopback listen.host, takes them too.
      const result = await psql('dbname=postgres', 'select 1', {
        args: ['-h', dir, '-p', String(port), '-U', 'postgres'],
        env: { PGPASSWORD: '' },
      });
      expect(result).toMatchObject({ code: 0, stdout: '1' });
    } finally {
      expect(await second.stop()).toBe(0);
    }
    expect(fs.existsSync(stale)).toBe(false);
  });

  it('is not taken from a process that listens on it: pgbranch refuses to start, saying so in one line', async () => {
    const port = await freePort();
    const taken = path.join(dir, `.s.PGSQL.${port}`);
    const other = net.createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => other.listen(taken, resolve));
    try {
      const failed = await startPgbranch({ args: ['--port', String(port), '--socket-dir', dir] })
        .then(async (started) => {
          await started.stop();
          return undefined;
        })
        .catch((error: Error) => error.message);
      expect(failed).toContain(
        `\npgbranch: another process listens on ${taken}: stop it, or pick another listen.socket_dir or port\n`,
      );
      expect(failed).toMatch(/exited with 1 before it was ready/);
      // Still the other process's.
      expect(fs.lstatSync(taken).isSocket()).toBe(true);
    } finally {
      await new Promise((resolve) => other.close(resolve));
    }
  });

  it('is removed when pgbranch stops', async () => {
    expect(fs.existsSync(socketFile)).toBe(true);
    expect(await proxy.stop()).toBe(0);
    expect(fs.existsSync(socketFile)).toBe(false);
  });
});
