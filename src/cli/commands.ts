// `pgbranch branch ...`, `pgbranch gc ...` and `pgbranch source ...`: each command is one request to a running pgbranch's
// admin API, printed as a table for people or as the API's JSON for scripts, with exit codes that
// tell scripts what happened (see EXIT_CODES in help.ts).
import { httpStatus } from '../admin/error-status.js';
import { parentWithin, parseConnectTarget } from '../branch/names.js';
import { readFileSync } from 'node:fs';
import { ConfigError, loadConfig } from '../config/load.js';
import { commaList, type Config } from '../config/schema.js';
import type {
  BranchInfo,
  CreateResult,
  DeleteResult,
  DiffResult,
  GcResult,
  SnapshotInfo,
} from '../lifecycle/model.js';
import type { SourceStatus } from '../source/health.js';
import type { SourceMaking } from '../source/making.js';
import {
  commandWord,
  parseInvocation,
  UsageError,
  type BranchCommand,
  type Options,
  type SourceCommand,
} from './args.js';
import { ApiError, Unreachable, type AdminClient } from './client.js';
import {
  branchDetails,
  branchTable,
  makingDetails,
  sourceDetails,
  branchTree,
  formatSpan,
  formatWhen,
  gcReport,
} from './format.js';
import { branchHelp, gcHelp, sourceHelp } from './help.js';
import { withProgress, type CopyProgress } from './progress.js';
import { clientFor, explainUnreachable } from './reach.js';
import { branchUrl, urlHelp } from './url.js';

const EXIT = { ok: 0, failed: 1, usage: 2, unreachable: 3, notFound: 4 } as const;

/** What a command prints: JSON for --json, text otherwise. */
interface Outcome {
  json: unknown;
  text: string;
}

/** Runs the CLI for argv (as given to pgbranch); resolves to the exit code. */
export async function runCli(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  let invocation;
  try {
    invocation = parseInvocation(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(
      `pgbranch: ${error.message}\nSee npx pgbranch ${commandWord(argv)} --help.\n`,
    );
    return EXIT.usage;
  }
  if (invocation.command === 'help') {
    const help = { gc: gcHelp, url: urlHelp, branch: branchHelp, source: sourceHelp }[
      invocation.topic
    ];
    process.stdout.write(help());
    return EXIT.ok;
  }
  let config: Config;
  let sources: string[];
  try {
    ({ config, sources } = loadConfig(invocation.configArgv, env));
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`pgbranch: invalid configuration\n${error.message}\n`);
    return EXIT.usage;
  }
  const { json } = invocation;
  if (invocation.command === 'url') {
    try {
      const answer = branchUrl(config, env, process.cwd(), invocation.words, invocation.options);
      const text = invocation.options.has('--env') ? `DATABASE_URL=${answer.url}` : answer.url;
      process.stdout.write(json ? JSON.stringify(answer, null, 2) + '\n' : `${text}\n`);
      return EXIT.ok;
    } catch (error) {
      if (!(error instanceof UsageError)) throw error;
      process.stderr.write(`pgbranch: ${error.message}\n`);
      return EXIT.usage;
    }
  }
  const client = clientFor(config, sources);
  if (typeof client === 'string') {
    process.stderr.write(`pgbranch: ${client}\n`);
    return EXIT.unreachable;
  }
  try {
    const outcome =
      invocation.command === 'gc'
        ? await gc(client, invocation.options)
        : invocation.command === 'source'
          ? await source(client, invocation.sub)
          : await branch(client, invocation.sub, invocation.words, invocation.options);
    process.stdout.write(json ? JSON.stringify(outcome.json, null, 2) + '\n' : outcome.text);
    return EXIT.ok;
  } catch (error) {
    if (error instanceof Unreachable) {
      process.stderr.write(`pgbranch: ${await explainUnreachable(error, config)}\n`);
      return EXIT.unreachable;
    }
    if (error instanceof ApiError) {
      if (json) process.stdout.write(JSON.stringify(error.body, null, 2) + '\n');
      const { message, detail, hint, code } = error.body.error;
      if (code === '42704' && invocation.command === 'source') {
        process.stderr.write(`pgbranch: ${message}\n`);
        return EXIT.notFound;
      }
      const cliHint =
        code === '2BP01' && invocation.command === 'branch'
          ? 'Run again with --cascade to delete them as well.'
          : hint;
      process.stderr.write(
        `pgbranch: ${message} (${code})\n` +
          (detail === undefined ? '' : `  ${detail}\n`) +
          (cliHint === undefined ? '' : `  hint: ${cliHint}\n`),
      );
      // "No such thing" (the API's 404s): exit 4, so a script can tell a missing branch apart.
      return httpStatus(code) === 404 ? EXIT.notFound : EXIT.failed;
    }
    if (error instanceof UsageError) {
      process.stderr.write(`pgbranch: ${error.message}\n`);
      return EXIT.usage;
    }
    throw error;
  }
}

