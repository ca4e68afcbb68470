// A client that asks for a large result and never reads it: pgbranch must stop reading from the
// server (backpressure) instead of buffering the result, so that its memory stays bounded, the
// server's backend waits on the socket (wait event ClientWrite), and other clients are served as
// before. Once the client is gone, the query and its server connection go too.
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';
import { WireClient } from './support/wire-client.js';

/** 2,000,000 rows of 1,000 bytes: about 2 GB, far more than pgbranch could hold. */
const LARGE_QUERY = "select repeat('x', 1000) from generate_series(1, 2000000)";
/** How long the slow client sits on its result while memory and the other clients are watched. */
const WATCH_MS = 8_000;
/** pgbranch's RSS may grow this much while the result waits (it has 2 GB to send). */
const RSS_GROWTH_BOUND_MB = 64;
/** How soon after the slow client is destroyed its query must be gone from the server. */
const CLEANUP_WITHIN_MS = 15_000;

let proxy: PgbranchProcess;
let direct: pg.Client;

beforeAll(async () => {
  proxy = await startPgbranch();
  direct = new pg.Client({ connectionString: proxy.directUrl('postgres') });
  await direct.connect();
});

afterAll(async () => {
  await direct?.end();
  await proxy?.stop();
});

function rssMb(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

/** The server backends running the large query, and what they wait on. */
async function largeQueryBackends(): Promise<{ pid: number; wait: string | null }[]> {
  const { rows } = await direct.query<{ pid: number; wait: string | null }>(
    'select pid, wait_event as wait from pg_stat_activity where query = $1 and pid <> pg_backend_pid()',
    [LARGE_QUERY],
  );
  return rows;
}

async function until<T>(
  what: string,
  within: number,
  probe: () => Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + within;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`not within ${within} ms: ${what}`);
    await sleep(100);
  }
}

describe.each(['session', 'transaction'] as const)(
  '%s mode: a client that stops reading a large result',
  (mode) => {
    const options: Record<string, string> =
      mode === 'transaction' ? { options: '-c pgbranch.pool_mode=transaction' } : {};

    it('holds pgbranch to bounded memory by pausing the server, while another client is served throughout; destroying it cleans up', async () => {
      const pid = proxy.child.pid!;
      const other = new pg.Client({ ...proxy.config('postgres'), ...options });
      await other.connect();
      await other.query('select 1');
      const before = rssMb(pid);

      const { client: slow } = await WireClient.connect(proxy.port, {
        user: 'postgres',
        password: proxy.password,
        database: 'postgres',
        parameters: options,
      });
      slow.socket.pause();
      slow.write(
        Buffer.concat([
          Buffer.from('Q'),
          int32(4 + Buffer.byteLength(LARGE_QUERY) + 1),
          Buffer.from(`${LARGE_QUERY}\0`),
        ]),
      );

      // The server's backend ends up waiting to write to pgbranch: backpressure reached it.
      const backend = await until('the large query waits on ClientWrite', 20_000, async () =>
        (await largeQueryBackends()).find((b) => b.wait === 'ClientWrite'),
      );

      let peak = rssMb(pid);
      let served = 0;
      let slowest = 0;
      const watchUntil = Date.now() + WATCH_MS;
      while (Date.now() < watchUntil) {
        const started = Date.now();
        const { rows } = await other.query<{ one: number }>('select 1 as one');
        expect(rows).toEqual([{ one: 1 }]);
        slowest = Math.max(slowest, Date.now() - started);
        served++;
        peak = Math.max(peak, rssMb(pid));
        await sleep(20);
      }
      // Still the same query, still stuck on its client: nothing was buffered to let it finish.
      expect((await largeQueryBackends()).map((b) => b.pid)).toContain(backend.pid);
      console.log(
        `slow reader, ${mode} mode: pgbranch RSS ${before.toFixed(0)} MB before, peak ${peak.toFixed(0)} MB ` +
          `while the 2 GB result waited; another client ran ${served} queries meanwhile, slowest ${slowest} ms`,
      );
      expect(peak - before).toBeLessThan(RSS_GROWTH_BOUND_MB);
      expect(served).toBeGreaterThan(WATCH_MS / 200);
      expect(slowest).toBeLessThan(1_000);

      slow.destroy();
      const gone = Date.now();
      await until('the large query is gone from the server', CLEANUP_WITHIN_MS, async () =>
        (await largeQueryBackends()).length === 0 ? true : undefined,
      );
      console.log(
        `slow reader, ${mode} mode: its query was gone ${Date.now() - gone} ms after the client`,
      );
      expect(await other.query('select 1 as one')).toMatchObject({ rows: [{ one: 1 }] });
      await other.end();
      expect(proxy.child.exitCode).toBeNull();
    }, 90_000);
  },
);

function int32(n: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeInt32BE(n, 0);
  return out;
}
