import { describe, expect, it } from 'vitest';
import { PgError } from '../errors.js';
import { errorReply, httpStatus } from './error-status.js';

describe('httpStatus', () => {
  it('maps the lifecycle’s SQLSTATEs to the HTTP statuses clients branch on', () => {
    const cases: [string, number][] = [
      ['3D000', 404],
      ['42704', 404],
      ['42P04', 409],
      ['2BP01', 409],
      ['55006', 409],
      ['55000', 409],
      ['53400', 409],
      ['54000', 409],
      ['42501', 403],
      ['42602', 400],
      ['0A000', 400],
      ['22023', 400],
      ['22007', 400],
      ['28000', 401],
      ['53300', 503],
      ['57P01', 503],
      ['58000', 500],
      ['XX000', 500],
    ];
    expect(cases.map(([code]) => [code, httpStatus(code)])).toEqual(cases);
  });
});

describe('errorReply', () => {
  it('keeps a PgError’s code, message, detail and hint', () => {
    const error = new PgError('2BP01', 'has children', 'Its branches: app@y.', 'Use cascade.');
    expect(errorReply(error)).toEqual({
      status: 409,
      body: {
        error: {
          code: '2BP01',
          message: 'has children',
          detail: 'Its branches: app@y.',
          hint: 'Use cascade.',
        },
      },
    });
  });

  it('keeps the SQLSTATE of the server’s own refusal, as node-postgres reports it', () => {
    // What a branch operation got while the server was starting again after a crash.
    const refusal = Object.assign(new Error('the database system is starting up'), {
      code: '57P03',
      severity: 'FATAL',
    });
    expect(errorReply(refusal)).toEqual({
      status: 503,
      body: { error: { code: '57P03', message: 'the database system is starting up' } },
    });
  });

  it('answers a server that can not be reached (its socket refused or dropped) with 503 and 08006', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED /tmp/run/.s.PGSQL.5432'), {
      code: 'ECONNREFUSED',
      syscall: 'connect',
    });
    const reset = Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
    for (const error of [refused, reset]) {
      expect(errorReply(error)).toMatchObject({
        status: 503,
        body: {
          error: {
            code: '08006',
            message: `pgbranch could not reach the PostgreSQL server: ${error.message}`,
          },
        },
      });
    }
  });

  it('answers anything else with 500 and XX000, and the message', () => {
    expect(errorReply(new Error('socket hang up'))).toEqual({
      status: 500,
      body: { error: { code: 'XX000', message: 'socket hang up' } },
    });
  });
});
