// SourceHealth over a standby of its own making (the real one is in test/source-health.test.ts):
// the swap's gate and what the status says during it, and a problem logged once per change.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { SourceHealth } from './health.js';
import type { ResyncOptions, Standby, StandbyStatus } from './standby.js';

const SOURCE = 'replicator@db.prod:5432';
const dirs: string[] = [];
const healths: SourceHealth[] = [];

afterEach(() => {
  for (const health of healths.splice(0)) health.close();
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

const streaming: StandbyStatus = {
  source: SOURCE,
  version: '18.4',
  systemId: '7',
  connected: true,
  receiveLsn: '0/10',
  replayLsn: '0/10',
  sourceLsn: '0/10',
  lagBytes: 0,
  lagSeconds: 0,
  problem: null,
};

/** A standby whose status is what `statuses` holds now, and whose resync waits for `finish`. */
function fakeStandby(statuses: StandbyStatus[]) {
  const pgDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbranch-health-'));
  dirs.push(pgDataDir);
  let finish!: () => void;
  let swapping!: () => void;
  const inSwap = new Promise<void>((resolve) => (swapping = resolve));
  const standby = {
    source: SOURCE,
    pgDataDir,
    status: async () => statuses[0]!,
    resync: async (options: ResyncOptions = {}) => {
      options.onProgress?.({ bytes: 10, totalBytes: 20, rate: 5, secondsLeft: 2, elapsedMs: 2000 });
      await options.swap!(async () => {
        swapping();
        await new Promise<void>((resolve) => (finish = resolve));
      });
    },
  } as unknown as Standby;
  return { standby, inSwap, finish: () => finish() };
}

function logged() {
  const lines: { level: number; event?: string; msg: string }[] = [];
  const log = pino(
    { level: 'info' },
    { write: (line: string) => void lines.push(JSON.parse(line) as (typeof lines)[number]) },
  );
  return { log, lines };
}

describe('SourceHealth', () => {
  it('during the swap: connections wait, past their time 57P03; status says the swap, not connected', async () => {
    const { standby, inSwap, finish } = fakeStandby([streaming]);
    const health = new SourceHealth({ standby, log: pino({ level: 'silent' }) });
    healths.push(health);
    await health.running(10);
    await health.status();
    const resync = health.resync();
    await expect(health.resync()).rejects.toMatchObject({ code: '55006' });
    await inSwap;
    await expect(health.running(20)).rejects.toMatchObject({
      code: '57P03',
      message: `the standby of the source ${SOURCE} is being replaced by a new one (pgbranch source resync)`,
    });
    expect(await health.status()).toMatchObject({
      connected: false,
      resync: { phase: 'swap', bytes: 10, totalBytes: 20 },
    });
    const waiting = health.running(60_000);
    finish();
    await waiting;
    expect(await resync).toMatchObject({ connected: true, resync: null });
  });

  it('logs a problem once when it appears, and once when it clears', async () => {
    const problem = `the source ${SOURCE} is now another cluster. Run pgbranch source resync`;
    const statuses: StandbyStatus[] = [{ ...streaming, connected: false, problem }];
    const { standby } = fakeStandby(statuses);
    const { log, lines } = logged();
    const health = new SourceHealth({ standby, log });
    healths.push(health);
    await health.check();
    await health.check();
    expect((await health.gauges()).connected).toBe(false);
    statuses[0] = streaming;
    await health.check();
    await health.check();
    expect(lines.map(({ level, event, msg }) => ({ level, event, msg }))).toEqual([
      { level: 40, event: 'source_problem', msg: problem },
      {
        level: 30,
        event: 'source_problem_cleared',
        msg: `the standby follows the source ${SOURCE} again`,
      },
    ]);
  });
});
