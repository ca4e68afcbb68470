// Where pgbranch's CPU time goes: a V8 CPU profile of the process, written when it exits,
// summarized by self time per function and per kind of code.
import fs from 'node:fs';
import path from 'node:path';

/**
 * NODE_OPTIONS that let a Node.js process be profiled into `dir`: the first SIGUSR2 starts V8's
 * sampling profiler (1 ms, as node --cpu-prof), the second stops it and writes
 * `<dir>/profile.cpuprofile`, so that the profile covers the measured run only, not start-up.
 * Node 20 refuses --cpu-prof in NODE_OPTIONS, so a preload module written into `dir` drives the
 * profiler through node:inspector.
 */
export function profilingNodeOptions(dir: string): string {
  const preload = path.join(dir, 'profile-preload.mjs');
  const output = path.join(dir, 'profile.cpuprofile');
  fs.writeFileSync(
    preload,
    `import fs from 'node:fs';
import inspector from 'node:inspector';
const session = new inspector.Session();
session.connect();
session.post('Profiler.enable');
session.post('Profiler.setSamplingInterval', { interval: 1000 });
let running = false;
process.on('SIGUSR2', () => {
  if (!running) {
    running = true;
    session.post('Profiler.start');
    return;
  }
  running = false;
  session.post('Profiler.stop', (error, result) => {
    if (!error) fs.writeFileSync(${JSON.stringify(output)}, JSON.stringify(result.profile));
  });
});
`,
  );
  return `--import=${preload}`;
}

/** Waits for the profile that the second SIGUSR2 makes the process write. */
export async function profileWritten(dir: string, timeoutMs = 10_000): Promise<void> {
  const file = path.join(dir, 'profile.cpuprofile');
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline;) {
    if (fs.existsSync(file)) {
      // Written in one call; wait until its size settles.
      const size = fs.statSync(file).size;
      await new Promise((resolve) => setTimeout(resolve, 200));
      if (size > 0 && fs.statSync(file).size === size) return;
    } else {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  throw new Error(`no profile in ${dir} after ${timeoutMs} ms`);
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  hitCount?: number;
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface SelfTime {
  name: string;
  /** src/proxy/transaction-relay.ts, node:net, or empty for V8's own entries. */
  where: string;
  ms: number;
  /** Share of the busy (not idle) samples. */
  share: number;
}

export interface ProfileSummary {
  /** Wall time the profile covers, and how much of it the main thread was busy. */
  wallMs: number;
  busyMs: number;
  top: SelfTime[];
  /** Busy time by kind: pgbranch's code, its dependencies, Node.js internals, GC, V8 and native. */
  kinds: { kind: string; ms: number; share: number }[];
}

/** Reads the profile in `dir`. `root` is the project, for shorter locations. */
export function summarizeProfile(dir: string, root: string, topN: number): ProfileSummary {
  const file = fs.readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
  if (!file) throw new Error(`no .cpuprofile in ${dir}`);
  const profile = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  // A sample stands for the time until the next one.
  const selfUs = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const us = profile.timeDeltas[i + 1] ?? 0;
    selfUs.set(profile.samples[i]!, (selfUs.get(profile.samples[i]!) ?? 0) + us);
  }
  const functions = new Map<string, { name: string; where: string; us: number }>();
  const kinds = new Map<string, number>();
  let busyUs = 0;
  for (const [id, us] of selfUs) {
    const frame = byId.get(id)!.callFrame;
    if (frame.functionName === '(idle)') continue;
    busyUs += us;
    const where = location(frame.url, root);
    const name = frame.functionName || '(anonymous)';
    const key = `${name} ${where}`;
    const entry = functions.get(key) ?? { name, where, us: 0 };
    entry.us += us;
    functions.set(key, entry);
    const kind = kindOf(frame.url, frame.functionName, root);
    kinds.set(kind, (kinds.get(kind) ?? 0) + us);
  }
  const share = (us: number) => (busyUs > 0 ? us / busyUs : 0);
  return {
    wallMs: (profile.endTime - profile.startTime) / 1000,
    busyMs: busyUs / 1000,
    top: [...functions.values()]
      .sort((a, b) => b.us - a.us)
      .slice(0, topN)
      .map((f) => ({ name: f.name, where: f.where, ms: f.us / 1000, share: share(f.us) })),
    kinds: [...kinds.entries()]
      .sort((a, b) => b[1] - a[1])
      .map(([kind, us]) => ({ kind, ms: us / 1000, share: share(us) }))
      .filter((kind) => kind.share >= 0.005),
  };
}

/** The file, without a line: tsx's transpiled code has its own line numbers. */
function location(url: string, root: string): string {
  if (!url) return '';
  const file = url.startsWith('file://') ? new URL(url).pathname : url;
  return file.startsWith(`${root}/`) ? file.slice(root.length + 1) : file;
}

function kindOf(url: string, functionName: string, root: string): string {
  if (functionName === '(garbage collector)') return 'garbage collection';
  if (!url) return 'V8 and native (program, builtins)';
  if (url.startsWith('node:')) return 'Node.js internals (net, streams, buffers)';
  const file = url.startsWith('file://') ? new URL(url).pathname : url;
  if (file.includes('/node_modules/')) {
    return `dependency ${/node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(file)?.[1] ?? ''}`;
  }
  if (file.startsWith(`${root}/src/`)) return 'pgbranch src/';
  return 'other';
}
