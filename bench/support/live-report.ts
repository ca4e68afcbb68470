// The report of the live, resume and memory parts: markdown tables with the issue's targets beside
// the figures, and what each column means.
import os from 'node:os';
import type { LiveCreation, LivePhase } from './branch-live.js';
import { AFTER_MS, BEFORE_MS, FIRST_ROW_SQL, GAP_MS, PARENT, WARM_UP_MS } from './branch-live.js';
import { SETTLE_MS, type MemorySamples } from './instance-memory.js';
import type { LiveSizeResult } from './live-runs.js';
import { RESUME_SUSPEND_AFTER } from './live-runs.js';
import { bytes, cell, duration, markdownTable, summarize } from './report.js';

/** The issue's targets. */
const FIRST_ROW_TARGET_MS = 1000;
const TPS_TARGET = 0.9;
const RESUME_TARGET_MS = 500;
const IDLE_INSTANCE_TARGET = 40 * 2 ** 20;
/** What the README budgets an instance at when it sizes branch.max_running. */
const README_BUDGET = 64 * 2 ** 20;

function tps(value: number): string {
  return Math.round(value).toLocaleString('en');
}

/** Median (min–max) of `values` written with `format`; 'none' without any. */
function rangeCell(values: number[], format: (n: number) => string): string {
  if (values.length === 0) return 'none';
  const { median, min, max } = summarize(values);
  return values.length === 1 ? format(median) : `${format(median)} (${format(min)}–${format(max)})`;
}

function tpsCell(values: number[]): string {
  return rangeCell(values, tps);
}

/** How long past the gap the branches waited for the root's next warm standby. */
function spareWaits(sizes: LiveSizeResult[]): string {
  const parts = sizes.flatMap((size) => {
    const waits = size.instance?.creations.map((c) => c.spareWaitMs ?? 0) ?? [];
    return waits.length ? [`${size.gb} GB ${cell(waits)} longer`] : [];
  });
  return parts.length ? parts.join(', ') : 'none';
}

/** pgbench's mean latency per creation: median (min–max), in ms. */
function latencyCell(values: number[]): string {
  return rangeCell(values.filter(Number.isFinite), (n) => `${n.toFixed(1)} ms`);
}

/** bytes() with a true minus sign: free space can grow while a branch is made. */
function signedBytes(n: number): string {
  return n < 0 ? `−${bytes(-n)}` : bytes(n);
}

function bytesCell(values: (number | undefined)[]): string {
  const known = values.filter((v): v is number => v !== undefined);
  if (known.length === 0) return 'not measured';
  const { median, min, max } = summarize(known);
  return min === max
    ? signedBytes(median)
    : `${signedBytes(median)} (${signedBytes(min)}–${signedBytes(max)})`;
}

function percent(ratio: number): string {
  const p = Math.round((ratio - 1) * 100);
  return `${p >= 0 ? '+' : '−'}${Math.abs(p)}%`;
}

function sizeLabel(result: LiveSizeResult): string {
  const copied = result.instance?.creations[0]?.copiedBytes;
  return `${result.gb} GB (${PARENT}: ${bytes(result.cluster.databaseBytes)}, pgbench scale ${result.cluster.scale}${copied ? `; ${bytes(copied)} copied per instance` : ''})`;
}

function median(values: number[]): number {
  return summarize(values).median;
}

/** Per creation, tps during it over the steady median. */
function ratios(phase: LivePhase): number[] {
  if (phase.steady.length === 0) return [];
  const steady = median(phase.steady);
  return phase.creations.filter((c) => c.tpsDuring !== undefined).map((c) => c.tpsDuring! / steady);
}

