// Finds the database behind a branch, creating it on first use: once per branch however many
// clients ask at the same time (single flight), after draining what pgbranch itself holds on the parent.
import type { Logger } from 'pino';
import { errors, PgError } from '../errors.js';
import { physicalName, type BranchTarget } from './names.js';
import type { BranchProvider, CopyMethod } from './provider.js';

/** What the branch layer needs from whoever owns connections to a database (the pools). */
export interface Drainer {
  /** Stops new work on `database` and waits up to timeoutMs for its own sessions there to end. */
  pause(database: string, timeoutMs: number): Promise<number>;
  resume(database: string): void;
}

/** How long a closed server connection's backend may take to leave pg_stat_activity. */
const EXIT_GRACE_MS = 300;

export interface BranchManagerOptions {
  provider: BranchProvider;
  drainer: Drainer;
  /** How long a creation waits for the parent to have no sessions. */
  drainTimeoutMs: number;
  /** The database pgbranch's own administrative connections use: it can't be branched. */
  maintenanceDatabase: string;
  log: Logger;
  /**
   * Called once per creation this manager attempted, from the start of the drain: how it was
   * made, how long it took, and whether it succeeded. Refusals before that (no parent, no
   * permission) are not creations.
   */
  onCreated?: (mode: CopyMethod['mode'], ms: number, ok: boolean) => void;
}

export interface Resolution {
  database: string;
  /** True when this call created the branch (or waited on the creation that did). */
  created: boolean;
}

export class BranchManager {
  /** Databases known to exist, so that connecting to a branch costs no query after the first. */
  private readonly known = new Set<string>();
  private readonly inFlight = new Map<string, Promise<void>>();

  constructor(private readonly options: BranchManagerOptions) {}

  /** The database to connect to for `target`, created from its parent if it does not exist yet. */
  async resolve(target: BranchTarget, user: string): Promise<Resolution> {
    if (target.branch === undefined) return { database: target.root, created: false };
    const database = physicalName(target.root, target.branch);
    if (this.known.has(database)) return { database, created: false };
    const pending = this.inFlight.get(database);
    if (pending) {
      await pending;
      return { database, created: true };
    }
    if (await this.options.provider.exists(database)) {
      this.known.add(database);
      return { database, created: false };
    }
    // Re-check after the await: another client may have started the creation meanwhile.
    let creation = this.inFlight.get(database);
    if (!creation) {
      creation = this.create(target, database, user).finally(() => this.inFlight.delete(database));
      this.inFlight.set(database, creation);
    }
    await creation;
    return { database, created: true };
  }

  /** Forgets that a database exists (it was dropped behind pgbranch's back, or deleted). */
  forget(database: string): void {
    this.known.delete(database);
  }

  private async create(target: BranchTarget, database: string, user: string): Promise<void> {
    const { provider, drainer, log } = this.options;
    const branch = target.branch!;
    const parentName = target.parent ?? 'main';
    const parent = physicalName(target.root, target.parent);
    if (parent === this.options.maintenanceDatabase) {
      throw new PgError(
        '55006',
        `cannot branch "${parent}": it is the database pgbranch uses for its own administration`,
        undefined,
        `Create a database for your project (CREATE DATABASE app) and branch that: app@${branch}`,
      );
    }
    if (!(await provider.exists(parent))) throw errors.parentMissing(target.root, parentName);
    if (!(await provider.mayCreate(user, parent))) {
      throw errors.mayNotCreateBranch(user, branch, parent);
    }
    const started = Date.now();
    const report = (ok: boolean) =>
      this.options.onCreated?.(provider.copyMethod.mode, Date.now() - started, ok);
    await drainer.pause(parent, this.options.drainTimeoutMs);
    // Server processes of connections just closed take a moment to exit: allow them that even when
    // the drain used up the whole bound.
    const deadline = Math.max(started + this.options.drainTimeoutMs, Date.now() + EXIT_GRACE_MS);
    try {
      let others = await provider.sessionsOn(parent);
      while (others > 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
        others = await provider.sessionsOn(parent);
      }
      if (others > 0) throw errors.parentBusy(parent, others, Date.now() - started);
      const cloneStarted = Date.now();
      try {
        await provider.create(database, parent, {
          root: target.root,
          branch,
          parent: parentName,
          createdAt: new Date().toISOString(),
        });
      } catch (error) {
        // Another proxy on the same server made it first: the branch exists, which is what we want.
        const code = (error as { code?: string }).code;
        if (code !== '42P04' || !(await provider.exists(database))) {
          throw translateCreateError(error, database, parent);
        }
      }
      this.known.add(database);
      log.info(
        {
          event: 'branch_created',
          root: target.root,
          branch,
          parent: parentName,
          database,
          mode: provider.copyMethod.mode,
          cloneMs: Date.now() - cloneStarted,
          totalMs: Date.now() - started,
          user,
        },
        `created branch ${target.root}@${branch} from ${parentName} (${provider.copyMethod.mode}) in ${Date.now() - started} ms`,
      );
      report(true);
    } catch (error) {
      report(false);
      throw error;
    } finally {
      drainer.resume(parent);
    }
  }
}

/** Server errors during CREATE DATABASE, in words that say what to do. */
function translateCreateError(error: unknown, database: string, parent: string): PgError {
  const e = error as { code?: string; message?: string; detail?: string; hint?: string };
  const message = e.message ?? String(error);
  if (e.code === '55006') {
    // Someone connected between our check and the clone.
    return errors.parentBusy(parent, 1, 0);
  }
  if (e.code === '3D000') return errors.parentMissing(parent, parent);
  if (e.code === '53100') {
    return new PgError(
      '53100',
      `could not create branch "${database}": the server's disk is full`,
      message,
      'Free disk space (drop unused branches) and connect again; nothing was left behind.',
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
