// The branch list as server-sent events, for the branch page. Branches change through connects,
// the CLI, the console, other proxies and plain SQL, and the list is read from the server: no one
// event inside pgbranch sees them all. So one reader per pgbranch, not one per open page, reads the
// list once a second while anybody listens, and sends it only when it changed. Sizes are the dear
// part (pg_database_size walks every file: about a second for 300 branches here), so they are read
// for new databases at once and for all of them only every SIZES_INTERVAL_MS.
import type { FastifyInstance } from 'fastify';
import type { ServerResponse } from 'node:http';
import type { BranchInfo, Lifecycle, SnapshotInfo } from '../lifecycle/model.js';
import { errorReply } from './error-status.js';

/** How often the list is read while a page listens: changes show within this and one read. */
export const FEED_INTERVAL_MS = 1000;
/** How often every size is read again; a database made meanwhile has its size read at once. */
export const SIZES_INTERVAL_MS = 30_000;
/** A comment line this often keeps proxies and load balancers from closing a quiet stream. */
const KEEP_ALIVE_MS = 15_000;

interface FeedEvent {
  event: 'branches' | 'failure';
  data: string;
}

type Listener = (event: FeedEvent) => void;

export class BranchFeed {
  private readonly listeners = new Set<Listener>();
  private last: FeedEvent | undefined;
  private timer: NodeJS.Timeout | undefined;
  private reading = false;
  /** Sizes by physical name, as last read, and when all of them were. */
  private sizes = new Map<string, number>();
  private sizesReadAt = 0;

  constructor(
    private readonly lifecycle: Pick<Lifecycle, 'list'>,
    private readonly intervalMs = FEED_INTERVAL_MS,
    private readonly sizesIntervalMs = SIZES_INTERVAL_MS,
  ) {}

  /** Calls `listener` with the list now (when known) and on every change; returns the unsubscribe. */
  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    if (this.last) listener(this.last);
    if (!this.reading && this.timer === undefined) void this.tick();
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size > 0) return;
      clearTimeout(this.timer);
      this.timer = undefined;
      // Nobody saw the lists in between: the next listener must get a fresh one.
      this.last = undefined;
    };
  }

  private async tick(): Promise<void> {
    this.timer = undefined;
    this.reading = true;
    let next: FeedEvent;
    try {
      next = { event: 'branches', data: JSON.stringify({ branches: await this.read() }) };
    } catch (error) {
      next = { event: 'failure', data: JSON.stringify(errorReply(error).body) };
    }
    this.reading = false;
    if (this.listeners.size === 0) return;
    if (next.event !== this.last?.event || next.data !== this.last.data) {
      this.last = next;
      for (const listener of this.listeners) listener(next);
    }
    this.timer = setTimeout(() => void this.tick(), this.intervalMs);
  }

  /** The list, with sizes read only where they are not known or have grown old. */
  private async read(): Promise<BranchInfo[]> {
    const now = Date.now();
    if (now - this.sizesReadAt >= this.sizesIntervalMs) {
      const branches = await this.lifecycle.list(undefined, { sizes: 'all' });
      this.sizes = new Map(holders(branches).map(({ key, sizeBytes }) => [key, sizeBytes]));
      this.sizesReadAt = now;
      return branches;
    }
    let branches = await this.lifecycle.list(undefined, { sizes: [] });
    const unknown = holders(branches).filter(({ key }) => !this.sizes.has(key));
    if (unknown.length > 0) {
      const keys = new Set(unknown.map(({ key }) => key));
      branches = await this.lifecycle.list(undefined, {
        sizes: [...new Set(unknown.map(({ physical }) => physical))],
      });
      for (const { key, sizeBytes } of holders(branches)) {
        if (keys.has(key)) this.sizes.set(key, sizeBytes);
      }
    }
    return branches.map((b) => ({
      ...b,
      sizeBytes: this.sizes.get(branchKey(b)) ?? b.sizeBytes,
      snapshots: b.snapshots.map((s) => ({
        ...s,
        sizeBytes: this.sizes.get(pointKey(s)) ?? s.sizeBytes,
      })),
    }));
  }
}

// Instance restore points of one branch share a physical directory: a point is known by its name.
const branchKey = (b: BranchInfo) => `branch ${b.physical}`;
const pointKey = (s: SnapshotInfo) => `point ${s.of}:${s.name}`;

/** Every branch and restore point: its key in the size cache, where it lives, its size as listed. */
function holders(branches: BranchInfo[]): { key: string; physical: string; sizeBytes: number }[] {
  return branches.flatMap((b) => [
    { key: branchKey(b), physical: b.physical, sizeBytes: b.sizeBytes },
    ...b.snapshots.map((s) => ({ key: pointKey(s), physical: s.physical, sizeBytes: s.sizeBytes })),
  ]);
}

/** GET /v1/events: the feed as text/event-stream, behind the token as every /v1 route. */
export function serveEvents(app: FastifyInstance, lifecycle: Lifecycle): void {
  const feed = new BranchFeed(lifecycle);
  const open = new Set<ServerResponse>();
  // Fastify's close waits for open requests; a stream would hold it forever.
  app.addHook('preClose', async () => {
    for (const response of open) response.end();
  });
  app.get(
    '/v1/events',
    {
      schema: {
        summary: 'The branch list, live (server-sent events)',
        description: `text/event-stream: a \`branches\` event with { branches } (as GET /v1/branches) at once and whenever the list changes, read every ${FEED_INTERVAL_MS / 1000} s while anybody listens; a \`failure\` event with an Error body while it cannot be read.`,
      },
    },
    (_request, reply) => {
      reply.hijack();
      const response = reply.raw;
      response.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache',
        // nginx buffers responses unless told not to, which would hold the events back.
        'x-accel-buffering': 'no',
      });
      open.add(response);
      const unsubscribe = feed.subscribe(({ event, data }) =>
        response.write(`event: ${event}\ndata: ${data}\n\n`),
      );
      const keepAlive = setInterval(() => response.write(': keep-alive\n\n'), KEEP_ALIVE_MS);
      response.once('close', () => {
        clearInterval(keepAlive);
        unsubscribe();
        open.delete(response);
      });
    },
  );
}