export function liveReport(options: {
  sizes: LiveSizeResult[];
  filesystem: string;
  commit: string;
  load: [number, number];
  repeat: number;
  clients: number;
  rate: number;
  command: string;
}): string {
  const { sizes, repeat, clients, rate } = options;
  const cpus = os.cpus();
  const out: string[] = [];
  const live = sizes.filter((s) => s.instance || s.database);
  out.push(
    '## New branch of a running cluster, resume and memory (instance and database provider)',
    '',
  );
  out.push(
    `- Machine: ${cpus.length} CPUs (${cpus[0]?.model.trim() ?? 'unknown'}), ${bytes(os.totalmem())} RAM, Linux ${os.release()}, Node.js ${process.version}`,
  );
  out.push(
    `- pgbranch: this working tree (commit ${options.commit}, with any uncommitted changes), built with \`npm run build\` and run as \`node bin/pgbranch.js\`; embedded PostgreSQL ${sizes[0]?.serverVersion ?? '?'}; data directory on ${options.filesystem}`,
  );
  for (const size of sizes) {
    for (const [provider, reason] of Object.entries(size.reasons)) {
      out.push(`- ${size.gb} GB, ${provider} provider, as pgbranch reported it: ${reason}`);
    }
    for (const phase of [size.instance, size.database]) {
      const loads = phase?.creations.map((c) => c.loadAverage) ?? [];
      if (loads.length === 0) continue;
      out.push(
        `- ${size.gb} GB, ${phase!.provider} provider: load average (1 min) at the creations ${Math.min(...loads).toFixed(1)}–${Math.max(...loads).toFixed(1)}`,
      );
    }
  }
  out.push(
    `- Load average (1 min) at start ${options.load[0].toFixed(1)}, at end ${options.load[1].toFixed(1)} (other work on the machine adds noise to every column)`,
    `- Each cluster: database ${PARENT} with pgbench's tables (logged), generated once per size; each provider's pgbranch (and the memory run's) starts on a fresh plain copy of it (files unshared, in few extents), synced to disk first`,
    `- Write load: \`pgbench -c ${clients} -j ${Math.min(2, clients)} -P 1 --progress-timestamp${rate > 0 ? ` -R ${rate}` : ''}\` (TPC-B-like${rate > 0 ? `, held to ${rate} tps: a parent with room to spare, where its latency shows what a creation costs it` : ''}) on ${PARENT}, straight to the server over TCP (not through pgbranch), ${WARM_UP_MS / 1000} s of warm-up, then ${repeat} branch${repeat === 1 ? '' : 'es'} ${GAP_MS / 1000} s apart (with the warm standby: ${GAP_MS / 1000} s after the last, or once the root's next warm standby is ready, whichever is later: ${spareWaits(live)})`,
    `- Command: \`${options.command}\``,
    '',
  );

  if (live.length > 0) out.push(...liveTables(live, clients, rate));
  const resumeSize = sizes.find((s) => s.resume);
  if (resumeSize) out.push(...resumeTable(resumeSize));
  const memorySize = sizes.find((s) => s.memory);
  if (memorySize) out.push(...memoryTable(memorySize));
  out.push(...verdicts(sizes));
  return `${out.join('\n')}\n`;
}

