import { describe, expect, it } from 'vitest';
import { PgError, sqlstateOf } from './errors.js';

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
