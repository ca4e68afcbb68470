// What every benchmark's entry point does: read its options (or print its help), run with a
// Cleanup that also runs on Ctrl-C, clean up, and print the report on stdout. Exit codes: 0 done,
// 1 the run failed, 2 bad options.
import { Cleanup } from './cleanup.js';
import { progress } from './report.js';

export interface Benchmark<Options, Results> {
  /** `bench:pool`: for messages and the command line the report shows. */
  name: string;
  help: string;
  /** The options, or undefined when help was asked for; throws on bad ones. */
  parseOptions(argv: string[]): Options | undefined;
  run(options: Options, cleanup: Cleanup): Promise<Results>;
  report(results: Results, command: string): string;
}

export async function runBenchmark<Options, Results>(
  bench: Benchmark<Options, Results>,
  argv: string[] = process.argv.slice(2),
): Promise<number> {
  let options: Options | undefined;
  try {
    options = bench.parseOptions(argv);
  } catch (error) {
    process.stderr.write(`${bench.name}: ${(error as Error).message}\n\n${bench.help}`);
    return 2;
  }
  if (!options) {
    process.stdout.write(bench.help);
    return 0;
  }
  const command = `npm run ${bench.name}${argv.length > 0 ? ` -- ${argv.join(' ')}` : ''}`;
  const cleanup = new Cleanup();
  cleanup.runOnSignals();
  try {
    const results = await bench.run(options, cleanup);
    progress('cleaning up');
    await cleanup.run();
    process.stdout.write(bench.report(results, command));
    return 0;
  } catch (error) {
    if (!cleanup.interruptedBy) {
      process.stderr.write(`${bench.name}: ${(error as Error).stack ?? String(error)}\n`);
    }
    progress('cleaning up');
    await cleanup.run();
    return 1;
  }
}