function liveTables(sizes: LiveSizeResult[], clients: number, rate: number): string[] {
  const out: string[] = ['### New branch of a running cluster under write load', ''];
  const rows: string[][] = [];
  const times: string[][] = [];
  for (const size of sizes) {
    let label = sizeLabel(size);
    const take = () => {
      const value = label;
      label = '';
      return value;
    };
    for (const [instance, how] of [
      [size.instance, 'warm standby promoted'],
      [size.instanceCopy, 'warm_spare off: copy under the backup API'],
    ] as const) {
      if (!instance) continue;
      const c = instance.creations;
      const steady = instance.steady;
      const r = ratios(instance);
      const spared = c.filter((x) => x.from === 'warm_spare').length;
      rows.push([
        take(),
        `instance, pgbench writing (${clients} clients); ${how}${spared ? ` (${spared} of ${c.length} from it)` : ''}`,
        cell(c.map((x) => x.ms)),
        tpsCell(steady),
        `${tpsCell(c.map((x) => x.tpsBefore!).filter(Number.isFinite))} → ${tpsCell(c.map((x) => x.tpsDuring!).filter(Number.isFinite))}${r.length ? `; change ${percent(median(r))} (worst ${percent(Math.min(...r))})` : ''}${rate > 0 ? `; latency ${latencyCell(c.map((x) => x.latencyBefore!))} → ${latencyCell(c.map((x) => x.latencyDuring!))}` : ''}`,
        tpsCell(c.map((x) => x.tpsLowest!).filter(Number.isFinite)),
        tpsCell(c.map((x) => x.tpsAfter!).filter(Number.isFinite)),
        bytesCell(c.map((x) => x.freed)),
        bytesCell(c.map((x) => x.unshared)),
      ]);
      times.push(instanceTimes(size.gb, c, how));
    }
    const database = size.database;
    if (database) {
      const u = database.underLoad;
      if (u) {
        rows.push([
          take(),
          `database, pgbench writing (${clients} clients)`,
          u.code === 'none'
            ? `made it in ${duration(u.ms)}`
            : `fails: ${u.code} after ${duration(u.ms)}`,
          tpsCell(database.steady),
          `${tps(u.tpsBefore)} → ${tps(u.tpsDuring)} (the attempt's seconds)`,
          '—',
          '—',
          '—',
          '—',
        ]);
      }
      const c = database.creations;
      rows.push([
        take(),
        'database, pgbench stopped for it ¹',
        cell(c.map((x) => x.ms)),
        tpsCell(database.steady),
        `${tpsCell(c.map((x) => x.tpsBefore!).filter(Number.isFinite))} → 0 (pgbench off ${cell(c.map((x) => x.pausedMs!))})`,
        '0',
        `${tpsCell(c.map((x) => x.tpsAfter!).filter(Number.isFinite))} (pgbench's first 5 s again)`,
        bytesCell(c.map((x) => x.freed)),
        bytesCell(c.map((x) => x.unshared)),
      ]);
      times.push(databaseTimes(size.gb, c));
    }
  }
  out.push(
    markdownTable(
      [
        'cluster',
        'provider, parent',
        `connect → first row (target ≤ ${duration(FIRST_ROW_TARGET_MS)})`,
        "parent's tps, steady",
        `parent's tps, ${BEFORE_MS / 1000} s before → during the creation (target: within ${Math.round((1 - TPS_TARGET) * 100)}%)`,
        'lowest second during it',
        `tps in the ${AFTER_MS / 1000} s after`,
        'free space lost ²',
        "branch's own blocks ³",
      ],
      rows,
    ),
    '',
  );
  const byMaking = sizes.flatMap((size) => {
    const split = size.instance?.steadyByMaking;
    if (!split) return [];
    const line = (seconds: number[]) =>
      seconds.length ? `${tpsCell(seconds)} tps, lowest ${tps(Math.min(...seconds))}` : 'none';
    return [
      `${size.gb} GB: ${line(split.copying)} while the next one was copied, ${line(split.recovering)} while it recovered and caught up, ${line(split.otherwise)} otherwise`,
    ];
  });
  if (byMaking.length > 0) {
    out.push(
      `The parent's steady seconds with the warm standby, by what the root's next warm standby was doing in them (spare_making, then its copyMs, then spare_ready): ${byMaking.join('; ')}.`,
      '',
    );
  }
  const underLoad = sizes.map((s) => s.database?.underLoad).find((u) => u);
  out.push(
    `Connect → first row: a new node-postgres client connects to \`${PARENT}@<branch>\` through pgbranch (SCRAM), the branch is made on that connect, and the clock stops at the first row of \`${FIRST_ROW_SQL}\`. Median (min–max). Parent's tps: pgbench's per-second progress. Steady: median (min–max) of the seconds that overlap no creation, none of the ${AFTER_MS / 1000} s after one, and no warm-up. Before → during: per creation, the mean of the ${BEFORE_MS / 1000} s before the connect (database provider: before pgbench was stopped) and the mean of the seconds that overlap the creation, medians (min–max) over the creations; change is the median of the per-creation changes, which compares each creation with its own neighbourhood (the machine's other load drifts). A creation shorter than a second is diluted by the rest of its seconds; the lowest second shows the dip.`,
    '',
    `¹ The database provider clones a database only while nobody is connected to it${underLoad ? ` (under load it failed: ${underLoad.code}, "${underLoad.message}")` : ''}. So for each measured branch pgbench was stopped (SIGINT), its sessions were waited out, the branch was made, and pgbench started again; "pgbench off" is that whole gap, during which the parent served nobody.`,
    '',
    `² The filesystem's free space (statfs) before the connect minus after the first row: includes whatever else wrote meanwhile, the parent's WAL and checkpoint first of all (on reflink, the parent's checkpoint writes into blocks it shares with earlier branches, which allocates new ones).`,
    '',
    `³ Blocks of the branch's files that no other file shares (filefrag -v, extents without the shared flag) just after the first row: what the branch wrote itself (its recovery and end-of-recovery checkpoint, its WAL) or the parent changed already. Instance: the whole data directory; database: the new database's directory.`,
    '',
    'Where the time went (medians):',
    '',
    markdownTable(
      [
        'cluster',
        'provider',
        'connect → first row',
        'copy or clone (warm standby: catch-up and promotion)',
        "… of which the parent's checkpoints ⁴",
        'pgbranch around it',
        'postmaster start',
        'the rest ⁵',
      ],
      times,
    ),
    '',
    "⁴ pg_stat_checkpointer of the parent before the connect and after the first row: write and sync time of the checkpoints that ended meanwhile, and what they wrote (8 KiB buffers), medians. Instance: pg_backup_start's fast checkpoint; database: CREATE DATABASE's two. A timed checkpoint under way when the creation asks for one is finished at once and counts with its whole write time, spread over minutes before; the median keeps such an outlier out.",
    '',
    "⁵ Connect → first row less what pgbranch logged: the client's connect and SCRAM login to pgbranch, pgbranch's login to the new branch, and the first query (its first read of the branch's tables). Instance from a warm standby: catch-up and promotion is branch_created's promoteMs (the parent's insert position read, the standby's replay waited for, pg_promote), and there is no postmaster start (it ran already); pgbranch around it is the rest of branch_created's ms. Instance by copy: copy is branch_created's copyMs (pg_backup_start with its fast checkpoint, the reflink copy of every file, pg_backup_stop, the WAL); pgbranch around it is the rest of branch_created's ms (checks, record, rename); postmaster start is instance_started's ms (start, recovery from backup_label to consistency, ready). Database: CREATE DATABASE ... STRATEGY FILE_COPY (branch_created's cloneMs, with its two checkpoints); pgbranch around it is totalMs − cloneMs (checks, drain).",
    '',
    ...anatomyTable(sizes),
  );
  return out;
}

