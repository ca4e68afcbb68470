// How the soak sorts errors: expected only with a specific reason (the client's branch reset,
// restored or deleted at that moment; the upstream's restart window), unexpected otherwise.
import { describe, expect, it } from 'vitest';
import {
  classify,
  codeOf,
  errorsByKind,
  OPERATION_SLACK_MS,
  type BranchOperation,
} from '../bench/support/soak-errors.js';

const reset: BranchOperation = {
  verb: 'reset',
  branch: 'app@churn-s0',
  via: 'api',
  start: 10_000,
  end: 12_000,
};
const restart = { start: 30_000, end: 36_000 };
const terminated = (branch: string, verb: string) =>
  `FATAL:  57P01: terminating connection because branch "${branch}" was ${verb}`;

describe('soak error classification', () => {
  it("expects a branch's 57P01 only while an operation of that verb on that branch ran", () => {
    const during = classify(
      { at: 11_000, source: 'psql', message: terminated('app@churn-s0', 'reset') },
      [reset],
      restart,
    );
    expect(during).toMatchObject({
      expected: true,
      kind: '57P01 terminating connection because branch "…" was reset',
      reason: 'reset of app@churn-s0 (api, +10.0 s to +12.0 s)',
    });
    // Seen a little after the operation answered: still its own.
    expect(
      classify(
        {
          at: 12_000 + OPERATION_SLACK_MS,
          source: 'psql',
          message: terminated('app@churn-s0', 'reset'),
        },
        [reset],
        restart,
      ).expected,
    ).toBe(true);
    // Another branch, another verb, or later than the slack: no reason.
    for (const error of [
      { at: 11_000, message: terminated('app@churn-s1', 'reset') },
      { at: 11_000, message: terminated('app@churn-s0', 'deleted') },
      { at: 12_000 + OPERATION_SLACK_MS + 1, message: terminated('app@churn-s0', 'reset') },
    ]) {
      expect(classify({ ...error, source: 'psql' }, [reset], restart)).toMatchObject({
        expected: false,
      });
    }
  });

  it('expects any error inside the restart window, and none just after it', () => {
    const lost = {
      source: 'pgbench session',
      message: 'server closed the connection unexpectedly',
    };
    expect(classify({ ...lost, at: 30_000 }, [], restart).expected).toBe(true);
    expect(classify({ ...lost, at: 36_000 }, [], restart).expected).toBe(true);
    expect(classify({ ...lost, at: 36_001 }, [], restart)).toMatchObject({
      expected: false,
      kind: '08006 server closed the connection unexpectedly',
    });
    // A window that never closed lasts to the end.
    expect(classify({ ...lost, at: 90_000 }, [], { start: 30_000, end: undefined }).expected).toBe(
      true,
    );
    expect(classify({ ...lost, at: 1_000 }, [], undefined).expected).toBe(false);
  });

  it('takes the SQLSTATE a client reports, else the one its message stands for', () => {
    expect(codeOf({ at: 0, source: 'node-postgres', message: 'whatever', code: '53300' })).toBe(
      '53300',
    );
    expect(
      codeOf({ at: 0, source: 'psql', message: 'FATAL:  the database system is starting up' }),
    ).toBe('57P03');
    expect(codeOf({ at: 0, source: 'psql', message: 'ERROR:  division by zero' })).toBeUndefined();
  });

  it('counts errors by expected or not, kind and source, unexpected ones first', () => {
    const classified = [
      classify(
        { at: 11_000, source: 'psql', message: terminated('app@churn-s0', 'reset') },
        [reset],
        undefined,
      ),
      classify(
        { at: 11_500, source: 'psql', message: terminated('app@churn-s0', 'reset') },
        [reset],
        undefined,
      ),
      classify(
        { at: 50_000, source: 'psql', message: 'ERROR:  division by zero' },
        [reset],
        undefined,
      ),
    ];
    expect(errorsByKind(classified).map((g) => [g.expected, g.count, g.kind])).toEqual([
      [false, 1, 'no SQLSTATE division by zero'],
      [true, 2, '57P01 terminating connection because branch "…" was reset'],
    ]);
  });
});
