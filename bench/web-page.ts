// `npm run bench:web`: the branch page with 300 branches, in a real browser (Debian's chromium,
// headless, through playwright-core) against a real pgbranch (embedded server, database provider).
// Measured in the page itself (performance.now() around the DOM reaching the expected rows, then
// the next frame): opening the page until every row is drawn, the filter box narrowing the tree,
// a fold of the root's subtree and its unfold, Collapse all and Expand all; and, with the page left
// open, how long after a psql connect made a branch it shows, and after `pgbranch branch delete`
// (the CLI) removed one it disappears, without a reload (the page's own Date.now() against the
// bench's: one clock, one machine). Progress goes to stderr; the report to stdout.
import { execFile } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { Page } from 'playwright-core';
import type { BranchInfo } from '../src/lifecycle/model.js';
import { FEED_INTERVAL_MS } from '../src/admin/events.js';
import { startBrowser } from '../test/support/browser.js';
import {
  PGBRANCH_BIN,
  startPgbranch,
  tempDir,
  type PgbranchProcess,
} from '../test/support/pgbranch.js';
import { mountReflinkXfs } from '../test/support/xfs.js';
import { buildTree, visibleRows } from '../web/tree.js';
import type { Cleanup } from './support/cleanup.js';
import { runBenchmark } from './support/main.js';
import { cell, duration, markdownTable, progress, summarize } from './support/report.js';

const HELP = `usage: npm run bench:web -- [--branches 300] [--repeat 5] [--live 8]

  --branches  branches of the database app, made through the admin API before the page opens
              (default 300): a third under app, the rest under those and one level further
  --repeat    page opens, and each interaction, this many times (default 5)
  --live      branches made by psql and deleted by the CLI while the page is open (default 8)

Runs as root to put the data directory on a loop-mounted reflink XFS (clones: the 300 branches
are made in seconds); elsewhere they are copies of a small database. Needs psql and chromium
(apt-get install -y chromium).
`;

/** The targets: fast with 300 branches; a change shows within two seconds. */
const LIVE_TARGET_MS = 2000;
/** "Fast" for an interaction (filter, fold): within a tenth of a second, as typing feels. */
const INTERACTION_TARGET_MS = 100;
/** Branches made in parallel through the admin API (different parents drain independently). */
const CREATE_CONCURRENCY = 4;

interface Options {
  branches: number;
  repeat: number;
  live: number;
}

type Step = 'open' | 'filter' | 'unfilter' | 'fold' | 'unfold' | 'collapseAll' | 'expandAll';

interface Results {
  options: Options;
  filesystem: string;
  copyMode: string;
  serverVersion: string;
  /** Rows of the whole tree: the branches and their root. */
  rows: number;
  depth: number;
  createMs: number;
  /** GET /v1/branches with every size, as the page's first list reads them. */
  listMs: number[];
  /** Each interaction: its samples and the rows it leaves drawn. */
  /** Each step: to the frame that shows it, to the DOM change alone (not for open), rows left. */
  steps: Record<Step, { ms: number[]; domMs: number[]; rows: number }>;
  filterPattern: string;
  /**
   * The client's own time; the page's moment against the server's log line of the change
   * (branch_created, branch_deleted: when it happened), and against the client's exit.
   */
  liveCreate: { clientMs: number; shownMs: number; afterClientMs: number }[];
  liveDelete: { clientMs: number; shownMs: number; afterClientMs: number }[];
  load: [number, number];
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      branches: { type: 'string', default: '300' },
      repeat: { type: 'string', default: '5' },
      live: { type: 'string', default: '8' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const count = (name: string, text: string, least: number) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < least) {
      throw new Error(`--${name} "${text}": write a whole number of at least ${least}`);
    }
    return n;
  };
  return {
    branches: count('branches', values.branches, 10),
    repeat: count('repeat', values.repeat, 1),
    live: count('live', values.live, 1),
  };
}