/** `412 ms, 96 MiB written (2 checkpoints)`: medians. */
function checkpoints(c: LiveCreation[]): string {
  const known = c.map((x) => x.checkpoint).filter((x) => x !== undefined);
  if (known.length === 0) return 'not measured';
  const counts = known.map((x) => x.count);
  const count = summarize(counts);
  return `${duration(median(known.map((x) => x.ms)))}, ${bytes(median(known.map((x) => x.buffers * 8192)))} written (${count.min === count.max ? count.min : `${count.min}–${count.max}`} checkpoint${count.max === 1 ? '' : 's'})`;
}

function anatomyTable(sizes: LiveSizeResult[]): string[] {
  const rows: string[][] = [];
  for (const size of sizes) {
    const a = size.instance?.anatomy ?? [];
    if (a.length === 0) continue;
    const extents = size.instance!.creations.map((c) => c.parentExtents);
    const phase = (pick: (x: (typeof a)[number]) => number) => cell(a.map(pick));
    rows.push([
      `${size.gb} GB`,
      phase((x) => x.ms),
      phase((x) => x.phases.backupStartMs),
      cell(a.map((x) => x.checkpoint?.ms ?? NaN).filter(Number.isFinite)),
      phase((x) => x.phases.filesMs),
      phase((x) => x.phases.backupStopMs),
      phase((x) => x.phases.walMs),
      phase(
        (x) =>
          x.ms - x.phases.backupStartMs - x.phases.filesMs - x.phases.backupStopMs - x.phases.walMs,
      ),
      extents.every((e) => e !== undefined)
        ? `${extents[0]!.toLocaleString('en')} → ${extents.at(-1)!.toLocaleString('en')}`
        : 'not measured',
    ]);
  }
  if (rows.length === 0) return [];
  return [
    '',
    `Inside an instance copy: after the branches above, the bench ran copyCluster (src/branch/instance/cluster-copy.ts, what pgbranch runs for a new instance) itself, ${sizes[0]?.instance?.anatomy?.length ?? 0} times per size on the parent under the same load, and read its phases (median (min–max)):`,
    '',
    markdownTable(
      [
        'cluster',
        'copy in all',
        'pg_backup_start (fast checkpoint)',
        "… the checkpoint's write + sync",
        'files (reflink, 2 at a time)',
        'pg_backup_stop',
        'WAL since the start (plain copy)',
        'session and temporary slot ⁶',
        "parent's pgbench_accounts extents, first branch → last",
      ],
      rows,
    ),
    '',
    "⁶ The rest of copyCluster's time: its session to the parent (the private Unix socket, as pgbranch connects), the version check and the temporary physical slot that keeps the WAL. Extents: filefrag's count for the parent's pgbench_accounts just after each branch through pgbranch; a reflink copy walks every extent, and every block the parent writes after a branch is copied on write, so the count, and the time the files take, grow with every branch of a parent under write load.",
    '',
  ];
}

