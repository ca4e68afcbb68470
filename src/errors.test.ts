import { describe, expect, it } from 'vitest';
import { PgError, sqlstateOf, statementError } from './errors.js';

describe('sqlstateOf', () => {
  it('reads the SQLSTATE of a server error or a PgError', () => {
    expect(sqlstateOf(Object.assign(new Error('x'), { code: '42P01' }))).toBe('42P01');
    expect(sqlstateOf(new PgError('57P01', 'x'))).toBe('57P01');
    expect(sqlstateOf({ code: 'XX000' })).toBe('XX000');
  });

  it('does not take a Node errno code of the same shape for one', () => {
    for (const code of ['EPIPE', 'EBUSY', 'EXDEV', 'EPERM', 'ECONNREFUSED']) {
      expect(sqlstateOf(Object.assign(new Error('x'), { code }))).toBeUndefined();
    }
    expect(sqlstateOf(new Error('no code'))).toBeUndefined();
    expect(sqlstateOf(undefined)).toBeUndefined();
  });
});

describe('statementError', () => {
  it('keeps the code and words of an error with a SQLSTATE, as an ERROR the session survives', () => {
    const server = Object.assign(new Error('relation "x" does not exist'), {
      code: '42P01',
      hint: 'Create it.',
    });
    expect(statementError(server)).toMatchObject({
      code: '42P01',
      message: 'relation "x" does not exist',
      hint: 'Create it.',
      severity: 'ERROR',
    });
    expect(statementError(new PgError('55006', 'busy', 'Held.'))).toMatchObject({
      code: '55006',
      detail: 'Held.',
      severity: 'ERROR',
    });
  });

  it('makes anything else an internal error (XX000) that says what went wrong', () => {
    expect(statementError(new TypeError('x is undefined'))).toMatchObject({
      code: 'XX000',
      message: 'pgbranch internal error: x is undefined',
      severity: 'ERROR',
    });
    expect(statementError(Object.assign(new Error('gone'), { code: 'EPIPE' })).code).toBe('XX000');
  });
});
