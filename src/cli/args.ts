// The command line of `pgbranch branch ...`, `pgbranch gc ...` and `pgbranch source ...`: which command, its words and
// options, and the flags that are pgbranch settings (--admin-port, --config, ...), which are left
// for loadConfig so that the CLI finds the server through the same settings the server reads.
import { closest, configKeys } from '../config/load.js';

export class UsageError extends Error {
  override name = 'UsageError';
}

export type BranchCommand =
  | 'list'
  | 'show'
  | 'create'
  | 'reset'
  | 'snapshot'
  | 'restore'
  | 'delete'
  | 'protect'
  | 'unprotect'
  | 'expire'
  | 'diff';

/** A command's options: flags that take a value, flags that don't, and its positional words. */
interface Spec {
  values: readonly string[];
  switches: readonly string[];
  /** Names of the positional words, for the usage line; all of them are required. */
  words: readonly string[];
}

const spec = (words: string[], values: string[] = [], switches: string[] = []): Spec => ({
  words,
  values,
  switches,
});

const BRANCH_COMMANDS: Readonly<Record<BranchCommand, Spec>> = {
  list: spec([], ['--database'], ['--tree']),
  show: spec(['NAME']),
  create: spec(['NAME'], ['--from', '--snapshot', '--at', '--expires', '--ttl']),
  reset: spec(['NAME']),
  snapshot: spec(['NAME', 'RESTORE_POINT']),
  restore: spec(['NAME', 'RESTORE_POINT']),
  delete: spec(['NAME'], ['--snapshot'], ['--cascade']),
  protect: spec(['NAME']),
  unprotect: spec(['NAME']),
  expire: spec(['NAME'], ['--expires', '--ttl'], ['--never']),
  diff: spec(['FROM', 'TO']),
};

const GC: Spec = spec([], ['--keep-from', '--pattern', '--database'], ['--apply']);
export type SourceCommand = 'status' | 'resync';
const SOURCE_COMMANDS: Readonly<Record<SourceCommand, Spec>> = {
  status: spec([]),
  resync: spec([]),
};
/** `url [DATABASE]`: the one word is optional (PGDATABASE). */
const URL_SPEC: Spec = spec([], ['--branch', '--user'], ['--env']);

/** Flags every command takes. */
const COMMON_SWITCHES = ['--json'];

export type Invocation =
  | { command: 'help'; topic: 'branch' | 'gc' | 'url' | 'source' }
  | {
      command: 'branch';
      sub: BranchCommand;
      words: string[];
      options: Options;
      json: boolean;
      /** Settings flags, as loadConfig takes them. */
      configArgv: string[];
    }
  | { command: 'gc'; options: Options; json: boolean; configArgv: string[] }
  | { command: 'source'; sub: SourceCommand; options: Options; json: boolean; configArgv: string[] }
  | { command: 'url'; words: string[]; options: Options; json: boolean; configArgv: string[] };

/** A value flag maps to its values in order (repeatable ones keep all); a switch to []. */
export type Options = Map<string, string[]>;

const configFlags = new Set(['--config', ...configKeys.flatMap((key) => key.flags)]);

/** The first word of argv that is not a flag or a flag's value: `branch` in `--admin-port 1 branch`. */
export function commandWord(argv: string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') return argv[i + 1];
    if (!arg.startsWith('-') || arg === '-') return arg;
    if (!arg.includes('=') && configFlags.has(arg)) i++;
  }
  return undefined;
}

/** `; did you mean X?` when a candidate is close enough to be what was meant. */
function suggest(word: string, candidates: Iterable<string>): string {
  const guess = closest(word, candidates);
  return guess === undefined ? '' : `; did you mean ${guess}?`;
}

/**
 * Parses `branch SUB ...` or `gc ...` (argv as given to pgbranch, settings flags anywhere).
 * Throws UsageError with a message for a person.
 */
