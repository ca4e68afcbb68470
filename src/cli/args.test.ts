import { describe, expect, it } from 'vitest';
import { commandWord, parseInvocation, UsageError } from './args.js';

function usageError(argv: string[]): string {
  try {
    parseInvocation(argv);
  } catch (error) {
    expect(error).toBeInstanceOf(UsageError);
    return (error as Error).message;
  }
  throw new Error('expected a UsageError');
}

describe('commandWord', () => {
  it('finds the command after settings flags and their values', () => {
    expect(commandWord(['branch', 'list'])).toBe('branch');
    expect(commandWord(['--admin-port', '7931', 'branch', 'list'])).toBe('branch');
    expect(commandWord(['--admin-port=7931', 'gc', '--keep-from', '-'])).toBe('gc');
    expect(commandWord(['--config', 'branch', 'gc'])).toBe('gc');
    expect(commandWord(['--port', '0', '--log-format', 'json'])).toBeUndefined();
  });
});

describe('parseInvocation', () => {
  it('separates settings flags, which go to loadConfig, from the command and its options', () => {
    expect(
      parseInvocation([
        '--admin-port',
        '7931',
        'branch',
        'create',
        'app@pr-1',
        '--from=develop',
        '--ttl',
        '14d',
        '--admin-token',
        'secret',
        '--json',
      ]),
    ).toEqual({
      command: 'branch',
      sub: 'create',
      words: ['app@pr-1'],
      options: new Map([
        ['--from', ['develop']],
        ['--ttl', ['14d']],
        ['--json', []],
      ]),
      json: true,
      configArgv: ['--admin-port', '7931', '--admin-token', 'secret'],
    });
  });

  it('takes branch names that look like anything but flags, and - as standard input', () => {
    const gc = parseInvocation(['gc', '--keep-from', '-', '--pattern', 'pr-*', '--pattern=ci-*']);
    expect(gc).toMatchObject({
      command: 'gc',
      options: new Map([
        ['--keep-from', ['-']],
        ['--pattern', ['pr-*', 'ci-*']],
      ]),
    });
    expect(parseInvocation(['branch', 'show', '--', '-odd'])).toMatchObject({ words: ['-odd'] });
  });

  it('answers --help for branch and gc, and asks for a command after branch', () => {
    expect(parseInvocation(['branch', '--help'])).toEqual({ command: 'help', topic: 'branch' });
    expect(parseInvocation(['branch', 'delete', '-h'])).toEqual({
      command: 'help',
      topic: 'branch',
    });
    expect(parseInvocation(['gc', '--help'])).toEqual({ command: 'help', topic: 'gc' });
    expect(usageError(['branch'])).toContain('branch needs a command');
  });

  it('refuses what a command does not take, suggesting what was meant', () => {
    expect(usageError(['branch', 'lst'])).toBe('unknown command "branch lst"; did you mean list?');
    expect(usageError(['branch', 'list', '--jsn'])).toBe(
      'branch list does not take --jsn; did you mean --json?',
    );
    expect(usageError(['branch', 'reset', 'app@x', '--cascade'])).toContain(
      'branch reset does not take --cascade',
    );
    expect(usageError(['branch', 'list', '--tree=yes'])).toBe('--tree takes no value');
    expect(usageError(['branch', 'create', 'app@x', '--ttl'])).toBe('--ttl needs a value');
    expect(usageError(['branch', 'create', 'app@x', '--from', 'a', '--from', 'b'])).toBe(
      '--from was given twice',
    );
  });

  it('counts the words each command needs', () => {
    expect(usageError(['branch', 'snapshot', 'app@x'])).toBe(
      'branch snapshot NAME RESTORE_POINT: RESTORE_POINT is missing',
    );
    expect(usageError(['branch', 'reset', 'app@x', 'app@y'])).toBe(
      'branch reset NAME: unexpected "app@y"',
    );
    expect(usageError(['gc', 'now', '--keep-from', 'f'])).toBe('gc takes no words, got "now"');
  });

  it('needs --keep-from for gc, and one kind of expiry for expire', () => {
    expect(usageError(['gc'])).toContain('gc needs --keep-from FILE');
    expect(usageError(['branch', 'expire', 'app@x'])).toContain(
      'needs --expires DATE, --ttl DURATION or --never',
    );
    expect(usageError(['branch', 'expire', 'app@x', '--never', '--ttl', '2h'])).toContain(
      '--never clears both expiries',
    );
    expect(
      parseInvocation(['branch', 'expire', 'app@x', '--expires', '2026-12-01', '--ttl', '7d']),
    ).toMatchObject({ sub: 'expire' });
  });
});

describe('source', () => {
  it('reads status and resync, with --json and settings flags', () => {
    expect(parseInvocation(['source', 'status', '--json', '--admin-port', '7931'])).toEqual({
      command: 'source',
      sub: 'status',
      options: new Map([['--json', []]]),
      json: true,
      configArgv: ['--admin-port', '7931'],
    });
    expect(parseInvocation(['source', 'resync'])).toMatchObject({ sub: 'resync', json: false });
    expect(parseInvocation(['source', '--help'])).toEqual({ command: 'help', topic: 'source' });
  });

  it('says what is wrong in one line', () => {
    expect(usageError(['source'])).toBe('source needs a command: status or resync');
    expect(usageError(['source', 'resyn'])).toBe(
      'unknown command "source resyn"; did you mean resync?',
    );
    expect(usageError(['source', 'status', 'now'])).toBe('source status takes no words, got "now"');
    expect(usageError(['source', 'status', '--tree'])).toMatch(
      /^source status does not take --tree/,
    );
  });
});