const path = (name: string, rest = '') => `/v1/branches/${encodeURIComponent(name)}${rest}`;
const one = (options: Options, flag: string) => options.get(flag)?.[0];

async function branch(
  client: AdminClient,
  command: BranchCommand,
  words: string[],
  options: Options,
): Promise<Outcome> {
  const now = Date.now();
  const [name = '', second = ''] = words;
  const step = <T>(label: string, method: string, url: string, body?: unknown) =>
    withProgress(process.stderr, label, client.request<T>(method, url, body));
  /** As step, with a progress bar of the copy that makes, resets or restores branch `of`. */
  const copyStep = <T>(of: string, label: string, method: string, url: string, body?: unknown) =>
    withProgress(process.stderr, label, client.request<T>(method, url, body), async () => {
      const { copying } = await client.request<{ copying: CopyProgress | null }>(
        'GET',
        path(of, '/copy'),
      );
      return copying ?? undefined;
    });
  switch (command) {
    case 'list': {
      const database = one(options, '--database');
      const query = database === undefined ? '' : `?database=${encodeURIComponent(database)}`;
      const result = await step<{ branches: BranchInfo[] }>(
        'listing branches',
        'GET',
        `/v1/branches${query}`,
      );
      const draw = options.has('--tree') ? branchTree : branchTable;
      return { json: result, text: draw(result.branches, now) };
    }
    case 'show': {
      const info = await step<BranchInfo>(`reading ${name}`, 'GET', path(name));
      return { json: info, text: branchDetails(info, now) };
    }
    case 'create': {
      const from = one(options, '--from');
      const ttl = one(options, '--ttl');
      const result = await copyStep<CreateResult>(
        name,
        `creating ${name}`,
        'POST',
        '/v1/branches',
        {
          name,
          ...(from === undefined
            ? {}
            : { parent: parentWithin(parseConnectTarget(name).target.root, from) }),
          ...optional('snapshot', one(options, '--snapshot')),
          ...optional('at', one(options, '--at')),
          ...optional('expiresAt', one(options, '--expires')),
          ...optional('ttl', ttl),
        },
      );
      const b = result.branch;
      const parent = describeParent(b);
      const text = result.created
        ? `created ${b.name} from ${parent}${b.fromSnapshot === null ? '' : ` (restore point ${b.fromSnapshot})`} in ${Math.round(result.ms)} ms, ${b.clone ? 'a copy-on-write clone' : 'a copy'}\n`
        : `${b.name} exists already, from ${parent}\n`;
      return { json: result, text };
    }
    case 'reset': {
      const b = await copyStep<BranchInfo>(name, `resetting ${name}`, 'POST', path(name, '/reset'));
      return { json: b, text: `reset ${b.name} to the current state of ${describeParent(b)}\n` };
    }
    case 'snapshot': {
      const s = await step<SnapshotInfo>(
        `saving restore point ${second} of ${name}`,
        'POST',
        path(name, '/snapshots'),
        { name: second },
      );
      return { json: s, text: `saved restore point ${s.name} of ${s.of}\n` };
    }
    case 'restore': {
      const b = await copyStep<BranchInfo>(
        name,
        `restoring ${name} to ${second}`,
        'POST',
        path(name, '/restore'),
        { snapshot: second },
      );
      return { json: b, text: `restored ${b.name} to restore point ${second}\n` };
    }
    case 'delete': {
      const snapshot = one(options, '--snapshot');
      if (snapshot !== undefined && options.has('--cascade')) {
        throw new UsageError('--cascade is for branches; a restore point has no children');
      }
      const result =
        snapshot === undefined
          ? await step<DeleteResult>(
              `deleting ${name}`,
              'DELETE',
              path(name, options.has('--cascade') ? '?cascade=true' : ''),
            )
          : await step<DeleteResult>(
              `deleting restore point ${snapshot} of ${name}`,
              'DELETE',
              path(name, `/snapshots/${encodeURIComponent(snapshot)}`),
            );
      return { json: result, text: result.deleted.map((n) => `deleted ${n}\n`).join('') };
    }
    case 'protect':
    case 'unprotect': {
      const on = command === 'protect';
      const b = await step<BranchInfo>(
        `${on ? 'protecting' : 'unprotecting'} ${name}`,
        on ? 'PUT' : 'DELETE',
        path(name, '/protection'),
      );
      return {
        json: b,
        text: on ? `protected ${b.name}\n` : `${b.name} is no longer protected\n`,
      };
    }
    case 'expire': {
      const never = options.has('--never');
      const b = await step<BranchInfo>(`changing the expiry of ${name}`, 'PATCH', path(name), {
        ...(never
          ? { expiresAt: null, ttl: null }
          : {
              ...optional('expiresAt', one(options, '--expires')),
              ...optional('ttl', one(options, '--ttl')),
            }),
      });
      return { json: b, text: describeExpiry(b, now) };
    }
    case 'diff': {
      const query = `?from=${encodeURIComponent(name)}&to=${encodeURIComponent(second)}`;
      const result = await step<DiffResult>(
        `comparing ${name} with ${second}`,
        'GET',
        `/v1/diff${query}`,
      );
      return { json: result, text: result.text.endsWith('\n') ? result.text : `${result.text}\n` };
    }
  }
}

