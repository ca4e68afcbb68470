// The branch list as the rows of a tree: parents above their children, restore points under their
// branch, collapsed subtrees left out, and a filter that keeps the matches with the path to them.
import type { BranchInfo, SnapshotInfo } from '../src/lifecycle/model.js';

export interface Node {
  info: BranchInfo;
  children: Node[];
}

export type Row =
  | {
      kind: 'branch';
      info: BranchInfo;
      /** The tree's drawing before the name: "│   ├── ". */
      guide: string;
      /** Has children or restore points to fold away. */
      foldable: boolean;
      collapsed: boolean;
      /** False for a branch shown only as the way to a match of the filter. */
      match: boolean;
    }
  | { kind: 'point'; point: SnapshotInfo; of: BranchInfo; guide: string };

/**
 * Roots first, each branch under its parent. A branch whose parent is unknown (made outside
 * pgbranch) sits under its database's root; one whose parent is not listed, at the top.
 */
export function buildTree(branches: BranchInfo[]): Node[] {
  const nodes = new Map(branches.map((info) => [info.name, { info, children: [] as Node[] }]));
  const top: Node[] = [];
  for (const node of nodes.values()) {
    const { info } = node;
    const parentName = info.parent ?? (info.name === info.database ? null : info.database);
    const parent = parentName === null ? undefined : nodes.get(parentName);
    if (parent && parent !== node) parent.children.push(node);
    else top.push(node);
  }
  const byName = (a: Node, b: Node) => a.info.name.localeCompare(b.info.name);
  const sort = (list: Node[]) => {
    list.sort(byName);
    for (const node of list) sort(node.children);
  };
  sort(top);
  return top;
}

/** `pr-*` as a glob (case-insensitive, anywhere in the name); plain text as a substring. */
export function matcher(pattern: string): (name: string) => boolean {
  const text = pattern.trim().toLowerCase();
  if (text === '') return () => true;
  if (!text.includes('*') && !text.includes('?'))
    return (name) => name.toLowerCase().includes(text);
  const source = text
    .split('')
    .map((ch) => (ch === '*' ? '.*' : ch === '?' ? '.' : ch.replace(/[.+^${}()|[\]\\]/g, '\\$&')))
    .join('');
  const regex = new RegExp(`^${source}$`, 'i');
  // A glob names the whole branch, with or without its database: pr-* finds app@pr-1.
  return (name) => regex.test(name) || regex.test(name.slice(name.indexOf('@') + 1));
}

/** The rows to draw. While filtering, folds are ignored so that every match shows. */
export function visibleRows(top: Node[], collapsed: Set<string>, filter: string): Row[] {
  const matches = matcher(filter);
  const filtering = filter.trim() !== '';
  const rows: Row[] = [];
  const wanted = new Map<Node, boolean>();
  const anyMatch = (node: Node): boolean => {
    let found = matches(node.info.name);
    for (const child of node.children) found = anyMatch(child) || found;
    wanted.set(node, found);
    return found;
  };
  if (filtering) for (const node of top) anyMatch(node);
  const walk = (node: Node, lead: string, guide: string) => {
    const { info } = node;
    const children = filtering ? node.children.filter((c) => wanted.get(c)) : node.children;
    const match = !filtering || matches(info.name);
    const points = match ? info.snapshots : [];
    const foldable = node.children.length > 0 || info.snapshots.length > 0;
    const isCollapsed = !filtering && collapsed.has(info.name);
    rows.push({ kind: 'branch', info, guide, foldable, collapsed: isCollapsed, match });
    if (isCollapsed) return;
    const count = points.length + children.length;
    let i = 0;
    for (const point of points) {
      const last = ++i === count;
      rows.push({ kind: 'point', point, of: info, guide: lead + (last ? '└── ' : '├── ') });
    }
    for (const child of children) {
      const last = ++i === count;
      walk(child, lead + (last ? '    ' : '│   '), lead + (last ? '└── ' : '├── '));
    }
  };
  for (const node of top) if (!filtering || wanted.get(node)) walk(node, '', '');
  return rows;
}

/** The branch and every branch made from it, below it, children before their own children. */
export function subtree(top: Node[], name: string): BranchInfo[] {
  const find = (list: Node[]): Node | undefined => {
    for (const node of list) {
      if (node.info.name === name) return node;
      const found = find(node.children);
      if (found) return found;
    }
    return undefined;
  };
  const start = find(top);
  if (!start) return [];
  const out: BranchInfo[] = [];
  const queue = [start];
  while (queue.length > 0) {
    const node = queue.shift()!;
    out.push(node.info);
    queue.push(...node.children);
  }
  return out;
}
