// Instance branches on a filesystem without reflink: a new branch is a full copy of its parent, so
// the banner says what each copy costs, and a client waiting on one hears how far it is (NOTICEs
// with percent, size and rate) instead of silence. branch.warm_spare is off (as its auto is where
// copies are full ones): with it, the copy is made ahead of time and no client waits on it.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connectWithNotices, psql } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

vi.setConfig({ testTimeout: 240_000 });

let proxy: PgbranchProcess;

beforeAll(async () => {
  proxy = await startPgbranch({
    // The copy path, whatever the machine's temporary directory is.
    args: [
      '--branch-provider',
      'instance',
      '--branch-warm-spare',
      'off',
      '--branch-copy-method',
      'copy',
    ],
  });
  expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
  // About 400 MB: a full copy of it takes seconds on any disk.
  expect(
    await psql(
      proxy.url('app'),
      "create table filler as select g, repeat('x', 1800) as pad from generate_series(1, 200000) g",
    ),
  ).toMatchObject({ code: 0 });
}, 240_000);

afterAll(async () => {
  await proxy?.stop();
});

describe('an instance branch copied in full', () => {
  it('says in the banner that every branch copies the whole data directory, with its size', () => {
    expect(proxy.ready.copyMode).toBe('copy');
    expect(proxy.ready.copyReason).toMatch(
      /every new branch copies the whole data directory \(\d+(\.\d)? [MG]B now\)/,
    );
  });

  it('tells the waiting client how far the copy is, every second, then that the branch was made', async () => {
    const { client, notices } = await connectWithNotices(proxy.config('app@progress'));
    await client.end();
    const created = proxy.events('branch_created').find((e) => e.branch === 'progress')!;
    expect(created).toBeDefined();
    const filesMs = (created.phases as { filesMs: number }).filesMs;
    const progress = notices.filter((n) => n.includes('copying branch "progress"'));
    // A NOTICE a second while the files are copied (a 4 MB chunk at a time); half that rate at
    // least, however loaded the machine.
    expect(progress.length).toBeGreaterThanOrEqual(Math.floor(filesMs / 2000));
    const percents = progress.map((n) => Number(/(\d+)%/.exec(n)![1]));
    expect(percents).toEqual([...percents].sort((a, b) => a - b));
    for (const notice of progress) {
      expect(notice).toMatch(
        /^pgbranch: copying branch "progress": \d+% \(\d+ MB of \d+ MB, (starting|\d+ MB\/s, about \d+ s left)\)$/,
      );
    }
    expect(notices.at(-1)).toMatch(/created branch "progress"/);
    console.info(
      `copy of ${created.bytes} bytes in ${created.ms} ms (files ${filesMs} ms); ${progress.length} progress NOTICEs`,
    );
  });
});
