// Reads pgbranch's settings from the schema defaults, a YAML file, PGBRANCH_* variables and flags,
// later ones winning, and validates the result against the one schema. Flag and variable names are
// derived from the schema's key paths, so a new schema key is settable everywhere without edits here.
import { readFileSync } from 'node:fs';
import { BlockList, isIP } from 'node:net';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { configSchema, duration, type Config } from './schema.js';
import { parseUpstreamTls, UpstreamTlsError } from '../upstream/server-tls.js';

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export interface LoadedConfig {
  config: Config;
  /** Where settings came from, lowest precedence first, e.g. ['config/pgbranch.yaml', 'flags']. */
  sources: string[];
  help: boolean;
  version: boolean;
  /** Positional words, e.g. [] or ['branch', 'list']. */
  command: string[];
}

type Paths<T> = {
  [K in keyof T & string]-?: NonNullable<T[K]> extends object
    ? `${K}.${Paths<NonNullable<T[K]>>}`
    : K;
}[keyof T & string];

/** A leaf key of the schema as written in the YAML file, e.g. `pool.max_server_connections`. */
export type ConfigPath = Paths<Config>;

export interface ConfigKey {
  path: ConfigPath;
  /** The derived flag first, then any short alias. */
  flags: string[];
  /** The derived variable first, then any short alias. */
  envVars: string[];
  /** The leaf schema with defaults and optionality unwrapped. */
  schema: z.ZodType;
  /** The value an unset key takes, as it appears in Config (durations in milliseconds). */
  default: unknown;
  /** What a valid value looks like, for error messages: "a positive integer". */
  expects: string;
}

/** Shorter names that scripts rely on, in addition to the ones derived from the path. */
const ALIASES: Partial<Record<ConfigPath, string>> = {
  'listen.host': 'host',
  'listen.port': 'port',
  'listen.socket_dir': 'socket_dir',
  'embedded.password': 'password',
  'source.url': 'source',
};

/** PGBRANCH_* variables that are not schema keys: the file to read, and later features' own. */
export const ENV_OUTSIDE_SCHEMA = ['PGBRANCH_CONFIG'] as const;

const ENV_PREFIX = 'PGBRANCH_';
const DEFAULT_FILES = ['pgbranch.yaml', path.join('config', 'pgbranch.yaml')];

const toFlag = (words: string) => `--${words.replaceAll(/[._]/g, '-')}`;
const toEnvVar = (words: string) => ENV_PREFIX + words.replaceAll(/[.-]/g, '_').toUpperCase();

function unwrap(schema: z.ZodType): z.ZodType {
  if (
    schema instanceof z.ZodDefault ||
    schema instanceof z.ZodPrefault ||
    schema instanceof z.ZodOptional
  ) {
    return unwrap(schema.unwrap() as z.ZodType);
  }
  return schema;
}

function sectionOf(schema: z.ZodType): z.ZodObject | undefined {
  const inner = unwrap(schema);
  if (inner instanceof z.ZodObject) return inner;
  if (inner instanceof z.ZodPipe) return sectionOf(inner.in as z.ZodType);
  return undefined;
}

function expectation(schema: z.ZodType): string {
  if (schema === duration)
    return 'a duration such as 500ms, 30s, 5m, 2h, 7d or a number of seconds';
  if (schema instanceof z.ZodEnum) return `one of ${schema.options.join(', ')}`;
  if (schema instanceof z.ZodNumber) {
    const kind = schema.isInt ? 'integer' : 'number';
    const { minValue: min, maxValue: max } = schema;
    const bounded = (n: number | null): n is number =>
      n !== null && Math.abs(n) < Number.MAX_SAFE_INTEGER;
    if (min === 0 && !bounded(max) && !schema.safeParse(0).success) return `a positive ${kind}`;
    if (bounded(min) && bounded(max)) return `an ${kind} from ${min} to ${max}`;
    return `a ${kind}`;
  }
  if (schema instanceof z.ZodString) {
    return (schema.minLength ?? 0) > 0 ? 'a non-empty string' : 'a string';
  }
  return 'a valid value';
}

function getAt(object: unknown, segments: string[]): unknown {
  return segments.reduce<unknown>(
    (node, segment) => (node as Record<string, unknown> | undefined)?.[segment],
    object,
  );
}

function setAt(object: Record<string, unknown>, segments: string[], value: unknown): void {
  const last = segments.at(-1)!;
  let node = object;
  for (const segment of segments.slice(0, -1)) {
    node[segment] ??= {};
    node = node[segment] as Record<string, unknown>;
  }
  node[last] = value;
}

const defaults = (): Config => configSchema.parse({});
const defaultConfig = defaults();

