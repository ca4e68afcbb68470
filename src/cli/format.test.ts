import stringWidth from 'string-width';
import { describe, expect, it } from 'vitest';
import type { BranchInfo } from '../lifecycle/model.js';
import {
  branchTable,
  branchTree,
  formatBytes,
  formatSpan,
  formatWhen,
  gcReport,
} from './format.js';

const NOW = Date.parse('2026-11-25T12:00:00Z');
const ago = (ms: number) => new Date(NOW - ms).toISOString();
const HOUR = 3_600_000;

function branch(name: string, parent: string | null, more: Partial<BranchInfo> = {}): BranchInfo {
  const [database = name, branchName = 'main'] = name.split(/@(.*)/s);
  return {
    name,
    database,
    branch: branchName,
    physical: name,
    parent,
    fromSnapshot: null,
    restoredFrom: null,
    dataAsOf: null,
    createdAt: parent === null ? null : ago(2 * HOUR),
    lastConnectedAt: ago(5 * 60_000),
    sizeBytes: 7_812_799,
    clone: parent !== null,
    clients: 0,
    protected: parent === null,
    expiresAt: null,
    ttlMs: null,
    expiresBy: null,
    origin: parent === null ? 'external' : 'pgbranch',
    state: 'running',
    snapshots: [],
    ...more,
  };
}

const branches = [
  branch('app', null),
  branch('app@develop', 'app', { clients: 2 }),
  branch('app@feature/login', 'app@develop', {
    ttlMs: 7 * 24 * HOUR,
    expiresBy: new Date(NOW + 6 * 24 * HOUR + HOUR).toISOString(),
    snapshots: [
      {
        name: 'before',
        of: 'app@feature/login',
        physical: 'app@feature/login:before',
        createdAt: ago(60_000),
        sizeBytes: 1,
        auto: false,
      },
    ],
  }),
  branch('app@hotfix', 'app', { protected: true }),
  branch('shop@orphan', 'shop@gone'),
];

describe('formatting for people', () => {
  it('writes sizes in units of 1024, and spans in their largest whole unit', () => {
    expect([0, 1023, 1024, 7_812_799, 5 * 1024 ** 3].map(formatBytes)).toEqual([
      '0 B',
      '1023 B',
      '1.0 kB',
      '7.5 MB',
      '5.0 GB',
    ]);
    expect([500, 90_000, 26 * HOUR].map(formatSpan)).toEqual(['500ms', '1m', '1d']);
    expect(formatWhen(ago(3 * HOUR), NOW)).toBe('3h ago');
    expect(formatWhen(new Date(NOW + 2 * 24 * HOUR).toISOString(), NOW)).toBe('in 2d');
    expect(formatWhen(null, NOW)).toBe('-');
  });

  it('lists branches as a table, one row each', () => {
    expect(branchTable(branches, NOW)).toBe(
      [
        'NAME               PARENT       CREATED  LAST CONNECTED  SIZE    CLIENTS  EXPIRES          NOTES',
        'app                -            -        5m ago          7.5 MB  0        never            root',
        'app@develop        app          2h ago   5m ago          7.5 MB  2        never            clone',
        'app@feature/login  app@develop  2h ago   5m ago          7.5 MB  0        in 6d (7d idle)  clone, 1 restore point',
        'app@hotfix         app          2h ago   5m ago          7.5 MB  0        never            protected, clone',
        'shop@orphan        shop@gone    2h ago   5m ago          7.5 MB  0        never            clone',
        '',
      ].join('\n'),
    );
  });

  it('draws the tree with children under their parents, and orphans at the top', () => {
    expect(branchTree(branches, NOW)).toBe(
      [
        'app                        7.5 MB, root',
        '├── app@develop            7.5 MB, 2 clients, clone',
        '│   └── app@feature/login  7.5 MB, expires in 6d (7d idle), clone, 1 restore point',
        '└── app@hotfix             7.5 MB, protected, clone',
        'shop@orphan                7.5 MB, clone',
        '',
      ].join('\n'),
    );
  });

  it('lines up columns as a terminal shows them when names hold CJK, emoji or combining marks', () => {
    // Terminal columns: 機能 and 🚀 take two each, the combining acute of é none.
    const wide = [
      branch('app', null),
      branch('app@機能/ログイン', 'app'),
      branch('app@🚀-launch', 'app'),
      branch('app@cafe\u0301', 'app'),
    ];
    /** The terminal column where `text` starts on `line`. */
    const column = (line: string, text: string) => stringWidth(line.slice(0, line.indexOf(text)));
    const tableLines = branchTable(wide, NOW).trimEnd().split('\n');
    // The widest name, app@機能/ログイン, is 4 + 4 + 1 + 8 = 17 columns; then PARENT (6) and
    // CREATED (7), each after two spaces: LAST CONNECTED starts at 17 + 2 + 6 + 2 + 7 + 2.
    expect(tableLines.map((line, i) => column(line, i === 0 ? 'LAST' : '5m ago'))).toEqual([
      36, 36, 36, 36, 36,
    ]);
    const treeLines = branchTree(wide, NOW).trimEnd().split('\n');
    // ├── and └── are 4 columns: 4 + 17 + 2.
    expect(treeLines.map((line) => column(line, '7.5 MB'))).toEqual([23, 23, 23, 23]);
    const kept = gcReport({
      deleted: [],
      kept: [
        { name: 'app@機能', reason: 'protected' },
        { name: 'app@pr-10', reason: 'protected' },
      ],
      applied: false,
    });
    expect(
      kept
        .split('\n')
        .slice(2, 4)
        .map((line) => column(line, 'protected')),
    ).toEqual([13, 13]);
  });

  it('reports gc: what goes (or would), and what matched but stays', () => {
    expect(
      gcReport({
        deleted: ['app@pr-1', 'app@pr-2'],
        kept: [{ name: 'app@pr-3', reason: 'protected' }],
        applied: false,
      }),
    ).toBe(
      [
        'would delete 2 branches (a dry run: --apply deletes them):',
        '  app@pr-1',
        '  app@pr-2',
        'kept 1 branch that matched:',
        '  app@pr-3  protected',
        '',
      ].join('\n'),
    );
    expect(gcReport({ deleted: [], kept: [], applied: true })).toBe('nothing to delete\n');
  });
});
