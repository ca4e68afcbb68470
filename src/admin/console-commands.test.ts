import { describe, expect, it } from 'vitest';
import { PgError } from '../errors.js';
import { parseCommands } from './console-commands.js';

function errorOf(text: string): PgError {
  try {
    parseCommands(text);
  } catch (error) {
    if (error instanceof PgError) return error;
    throw error;
  }
  throw new Error(`parsed: ${text}`);
}

describe('parseCommands', () => {
  it('reads keywords in any case, with or without a trailing semicolon', () => {
    expect(parseCommands('show pools')).toEqual([{ kind: 'show', what: 'pools' }]);
    expect(parseCommands('SHOW Clients;')).toEqual([{ kind: 'show', what: 'clients' }]);
    expect(parseCommands('  Show SERVERS ; ')).toEqual([{ kind: 'show', what: 'servers' }]);
    expect(parseCommands('show help')).toEqual([{ kind: 'show', what: 'help' }]);
    expect(parseCommands('reload')).toEqual([{ kind: 'reload' }]);
    expect(parseCommands('show source')).toEqual([{ kind: 'show', what: 'source' }]);
    expect(parseCommands('Resync Source;')).toEqual([{ kind: 'resync' }]);
    expect(errorOf('RESYNC').hint).toBe('Write: RESYNC SOURCE');
  });

  it('reads several commands separated by semicolons, and none from blanks and comments', () => {
    expect(parseCommands('PAUSE app; RESUME app;;RELOAD')).toEqual([
      { kind: 'pause', database: 'app' },
      { kind: 'resume', database: 'app' },
      { kind: 'reload' },
    ]);
    expect(parseCommands(' ;; -- nothing\n')).toEqual([]);
    expect(parseCommands('-- list them\nSHOW BRANCHES')).toEqual([
      { kind: 'show', what: 'branches' },
    ]);
  });

  it('takes names as written: bare with @ - / . :, or double-quoted with "" for a quote', () => {
    expect(parseCommands('RESET BRANCH app@feature/login-v2.1:x')).toEqual([
      { kind: 'reset', name: 'app@feature/login-v2.1:x' },
    ]);
    expect(parseCommands('reset branch App@PR-1234')).toEqual([
      { kind: 'reset', name: 'App@PR-1234' },
    ]);
    expect(parseCommands('DROP BRANCH "app@has space; and ""quotes"""')).toEqual([
      { kind: 'drop', name: 'app@has space; and "quotes"', cascade: false },
    ]);
    expect(parseCommands('DROP BRANCH "app@Ünïcode ✓" CASCADE')).toEqual([
      { kind: 'drop', name: 'app@Ünïcode ✓', cascade: true },
    ]);
  });

  it('reads SHOW BRANCHES and SHOW SNAPSHOTS with an optional name', () => {
    expect(parseCommands('SHOW BRANCHES app')).toEqual([
      { kind: 'show', what: 'branches', of: 'app' },
    ]);
    expect(parseCommands('SHOW SNAPSHOTS "app@feature x"')).toEqual([
      { kind: 'show', what: 'snapshots', of: 'app@feature x' },
    ]);
    expect(parseCommands('SHOW SNAPSHOTS')).toEqual([{ kind: 'show', what: 'snapshots' }]);
  });

  it('reads CREATE BRANCH with its parent as a branch name within the same database', () => {
    expect(parseCommands('CREATE BRANCH app@x')).toEqual([{ kind: 'create', name: 'app@x' }]);
    expect(parseCommands('create branch app@x from app')).toEqual([
      { kind: 'create', name: 'app@x', parent: 'main' },
    ]);
    expect(parseCommands('CREATE BRANCH app@x FROM app@develop')).toEqual([
      { kind: 'create', name: 'app@x', parent: 'develop' },
    ]);
    expect(parseCommands('CREATE BRANCH app@x FROM develop SNAPSHOT before')).toEqual([
      { kind: 'create', name: 'app@x', parent: 'develop', snapshot: 'before' },
    ]);
    expect(parseCommands("CREATE BRANCH app@ci-1 TTL 2h EXPIRES '2026-12-01'")).toEqual([
      { kind: 'create', name: 'app@ci-1', ttlMs: 7_200_000, expiresAt: '2026-12-01' },
    ]);
  });

  it('refuses a CREATE BRANCH without a database, or from another database', () => {
    const noDatabase = errorOf('CREATE BRANCH feature-x');
    expect(noDatabase.code).toBe('42601');
    expect(noDatabase.message).toContain('write database@branch, e.g. app@feature-x');
    const otherDatabase = errorOf('CREATE BRANCH app@x FROM shop@main');
    expect(otherDatabase.code).toBe('22023');
    expect(otherDatabase.hint).toBe('Name the parent app@main, or app for the root.');
  });

  it('reads a TTL as a duration, as the configuration and the admin API do, and refuses others with 22023', () => {
    expect(parseCommands('CREATE BRANCH app@x TTL 30m')).toEqual([
      { kind: 'create', name: 'app@x', ttlMs: 1_800_000 },
    ]);
    // Digits alone are seconds, as in the configuration.
    expect(parseCommands("CREATE BRANCH app@x TTL '90'")).toEqual([
      { kind: 'create', name: 'app@x', ttlMs: 90_000 },
    ]);
    const soon = errorOf('CREATE BRANCH app@x TTL soon');
    expect([soon.code, soon.severity, soon.message]).toEqual([
      '22023',
      'ERROR',
      'invalid ttl "soon": not a duration',
    ]);
  });

  it('reads restore points, protection, PAUSE and RESUME', () => {
    expect(
      parseCommands('SNAPSHOT BRANCH app@x AS before; RESTORE BRANCH app@x TO before'),
    ).toEqual([
      { kind: 'snapshot', name: 'app@x', snapshot: 'before' },
      { kind: 'restore', name: 'app@x', snapshot: 'before' },
    ]);
    expect(parseCommands('DROP SNAPSHOT before OF app@x')).toEqual([
      { kind: 'drop-snapshot', name: 'app@x', snapshot: 'before' },
    ]);
    expect(parseCommands('PROTECT BRANCH app@x; UNPROTECT BRANCH app@x')).toEqual([
      { kind: 'protect', name: 'app@x', on: true },
      { kind: 'protect', name: 'app@x', on: false },
    ]);
    expect(parseCommands('PAUSE; RESUME')).toEqual([{ kind: 'pause' }, { kind: 'resume' }]);
  });

  it('answers a syntax error with 42601, where it is, and how to write the command', () => {
    const unknown = errorOf('SELECT 1');
    expect(unknown.code).toBe('42601');
    expect(unknown.severity).toBe('ERROR');
    expect(unknown.message).toBe('syntax error at or near "SELECT"');
    expect(unknown.hint).toBe(
      'Commands: SHOW BRANCHES|SNAPSHOTS|POOLS|CLIENTS|SERVERS|SOURCE|VERSION|HELP, ' +
        'CREATE|RESET|DROP|SNAPSHOT|RESTORE|PROTECT|UNPROTECT BRANCH, DROP SNAPSHOT, PAUSE, RESUME, RELOAD, ' +
        'RESYNC SOURCE. SHOW HELP describes them.',
    );

    const snapshot = errorOf('SNAPSHOT BRANCH app@x before');
    expect(snapshot.message).toBe('syntax error at or near "before"');
    expect(snapshot.hint).toBe('Write: SNAPSHOT BRANCH db@name AS s');

    expect(errorOf('RESET BRANCH').message).toBe('syntax error at end of input');
    expect(errorOf('SHOW BRANCHS').hint).toContain('SHOW BRANCHES | SNAPSHOTS');
    expect(errorOf('RESET BRANCH "app@x').message).toBe('unterminated quoted identifier');
    expect(errorOf('DROP BRANCH ""').message).toBe('zero-length delimited identifier');
  });

  it('runs nothing when any command of a query is malformed', () => {
    expect(errorOf('SHOW POOLS; DROP BRANCH app@x junk').code).toBe('42601');
  });
});