async function gc(client: AdminClient, options: Options): Promise<Outcome> {
  const file = one(options, '--keep-from')!;
  let text: string;
  try {
    text = readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (error) {
    throw new UsageError(`--keep-from ${file}: ${(error as Error).message}`);
  }
  const keep = text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '');
  const patterns = (options.get('--pattern') ?? []).flatMap(commaList);
  const apply = options.has('--apply');
  const result = await withProgress(
    process.stderr,
    apply ? 'deleting branches' : 'looking for branches to delete',
    client.request<GcResult>('POST', '/v1/gc', {
      keep,
      ...(patterns.length === 0 ? {} : { patterns }),
      ...optional('database', one(options, '--database')),
      apply,
    }),
  );
  return { json: result, text: gcReport(result) };
}

async function source(client: AdminClient, command: SourceCommand): Promise<Outcome> {
  if (command === 'status') {
    const status = await withProgress(
      process.stderr,
      'reading the source',
      client.request<SourceStatus | SourceMaking>('GET', '/v1/source'),
    );
    return {
      json: status,
      text: 'making' in status ? makingDetails(status) : sourceDetails(status),
    };
  }
  const status = await withProgress(
    process.stderr,
    'rebuilding the standby of the source',
    client.request<SourceStatus>('POST', '/v1/source/resync'),
    async () => {
      const { resync } = await client.request<SourceStatus>('GET', '/v1/source');
      return resync?.totalBytes
        ? { bytes: resync.bytes, totalBytes: resync.totalBytes }
        : undefined;
    },
  );
  return {
    json: status,
    text: `the standby of ${status.source} was made again (system identifier ${status.systemId}) and streams from it\n${sourceDetails(status)}`,
  };
}

const optional = (key: string, value: string | undefined) =>
  value === undefined ? {} : { [key]: value };

const describeParent = (b: BranchInfo) => b.parent ?? 'its parent';

function describeExpiry(b: BranchInfo, now: number): string {
  if (b.expiresBy === null) return `${b.name} never expires\n`;
  const rules = [
    b.expiresAt === null ? undefined : `at ${b.expiresAt}`,
    b.ttlMs === null ? undefined : `${formatSpan(b.ttlMs)} after its last connection`,
  ].filter((rule) => rule !== undefined);
  return `${b.name} expires ${rules.join(' or ')}: deleted ${formatWhen(b.expiresBy, now)} (${b.expiresBy})\n`;
}
