// npm run fuzz: the protocol fuzzer's long run (1,000,000 inputs unless FUZZ_INPUTS says
// otherwise) against one pgbranch; exits 1 on any failure. FUZZ_SEED replays a run.
import { fuzzRun } from '../test/support/fuzz-harness.js';

/** pgbranch's RSS may grow this much over the whole run (it starts near 100 MB). */
const RSS_GROWTH_BOUND_MB = 200;

const result = await fuzzRun({ inputs: Number(process.env.FUZZ_INPUTS ?? 1_000_000) });
const growth = result.rss.peakMb - result.rss.firstMb;
const ok =
  result.tally.failures.length === 0 &&
  result.crashes.every((crash) => crash.culprit !== undefined) &&
  result.good.failures.length === 0 &&
  !result.exited &&
  result.servingAfter &&
  growth <= RSS_GROWTH_BOUND_MB;
console.log(
  `fuzz: ${ok ? 'passed' : 'FAILED'} (RSS grew ${growth} MB, bound ${RSS_GROWTH_BOUND_MB} MB)`,
);
process.exit(ok ? 0 : 1);
