// `npm run soak`: pgbranch under pgbench in both pool modes, clients that come and go, branch
// operations every few seconds and one kill of the embedded server, for 10 minutes by default.
// Prints errors by kind (expected, each with its reason, and unexpected) and pgbranch's RSS over
// time; exits 1 when there was an unexpected error or RSS at the end is more than 10% above RSS
// after the first minute. Progress goes to stderr; the report (markdown) to stdout.
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { runBenchmark } from './support/main.js';
import { bytes, markdownTable, progress } from './support/report.js';
import { runSoak, type SoakOptions, type SoakResult } from './support/soak.js';
import { errorsByKind } from './support/soak-errors.js';

const HELP = `usage: npm run soak -- [--minutes 10] [--restart-at 4] [--operation-every 3] [--cli-every 4]
                       [--rss-every 30] [--pgbench-clients 4] [--pgbench-rate 100] [--clients 6]
                       [--seed n] [--no-build]

  --minutes          how long the load runs (default 10; decimals allowed)
  --restart-at       minute at which the embedded PostgreSQL is killed (default 40% of the run;
                     "never" for no restart)
  --operation-every  seconds between branch operations: create, reset, restore point and restore,
                     delete (default 3)
  --cli-every        every n-th branch operation goes through the CLI, the rest the admin API
                     (default 4; 0 for none)
  --rss-every        seconds between readings of pgbranch's RSS (default 30)
  --pgbench-clients  pgbench clients in each pool mode (default 4)
  --pgbench-rate     transactions per second each pgbench is held to (default 100; 0 for no limit)
  --clients          psql and node-postgres clients coming and going, half each (default 6)
  --seed             seeds the choice of operations and targets (default: random, printed)
  --no-build         run pgbranch from source (tsx) instead of building it first

Needs pgbench and psql (Debian: apt-get install postgresql-client). Target: no unexpected error,
and RSS at the end within 10% of RSS after the first minute.
`;

const ROOT = path.resolve(import.meta.dirname, '..');
/** RSS at the end may be this much above RSS after the first minute. */
const RSS_GROWTH_LIMIT = 0.1;
const BASELINE_MS = 60_000;

interface Options extends Omit<SoakOptions, 'progress' | 'entry'> {
  build: boolean;
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      minutes: { type: 'string', default: '10' },
      'restart-at': { type: 'string' },
      'operation-every': { type: 'string', default: '3' },
      'cli-every': { type: 'string', default: '4' },
      'rss-every': { type: 'string', default: '30' },
      'pgbench-clients': { type: 'string', default: '4' },
      'pgbench-rate': { type: 'string', default: '100' },
      clients: { type: 'string', default: '6' },
      seed: { type: 'string' },
      'no-build': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const number = (name: string, text: string, min: number) => {
    const n = Number(text);
    if (!Number.isFinite(n) || n < min)
      throw new Error(`--${name} must be a number ≥ ${min}, not "${text}"`);
    return n;
  };
  const durationMs = number('minutes', values.minutes, 0.5) * 60_000;
  const restart = values['restart-at'];
  const restartAtMs =
    restart === 'never'
      ? undefined
      : restart === undefined
        ? Math.round(durationMs * 0.4)
        : number('restart-at', restart, 0) * 60_000;
  if (restartAtMs !== undefined && restartAtMs >= durationMs) {
    throw new Error(`--restart-at must fall inside the run (${values.minutes} minutes)`);
  }
  return {
    durationMs,
    restartAtMs,
    operationEveryMs: number('operation-every', values['operation-every'], 0.1) * 1000,
    cliEvery: Math.floor(number('cli-every', values['cli-every'], 0)),
    rssEveryMs: number('rss-every', values['rss-every'], 1) * 1000,
    pgbenchClients: Math.floor(number('pgbench-clients', values['pgbench-clients'], 1)),
    pgbenchRate: number('pgbench-rate', values['pgbench-rate'], 0),
    clientWorkers: Math.floor(number('clients', values.clients, 0)),
    seed:
      values.seed === undefined
        ? Math.floor(Math.random() * 2 ** 31)
        : number('seed', values.seed, 0),
    build: !values['no-build'],
  };
}

interface Results {
  options: Options;
  result: SoakResult;
  commit: string;
}

async function run(
  options: Options,
  cleanup: import('./support/cleanup.js').Cleanup,
): Promise<Results> {
  if (options.build) {
    progress('building pgbranch (npm run build): the soak runs the build, as production would');
    execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: ['ignore', 2, 2] });
  }
  progress(`seed ${options.seed}`);
  const result = await runSoak({
    ...options,
    entry: options.build ? 'bin' : 'source',
    progress,
    started: (proxy) => cleanup.add('stop pgbranch', () => proxy.stop()),
  });
  const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
    cwd: ROOT,
    encoding: 'utf8',
  }).trim();
  return { options, result, commit };
}

/** RSS after the first minute (the sample nearest it) and at the end, and the growth between. */
function rssVerdict(result: SoakResult): { baseline: number; end: number; growth: number } {
  const baseline = result.rss.reduce((best, sample) =>
    Math.abs(sample.at - BASELINE_MS) < Math.abs(best.at - BASELINE_MS) ? sample : best,
  );
  const end = result.rss.at(-1)!;
  return { baseline: baseline.bytes, end: end.bytes, growth: end.bytes / baseline.bytes - 1 };
}

