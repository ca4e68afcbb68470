// A schema diff as a person reads it: one line per difference, `+` added, `-` removed, `~` changed,
// grouped by kind and sorted by name, with long or multi-line values (view and function bodies)
// shown below their line, multi-line ones as a line diff.
import { compareItems, type DiffItem, type SchemaDiff } from './diff.js';

/** Changed values longer than this go on lines of their own. */
const INLINE_WIDTH = 60;
/** Unchanged lines shown around each change in a multi-line value. */
const CONTEXT = 2;
/** Above this many line pairs, a multi-line value is shown whole rather than diffed. */
const MAX_LINE_DIFF_CELLS = 4_000_000;

export function formatDiff(diff: SchemaDiff, fromLabel: string, toLabel: string): string {
  const lines = [`--- ${fromLabel}`, `+++ ${toLabel}`];
  const entries = [
    ...diff.added.map((item) => ({ sign: '+', item })),
    ...diff.removed.map((item) => ({ sign: '-', item })),
    ...diff.changed.map((item) => ({ sign: '~', item })),
  ].sort((a, b) => compareItems(a.item, b.item));
  if (entries.length === 0) return [...lines, 'no differences', ''].join('\n');
  let kind: string | undefined;
  for (const { sign, item } of entries) {
    if (kind !== undefined && item.kind !== kind) lines.push('');
    kind = item.kind;
    lines.push(...(sign === '~' ? formatChange(item) : [formatPresence(sign, item)]));
  }
  lines.push(
    '',
    `${diff.added.length} added, ${diff.removed.length} removed, ${diff.changed.length} changed`,
    '',
  );
  return lines.join('\n');
}

function formatPresence(sign: string, item: DiffItem): string {
  return `${sign} ${item.kind} ${item.name}${item.detail ? ` ${item.detail}` : ''}`;
}

function formatChange(item: DiffItem): string[] {
  const head = `~ ${item.kind} ${item.name}: ${item.detail ?? ''}`;
  const before = item.before ?? '(none)';
  const after = item.after ?? '(none)';
  const multiLine = before.includes('\n') || after.includes('\n');
  if (!multiLine && before.length + after.length <= INLINE_WIDTH) {
    return [`${head} ${before} -> ${after}`];
  }
  if (!multiLine || item.before === undefined || item.after === undefined) {
    return [head, ...indent('- ', before), ...indent('+ ', after)];
  }
  return [head, ...lineDiff(bodyLines(before), bodyLines(after))];
}

/** The lines of a value, without the blank lines that function bodies start and end with. */
function bodyLines(value: string): string[] {
  return value.replace(/^\s*\n|\n\s*$/g, '').split('\n');
}

function indent(sign: string, value: string): string[] {
  return value.split('\n').map((line) => `    ${sign}${line}`.trimEnd());
}

/** The changed lines of a value with CONTEXT lines around them, `...` where lines are skipped. */
function lineDiff(a: string[], b: string[]): string[] {
  if (a.length * b.length > MAX_LINE_DIFF_CELLS) {
    return [...indent('- ', a.join('\n')), ...indent('+ ', b.join('\n'))];
  }
  // Longest common subsequence, filled from the end so the walk below goes forwards.
  const width = b.length + 1;
  const common = new Uint32Array((a.length + 1) * width);
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      common[i * width + j] =
        a[i] === b[j]
          ? common[(i + 1) * width + j + 1]! + 1
          : Math.max(common[(i + 1) * width + j]!, common[i * width + j + 1]!);
    }
  }
  const ops: { sign: ' ' | '-' | '+'; line: string }[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      ops.push({ sign: ' ', line: a[i++]! });
      j++;
    } else if (
      i < a.length &&
      (j === b.length || common[(i + 1) * width + j]! >= common[i * width + j + 1]!)
    ) {
      ops.push({ sign: '-', line: a[i++]! });
    } else {
      ops.push({ sign: '+', line: b[j++]! });
    }
  }
  const shown = ops.map((_, k) =>
    ops.slice(Math.max(0, k - CONTEXT), k + CONTEXT + 1).some((op) => op.sign !== ' '),
  );
  const lines: string[] = [];
  ops.forEach((op, k) => {
    if (shown[k]) lines.push(`    ${op.sign} ${op.line}`.trimEnd());
    else if (k === 0 || shown[k - 1]) lines.push('    ...');
  });
  return lines;
}