function walk(section: z.ZodObject, prefix: string[], into: ConfigKey[], sections: Set<string>) {
  for (const [name, child] of Object.entries(section.shape as Record<string, z.ZodType>)) {
    const segments = [...prefix, name];
    const dotted = segments.join('.');
    const nested = sectionOf(child);
    if (nested) {
      sections.add(dotted);
      walk(nested, segments, into, sections);
      continue;
    }
    const leafPath = dotted as ConfigPath;
    const alias = ALIASES[leafPath];
    const schema = unwrap(child);
    into.push({
      path: leafPath,
      flags: [toFlag(dotted), ...(alias ? [toFlag(alias)] : [])],
      envVars: [toEnvVar(dotted), ...(alias ? [toEnvVar(alias)] : [])],
      schema,
      default: getAt(defaultConfig, segments),
      expects: expectation(schema),
    });
  }
}

const sectionPaths = new Set<string>();
/** Every leaf key of the schema, in schema order. */
export const configKeys: readonly ConfigKey[] = (() => {
  const keys: ConfigKey[] = [];
  walk(configSchema, [], keys, sectionPaths);
  return keys;
})();

const keyByPath = new Map(configKeys.map((key) => [key.path as string, key]));
const keyByFlag = new Map(configKeys.flatMap((key) => key.flags.map((flag) => [flag, key])));
const keyByEnvVar = new Map(configKeys.flatMap((key) => key.envVars.map((name) => [name, key])));

/** A value for one key and the place it came from: a flag, a variable or a file name. */
interface Setting {
  value: unknown;
  source: string;
}
type Layer = Map<string, Setting>;

function levenshtein(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j]! + 1, current[j - 1]! + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length]!;
}

/** The candidate a typo most likely meant; a bare YAML key also matches a nested one (port). */
export function closest(word: string, candidates: Iterable<string>): string | undefined {
  const tail = (s: string) => s.slice(s.lastIndexOf('.') + 1);
  let best: { candidate: string; distance: number } | undefined;
  for (const candidate of candidates) {
    const distance = Math.min(
      levenshtein(word.toLowerCase(), candidate.toLowerCase()),
      levenshtein(tail(word).toLowerCase(), tail(candidate).toLowerCase()) + 1,
    );
    if (!best || distance < best.distance) best = { candidate, distance };
  }
  return best && best.distance <= Math.max(2, Math.floor(word.length / 3))
    ? best.candidate
    : undefined;
}

function unknown(what: string, word: string, candidates: Iterable<string>): string {
  const guess = closest(word, candidates);
  return guess
    ? `unknown ${what}; did you mean ${guess}?`
    : `unknown ${what}; npx pgbranch --help lists every option`;
}

const show = (value: unknown) => JSON.stringify(value);

/** A value as error messages may quote it: passwords, in keys or URLs, are left out. */
function quote(key: ConfigKey, value: unknown): string {
  if (key.path.endsWith('password')) return `a ${typeof value}`;
  return show(typeof value === 'string' ? value.replace(/(\/\/[^:/@]*:)[^@/]*@/, '$1***@') : value);
}

interface Args {
  flags: Layer;
  configFile: Setting | undefined;
  help: boolean;
  version: boolean;
  command: string[];
  problems: string[];
}

function parseArgs(argv: string[]): Args {
  const args: Args = {
    flags: new Map(),
    configFile: undefined,
    help: false,
    version: false,
    command: [],
    problems: [],
  };
  const longFlags = ['--config', '--help', '--version', ...keyByFlag.keys()];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      args.command.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      args.command.push(arg);
      continue;
    }
    const equals = arg.indexOf('=');
    const name = equals === -1 ? arg : arg.slice(0, equals);
    if (['-h', '--help', '-V', '--version'].includes(name)) {
      if (equals !== -1) args.problems.push(`${name} takes no value`);
      else if (name === '-h' || name === '--help') args.help = true;
      else args.version = true;
      continue;
    }
    const key = keyByFlag.get(name);
    if (!key && name !== '--config') {
      args.problems.push(unknown(`flag ${name}`, name, longFlags));
      continue;
    }
    let value: string;
    if (equals !== -1) {
      value = arg.slice(equals + 1);
    } else {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('-')) {
        args.problems.push(
          `${name} needs a value` +
            (next === undefined ? '' : `; to give one that starts with "-", write ${name}=${next}`),
        );
        // A word that is no flag was most likely meant as this value; one message is enough.
        if (next !== undefined && ![...longFlags, '-h', '-V'].includes(next.split('=')[0]!)) i++;
        continue;
      }
      value = next;
      i++;
    }
    if (value === '') {
      args.problems.push(`${name} was given an empty value; give a value or leave the flag out`);
      continue;
    }
    if (key) args.flags.set(key.path, { value, source: name });
    else args.configFile = { value, source: name };
  }
  return args;
}

