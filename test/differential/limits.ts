// The one list of differences the differential test accepts: limits of transaction mode, each with
// the reason it cannot be otherwise. A step listed here may differ from the same step run directly,
// and only in transaction mode (a branch served in transaction mode too); everywhere else, and for
// every step not listed, a difference fails the test.
//
// Only inherent limits belong here: session state that the SQL text cannot reveal and that
// pinning would cost the pooling itself to keep. A fault that can be fixed is fixed, not listed.

export interface Limit {
  /** Step ids, as in scenario.ts. */
  steps: string[];
  reason: string;
}

export const TRANSACTION_MODE_LIMITS: Limit[] = [
  {
    steps: ['sequences.currval-next-transaction', 'sequences.lastval-next-transaction'],
    reason:
      'currval() and lastval() return what nextval() last gave in this server session, which in ' +
      'transaction mode is whichever connection the transaction got: another one answers 55000 ' +
      '(not yet defined in this session) or, for lastval(), the value of another client. Pinning ' +
      'each client that calls nextval() would end pooling for every table with a serial column. ' +
      'Use INSERT ... RETURNING, or currval() in the transaction that called nextval().',
  },
];

/** The limit that lets this step differ in transaction mode, if any. */
export function limitOf(stepId: string): Limit | undefined {
  return TRANSACTION_MODE_LIMITS.find((limit) => limit.steps.includes(stepId));
}
