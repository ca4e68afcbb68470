// The branch page's tree, from lists shaped as GET /v1/branches answers: parents above children,
// restore points first under their branch, folds, the filter, and what a delete takes along.
import { describe, expect, it } from 'vitest';
import type { BranchInfo } from '../src/lifecycle/model.js';
import { buildTree, matcher, subtree, visibleRows, type Row } from '../web/tree.js';

function listed(name: string, parent: string | null, points: string[] = []): BranchInfo {
  const at = name.indexOf('@');
  return {
    name,
    database: at < 0 ? name : name.slice(0, at),
    branch: at < 0 ? 'main' : name.slice(at + 1),
    physical: name,
    parent,
    fromSnapshot: null,
    restoredFrom: null,
    dataAsOf: null,
    createdAt: null,
    lastConnectedAt: null,
    sizeBytes: 0,
    clone: true,
    clients: 0,
    protected: at < 0,
    expiresAt: null,
    ttlMs: null,
    expiresBy: null,
    origin: parent === null && at >= 0 ? 'external' : 'pgbranch',
    state: 'running',
    snapshots: points.map((p) => ({
      name: p,
      of: name,
      physical: `${name}:${p}`,
      createdAt: '2026-12-01T00:00:00Z',
      sizeBytes: 0,
      auto: false,
    })),
  };
}

const branches = [
  listed('app', null),
  listed('app@develop', 'app', ['before']),
  listed('app@feature/login', 'app@develop'),
  listed('app@pr-7', 'app'),
  listed('app@by-hand', null),
  listed('billing', null),
  listed('billing@ci-1', 'billing'),
];

/** Each row as the page draws its first cell. */
const drawn = (rows: Row[]) =>
  rows.map((r) => (r.kind === 'branch' ? r.guide + r.info.name : `${r.guide}◆ ${r.point.name}`));

describe('the branch tree', () => {
  it('draws parents above children, restore points first, a branch made by hand under its root', () => {
    expect(drawn(visibleRows(buildTree(branches), new Set(), ''))).toEqual([
      'app',
      '├── app@by-hand',
      '├── app@develop',
      '│   ├── ◆ before',
      '│   └── app@feature/login',
      '└── app@pr-7',
      'billing',
      '└── billing@ci-1',
    ]);
  });

  it('leaves a folded subtree out, restore points included', () => {
    const rows = visibleRows(buildTree(branches), new Set(['app@develop']), '');
    expect(drawn(rows).slice(0, 4)).toEqual([
      'app',
      '├── app@by-hand',
      '├── app@develop',
      '└── app@pr-7',
    ]);
    expect(rows.find((r) => r.kind === 'branch' && r.info.name === 'app@develop')).toMatchObject({
      foldable: true,
      collapsed: true,
    });
  });

  it('filters by a glob or a piece of the name, keeping the way to each match, folds or not', () => {
    const rows = visibleRows(buildTree(branches), new Set(['app', 'app@develop']), 'feature/*');
    expect(drawn(rows)).toEqual(['app', '└── app@develop', '    └── app@feature/login']);
    expect(rows.map((r) => r.kind === 'branch' && r.match)).toEqual([false, false, true]);
    expect(drawn(visibleRows(buildTree(branches), new Set(), 'CI-'))).toEqual([
      'billing',
      '└── billing@ci-1',
    ]);
    expect(matcher('pr-*')('app@pr-7')).toBe(true);
    expect(matcher('app@pr-?')('app@pr-7')).toBe(true);
    expect(matcher('pr-*')('app@develop')).toBe(false);
    expect(matcher('a.b')('app@aXb')).toBe(false);
  });

  it('names what a delete takes along: the branch, then those made from it', () => {
    expect(subtree(buildTree(branches), 'app@develop').map((b) => b.name)).toEqual([
      'app@develop',
      'app@feature/login',
    ]);
    expect(subtree(buildTree(branches), 'app@pr-7').map((b) => b.name)).toEqual(['app@pr-7']);
  });
});
