// What the CLI prints for people: tables, the branch tree, sizes and times. Scripts use --json,
// which prints the API's own JSON instead, so nothing here is a format anyone parses.
import stringWidth from 'string-width';
import type { BranchInfo, GcResult } from '../lifecycle/model.js';
import type { SourceStatus } from '../source/health.js';
import type { SourceMaking } from '../source/making.js';

const UNITS = ['B', 'kB', 'MB', 'GB', 'TB'];

/** 7.5 MB: units of 1024, as pg_size_pretty's, with a short unit and one decimal. */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 || value >= 100 ? Math.round(value) : value.toFixed(1)} ${UNITS[unit]}`;
}

const SPANS = [
  ['d', 86_400_000],
  ['h', 3_600_000],
  ['m', 60_000],
  ['s', 1000],
] as const;

/** A span rounded down to its largest unit: 90 s is 1m, 26 h is 1d. */
export function formatSpan(ms: number): string {
  for (const [unit, size] of SPANS) if (ms >= size) return `${Math.floor(ms / size)}${unit}`;
  return `${Math.max(0, Math.round(ms))}ms`;
}

/** `3m ago`, `in 6d`, `-` for unknown. */
export function formatWhen(iso: string | null, now: number): string {
  if (iso === null) return '-';
  const ms = Date.parse(iso) - now;
  if (Number.isNaN(ms)) return iso;
  if (Math.abs(ms) < 1000) return 'now';
  return ms < 0 ? `${formatSpan(-ms)} ago` : `in ${formatSpan(ms)}`;
}

/**
 * Pads to `columns` as a terminal shows the text, not as many UTF-16 units: branch names come from
 * git, so CJK and emoji (two columns each) and combining marks (none) are as likely as ASCII.
 */
function pad(text: string, columns: number): string {
  return text + ' '.repeat(Math.max(0, columns - stringWidth(text)));
}

/** Columns padded to their widest cell; the last column is not padded. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((header, i) =>
    Math.max(stringWidth(header), ...rows.map((row) => stringWidth(row[i]!))),
  );
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : pad(cell, widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

function expiry(branch: BranchInfo, now: number): string {
  if (branch.expiresBy === null) return 'never';
  const idle = branch.ttlMs === null ? '' : ` (${formatSpan(branch.ttlMs)} idle)`;
  return formatWhen(branch.expiresBy, now) + idle;
}

function notes(branch: BranchInfo): string {
  const count = branch.snapshots.length;
  const root = branch.branch === 'main';
  return [
    root ? 'root' : undefined,
    branch.protected && !root ? 'protected' : undefined,
    branch.clone ? 'clone' : undefined,
    branch.state === 'suspended' ? 'suspended' : undefined,
    branch.origin === 'external' && !root ? 'made outside pgbranch' : undefined,
    count > 0 ? `${count} restore point${count === 1 ? '' : 's'}` : undefined,
  ]
    .filter((note) => note !== undefined)
    .join(', ');
}

export function branchTable(branches: BranchInfo[], now: number): string {
  if (branches.length === 0) return 'no branches\n';
  return table(
    ['NAME', 'PARENT', 'CREATED', 'LAST CONNECTED', 'SIZE', 'CLIENTS', 'EXPIRES', 'NOTES'],
    branches.map((b) => [
      b.name,
      b.parent ?? '-',
      formatWhen(b.createdAt, now),
      formatWhen(b.lastConnectedAt, now),
      formatBytes(b.sizeBytes),
      String(b.clients),
      expiry(b, now),
      notes(b),
    ]),
  );
}

/**
 * Parents above their children, drawn as `tree` draws directories. A branch whose parent is not
 * in the list (another database filtered out, or dropped by hand) starts a tree of its own.
 */
export function branchTree(branches: BranchInfo[], now: number): string {
  if (branches.length === 0) return 'no branches\n';
  const byName = new Map(branches.map((b) => [b.name, b]));
  const children = new Map<string, BranchInfo[]>();
  const tops: BranchInfo[] = [];
  for (const branch of branches) {
    const parent = branch.parent;
    if (parent !== null && byName.has(parent) && parent !== branch.name) {
      children.set(parent, [...(children.get(parent) ?? []), branch]);
    } else tops.push(branch);
  }
  const rows: string[][] = [];
  const visit = (branch: BranchInfo, prefix: string, last: boolean, top: boolean) => {
    const summary = [
      formatBytes(branch.sizeBytes),
      branch.clients > 0 ? `${branch.clients} client${branch.clients === 1 ? '' : 's'}` : '',
      branch.expiresBy === null ? '' : `expires ${expiry(branch, now)}`,
      notes(branch),
    ].filter((part) => part !== '');
    rows.push([`${prefix}${top ? '' : last ? '└── ' : '├── '}${branch.name}`, summary.join(', ')]);
    const below = children.get(branch.name) ?? [];
    const childPrefix = top ? '' : prefix + (last ? '    ' : '│   ');
    below.forEach((child, i) => visit(child, childPrefix, i === below.length - 1, false));
  };
  for (const top of tops) visit(top, '', true, true);
  const width = Math.max(...rows.map(([name]) => stringWidth(name!)));
  return (
    rows.map(([name, summary]) => `${pad(name!, width)}  ${summary}`.trimEnd()).join('\n') + '\n'
  );
}

/** `branch show`: one branch, a line per fact, then its restore points. */
export function branchDetails(b: BranchInfo, now: number): string {
  const at = (iso: string | null) => (iso === null ? '-' : `${iso} (${formatWhen(iso, now)})`);
  const lines = [
    `name:            ${b.name}`,
    `parent:          ${b.parent ?? '-'}`,
    ...(b.fromSnapshot === null ? [] : [`started from:    restore point ${b.fromSnapshot}`]),
    ...(b.restoredFrom === null ? [] : [`restored to:     restore point ${b.restoredFrom}`]),
    `created:         ${at(b.createdAt)}`,
    `last connected:  ${at(b.lastConnectedAt)}`,
    `size:            ${formatBytes(b.sizeBytes)}${b.clone ? ' (a clone: blocks shared with its parent until written)' : ''}`,
    `clients:         ${b.clients}`,
    `protected:       ${b.protected ? 'yes' : 'no'}`,
    `expires at:      ${b.expiresAt ?? 'never'}`,
    `idle expiry:     ${b.ttlMs === null ? 'none' : formatSpan(b.ttlMs)}`,
    `deleted by:      ${at(b.expiresBy)}`,
    `database:        ${b.physical}${b.origin === 'external' && b.branch !== 'main' ? ' (made outside pgbranch)' : ''}`,
  ];
  const points =
    b.snapshots.length === 0
      ? 'restore points:  none\n'
      : 'restore points:\n' +
        table(
          ['NAME', 'CREATED', 'SIZE', ''],
          b.snapshots.map((s) => [
            s.name,
            formatWhen(s.createdAt, now),
            formatBytes(s.sizeBytes),
            s.auto ? 'automatic' : '',
          ]),
        )
          .split('\n')
          .map((line) => (line === '' ? line : `  ${line}`))
          .join('\n');
  return lines.join('\n') + '\n' + points;
}

/** `pgbranch source status`: the source, its standby, and a problem first when there is one. */
export function sourceDetails(s: SourceStatus): string {
  const lag =
    s.lagBytes === null
      ? `unknown (the source can't be reached)${s.lagSeconds === null ? '' : `; last heard from ${s.lagSeconds.toFixed(1)} s ago`}`
      : `${formatBytes(s.lagBytes)}, ${(s.lagSeconds ?? 0).toFixed(1)} s`;
  const lines = [
    ...(s.problem === null ? [] : [`PROBLEM:         ${s.problem}`]),
    `source:          ${s.source}`,
    `version:         PostgreSQL ${s.version}`,
    `system id:       ${s.systemId}`,
    `streaming:       ${s.connected ? 'yes' : 'no'}`,
    `received:        ${s.receiveLsn ?? '-'}`,
    `replayed:        ${s.replayLsn ?? '-'}`,
    `source at:       ${s.sourceLsn ?? '-'}`,
    `lag:             ${lag}`,
    `window:          ${s.window === null ? 'none (no restore points kept)' : `${s.window.from} to ${s.window.to}`}`,
    `standby:         ${s.dataDir} (${formatBytes(s.diskBytes)})`,
    ...(s.resync === null
      ? []
      : [
          `resync:          ${s.resync.phase}, ${formatBytes(s.resync.bytes)}${s.resync.totalBytes === null ? '' : ` of ${formatBytes(s.resync.totalBytes)}`} since ${s.resync.startedAt}`,
        ]),
  ];
  return lines.join('\n') + '\n';
}

/** While the standby is being made: what it is at, and since when. */
export function makingDetails({ source, making }: SourceMaking): string {
  return (
    [
      `source:          ${source}`,
      `standby:         being made since ${making.startedAt}; pgbranch takes clients once it runs`,
      `now:             ${making.description}`,
    ].join('\n') + '\n'
  );
}

export function gcReport(result: GcResult): string {
  const plural = (n: number) => `${n} branch${n === 1 ? '' : 'es'}`;
  const lines: string[] = [];
  if (result.deleted.length === 0) lines.push('nothing to delete');
  else {
    lines.push(
      result.applied
        ? `deleted ${plural(result.deleted.length)}:`
        : `would delete ${plural(result.deleted.length)} (a dry run: --apply deletes them):`,
      ...result.deleted.map((name) => `  ${name}`),
    );
  }
  if (result.kept.length > 0) {
    const width = Math.max(...result.kept.map((k) => stringWidth(k.name)));
    lines.push(
      `kept ${plural(result.kept.length)} that matched:`,
      ...result.kept.map((k) => `  ${pad(k.name, width)}  ${k.reason}`),
    );
  }
  return lines.join('\n') + '\n';
}