function instanceTimes(gb: number, c: LiveCreation[], how: string): string[] {
  const rest = c.map((x) => x.ms - x.createMs! - x.startMs!);
  return [
    `${gb} GB`,
    `instance, under load; ${how}`,
    duration(median(c.map((x) => x.ms))),
    duration(median(c.map((x) => (x.from === 'warm_spare' ? x.promoteMs! : x.copyMs!)))),
    checkpoints(c),
    duration(
      median(c.map((x) => x.createMs! - (x.from === 'warm_spare' ? x.promoteMs! : x.copyMs!))),
    ),
    duration(median(c.map((x) => x.startMs!))),
    duration(median(rest)),
  ];
}

function databaseTimes(gb: number, c: LiveCreation[]): string[] {
  return [
    `${gb} GB`,
    'database, pgbench stopped',
    duration(median(c.map((x) => x.ms))),
    duration(median(c.map((x) => x.cloneMs!))),
    checkpoints(c),
    duration(median(c.map((x) => x.totalMs! - x.cloneMs!))),
    '—',
    duration(median(c.map((x) => x.ms - x.totalMs!))),
  ];
}

function resumeTable(size: LiveSizeResult): string[] {
  const samples = size.resume!;
  return [
    '### Resume of a suspended instance branch',
    '',
    markdownTable(
      [
        'cluster',
        `connect → first row (target ≤ ${duration(RESUME_TARGET_MS)})`,
        'postmaster start (instance_started)',
        'the rest',
      ],
      [
        [
          sizeLabel(size),
          cell(samples.map((s) => s.ms)),
          cell(samples.map((s) => s.startMs)),
          cell(samples.map((s) => s.ms - s.startMs)),
        ],
      ],
    ),
    '',
    `pgbranch with \`--branch-suspend-after ${RESUME_SUSPEND_AFTER}\`, the write load stopped. Each time, the bench waits for the branch's instance_suspended log event (its postmaster shut down cleanly), then times a new client's connect through pgbranch to the first row of \`${FIRST_ROW_SQL}\`; ${samples.length} resumes over ${new Set(samples.map((s) => s.branch)).size} branches. The branches' files were read shortly before, so the page cache is warm.`,
    '',
  ];
}