/** PGBRANCH_* variables as settings; an empty variable counts as unset. */
function readEnv(env: NodeJS.ProcessEnv, problems: string[]): Layer {
  const layer: Layer = new Map();
  const allowed = new Set<string>(ENV_OUTSIDE_SCHEMA);
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith(ENV_PREFIX) || allowed.has(name) || !value) continue;
    const key = keyByEnvVar.get(name);
    if (!key) {
      problems.push(
        unknown(`environment variable ${name}`, name, [...allowed, ...keyByEnvVar.keys()]),
      );
      continue;
    }
    const earlier = layer.get(key.path);
    if (earlier && earlier.value !== value) {
      problems.push(
        `${key.path} is set by both ${earlier.source} (${show(earlier.value)}) and ${name} (${show(value)}); unset one of them`,
      );
      continue;
    }
    layer.set(key.path, { value, source: name });
  }
  return layer;
}

/** The file to read and the name to report it by, or undefined when there is none. */
function findFile(
  named: Setting | undefined,
  cwd: string,
): { source: string; text: string } | undefined {
  if (named) {
    const file = String(named.value);
    try {
      return { source: file, text: readFileSync(path.resolve(cwd, file), 'utf8') };
    } catch (error) {
      const reason =
        (error as NodeJS.ErrnoException).code === 'ENOENT'
          ? 'does not exist'
          : (error as Error).message;
      throw new ConfigError(`config file ${file} (from ${named.source}) ${reason}`);
    }
  }
  for (const file of DEFAULT_FILES) {
    try {
      return { source: file, text: readFileSync(path.resolve(cwd, file), 'utf8') };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new ConfigError(`config file ${file}: ${(error as Error).message}`);
      }
    }
  }
  return undefined;
}

const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/** The file's leaf values as settings. An empty value (`key:` or `section:`) counts as unset. */
function readFile(source: string, text: string, problems: string[]): Layer {
  let document: unknown;
  try {
    document = parseYaml(text);
  } catch (error) {
    throw new ConfigError(`${source}: ${(error as Error).message}`);
  }
  const layer: Layer = new Map();
  const visit = (node: unknown, prefix: string) => {
    if (node === null) return;
    if (!isPlainObject(node)) {
      const what = prefix ? `${prefix} (from ${source})` : source;
      problems.push(`${what}: expected a mapping of keys, got ${show(node)}`);
      return;
    }
    for (const [name, value] of Object.entries(node)) {
      const dotted = prefix ? `${prefix}.${name}` : name;
      if (sectionPaths.has(dotted)) visit(value, dotted);
      else if (keyByPath.has(dotted)) {
        if (value !== null) layer.set(dotted, { value, source });
      } else {
        problems.push(unknown(`key ${dotted} in ${source}`, dotted, keyByPath.keys()));
      }
    }
  };
  visit(document, '');
  return layer;
}

function explain(issue: z.core.$ZodIssue, settings: Layer): string {
  const dotted = issue.path.join('.');
  const setting = settings.get(dotted);
  const key = keyByPath.get(dotted);
  if (!setting || !key) return `${dotted || 'config'}: ${issue.message}`;
  const where = `${dotted} (from ${setting.source})`;
  // Custom and format messages were written by the schema's author for a person; keep them.
  if (issue.code === 'custom') return `${where}: ${issue.message}`;
  if (issue.code === 'invalid_format')
    return `${where}: ${issue.message}, got ${quote(key, setting.value)}`;
  return `${where}: expected ${key.expects}, got ${quote(key, setting.value)}`;
}

const loopback = new BlockList();
loopback.addSubnet('127.0.0.0', 8, 'ipv4');
loopback.addAddress('::1', 'ipv6');

export function isLoopback(host: string): boolean {
  if (host.toLowerCase() === 'localhost') return true;
  const family = isIP(host);
  return family !== 0 && loopback.check(host, family === 4 ? 'ipv4' : 'ipv6');
}

/**
 * Whether the admin API or the metrics are served over HTTPS: as `<part>.tls` says, and when it is
 * unset, whenever there is a certificate and they listen beyond loopback, where a token or the
 * metrics would otherwise cross a network in clear. The server and the CLI decide alike.
 */
export function servesHttps(config: Config, part: 'admin' | 'metrics'): boolean {
  if (config.tls.cert === undefined) return false;
  return config[part].tls ?? !isLoopback(config[part].host);
}

/**
 * The address a client on this machine connects to for a server listening on `host`: one that
 * listens on every interface (0.0.0.0, ::) is reached on loopback, not at 0.0.0.0.
 */
export function reachableHost(host: string): string {
  return host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
}

