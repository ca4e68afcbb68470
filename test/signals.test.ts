// Signals a service manager sends: SIGTERM stops pgbranch once its clients' transactions have
// ended (within shutdown_timeout), SIGHUP reloads the configuration as RELOAD does, and SIGINT
// (Ctrl-C) still stops at once.
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it, onTestFinished, vi } from 'vitest';
import { connect, connectError, queryOnce } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';

const started: PgbranchProcess[] = [];
afterAll(async () => {
  await Promise.all(started.map((proxy) => proxy.stop()));
});

async function start(...args: Parameters<typeof startPgbranch>): Promise<PgbranchProcess> {
  const proxy = await startPgbranch(...args);
  started.push(proxy);
  return proxy;
}

/** The error a client is sent when pgbranch closes it, once it comes. */
function closedWith(client: pg.Client): Promise<{ code?: string; message: string }> {
  // The first error says why; a second one (the socket closing after it) adds nothing.
  return new Promise((resolve) =>
    client.on('error', (error) => resolve(error as { code?: string; message: string })),
  );
}

function exitCode(proxy: PgbranchProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (proxy.child.exitCode !== null) resolve(proxy.child.exitCode);
    else proxy.child.once('exit', (code) => resolve(code));
  });
}

async function logged(proxy: PgbranchProcess, event: string): Promise<Record<string, unknown>> {
  await vi.waitFor(() => expect(proxy.events(event)).not.toHaveLength(0), {
    timeout: 20_000,
    interval: 20,
  });
  return proxy.events(event).at(-1)!;
}

describe('SIGTERM', () => {
  it('lets a transaction commit, closes each client with 57P01 when idle, refuses new ones, and exits 0', async () => {
    const dataDir = tempDir('sigterm');
    const proxy = await start({ dataDir, args: ['--shutdown-timeout', '10s'] });
    await queryOnce(proxy.url('postgres'), 'create table t (x int)');

    const idle = await connect(proxy.url('postgres'));
    const idleClosed = closedWith(idle);
    const inTransaction = await connect({
      ...proxy.config('postgres'),
      options: '-c pgbranch.pool_mode=transaction',
    });
    const committedClosed = closedWith(inTransaction);
    await inTransaction.query('begin');
    await inTransaction.query('insert into t values (1)');
    // Stays inside its transaction past shutdown_timeout.
    const stuck = await connect(proxy.url('postgres'));
    const stuckClosed = closedWith(stuck);
    await stuck.query('begin');
    await stuck.query('select 1');

    proxy.child.kill('SIGTERM');
    await logged(proxy, 'draining');

    expect(await idleClosed).toMatchObject({
      code: '57P01',
      message: 'terminating connection because pgbranch is shutting down',
    });
    expect(await connectError(proxy.url('postgres'))).toMatchObject({ code: '57P01' });

    expect((await inTransaction.query('commit')).command).toBe('COMMIT');
    expect(await committedClosed).toMatchObject({ code: '57P01' });

    expect(await stuckClosed).toMatchObject({ code: '57P01' });
    expect(await logged(proxy, 'shutdown_timeout')).toMatchObject({ clients: 1 });
    expect(await exitCode(proxy)).toBe(0);
    for (const client of [idle, inTransaction, stuck]) await client.end().catch(() => undefined);

    // What the transaction committed is there after a restart on the same data.
    const again = await start({ dataDir });
    expect(await queryOnce(again.url('postgres'), 'select x from t')).toEqual([{ x: 1 }]);
    await again.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }, 120_000);

  it('exits 0 at once when no client is connected', async () => {
    const proxy = await start();
    proxy.child.kill('SIGTERM');
    expect(await exitCode(proxy)).toBe(0);
    expect(proxy.events('draining')).toMatchObject([{ clients: 0 }]);
    expect(proxy.events('stopped')).toHaveLength(1);
  }, 60_000);
});

describe('SIGHUP', () => {
  it('applies a changed setting from the configuration file, as RELOAD does, and a bad file changes nothing', async () => {
    const dir = tempDir('sighup');
    onTestFinished(() => fs.rmSync(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'pgbranch.yaml');
    fs.writeFileSync(file, 'pool:\n  mode: session\n');
    const proxy = await start({ args: ['--config', file] });

    fs.writeFileSync(file, 'pool:\n  mode: transaction\n');
    proxy.child.kill('SIGHUP');
    expect(await logged(proxy, 'reloaded')).toMatchObject({ applied: ['pool.mode'] });
    const console = await connect(proxy.url('pgbranch'));
    const client = await connect(proxy.url('postgres'));
    client.on('error', () => undefined);
    const { rows } = await console.query<{ mode: string; database: string }>('SHOW CLIENTS');
    expect(rows).toContainEqual(
      expect.objectContaining({ database: 'postgres', mode: 'transaction' }),
    );
    await console.end();

    fs.writeFileSync(file, 'pool:\n  mode: sometimes\n');
    proxy.child.kill('SIGHUP');
    expect(String((await logged(proxy, 'reload_failed')).msg)).toContain('pool.mode');
    expect(proxy.events('reloaded')).toHaveLength(1);
    expect((await client.query('select 1 as one')).rows).toEqual([{ one: 1 }]);

    // Ctrl-C stops at once, a transaction open or not.
    await client.query('begin');
    expect(await proxy.stop()).toBe(0);
    expect(proxy.events('draining')).toHaveLength(0);
    await client.end().catch(() => undefined);
  }, 60_000);
});
