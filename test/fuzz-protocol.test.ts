// The protocol fuzzer past startup (see test/fuzz-startup.test.ts for that): authentication (SASL
// and md5), TLS (handshakes gone wrong, SCRAM-SHA-256-PLUS channel binding, queries over TLS),
// simple and extended query and COPY in session and transaction mode, cancel requests and the SQL
// console, with mutated and random input, against one pgbranch while a well-behaved client in each
// pool mode keeps running `select 1`. FUZZ_SEED=<n> replays a run, FUZZ_CASE=<n> one case of it,
// FUZZ_FIRST_CASE=<n> starts at a case, FUZZ_KINDS=tls,copy runs some kinds, FUZZ_INPUTS=<n>
// changes its size; `npm run fuzz` is the long run.
import { describe, expect, it } from 'vitest';
import { KINDS } from './support/fuzz-cases.js';
import { fuzzRun } from './support/fuzz-harness.js';

/**
 * 3,000 inputs (every kind of every stage, each several times over), not the 50,000 the issue
 * asks for, nor the 10,000 it ran before: the whole suite must stay under 10 minutes on 2 cores,
 * and 10,000 took 159 s of it. What an input costs is mostly PostgreSQL
 * starting a backend. About one input in four ends a server session (the server ends it on a
 * broken frame, or pgbranch drops one a client left in the middle of a message), and a backend
 * costs 25-29 ms of CPU on this machine (page faults of a fork in the VM; 23 ms for a bare connect
 * and disconnect straight to PostgreSQL). Measured (seed 5, 6,047 inputs, load average 11): 10.5 ms
 * of CPU per input, 7.9 of them PostgreSQL's (1,616 backends), 1.5 pgbranch's, 1.1 the fuzzer's;
 * 50,000 inputs need about 520 CPU-seconds, over four minutes of both cores with nothing else
 * running. FUZZ_INPUTS=50000 runs them; `npm run fuzz` runs 1,000,000.
 */
const INPUTS = Number(process.env.FUZZ_INPUTS ?? 3_000);
/** pgbranch's RSS may grow this much over the run (it starts near 150 MB). */
const RSS_GROWTH_BOUND_MB = 200;

describe('every protocol stage under hostile input', () => {
  it(
    'answers every input with an ErrorResponse, an answer or a close within the deadline, never crashes, keeps its memory bounded and serves well-behaved clients throughout',
    async () => {
      const result = await fuzzRun({ inputs: INPUTS });
      expect(result.tally.inputs).toBeGreaterThanOrEqual(INPUTS);
      for (const kind of KINDS) expect(result.tally.byKind[kind], kind).toBeGreaterThan(0);
      expect(result.tally.outcomes['logged in over TLS']).toBeGreaterThan(0);
      expect(result.tally.failures.slice(0, 10)).toEqual([]);
      expect(result.exited).toBeUndefined();
      expect(result.servingAfter).toBe(true);
      expect(result.good.failures).toEqual([]);
      // PostgreSQL 18.4 crashes on a few inputs (fuzz-regressions.test.ts): a crash is the
      // server's own only when a case crashes it again alone; pgbranch must serve on after it.
      for (const crash of result.crashes) expect(crash.culprit, result.report).toBeDefined();
      expect(result.good.queries.session).toBeGreaterThan(10);
      expect(result.good.queries.transaction).toBeGreaterThan(10);
      expect(result.rss.peakMb - result.rss.firstMb).toBeLessThanOrEqual(RSS_GROWTH_BOUND_MB);
      expect(result.errorLogs).toEqual({});
    },
    60_000 + INPUTS * 20,
  );
});
