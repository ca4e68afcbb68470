// The SQL console's language: a command string as psql sends it, parsed into typed commands.
// Keywords are case-insensitive; names are taken as written (no case folding, since branch names
// come from git), bare when they hold no space, quote or semicolon, else double-quoted.
import { parentWithin } from '../branch/names.js';
import { errors } from '../errors.js';
import { ttlMs } from './ttl.js';

export type ShowTarget = 'pools' | 'clients' | 'servers' | 'source' | 'help' | 'version';

export type ConsoleCommand =
  | { kind: 'show'; what: ShowTarget }
  /** Every branch, those of one root database, or one branch. */
  | { kind: 'show'; what: 'branches'; of?: string }
  /** Restore points of every branch, of one root database's branches, or of one branch. */
  | { kind: 'show'; what: 'snapshots'; of?: string }
  | {
      kind: 'create';
      /** `app@feature-x`. */
      name: string;
      /** The parent's branch name within the same database (`main`, `develop`). */
      parent?: string;
      snapshot?: string;
      ttlMs?: number;
      expiresAt?: string;
    }
  | { kind: 'reset'; name: string }
  | { kind: 'drop'; name: string; cascade: boolean }
  | { kind: 'snapshot'; name: string; snapshot: string }
  | { kind: 'restore'; name: string; snapshot: string }
  | { kind: 'drop-snapshot'; name: string; snapshot: string }
  | { kind: 'protect'; name: string; on: boolean }
  /** Without a database: every database that has a pool now. */
  | { kind: 'pause'; database?: string }
  /** Without a database: every paused database. */
  | { kind: 'resume'; database?: string }
  | { kind: 'reload' }
  /** Rebuilds the standby of the source. */
  | { kind: 'resync' };

/** The commands, as SHOW HELP lists them and syntax errors hint at them. */
export const COMMANDS: readonly { syntax: string; description: string }[] = [
  {
    syntax: 'SHOW BRANCHES [database | branch]',
    description: 'branches, with parent, age, size, clients, protection, expiry',
  },
  {
    syntax: 'SHOW SNAPSHOTS [database | branch]',
    description: 'restore points',
  },
  { syntax: 'SHOW POOLS', description: 'server connection pools' },
  { syntax: 'SHOW CLIENTS', description: 'clients past login, and whether they are pinned' },
  { syntax: 'SHOW SERVERS', description: 'server connections, idle and in use' },
  {
    syntax: 'SHOW SOURCE',
    description: 'the source and its standby: streaming, positions, lag, disk, problem',
  },
  { syntax: 'SHOW VERSION', description: "pgbranch's version" },
  { syntax: 'SHOW HELP', description: 'this list' },
  {
    syntax: 'CREATE BRANCH db@name [FROM parent [SNAPSHOT s]] [TTL 7d] [EXPIRES 2026-12-01]',
    description: 'a branch of db@parent (default db, the root), or of its restore point s',
  },
  {
    syntax: 'RESET BRANCH db@name',
    description: "a fresh clone of the parent's current state (clients are drained)",
  },
  {
    syntax: 'DROP BRANCH db@name [CASCADE]',
    description: 'drops the branch (and, with CASCADE, its children)',
  },
  { syntax: 'SNAPSHOT BRANCH db@name AS s', description: 'saves the branch as restore point s' },
  { syntax: 'RESTORE BRANCH db@name TO s', description: 'resets the branch to restore point s' },
  { syntax: 'DROP SNAPSHOT s OF db@name', description: 'drops restore point s' },
  { syntax: 'PROTECT BRANCH db@name', description: 'refuses reset and drop until unprotected' },
  { syntax: 'UNPROTECT BRANCH db@name', description: 'allows reset and drop again' },
  {
    syntax: 'PAUSE [db@name]',
    description: 'new transactions wait; waits for running ones (no name: every pooled database)',
  },
  { syntax: 'RESUME [db@name]', description: 'ends a PAUSE (no name: every paused database)' },
  { syntax: 'RELOAD', description: 'reads the configuration again' },
  {
    syntax: 'RESYNC SOURCE',
    description: 'rebuilds the standby of the source from a new base backup; branches keep running',
  },
];

/**
 * Parses what a simple Query message carries: one command or several separated by semicolons.
 * All or nothing, as PostgreSQL parses a query string before running any of it: a syntax error
 * anywhere is thrown (42601) and nothing runs.
 */
export function parseCommands(text: string): ConsoleCommand[] {
  const commands: ConsoleCommand[] = [];
  let statement: Token[] = [];
  for (const token of tokenize(text)) {
    if (token.kind === ';') {
      if (statement.length > 0) commands.push(parseStatement(statement));
      statement = [];
    } else {
      statement.push(token);
    }
  }
  if (statement.length > 0) commands.push(parseStatement(statement));
  return commands;
}

