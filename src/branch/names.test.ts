import { describe, expect, it } from 'vitest';
import { PgError } from '../errors.js';
import { parseConnectTarget, parseMoment, physicalName, validateBranchName } from './names.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (error) {
    return error instanceof PgError ? error.code : 'not a PgError';
  }
}

describe('parseConnectTarget', () => {
  it('reads the branch after the first @ of the database name', () => {
    expect(parseConnectTarget('app@feature-x').target).toEqual({
      root: 'app',
      branch: 'feature-x',
    });
    expect(parseConnectTarget('app@user@example').target).toEqual({
      root: 'app',
      branch: 'user@example',
    });
  });

  it('treats app and app@main as the root', () => {
    expect(parseConnectTarget('app').target).toEqual({ root: 'app' });
    expect(parseConnectTarget('app@main').target).toEqual({ root: 'app' });
  });

  it('reads pgbranch.branch and pgbranch.parent from options and strips them', () => {
    const parsed = parseConnectTarget(
      'app',
      '-c pgbranch.branch=feature/x -c statement_timeout=5s --pgbranch.parent=develop',
    );
    expect(parsed.target).toEqual({ root: 'app', branch: 'feature/x', parent: 'develop' });
    expect(parsed.options).toBe('-c statement_timeout=5s');
  });

  it('takes the parent in full too, as it is named everywhere else: app, app@develop', () => {
    expect(parseConnectTarget('app@x', '-c pgbranch.parent=app@develop').target).toEqual({
      root: 'app',
      branch: 'x',
      parent: 'develop',
    });
    expect(parseConnectTarget('app@x', '-c pgbranch.parent=app').target).toEqual({
      root: 'app',
      branch: 'x',
    });
    // Only the database's own prefix is taken off: a branch may be named release@2.
    expect(parseConnectTarget('app@x', '-c pgbranch.parent=release@2').target.parent).toBe(
      'release@2',
    );
  });

  it('drops options entirely when only pgbranch settings were in it', () => {
    expect(parseConnectTarget('app', '-cpgbranch.branch=x').options).toBeUndefined();
  });

  it('keeps options untouched when they hold no pgbranch setting', () => {
    expect(parseConnectTarget('app@x', '-c search_path=a\\ b').options).toBe(
      '-c search_path=a\\ b',
    );
  });

  it('refuses two different branch names, and unknown pgbranch settings', () => {
    expect(code(() => parseConnectTarget('app@a', '-c pgbranch.branch=b'))).toBe('42602');
    expect(parseConnectTarget('app@a', '-c pgbranch.branch=a').target.branch).toBe('a');
    expect(code(() => parseConnectTarget('app', '-c pgbranch.brnch=b'))).toBe('42704');
  });

  it('answers a connection to a restore point (app@branch:point) with 55000 saying how to use it', () => {
    let error: PgError | undefined;
    try {
      parseConnectTarget('app@feature-x:before-migration');
    } catch (e) {
      error = e as PgError;
    }
    expect(error).toMatchObject({
      code: '55000',
      message:
        '"app@feature-x:before-migration" is restore point "before-migration" of app@feature-x, and restore points take no connections',
    });
    expect(error?.hint).toContain(
      'CREATE BRANCH app@try FROM app@feature-x SNAPSHOT before-migration',
    );
  });

  it('refuses an empty root and a root longer than 63 bytes', () => {
    expect(code(() => parseConnectTarget('@x'))).toBe('3D000');
    expect(code(() => parseConnectTarget(`${'a'.repeat(64)}@x`))).toBe('3D000');
  });
});

describe('validateBranchName', () => {
  it('accepts names as git and CI make them', () => {
    for (const name of [
      'feature/login-v2',
      'dependabot/npm_and_yarn/pg-8.13.1',
      'PR-1234',
      'x'.repeat(255),
      'ünïcødé-ブランチ',
      'with space',
    ]) {
      expect(
        code(() => validateBranchName(name)),
        name,
      ).toBeUndefined();
    }
  });

  it('refuses empty names, control characters, NUL, ":" and names over 255 characters with 42602', () => {
    for (const name of [
      '',
      'a\u0000b',
      'tab\there',
      'new\nline',
      '\u007f',
      'x'.repeat(256),
      'release:1.0',
    ]) {
      expect(
        code(() => validateBranchName(name)),
        JSON.stringify(name),
      ).toBe('42602');
    }
  });
});

describe('physicalName', () => {
  it('is root@branch when that fits in 63 bytes', () => {
    expect(physicalName('app', 'feature-x')).toBe('app@feature-x');
    expect(physicalName('app')).toBe('app');
    expect(physicalName('app', 'main')).toBe('app');
  });

  it('maps long names to a deterministic, distinct name of at most 63 bytes', () => {
    const a = physicalName('app', 'a'.repeat(200));
    const b = physicalName('app', `${'a'.repeat(199)}b`);
    expect(Buffer.byteLength(a)).toBeLessThanOrEqual(63);
    expect(a).toBe(physicalName('app', 'a'.repeat(200)));
    expect(a).not.toBe(b);
    expect(a.startsWith('app@aaaa')).toBe(true);
  });

  it('never splits a multi-byte character when shortening', () => {
    const name = physicalName('app', 'ブ'.repeat(40));
    expect(Buffer.byteLength(name)).toBeLessThanOrEqual(63);
    expect(name).not.toContain('\uFFFD');
    expect(Buffer.from(name).toString()).toBe(name);
  });
});

describe('pgbranch.at', () => {
  const now = Date.parse('2026-12-06T12:00:00Z');

  it('takes ISO 8601 with its zone, or a time back from now', () => {
    const iso = (value: string) => parseMoment(value, now).toISOString();
    expect(iso('2026-12-06T09:30:00Z')).toBe('2026-12-06T09:30:00.000Z');
    expect(iso('2026-12-06 10:30:00+01:00')).toBe('2026-12-06T09:30:00.000Z');
    expect(iso('2026-12-06T10:30:00.123456+0100')).toBe('2026-12-06T09:30:00.123Z');
    expect(iso('2026-12-06T04:30-05')).toBe('2026-12-06T09:30:00.000Z');
    expect(iso('-1h')).toBe('2026-12-06T11:00:00.000Z');
    expect(iso('-90s')).toBe('2026-12-06T11:58:30.000Z');
    expect(iso('-2d')).toBe('2026-12-04T12:00:00.000Z');
  });

  it('refuses anything else with 22007, a moment without a zone too', () => {
    for (const value of [
      'yesterday',
      '2026-12-06T09:30:00',
      '2026-13-06T09:30:00Z',
      '-1h30m',
      '1h',
    ]) {
      expect(
        code(() => parseMoment(value)),
        value,
      ).toBe('22007');
    }
  });

  it('is read from options for a branch, and refused for the root itself', () => {
    const { target } = parseConnectTarget('app@then', '-c pgbranch.at=2026-12-06T09:30:00Z');
    expect(target).toEqual({ root: 'app', branch: 'then', at: new Date('2026-12-06T09:30:00Z') });
    expect(code(() => parseConnectTarget('app', '-c pgbranch.at=-1h'))).toBe('22023');
    expect(code(() => parseConnectTarget('app@then', '-c pgbranch.at=soon'))).toBe('22007');
  });
});
