import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { SourceHistory } from './history.js';

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

/** A source's directory with one restore point and one archived segment, of cluster `systemId`. */
function sourceDir(systemId: string): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbranch-history-'));
  dirs.push(root);
  const point = path.join(root, 'history', '20261206T093000000Z');
  fs.mkdirSync(path.join(point, 'pg'), { recursive: true });
  fs.writeFileSync(
    path.join(point, 'point.json'),
    JSON.stringify({
      id: '20261206T093000000Z',
      at: '2026-12-06T09:30:00.000Z',
      startLsn: '0/2000028',
      stopLsn: '0/2000100',
      mode: 'clone',
      ms: 10,
    }),
  );
  fs.writeFileSync(path.join(root, 'history', 'system-id'), `${systemId}\n`);
  fs.mkdirSync(path.join(root, 'wal-archive'));
  fs.writeFileSync(path.join(root, 'wal-archive', '000000010000000000000002'), '');
  return root;
}

function open(root: string, systemId: string): SourceHistory {
  return SourceHistory.open({
    root,
    standby: {
      pgDataDir: path.join(root, 'standby', 'pg'),
      superuser: 'postgres',
      systemId,
      connect: () => Promise.reject(new Error('not reached in this test')),
    },
    sourceLsn: () => Promise.reject(new Error('not reached in this test')),
    retentionMs: 86_400_000,
    intervalMs: 900_000,
    maxWaitMs: 5_000,
    clone: true,
    owner: undefined,
    log: pino({ level: 'silent' }),
  });
}

describe('SourceHistory.open', () => {
  it('keeps the restore points of the same cluster, and gives the window from the oldest', async () => {
    const root = sourceDir('7716175927921322052');
    const history = open(root, '7716175927921322052');
    await history.close();
    expect(history.list().map((p) => p.id)).toEqual(['20261206T093000000Z']);
    expect(history.window()?.from).toEqual(new Date('2026-12-06T09:30:00.000Z'));
    expect(fs.readdirSync(path.join(root, 'wal-archive'))).toHaveLength(1);
  });

  it('forgets the restore points and archived WAL of another cluster (a standby made again)', async () => {
    const root = sourceDir('7716175927921322052');
    const history = open(root, '7716200000000000000');
    await history.close();
    expect(history.list()).toEqual([]);
    expect(history.window()).toBeNull();
    expect(fs.readdirSync(path.join(root, 'wal-archive'))).toEqual([]);
    expect(fs.readFileSync(path.join(root, 'history', 'system-id'), 'utf8')).toBe(
      '7716200000000000000\n',
    );
  });
});