/** b-000 ... : the first third under app, the next half under those, the rest one level below. */
function plan(total: number): { name: string; parent: string }[] {
  const first = Math.ceil(total / 3);
  const second = Math.ceil(total / 2);
  const label = (i: number) => `b-${String(i).padStart(3, '0')}`;
  return Array.from({ length: total }, (_, i) => {
    if (i < first) return { name: `app@${label(i)}`, parent: 'app' };
    if (i < first + second) return { name: `app@${label(i)}`, parent: label((i - first) % first) };
    return { name: `app@${label(i)}`, parent: label(first + ((i - first - second) % second)) };
  });
}

async function admin<T>(proxy: PgbranchProcess, method: string, route: string, body?: unknown) {
  const response = await fetch(proxy.ready.adminUrl + route, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${text}`);
  return JSON.parse(text) as T;
}

/** Runs a program to its end; rejects with its stderr when it fails. */
function runProgram(file: string, args: string[], env: Record<string, string> = {}) {
  return new Promise<void>((resolve, reject) => {
    execFile(
      file,
      args,
      { env: { ...process.env, ...env }, timeout: 60_000 },
      (error, _, stderr) =>
        error
          ? reject(new Error(`${path.basename(file)} ${args.join(' ')}: ${stderr}`))
          : resolve(),
    );
  });
}

/**
 * Installed in every page before its scripts: the moment every row is first drawn
 * (benchRendered), the moments rows appear and vanish (benchSeen, benchGone: wall clock, for the
 * live part), and benchTime(act, arg, rows), which acts on the page, waits for the DOM to hold
 * `rows` rows and then for the frame that draws them, and resolves to the milliseconds. Plain
 * JavaScript in a string: tsx would wrap a function given to the page with helpers of its own.
 */
const PAGE_PROBE = `(expectedRows) => {
  const seen = {};
  const gone = {};
  Object.assign(window, { benchSeen: seen, benchGone: gone });
  const rows = () => document.querySelectorAll('tr.branch').length;
  const record = (nodes, into, at) => {
    for (const node of nodes) {
      if (node instanceof HTMLElement && node.dataset.branch) into[node.dataset.branch] = at;
    }
  };
  new MutationObserver((records) => {
    const at = Date.now();
    for (const r of records) {
      record(r.addedNodes, seen, at);
      record(r.removedNodes, gone, at);
    }
    if (window.benchRendered === undefined && rows() >= expectedRows) {
      window.benchRendered = performance.now();
    }
  }).observe(document, { childList: true, subtree: true });
  window.benchTime = (act, arg, want) =>
    new Promise((resolve, reject) => {
      const started = performance.now();
      const watcher = new MutationObserver(() => {
        if (rows() !== want) return;
        watcher.disconnect();
        const dom = performance.now() - started;
        requestAnimationFrame(() =>
          setTimeout(() => resolve({ dom, frame: performance.now() - started })),
        );
      });
      watcher.observe(document.querySelector('tbody'), { childList: true });
      setTimeout(() => reject(new Error(act + ' ' + arg + ': ' + rows() + ' rows, not ' + want)), 30000);
      if (act === 'filter') {
        const input = document.querySelector('input.filter');
        input.value = arg;
        input.dispatchEvent(new Event('input', { bubbles: true }));
      } else if (act === 'fold') {
        document.querySelector('tr[data-branch="' + arg + '"] button.fold').click();
      } else {
        [...document.querySelectorAll('header button')].find((b) => b.textContent === arg).click();
      }
    });
}`;

/**
 * Waits for a page expression to have a value, read every 20 ms: the moments themselves are taken
 * in the page, so the polling adds nothing to them. (waitForFunction with a string is refused by
 * the page's content security policy.)
 */
async function pageValue(page: Page, expression: string): Promise<number> {
  const until = Date.now() + 60_000;
  for (;;) {
    const value = (await page.evaluate(expression)) as number | undefined;
    if (value !== undefined) return value;
    if (Date.now() > until) throw new Error(`${expression}: no value within 60 s`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The time (ms since the epoch) of pgbranch's first log line that `match`es, once it arrives. */
async function loggedAt(
  proxy: PgbranchProcess,
  match: (entry: Record<string, unknown>) => boolean,
): Promise<number> {
  const until = Date.now() + 30_000;
  for (;;) {
    const entry = proxy.logs.find(match);
    if (entry) return typeof entry.time === 'number' ? entry.time : Date.parse(String(entry.time));
    if (Date.now() > until) throw new Error('pgbranch logged no such change within 30 s');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const timeStep = (page: Page, act: string, arg: string, want: number) =>
  page.evaluate(
    `window.benchTime(${JSON.stringify(act)}, ${JSON.stringify(arg)}, ${want})`,
  ) as Promise<{ dom: number; frame: number }>;

async function run(options: Options, cleanup: Cleanup): Promise<Results> {
  const loadAtStart = os.loadavg()[0]!;
  const mount = await mountReflinkXfs(2048);
  let dataDir: string;
  let filesystem: string;
  if ('skipped' in mount) {
    progress(`no reflink XFS (${mount.skipped}): branches are copies`);
    dataDir = tempDir('bench-web');
    filesystem = 'the temporary directory (no copy-on-write)';
  } else {
    cleanup.add(`unmount ${mount.dir}`, () => mount.unmount());
    dataDir = path.join(mount.dir, 'pgbranch');
    filesystem = 'XFS (reflink=1) on a loop-mounted sparse file';
  }
  progress('starting pgbranch and chromium');
  const browser = await startBrowser();
  cleanup.add('close chromium', () => browser.close());
  const proxy = await startPgbranch({
    dataDir,
    args: ['--log-level', 'info'],
    timeoutMs: 120_000,
  });
  cleanup.add('stop pgbranch', () => proxy.stop());
  await runProgram('psql', ['-X', '-q', '-d', proxy.url('postgres'), '-c', 'create database app']);
  await runProgram('psql', [
    '-X',
    '-q',
    '-d',
    proxy.url('app'),
    '-c',
    'create table users (id int primary key, name text); insert into users select g, md5(g::text) from generate_series(1, 1000) g',
  ]);

  const wanted = plan(options.branches);
  progress(`making ${wanted.length} branches through the admin API`);
  const createStarted = performance.now();
  // Parents first: each level is made once the one above it exists.
  for (const level of [0, 1, 2]) {
    const first = Math.ceil(wanted.length / 3);
    const second = Math.ceil(wanted.length / 2);
    const bounds = [0, first, first + second, wanted.length];
    const queue = wanted.slice(bounds[level], bounds[level + 1]);
    await Promise.all(
      Array.from({ length: CREATE_CONCURRENCY }, async () => {
        for (let next = queue.shift(); next; next = queue.shift()) {
          await admin(proxy, 'POST', '/v1/branches', next);
        }
      }),
    );
    progress(`  level ${level + 1}: ${bounds[level + 1]} made`);
  }
  const createMs = performance.now() - createStarted;

  const listMs: number[] = [];
  let list: BranchInfo[] = [];
  for (let i = 0; i < options.repeat; i++) {
    const started = performance.now();
    list = (await admin<{ branches: BranchInfo[] }>(proxy, 'GET', '/v1/branches')).branches;
    listMs.push(performance.now() - started);
  }
  const tree = buildTree(list);
  const all = visibleRows(tree, new Set(), '').length;
  const filterPattern = 'app@b-01*';
  const filtered = visibleRows(tree, new Set(), filterPattern).length;
  const folded = visibleRows(tree, new Set(['app']), '').length;
  const parents = new Set(list.map((b) => b.parent));
  const foldable = list.filter((b) => b.snapshots.length > 0 || parents.has(b.name));
  const collapsed = visibleRows(tree, new Set(foldable.map((b) => b.name)), '').length;
  const depth = Math.max(...visibleRows(tree, new Set(), '').map((r) => r.guide.length / 4));
  progress(
    `${all} rows; filter ${filterPattern}: ${filtered}; app folded: ${folded}; collapse all: ${collapsed}`,
  );

  const steps = {} as Results['steps'];
  const add = (step: Step, ms: number | { dom: number; frame: number }, rows: number) => {
    steps[step] ??= { ms: [], domMs: [], rows };
    steps[step].ms.push(typeof ms === 'number' ? ms : ms.frame);
    if (typeof ms !== 'number') steps[step].domMs.push(ms.dom);
  };
  let page: Page | undefined;
  for (let i = 1; i <= options.repeat; i++) {
    progress(`round ${i}/${options.repeat}: open, filter, fold, collapse all`);
    await page?.context().close();
    page = await browser.page();
    await page.addInitScript({ content: `(${PAGE_PROBE})(${all})` });
    await page.goto(proxy.ready.adminUrl + '/');
    add('open', await pageValue(page, 'window.benchRendered'), all);
    add('filter', await timeStep(page, 'filter', filterPattern, filtered), filtered);
    add('unfilter', await timeStep(page, 'filter', '', all), all);
    add('fold', await timeStep(page, 'fold', 'app', folded), folded);
    add('unfold', await timeStep(page, 'fold', 'app', all), all);
    add('collapseAll', await timeStep(page, 'click', 'Collapse all', collapsed), collapsed);
    add('expandAll', await timeStep(page, 'click', 'Expand all', all), all);
  }

  progress(`live: ${options.live} branches made by psql, then deleted by the CLI`);
  const livePage = page!;
  await livePage.locator('.live.on').waitFor();
  const liveCreate: Results['liveCreate'] = [];
  const liveDelete: Results['liveDelete'] = [];
  const cliEnv = { PGBRANCH_ADMIN_PORT: new URL(proxy.ready.adminUrl!).port };
  /** When the page saw `name` appear (benchSeen) or vanish (benchGone): its Date.now(). */
  const sawAt = (table: 'benchSeen' | 'benchGone', name: string) =>
    pageValue(livePage, `window.${table}[${JSON.stringify(name)}]`);
  for (let i = 0; i < options.live; i++) {
    const branch = `live-${i}`;
    const name = `app@${branch}`;
    // Changes land anywhere in the page's once-a-second read: spread them over it.
    await new Promise((resolve) => setTimeout(resolve, Math.random() * FEED_INTERVAL_MS));
    let started = Date.now();
    await runProgram('psql', ['-X', '-q', '-d', proxy.url(name), '-c', 'select 1']);
    let done = Date.now();
    let changed = await loggedAt(proxy, (e) => e.event === 'branch_created' && e.branch === branch);
    let seen = await sawAt('benchSeen', name);
    liveCreate.push({
      clientMs: done - started,
      shownMs: seen - changed,
      afterClientMs: seen - done,
    });
    await new Promise((resolve) => setTimeout(resolve, Math.random() * FEED_INTERVAL_MS));
    started = Date.now();
    await runProgram(process.execPath, [PGBRANCH_BIN, 'branch', 'delete', name], cliEnv);
    done = Date.now();
    changed = await loggedAt(proxy, (e) => e.event === 'branch_deleted' && e.branch === name);
    seen = await sawAt('benchGone', name);
    liveDelete.push({
      clientMs: done - started,
      shownMs: seen - changed,
      afterClientMs: seen - done,
    });
    progress(
      `  ${name}: shown ${liveCreate.at(-1)!.shownMs} ms after it was made, gone ${liveDelete.at(-1)!.shownMs} ms after it was deleted`,
    );
  }
  if (browser.errors.length > 0) throw new Error(`the page failed: ${browser.errors.join('; ')}`);

  return {
    options,
    filesystem,
    copyMode: `${proxy.ready.copyMode} (${proxy.ready.copyReason})`,
    serverVersion: proxy.ready.serverVersion,
    rows: all,
    depth,
    createMs,
    listMs,
    steps,
    filterPattern,
    liveCreate,
    liveDelete,
    load: [loadAtStart, os.loadavg()[0]!],
  };
}

function report(results: Results, command: string): string {
  const { steps, options } = results;
  const cpus = os.cpus();
  const row = (what: string, step: Step) => [
    what,
    String(steps[step].rows),
    steps[step].domMs.length > 0 ? cell(steps[step].domMs) : '',
    cell(steps[step].ms),
  ];
  const interactions: Step[] = ['filter', 'unfilter', 'fold', 'unfold', 'collapseAll', 'expandAll'];
  const slowest = Math.max(...interactions.map((s) => summarize(steps[s].ms).median));
  const shown = results.liveCreate.map((s) => s.shownMs);
  const gone = results.liveDelete.map((s) => s.shownMs);
  const worstLive = Math.max(...shown, ...gone);
  const verdict = (met: boolean) => (met ? 'met' : '**not met**');
  return [
    `# ${command}`,
    '',
    `- Machine: ${cpus.length} CPUs (${cpus[0]?.model.trim() ?? 'unknown'}), Linux ${os.release()}, Node.js ${process.version}; chromium headless (playwright-core)`,
    `- pgbranch: embedded PostgreSQL ${results.serverVersion}, database provider, ${results.copyMode}; data on ${results.filesystem}`,
    `- ${options.branches} branches of app (${results.rows} rows with the root, ${results.depth} levels below it), made through the admin API in ${duration(results.createMs)}; GET /v1/branches with sizes: ${cell(results.listMs)}`,
    `- Load average (1 min) at start ${results.load[0].toFixed(1)}, at end ${results.load[1].toFixed(1)}`,
    `- ${options.repeat} rounds (each a fresh page), median (min–max), timed in the page from the action: until the DOM holds the rows it should, and until the frame after that ran (style, layout, paint)`,
    '',
    markdownTable(
      ['on the page', 'rows drawn', 'DOM changed', 'frame drawn'],
      [
        row('open: navigation to every row drawn', 'open'),
        row(`filter box: type ${results.filterPattern}`, 'filter'),
        row('filter box: cleared', 'unfilter'),
        row(`fold the root (▾ app: its ${options.branches}-branch subtree)`, 'fold'),
        row('unfold it (▸ app)', 'unfold'),
        row('Collapse all', 'collapseAll'),
        row('Expand all', 'expandAll'),
      ],
    ),
    '',
    markdownTable(
      [
        'live, page open, no reload',
        'n',
        'the client took',
        'on the page after the change (server log)',
        'after the client ended',
      ],
      [
        [
          'branch made by a psql connect (shows)',
          String(shown.length),
          `psql: ${cell(results.liveCreate.map((s) => s.clientMs))}`,
          cell(shown),
          cell(results.liveCreate.map((s) => s.afterClientMs)),
        ],
        [
          'branch deleted by `pgbranch branch delete` (disappears)',
          String(gone.length),
          `CLI: ${cell(results.liveDelete.map((s) => s.clientMs))}`,
          cell(gone),
          cell(results.liveDelete.map((s) => s.afterClientMs)),
        ],
      ],
    ),
    '',
    `Targets: every interaction within ${INTERACTION_TARGET_MS} ms (slowest median ${duration(slowest)}): ${verdict(slowest <= INTERACTION_TARGET_MS)}; ` +
      `changes show within ${LIVE_TARGET_MS / 1000} s (slowest of ${shown.length + gone.length}: ${duration(worstLive)}): ${verdict(worstLive <= LIVE_TARGET_MS)}.`,
    '',
  ].join('\n');
}

process.exitCode = await runBenchmark({
  name: 'bench:web',
  help: HELP,
  parseOptions,
  run,
  report,
});
