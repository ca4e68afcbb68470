// Makes one database a copy of another with the provider, after draining what pgbranch itself holds
// on the source: the step behind creating, resetting and restoring branches and taking restore
// points. PostgreSQL copies only a database nobody is connected to, so the source's pooled
// connections are paused and closed first, and sessions pgbranch cannot pause make it give up.
import { errors, PgError } from '../errors.js';
import type { BranchProvider, BranchRecord, CreateOptions } from './provider.js';

/** What the branch layer needs from whoever owns connections to a database (the pools). */
export interface Drainer {
  /** Stops new work on `database` and waits up to timeoutMs for its own sessions there to end. */
  pause(database: string, timeoutMs: number): Promise<number>;
  resume(database: string): void;
}

/** How long a closed server connection's backend may take to leave pg_stat_activity. */
const EXIT_GRACE_MS = 300;

export interface CloneOptions extends CreateOptions {
  /** The source may have sessions (a branch, a root): drain it first. Restore points have none. */
  drainSource: boolean;
}

export class Cloner {
  constructor(
    private readonly provider: BranchProvider,
    private readonly drainer: Drainer,
    /** How long a copy waits for the source to have no sessions. */
    private readonly drainTimeoutMs: number,
  ) {}

  /**
   * Copies `source` to a new database `target` with `record`. All or nothing. Resolves with the
   * milliseconds the server spent making the copy (CREATE DATABASE and the branch's scripts), which
   * is the part that grows with the data when there is no copy-on-write.
   */
  async clone(
    source: string,
    target: string,
    record: BranchRecord,
    options: CloneOptions,
  ): Promise<number> {
    const { provider, drainer } = this;
    const started = Date.now();
    if (options.drainSource) await drainer.pause(source, this.drainTimeoutMs);
    try {
      if (options.drainSource) {
        // Server processes of connections just closed take a moment to exit: allow them that even
        // when the drain used up the whole bound.
        const deadline = Math.max(started + this.drainTimeoutMs, Date.now() + EXIT_GRACE_MS);
        let others = await provider.sessionsOn(source);
        while (others > 0 && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 50));
          others = await provider.sessionsOn(source);
        }
        if (others > 0) throw errors.parentBusy(source, others, Date.now() - started);
      }
      const createStarted = Date.now();
      try {
        await provider.create(target, source, record, options);
        return Date.now() - createStarted;
      } catch (error) {
        throw translateCreateError(error, target, source);
      }
    } finally {
      if (options.drainSource) drainer.resume(source);
    }
  }
}

/** Server errors during CREATE DATABASE, in words that say what to do. */
function translateCreateError(error: unknown, database: string, parent: string): Error {
  const e = error as {
    code?: string;
    message?: string;
    detail?: string;
    hint?: string;
    constraint?: string;
  };
  const message = e.message ?? String(error);
  // The caller decides what an existing database means (another proxy made it, or a clash).
  if (e.code === '42P04') return error as Error;
  // Two CREATE DATABASE of one name at the same moment: the later one trips over the other's row.
  if (e.code === '23505' && e.constraint === 'pg_database_datname_index') {
    return new PgError('42P04', `database "${database}" already exists`, e.detail);
  }
  if (e.code === '55006') {
    // Someone connected between our check and the clone.
    return errors.parentBusy(parent, 1, 0);
  }
  if (e.code === '3D000') return errors.parentMissing(parent, `create "${database}"`);
  if (e.code === '53100') {
    return new PgError(
      '53100',
      `could not create branch "${database}": the server's disk is full`,
      message,
      'Free disk space (drop unused branches) and connect again; nothing was left behind.',
    );
  }
  // node-postgres, when the server went away under the CREATE DATABASE (killed, restarted): the
  // database was never committed, so nothing is left to clean up.
  if (message.startsWith('Connection terminated') || e.code?.startsWith('E')) {
    return new PgError(
      '08006',
      `could not create branch "${database}": the PostgreSQL server closed the connection during CREATE DATABASE (${message})`,
      undefined,
      'Nothing was left behind: connect again once the server is back.',
    );
  }
  if (e.code)
    return new PgError(
      e.code,
      `could not create branch "${database}": ${message}`,
      e.detail,
      e.hint,
    );
  return errors.branchCreationFailed(database, message);
}