function memoryTable(size: LiveSizeResult): string[] {
  const memory = size.memory!;
  if ('skipped' in memory) return ['### Memory', '', `Not measured: ${memory.skipped}.`, ''];
  const m: MemorySamples = memory;
  const idle = m.idle;
  const processes = idle.map((i) => i.processes);
  const rows: string[][] = [
    [
      `one running idle instance (postmaster and children: ${summarize(processes).min === summarize(processes).max ? summarize(processes).min : `${summarize(processes).min}–${summarize(processes).max}`} processes), ${idle.length} measured`,
      `PSS ${bytesCell(idle.map((i) => i.pss))}; RSS summed over its processes ${bytesCell(idle.map((i) => i.rss))}`,
      `≤ ${bytes(IDLE_INSTANCE_TARGET)}`,
    ],
    [
      `${m.branches} branches made in a row, \`--branch-max-running ${m.maxRunning}\`: pgbranch (node) RSS, highest`,
      `${bytes(m.pgbranchRss)} (${bytes(m.pgbranchRssEnd)} at the end)`,
      '',
    ],
    [
      `… every running instance together (at most ${m.running} at once), highest`,
      `PSS ${bytes(m.instancesPss)}; RSS summed ${bytes(m.instancesRss)}`,
      `${m.maxRunning} × ${bytes(README_BUDGET)} = ${bytes(m.maxRunning * README_BUDGET)} (the README's budget per instance)`,
    ],
    ['… the root instance (embedded server) meanwhile, PSS, highest', bytes(m.rootPss), ''],
    [
      '… time',
      `${duration(m.totalMs)} for ${m.branches}; connect → first row ${cell(m.ms)}; ${m.suspendedForLimit} instances suspended to make room`,
      '',
    ],
  ];
  return [
    '### Memory of instance branches',
    '',
    markdownTable(['what', 'measured', 'target'], rows),
    '',
    `Default instance settings. Each branch: a new client connects to \`${PARENT}@mem-N\` through pgbranch, reads its first row and disconnects; the next follows at once. pgbranch keeps a pooled server connection to each instance it served, so an idle instance here is its postmaster, its background processes and one idle backend. RSS and PSS from /proc/<pid>/smaps_rollup of each postmaster and its children, sampled every 250 ms during the run (highest sum), and each instance still running ${SETTLE_MS / 1000} s after the last branch. PSS shares every page among the processes that map it (shared_buffers, the binary, across instances too), so PSS sums add up; RSS summed over processes counts shared memory once per process.`,
    '',
  ];
}

function verdicts(sizes: LiveSizeResult[]): string[] {
  const lines: string[] = [];
  const mark = (ok: boolean) => (ok ? '**met**' : '**not met**');
  for (const size of sizes) {
    const instance = size.instance;
    if (!instance) continue;
    const first = median(instance.creations.map((c) => c.ms));
    lines.push(
      `- ${size.gb} GB, instance, connect → first row ≤ ${duration(FIRST_ROW_TARGET_MS)} under load: ${mark(first <= FIRST_ROW_TARGET_MS)} (median ${duration(first)}, slowest ${duration(Math.max(...instance.creations.map((c) => c.ms)))})`,
    );
    const r = ratios(instance);
    if (r.length > 0) {
      lines.push(
        `- ${size.gb} GB, instance, parent's tps during the creation within ${Math.round((1 - TPS_TARGET) * 100)}% of the seconds before it: ${mark(median(r) >= TPS_TARGET)} (median change ${percent(median(r))}, worst ${percent(Math.min(...r))}; lowest single second ${tps(Math.min(...instance.creations.map((c) => c.tpsLowest ?? Infinity)))}, steady median ${tps(median(instance.steady))})`,
      );
    }
    if (instance.loadErrors.length > 0) {
      lines.push(
        `- pgbench reported errors during the ${size.gb} GB instance run: ${instance.loadErrors[0]}`,
      );
    }
  }
  const resume = sizes.find((s) => s.resume)?.resume;
  if (resume) {
    const m = median(resume.map((s) => s.ms));
    lines.push(
      `- resume, connect → first row ≤ ${duration(RESUME_TARGET_MS)}: ${mark(m <= RESUME_TARGET_MS)} (median ${duration(m)}, slowest ${duration(Math.max(...resume.map((s) => s.ms)))})`,
    );
  }
  const memory = sizes.find((s) => s.memory)?.memory;
  if (memory && !('skipped' in memory) && memory.idle.length > 0) {
    const pss = median(memory.idle.map((i) => i.pss));
    const rss = median(memory.idle.map((i) => i.rss));
    lines.push(
      `- memory per running idle instance ≤ ${bytes(IDLE_INSTANCE_TARGET)} (PSS): ${mark(pss <= IDLE_INSTANCE_TARGET)} (median ${bytes(pss)}; RSS summed over its processes, which counts the memory they share once per process, ${bytes(rss)})`,
      `- ${memory.branches} branches with at most ${memory.maxRunning} running, instances within ${memory.maxRunning} × ${bytes(README_BUDGET)}: ${mark(memory.instancesPss <= memory.maxRunning * README_BUDGET)} (PSS together at most ${bytes(memory.instancesPss)})`,
    );
  }
  return lines.length > 0 ? ['**Targets** (issue 9):', '', ...lines] : [];
}
