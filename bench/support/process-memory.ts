// Memory of processes as the kernel counts it: RSS and PSS from /proc/<pid>/smaps_rollup, for one
// process or a postmaster with all its children. PSS shares each page among the processes that
// map it, so PSS sums over processes (and over instances) add up; RSS sums count shared memory
// (shared_buffers, the binary) once per process.
import fs from 'node:fs';
import path from 'node:path';

export interface Memory {
  rss: number;
  pss: number;
  processes: number;
}

const NO_MEMORY: Memory = { rss: 0, pss: 0, processes: 0 };

/** One process's RSS and PSS in bytes; zero when it is gone. */
export function processMemory(pid: number): Memory {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  } catch {
    return NO_MEMORY;
  }
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1]);
  return { rss: kb('Rss') * 1024, pss: kb('Pss') * 1024, processes: 1 };
}

/** Every process's children, from /proc/<pid>/stat (its fourth field is the parent). */
export function childrenByParent(): Map<number, number[]> {
  const children = new Map<number, number[]>();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue;
    }
    // The name in parentheses may hold spaces and parentheses: fields start after the last ')'.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    const list = children.get(ppid) ?? [];
    list.push(Number(entry));
    children.set(ppid, list);
  }
  return children;
}

/** A process and all its descendants, summed. */
export function treeMemory(pid: number, children = childrenByParent()): Memory {
  const total = { ...processMemory(pid) };
  if (total.processes === 0) return total;
  for (const child of children.get(pid) ?? []) add(total, treeMemory(child, children));
  return total;
}

export function add(total: Memory, more: Memory): void {
  total.rss += more.rss;
  total.pss += more.pss;
  total.processes += more.processes;
}

/** The postmaster running on a data directory (first line of postmaster.pid), if it runs. */
export function postmasterPid(pgDataDir: string): number | undefined {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(path.join(pgDataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return undefined;
  }
  try {
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}