export function parseInvocation(argv: string[]): Invocation {
  const words: string[] = [];
  const flags: { name: string; value?: string }[] = [];
  const configArgv: string[] = [];
  let help = false;
  // Which flags take a value depends on the command, which may come after some flags: take the
  // value of any known value flag, then check against the command's own list below.
  const allValueFlags = new Set(
    [...Object.values(BRANCH_COMMANDS), GC, URL_SPEC].flatMap((s) => s.values),
  );
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      words.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      words.push(arg);
      continue;
    }
    if (arg === '-h' || arg === '--help') {
      help = true;
      continue;
    }
    const equals = arg.indexOf('=');
    const name = equals === -1 ? arg : arg.slice(0, equals);
    const takesValue = configFlags.has(name) || allValueFlags.has(name);
    let value: string | undefined;
    if (equals !== -1) value = arg.slice(equals + 1);
    else if (takesValue) {
      value = argv[i + 1];
      if (value === undefined || (value.startsWith('-') && value !== '-')) {
        throw new UsageError(`${name} needs a value`);
      }
      i++;
    }
    if (configFlags.has(name)) configArgv.push(name, value!);
    else flags.push({ name, value });
  }

  const [command, sub, ...rest] = words;
  if (command !== 'branch' && command !== 'gc' && command !== 'url' && command !== 'source') {
    throw new UsageError(`unknown command "${command ?? ''}"`);
  }
  if (command === 'source') {
    if (help) return { command: 'help', topic: 'source' };
    if (sub === undefined) throw new UsageError('source needs a command: status or resync');
    if (!(sub in SOURCE_COMMANDS)) {
      throw new UsageError(
        `unknown command "source ${sub}"${suggest(sub, Object.keys(SOURCE_COMMANDS))}`,
      );
    }
    const options = checkFlags(flags, SOURCE_COMMANDS[sub as SourceCommand], `source ${sub}`);
    if (rest.length > 0) throw new UsageError(`source ${sub} takes no words, got "${rest[0]}"`);
    return {
      command,
      sub: sub as SourceCommand,
      options,
      json: options.has('--json'),
      configArgv,
    };
  }
  if (command === 'url') {
    if (help) return { command: 'help', topic: 'url' };
    const options = checkFlags(flags, URL_SPEC, 'url');
    if (rest.length > 0) throw new UsageError(`url takes one database, got "${rest[0]}" too`);
    return {
      command,
      words: sub === undefined ? [] : [sub],
      options,
      json: options.has('--json'),
      configArgv,
    };
  }
  if (command === 'gc') {
    if (help) return { command: 'help', topic: 'gc' };
    const options = checkFlags(flags, GC, 'gc');
    if (sub !== undefined) throw new UsageError(`gc takes no words, got "${sub}"`);
    if (!options.has('--keep-from')) {
      throw new UsageError(
        'gc needs --keep-from FILE (or - for standard input): the live git branches',
      );
    }
    return { command, options, json: options.has('--json'), configArgv };
  }
  if (help || sub === undefined) {
    if (!help) throw new UsageError('branch needs a command: list, create, reset, ...');
    return { command: 'help', topic: 'branch' };
  }
  if (!(sub in BRANCH_COMMANDS)) {
    throw new UsageError(
      `unknown command "branch ${sub}"${suggest(sub, Object.keys(BRANCH_COMMANDS))}`,
    );
  }
  const branchCommand = sub as BranchCommand;
  const commandSpec = BRANCH_COMMANDS[branchCommand];
  const options = checkFlags(flags, commandSpec, `branch ${sub}`);
  if (rest.length !== commandSpec.words.length) {
    const usage = [`branch ${sub}`, ...commandSpec.words].join(' ');
    throw new UsageError(
      rest.length < commandSpec.words.length
        ? `${usage}: ${commandSpec.words[rest.length]} is missing`
        : `${usage}: unexpected "${rest[commandSpec.words.length]}"`,
    );
  }
  if (branchCommand === 'expire') {
    const given = ['--expires', '--ttl', '--never'].filter((flag) => options.has(flag));
    if (given.length === 0)
      throw new UsageError('branch expire needs --expires DATE, --ttl DURATION or --never');
    if (options.has('--never') && given.length > 1) {
      throw new UsageError('branch expire: --never clears both expiries; give it alone');
    }
  }
  return {
    command,
    sub: branchCommand,
    words: rest,
    options,
    json: options.has('--json'),
    configArgv,
  };
}

function checkFlags(
  flags: { name: string; value?: string }[],
  commandSpec: Spec,
  what: string,
): Options {
  const options: Options = new Map();
  const known = [...commandSpec.values, ...commandSpec.switches, ...COMMON_SWITCHES];
  for (const { name, value } of flags) {
    if (!known.includes(name)) {
      const others = [...known, ...configFlags];
      throw new UsageError(`${what} does not take ${name}${suggest(name, others)}`);
    }
    const isSwitch = !commandSpec.values.includes(name);
    if (isSwitch && value !== undefined) throw new UsageError(`${name} takes no value`);
    if (!isSwitch && options.has(name) && name !== '--pattern') {
      throw new UsageError(`${name} was given twice`);
    }
    options.set(name, [...(options.get(name) ?? []), ...(isSwitch ? [] : [value!])]);
  }
  return options;
}