function report({ options, result, commit }: Results, command: string): string {
  const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  const unexpected = result.errors.filter((error) => !error.expected);
  const lines: string[] = [];
  lines.push(`# Soak: ${command}`, '');
  lines.push(
    `- pgbranch at commit ${commit}${options.build ? ', built and run as `node bin/pgbranch.js`' : ', from source (tsx)'}; embedded PostgreSQL 18; seed ${options.seed}`,
    `- machine: ${os.cpus().length} cores, load average ${result.load.start.join(' ')} at start, ${result.load.end.join(' ')} at end`,
    `- ${seconds(result.durationMs)} of load: pgbench (TPC-B-like, ${options.pgbenchClients} clients each, ${options.pgbenchRate > 0 ? `held to ${options.pgbenchRate} tps each` : 'unlimited'}) in session mode and in transaction mode (-M prepared) on database bench; ${options.clientWorkers} psql and node-postgres clients connecting, running one transaction and leaving, over and over, on app, app@stable and four branches that the operations work on`,
  );
  for (const mode of ['session', 'transaction'] as const) {
    const p = result.pgbench[mode];
    lines.push(
      `- pgbench ${mode} mode: ${p.transactions} transactions in ${p.runs} runs (${(p.transactions / Math.max(1, p.secondsRun)).toFixed(0)} tps over ${p.secondsRun.toFixed(0)} s)`,
    );
  }
  lines.push(
    `- client sessions that did their work: psql ${result.sessions.psql}, node-postgres ${result.sessions['node-postgres']}`,
  );
  const verbs = new Map<string, { ok: number; failed: number; cli: number }>();
  for (const op of result.operations) {
    const v = verbs.get(op.verb) ?? { ok: 0, failed: 0, cli: 0 };
    if (op.error === undefined) v.ok++;
    else v.failed++;
    if (op.via === 'cli') v.cli++;
    verbs.set(op.verb, v);
  }
  lines.push(
    `- branch operations: ${[...verbs].map(([verb, v]) => `${verb} ${v.ok}${v.failed ? ` (+${v.failed} failed)` : ''}`).join(', ')}; ${result.operations.filter((op) => op.via === 'cli').length} of them through the CLI`,
  );
  if (result.restart) {
    lines.push(
      `- upstream killed (SIGKILL of the postmaster) at ${seconds(result.restart.start)}; first query served again at ${result.restart.end === undefined ? 'never' : seconds(result.restart.end)}${result.restart.restartedEvent ? ' (pgbranch logged embedded_server_restarted)' : ''}`,
    );
  }
  lines.push(
    `- after the load, pgbranch's server connections and the server's client backends ${result.servers.agreed ? `agreed (${result.servers.held})` : `did not agree: pgbranch ${result.servers.held}, server ${result.servers.onServer}`}`,
    '',
  );

  lines.push(
    `## Errors: ${unexpected.length} unexpected, ${result.errors.length - unexpected.length} expected`,
    '',
  );
  const groups = errorsByKind(result.errors);
  if (groups.length > 0) {
    lines.push(
      markdownTable(
        ['', 'count', 'source', 'kind', 'reason (first one)'],
        groups.map((g) => [
          g.expected ? 'expected' : 'UNEXPECTED',
          String(g.count),
          g.source,
          g.kind,
          g.example.reason,
        ]),
      ),
      '',
    );
  }
  for (const error of unexpected.slice(0, 20)) {
    lines.push(
      `- ${seconds(error.at)} ${error.source}${error.database ? ` on ${error.database}` : ''}: ${error.message.replace(/\s+/g, ' ')}`,
    );
  }
  if (unexpected.length > 20) lines.push(`- … and ${unexpected.length - 20} more`);

  const logged = new Map<string, number>();
  for (const line of result.logged) {
    const key = `${line.level === 40 ? 'warn' : 'error'} ${String(line.event ?? line.msg)}`;
    logged.set(key, (logged.get(key) ?? 0) + 1);
  }
  lines.push(
    '',
    `pgbranch's warnings and errors in its log: ${logged.size === 0 ? 'none' : [...logged].map(([key, n]) => `${key} ×${n}`).join(', ')}`,
  );

  const verdict = rssVerdict(result);
  lines.push('', '## pgbranch RSS', '');
  lines.push(
    markdownTable(
      ['at', 'RSS', 'V8 heap in use', 'V8 heap total', 'external (Buffers)'],
      result.rss.map((s) => [
        seconds(s.at),
        bytes(s.bytes),
        ...(s.heap
          ? [bytes(s.heap.used), bytes(s.heap.total), bytes(s.heap.external)]
          : ['', '', '']),
      ]),
    ),
    '',
  );
  lines.push(
    `RSS after the first minute ${bytes(verdict.baseline)}, at the end ${bytes(verdict.end)}: ${verdict.growth >= 0 ? '+' : ''}${(verdict.growth * 100).toFixed(1)}% (target within ${RSS_GROWTH_LIMIT * 100}%)`,
    '',
  );
  targetMet =
    unexpected.length === 0 && verdict.growth <= RSS_GROWTH_LIMIT && result.servers.agreed;
  lines.push(targetMet ? 'Target met.' : 'Target NOT met.', '');
  return lines.join('\n');
}

/** Set by the report: a soak that ran but missed its target exits 1 too. */
let targetMet = true;

const code = await runBenchmark<Options, Results>({
  name: 'soak',
  help: HELP,
  parseOptions,
  run,
  report,
});
process.exitCode = code === 0 && !targetMet ? 1 : code;