/** A host as a URL writes it: IPv6 in brackets. */
export function hostInUrl(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/**
 * Reads the configuration for `pgbranch argv...`. With --help or --version the file, environment
 * and other flags are not read, so both answer even when the configuration is broken; config is
 * then the defaults. Throws ConfigError naming every bad key and where its value came from.
 */
export function loadConfig(
  argv: string[],
  env: NodeJS.ProcessEnv,
  cwd: string = process.cwd(),
): LoadedConfig {
  const args = parseArgs(argv);
  const { help, version, command } = args;
  if (help || version) return { config: defaults(), sources: [], help, version, command };

  const problems = args.problems;
  const environment = readEnv(env, problems);
  const named =
    args.configFile ??
    (env.PGBRANCH_CONFIG ? { value: env.PGBRANCH_CONFIG, source: 'PGBRANCH_CONFIG' } : undefined);
  const file = findFile(named, cwd);
  const fromFile = file ? readFile(file.source, file.text, problems) : new Map();
  if (problems.length > 0) throw new ConfigError(problems.join('\n'));

  const settings: Layer = new Map([...fromFile, ...environment, ...args.flags]);
  const input: Record<string, unknown> = {};
  for (const [dotted, { value }] of settings) setAt(input, dotted.split('.'), value);
  const result = configSchema.safeParse(input);
  if (!result.success) {
    throw new ConfigError(result.error.issues.map((issue) => explain(issue, settings)).join('\n'));
  }
  const config = result.data;
  const { cert, key, mode } = config.tls;
  if ((cert === undefined) !== (key === undefined) || (mode === 'require' && !cert)) {
    const sourceOf = (dotted: string) => settings.get(dotted)?.source ?? 'default';
    const missing = cert === undefined ? 'tls.cert' : 'tls.key';
    const given = cert === undefined ? (key === undefined ? 'tls.mode' : 'tls.key') : 'tls.cert';
    throw new ConfigError(
      `${given} (from ${sourceOf(given)}) needs ${missing} too (${missing === 'tls.cert' ? '--tls-cert, PGBRANCH_TLS_CERT' : '--tls-key, PGBRANCH_TLS_KEY'}): ` +
        `TLS takes a certificate and its key; npx pgbranch tls init makes both for development.`,
    );
  }
  for (const part of ['admin', 'metrics'] as const) {
    if (config[part].tls === true && cert === undefined) {
      throw new ConfigError(
        `${part}.tls (from ${settings.get(`${part}.tls`)?.source ?? 'default'}) needs tls.cert and tls.key: ` +
          `HTTPS uses the proxy's certificate; npx pgbranch tls init makes one for development.`,
      );
    }
  }
  if (config.upstream) {
    const problem = (message: string) =>
      new ConfigError(
        `upstream (from ${settings.get('upstream')?.source ?? 'default'}): ${message}`,
      );
    if (!URL.canParse(config.upstream)) throw problem('not a valid URL');
    try {
      parseUpstreamTls(new URL(config.upstream));
    } catch (error) {
      if (!(error instanceof UpstreamTlsError)) throw error;
      throw problem(error.message);
    }
  }
  if (config.source.url !== undefined && config.upstream !== undefined) {
    const sourceOf = (dotted: string) => settings.get(dotted)?.source ?? 'default';
    throw new ConfigError(
      `source.url (from ${sourceOf('source.url')}) and upstream (from ${sourceOf('upstream')}) exclude each other: ` +
        'with a source, pgbranch runs its own standby of it as the server behind the proxy. Set one of them.',
    );
  }
  if (config.auth === 'trust' && !isLoopback(config.listen.host)) {
    const sourceOf = (dotted: string) => settings.get(dotted)?.source ?? 'default';
    throw new ConfigError(
      `auth (from ${sourceOf('auth')}): trust lets anyone who can reach ${config.listen.host} ` +
        `connect as any user without a password, so it is only allowed when listen.host ` +
        `(from ${sourceOf('listen.host')}) is a loopback address: 127.0.0.1, ::1 or localhost. ` +
        `Listen on 127.0.0.1, or use auth scram-sha-256 and give each role a password.`,
    );
  }

  if (config.admin.enabled && config.admin.token === undefined && !isLoopback(config.admin.host)) {
    const sourceOf = (dotted: string) => settings.get(dotted)?.source ?? 'default';
    throw new ConfigError(
      `admin.host (from ${sourceOf('admin.host')}): the admin API may only listen on ${config.admin.host} with a token, ` +
        `since it can reset and delete every branch: set admin.token (PGBRANCH_ADMIN_TOKEN, --admin-token), ` +
        `or serve it on 127.0.0.1.`,
    );
  }

  const sources = [
    ...(file ? [file.source] : []),
    ...(environment.size > 0 ? ['environment'] : []),
    ...(args.flags.size > 0 ? ['flags'] : []),
  ];
  return { config, sources, help, version, command };
}