type Token =
  | { kind: 'word'; text: string; quoted: boolean }
  | { kind: 'string'; text: string }
  | { kind: ';' };

function tokenize(text: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (c === '-' && text[i + 1] === '-') {
      const end = text.indexOf('\n', i);
      i = end < 0 ? text.length : end + 1;
    } else if (c === ';') {
      tokens.push({ kind: ';' });
      i++;
    } else if (c === '"' || c === "'") {
      const { value, end } = quoted(text, i);
      if (c === '"' && value.length === 0) throw syntaxError('zero-length delimited identifier');
      tokens.push(
        c === '"' ? { kind: 'word', text: value, quoted: true } : { kind: 'string', text: value },
      );
      i = end;
    } else {
      let end = i;
      while (end < text.length && !/[\s;"']/.test(text[end]!)) end++;
      tokens.push({ kind: 'word', text: text.slice(i, end), quoted: false });
      i = end;
    }
  }
  return tokens;
}

/** A quoted identifier or string starting at `start`, the quote doubled inside it. */
function quoted(text: string, start: number): { value: string; end: number } {
  const quote = text[start]!;
  let value = '';
  let i = start + 1;
  for (;;) {
    const next = text.indexOf(quote, i);
    if (next < 0) {
      throw syntaxError(
        quote === '"' ? 'unterminated quoted identifier' : 'unterminated quoted string',
      );
    }
    value += text.slice(i, next);
    if (text[next + 1] === quote) {
      value += quote;
      i = next + 2;
    } else {
      return { value, end: next + 1 };
    }
  }
}

/** Reads one statement's tokens left to right. */
class Words {
  private i = 0;
  constructor(
    private readonly tokens: Token[],
    /** The statement's syntax, for errors. */
    private syntax = '',
  ) {}

  expecting(syntax: string): this {
    this.syntax = syntax;
    return this;
  }

  /** Consumes the next token if it is this keyword. */
  keyword(...words: string[]): string | undefined {
    const token = this.tokens[this.i];
    if (token?.kind !== 'word' || token.quoted) return undefined;
    const upper = token.text.toUpperCase();
    if (!words.includes(upper)) return undefined;
    this.i++;
    return upper;
  }

  need(word: string): void {
    if (!this.keyword(word)) this.fail();
  }

  /** A name: a bare or double-quoted word that is not one of the statement's keywords. */
  name(...reserved: string[]): string {
    const token = this.tokens[this.i];
    if (token?.kind !== 'word' || (!token.quoted && reserved.includes(token.text.toUpperCase()))) {
      this.fail();
    }
    this.i++;
    return token.text;
  }

  optionalName(): string | undefined {
    return this.done() ? undefined : this.name();
  }

  /** A value: a bare word or a single-quoted string. */
  value(): string {
    const token = this.tokens[this.i];
    if (token?.kind === 'string' || (token?.kind === 'word' && !token.quoted)) {
      this.i++;
      return token.text;
    }
    return this.fail();
  }

  done(): boolean {
    return this.i >= this.tokens.length;
  }

  end(): void {
    if (!this.done()) this.fail();
  }

  fail(): never {
    const token = this.tokens[this.i];
    const near =
      token === undefined
        ? 'at end of input'
        : `at or near "${token.kind === ';' ? ';' : token.text}"`;
    throw syntaxError(`syntax error ${near}`, this.syntax ? `Write: ${this.syntax}` : undefined);
  }
}

function parseStatement(tokens: Token[]): ConsoleCommand {
  const w = new Words(tokens);
  const verb = w.keyword(
    'SHOW',
    'CREATE',
    'RESET',
    'DROP',
    'SNAPSHOT',
    'RESTORE',
    'PROTECT',
    'UNPROTECT',
    'PAUSE',
    'RESUME',
    'RELOAD',
    'RESYNC',
  );
  switch (verb) {
    case 'SHOW':
      return parseShow(w);
    case 'CREATE':
      return parseCreate(w.expecting(syntaxOf('CREATE BRANCH')));
    case 'RESET': {
      w.expecting(syntaxOf('RESET BRANCH')).need('BRANCH');
      const name = w.name();
      w.end();
      return { kind: 'reset', name };
    }
    case 'DROP': {
      if (w.keyword('SNAPSHOT')) {
        w.expecting(syntaxOf('DROP SNAPSHOT'));
        const snapshot = w.name('OF');
        w.need('OF');
        const name = w.name();
        w.end();
        return { kind: 'drop-snapshot', name, snapshot };
      }
      w.expecting(`${syntaxOf('DROP BRANCH')}, or ${syntaxOf('DROP SNAPSHOT')}`).need('BRANCH');
      const name = w.name();
      const cascade = w.keyword('CASCADE', 'RESTRICT') === 'CASCADE';
      w.end();
      return { kind: 'drop', name, cascade };
    }
    case 'SNAPSHOT': {
      w.expecting(syntaxOf('SNAPSHOT BRANCH')).need('BRANCH');
      const name = w.name('AS');
      w.need('AS');
      const snapshot = w.name();
      w.end();
      return { kind: 'snapshot', name, snapshot };
    }
    case 'RESTORE': {
      w.expecting(syntaxOf('RESTORE BRANCH')).need('BRANCH');
      const name = w.name('TO');
      w.need('TO');
      const snapshot = w.name();
      w.end();
      return { kind: 'restore', name, snapshot };
    }
    case 'PROTECT':
    case 'UNPROTECT': {
      w.expecting(syntaxOf(`${verb} BRANCH`)).need('BRANCH');
      const name = w.name();
      w.end();
      return { kind: 'protect', name, on: verb === 'PROTECT' };
    }
    case 'PAUSE':
    case 'RESUME': {
      const kind = verb === 'PAUSE' ? 'pause' : 'resume';
      w.expecting(syntaxOf(verb));
      const database = w.optionalName();
      w.end();
      return database === undefined ? { kind } : { kind, database };
    }
    case 'RELOAD':
      w.expecting('RELOAD').end();
      return { kind: 'reload' };
    case 'RESYNC':
      w.expecting('RESYNC SOURCE').need('SOURCE');
      w.end();
      return { kind: 'resync' };
    default:
      return w.fail();
  }
}

function parseShow(w: Words): ConsoleCommand {
  const targets = ['BRANCHES', 'SNAPSHOTS', 'POOLS', 'CLIENTS', 'SERVERS', 'SOURCE', 'VERSION'];
  w.expecting(`SHOW ${[...targets, 'HELP'].join(' | ')}`);
  const what = w.keyword(...targets, 'HELP');
  if (what === undefined) return w.fail();
  if (what === 'BRANCHES') {
    const of = w.optionalName();
    w.end();
    return of === undefined
      ? { kind: 'show', what: 'branches' }
      : { kind: 'show', what: 'branches', of };
  }
  if (what === 'SNAPSHOTS') {
    const of = w.optionalName();
    w.end();
    return of === undefined
      ? { kind: 'show', what: 'snapshots' }
      : { kind: 'show', what: 'snapshots', of };
  }
  w.end();
  return { kind: 'show', what: what.toLowerCase() as ShowTarget };
}

function parseCreate(w: Words): ConsoleCommand {
  w.need('BRANCH');
  const options = ['FROM', 'SNAPSHOT', 'TTL', 'EXPIRES'];
  const name = w.name(...options);
  const at = name.indexOf('@');
  if (at <= 0 || at === name.length - 1) {
    throw syntaxError(
      `branch "${name}" names no database: write database@branch, e.g. app@${at < 0 ? name : 'feature-x'}`,
    );
  }
  const database = name.slice(0, at);
  const command: Extract<ConsoleCommand, { kind: 'create' }> = { kind: 'create', name };
  if (w.keyword('FROM')) {
    command.parent = parentWithin(database, w.name(...options));
    if (w.keyword('SNAPSHOT')) command.snapshot = w.name(...options);
  }
  for (;;) {
    if (command.ttlMs === undefined && w.keyword('TTL')) {
      command.ttlMs = ttlMs(w.value());
    } else if (command.expiresAt === undefined && w.keyword('EXPIRES')) {
      command.expiresAt = w.value();
    } else {
      break;
    }
  }
  w.end();
  return command;
}

function syntaxOf(prefix: string): string {
  return COMMANDS.find((c) => c.syntax.startsWith(prefix))?.syntax ?? prefix;
}

/** The hint of a syntax error that is not in a known command. */
const EVERY_COMMAND =
  'Commands: SHOW BRANCHES|SNAPSHOTS|POOLS|CLIENTS|SERVERS|SOURCE|VERSION|HELP, ' +
  'CREATE|RESET|DROP|SNAPSHOT|RESTORE|PROTECT|UNPROTECT BRANCH, DROP SNAPSHOT, PAUSE, RESUME, RELOAD, ' +
  'RESYNC SOURCE. ' +
  'SHOW HELP describes them.';

function syntaxError(message: string, hint = EVERY_COMMAND) {
  return errors.consoleSyntax(message, hint);
}
