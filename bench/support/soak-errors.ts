// What went wrong during a soak, and whether it had to. An error is expected only for a specific
// reason: the branch its client was on was being reset, restored or deleted at that moment (the
// 57P01 that names it), or it came inside the upstream's restart window (from the restart's start
// to the first successful query after it). Anything else is unexpected.

/** One error as a client, pgbench, a branch operation or the prober saw it. */
export interface SoakError {
  /** Milliseconds since the soak's load began. */
  at: number;
  /** `pgbench session`, `psql`, `node-postgres`, `lifecycle`, ... */
  source: string;
  /** The database the client asked for, or the branch an operation was on. */
  database?: string;
  message: string;
  /** The SQLSTATE where the client reports one (node-postgres, the admin API). */
  code?: string;
  /** No reason can explain it (pgbranch itself exiting), not even the restart window. */
  unexpectedAlways?: boolean;
}

/** A branch operation of the soak's lifecycle actor, from its request to its answer. */
export interface BranchOperation {
  /** `inspect`: looking the branch up, to choose what to do with it. */
  verb: 'inspect' | 'create' | 'reset' | 'snapshot' | 'restore' | 'delete';
  branch: string;
  via: 'api' | 'cli';
  start: number;
  end: number;
  /** Why it failed; undefined when it succeeded. */
  error?: string;
}

/** From the moment the upstream was killed to the first successful query through pgbranch after. */
export interface RestartWindow {
  start: number;
  /** Undefined while no query has succeeded since (until the end of the soak, if never). */
  end: number | undefined;
}

export interface ClassifiedError extends SoakError {
  /** The SQLSTATE (reported, or known from the message) and the message without names in it. */
  kind: string;
  expected: boolean;
  /** Why it was expected, with the operation or window; for an unexpected one, why not. */
  reason: string;
}

/**
 * A client's error can be seen a little after the operation that caused it answered (psql reports
 * it when it exits; the soak's event loop takes turns): this long after an operation's answer its
 * 57P01 still counts as that operation's.
 */
export const OPERATION_SLACK_MS = 1_000;

/** The words pgbranch uses when it disconnects a branch's clients, and the operations that do. */
const TERMINATED = /terminating connection because branch "([^"]+)" was (reset|restored|deleted)/;
const VERB_OF: Record<string, BranchOperation['verb']> = {
  reset: 'reset',
  restored: 'restore',
  deleted: 'delete',
};

/** Messages of psql and pgbench, which print no SQLSTATE, and the code each stands for. */
const CODES: [RegExp, string][] = [
  [TERMINATED, '57P01'],
  [/terminating connection due to administrator command/, '57P01'],
  [/terminating connection because of crash of another server process/, '57P02'],
  [
    /the database system is (starting up|shutting down|in recovery mode|not yet accepting)/,
    '57P03',
  ],
  [/server closed the connection unexpectedly|[Cc]onnection terminated unexpectedly/, '08006'],
  [/Connection refused|could not connect to server|ECONNREFUSED|ECONNRESET/, '08001'],
];

/** The SQLSTATE an error came with, or the one its message stands for. */
export function codeOf(error: SoakError): string | undefined {
  if (error.code) return error.code;
  return CODES.find(([pattern]) => pattern.test(error.message))?.[1];
}

/** The message with what differs between occurrences (names, numbers, addresses) taken out. */
export function shape(message: string): string {
  return (message.split('\n')[0] ?? '')
    .replace(/^pgbench: error: client \d+ script \d+ aborted in command \d+ query \d+: /, '')
    .replace(/^psql: error: /, '')
    .replace(/connection to server at "[^"]*", port \d+ failed: /, '')
    .replace(/^(FATAL|ERROR):\s+([0-9A-Z]{5}: )?/, '')
    .replace(/"[^"]*"/g, '"…"')
    .replace(/\d+/g, 'N')
    .trim();
}

export function classify(
  error: SoakError,
  operations: readonly BranchOperation[],
  restart: RestartWindow | undefined,
): ClassifiedError {
  const code = codeOf(error);
  const kind = `${code ?? 'no SQLSTATE'} ${shape(error.message)}`;
  const seconds = (ms: number) => `+${(ms / 1000).toFixed(1)} s`;
  if (error.unexpectedAlways) {
    return { ...error, kind, expected: false, reason: 'nothing the soak does may cause it' };
  }
  if (
    restart &&
    error.at >= restart.start &&
    (restart.end === undefined || error.at <= restart.end)
  ) {
    return {
      ...error,
      kind,
      expected: true,
      reason: `restart window: upstream killed at ${seconds(restart.start)}, first query served again at ${restart.end === undefined ? 'never' : seconds(restart.end)}`,
    };
  }
  const terminated = TERMINATED.exec(error.message);
  if (terminated) {
    const [, branch, verb] = terminated;
    const cause = operations.find(
      (op) =>
        op.branch === branch &&
        op.verb === VERB_OF[verb!] &&
        op.start <= error.at &&
        error.at <= op.end + OPERATION_SLACK_MS,
    );
    if (cause) {
      return {
        ...error,
        kind,
        expected: true,
        reason: `${cause.verb} of ${branch} (${cause.via}, ${seconds(cause.start)} to ${seconds(cause.end)})`,
      };
    }
    return {
      ...error,
      kind,
      expected: false,
      reason: `no ${VERB_OF[verb!]} of ${branch} was under way at ${seconds(error.at)}`,
    };
  }
  return { ...error, kind, expected: false, reason: 'no reason known for it' };
}

/** Classified errors counted by expected or not, kind and source: one line each, most first. */
export function errorsByKind(
  classified: readonly ClassifiedError[],
): { expected: boolean; kind: string; source: string; count: number; example: ClassifiedError }[] {
  const groups = new Map<
    string,
    { expected: boolean; kind: string; source: string; count: number; example: ClassifiedError }
  >();
  for (const error of classified) {
    const key = `${error.expected}\0${error.kind}\0${error.source}`;
    const group = groups.get(key);
    if (group) group.count++;
    else {
      groups.set(key, {
        expected: error.expected,
        kind: error.kind,
        source: error.source,
        count: 1,
        example: error,
      });
    }
  }
  return [...groups.values()].sort(
    (a, b) => Number(a.expected) - Number(b.expected) || b.count - a.count,
  );
}
