// The branch lifecycle: list, create, reset, restore points, delete, protection, expiry, gc and
// diff, behind the CLI, the HTTP API and the SQL console alike; and the creation of a branch when a
// client first connects to it. What pgbranch knows of a branch is kept with the database itself
// (provider records), so the catalog is read from the server each time and survives restarts;
// databases made or dropped outside pgbranch show up as they are.
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type pg from 'pg';
import type { Cloner } from '../branch/cloner.js';
import {
  branchName,
  parentBranch,
  parseBranchName,
  physicalName,
  ROOT_BRANCH,
  SEPARATOR,
  SNAPSHOT_SEPARATOR,
  snapshotPhysicalName,
  splitRestorePoint,
  TEMPLATE_DATABASES,
  validateBranchName,
  type BranchTarget,
} from '../branch/names.js';
import type { BranchProvider, BranchRecord, DatabaseEntry } from '../branch/provider.js';
import { errors, PgError, printable } from '../errors.js';
import type { ClientRegistry } from '../proxy/clients.js';
import { diffSchemas, readSchema } from './diff.js';
import { formatDiff } from './diff-format.js';
import type {
  BranchInfo,
  CreateRequest,
  CreateResult,
  DeleteResult,
  DiffResult,
  ExpiryChange,
  GcRequest,
  GcResult,
  Lifecycle,
  ListOptions,
  SnapshotInfo,
} from './model.js';
import type { CreationQuota } from './creation-quota.js';
import { patternsMatcher, type Policy } from './policy.js';

/** What a branch's connections are held by: the pools. */
export interface BranchConnections {
  /**
   * `terminate`: the branch is being replaced or dropped: the clients that can't wait for it
   * (session-mode and pinned ones; all of them when it is dropped) are disconnected saying so.
   */
  pause(
    database: string,
    timeoutMs: number,
    terminate?: { name: string; verb: 'reset' | 'restored' | 'deleted' },
  ): Promise<number>;
  resume(database: string): void;
  /** Closes every pooled connection to `database`, busy ones when they come back. */
  closeDatabase(database: string): void;
}

export interface LifecycleSettings {
  policy: Policy;
  drainTimeoutMs: number;
  /**
   * Roots with branches get an automatic restore point this often when quiet, the first one this
   * long after the root got its first branch; 0 never.
   */
  rootSnapshotIntervalMs: number;
  /**
   * Take them where the provider copies instead of cloning too: each is then as large as its root,
   * so never unless asked for.
   */
  rootSnapshotCopies: boolean;
  /** A connect-time clone of a busy root may use its newest automatic restore point. */
  useRootSnapshot: boolean;
}

export interface LifecycleOptions {
  provider: BranchProvider;
  cloner: Cloner;
  connections: BranchConnections;
  clients: ClientRegistry;
  /** An administrative connection to a database (for diffs). */
  connectTo: (database: string) => pg.Client;
  /** The database pgbranch's own administrative connections use: it can't be branched. */
  maintenanceDatabase: string;
  /** A database was dropped: connecting to it must look it up again. */
  forget: (database: string) => void;
  settings: LifecycleSettings;
  /** How many branches a role may make by connecting (per minute, in all). */
  creationQuota: CreationQuota;
  log: Logger;
  /** Called once per creation attempted (for metrics), whether it succeeded or not. */
  onCreated?: (mode: 'clone' | 'copy', ms: number, ok: boolean) => void;
  /**
   * Called once per other change attempted (for metrics), once it got past the checks (a refused
   * one is not counted): per branch dropped for delete, expire and gc (a cascade counts each).
   */
  onOperation?: (operation: Operation, ok: boolean) => void;
  now?: () => number;
}

export type Operation =
  'reset' | 'restore' | 'snapshot' | 'auto_snapshot' | 'delete' | 'expire' | 'gc';

/** The branches (of every root) that a role's connects made and that exist. */
function madeBy(catalog: Catalog, role: string): number {
  let count = 0;
  for (const entry of catalog.branches.values()) if (entry.record?.createdBy === role) count++;
  return count;
}

/** Copies made aside during a reset or restore are named this, then a hash of the branch. */
const ASIDE_PREFIX = 'pgbranch_aside_';
/** Restore points pgbranch takes of roots are named this, then a UTC time. */
const AUTO_PREFIX = 'auto-';

/** One database of the catalog, as a branch. */
interface BranchEntry extends DatabaseEntry {
  root: string;
  branch: string;
  name: string;
}

interface Catalog {
  branches: Map<string, BranchEntry>;
  snapshots: (DatabaseEntry & { record: BranchRecord })[];
}

export class LifecycleService implements Lifecycle {
  settings: LifecycleSettings;
  /** Last connection per database, newer than what its record says until the next flush. */
  private readonly touched = new Map<string, number>();
  /** Operations on one root run one at a time, so that a reset and a delete can't interleave. */
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly now: () => number;
  private sweeping = false;
  /** Expired branches kept for their children, warned about once. */
  private readonly blockedExpiries = new Set<string>();
  /** When this pgbranch first saw each root with branches (for branches with no creation time). */
  private readonly rootsSeenBranched = new Map<string, number>();
  /** The log has said that automatic restore points are off because they would be copies. */
  private saidNoCopies = false;

  constructor(private readonly options: LifecycleOptions) {
    this.settings = options.settings;
    this.now = options.now ?? Date.now;
  }

  // ---- reading ---------------------------------------------------------------------------

  async list(database?: string, options: ListOptions = {}): Promise<BranchInfo[]> {
    const catalog = await this.catalog(options.sizes ?? 'all');
    const counts = this.options.clients.counts();
    return [...catalog.branches.values()]
      .filter((entry) => database === undefined || entry.root === database)
      .map((entry) => this.describe(entry, catalog, counts))
      .sort((a, b) => compareNames(a, b));
  }

  /** How many branches each database has (its root not counted), and restore points in all. */
  async census(): Promise<{ branches: Map<string, number>; restorePoints: number }> {
    const catalog = await this.catalog();
    const branches = new Map<string, number>();
    for (const entry of catalog.branches.values()) {
      const n = branches.get(entry.root) ?? 0;
      branches.set(entry.root, entry.branch === ROOT_BRANCH ? n : n + 1);
    }
    return { branches, restorePoints: catalog.snapshots.length };
  }

  async get(name: string): Promise<BranchInfo> {
    let catalog = await this.catalog();
    const entry = this.entry(catalog, name);
    const points = this.pointsOf(catalog, entry).map((s) => s.physical);
    catalog = await this.catalog([entry.physical, ...points]);
    return this.describe(this.entry(catalog, name), catalog, this.options.clients.counts());
  }

  // ---- creating --------------------------------------------------------------------------

  async create(request: CreateRequest): Promise<CreateResult> {
    const { root, branch } = parseBranchName(request.name);
    if (branch === ROOT_BRANCH) throw notABranch(request.name);
    if (request.at !== undefined) throw errors.noSourceHistory('pgbranch follows no source');
    const parent = request.parent === undefined ? ROOT_BRANCH : parentBranch(root, request.parent);
    validateBranchName(parent);
    this.checkBranchable(root, branch);
    const expiresAt = request.expiresAt === undefined ? undefined : parseTime(request.expiresAt);
    return this.exclusive(root, async () => {
      const started = this.now();
      const catalog = await this.catalog();
      const name = branchName(root, branch);
      const existing = catalog.branches.get(name);
      if (existing) {
        const existingParent = existing.record?.parent ?? null;
        if (existingParent === parent || (existingParent === null && !existing.record)) {
          return { branch: await this.get(name), created: false, ms: 0 };
        }
        throw new PgError(
          '42P04',
          `branch "${printable(name)}" already exists, ${existingParent ? `made from "${printable(branchName(root, existingParent))}"` : 'with its parent unknown (it was made outside pgbranch)'}`,
          undefined,
          `Delete it first, or use it as it is: it was not made from "${printable(branchName(root, parent))}".`,
          'ERROR',
        );
      }
      const parentEntry = catalog.branches.get(branchName(root, parent));
      if (!parentEntry) {
        if (!catalog.branches.has(root)) throw errors.databaseMissing(root, name);
        throw errors.parentMissing(branchName(root, parent), `create branch "${printable(name)}"`);
      }
      let source = parentEntry.physical;
      if (request.snapshot !== undefined) {
        source = this.snapshotOf(catalog, parentEntry, request.snapshot).physical;
      }
      this.checkLimit(catalog, root);
      const record: BranchRecord = {
        kind: 'branch',
        root,
        branch,
        parent,
        createdAt: new Date(this.now()).toISOString(),
        mode: this.options.provider.copyMethod.mode,
      };
      if (request.snapshot !== undefined) record.fromSnapshot = request.snapshot;
      if (expiresAt !== undefined) record.expiresAt = expiresAt;
      if (request.ttlMs !== undefined) record.ttlMs = request.ttlMs;
      const physical = physicalName(root, branch);
      await this.make(source, physical, record, request.snapshot === undefined);
      return { branch: await this.get(name), created: true, ms: this.now() - started };
    });
  }

  /** Creates a branch a client connected to (BranchManager's creator), under the policy. */
  readonly createOnConnect = async (
    target: BranchTarget,
    database: string,
    user: string,
  ): Promise<{ notice?: string }> => {
    const { provider } = this.options;
    const { policy } = this.settings;
    const branch = target.branch!;
    const parentName = target.parent ?? ROOT_BRANCH;
    const parent = physicalName(target.root, target.parent);
    const name = branchName(target.root, branch);
    this.checkBranchable(target.root, branch);
    if (!policy.mayCreateOnConnect(target.root, branch)) {
      throw new PgError(
        '3D000',
        `database "${printable(name)}" does not exist`,
        'Only branches named like branch.create_on_connect are created by connecting.',
        `Create it first: npx pgbranch branch create ${name}`,
      );
    }
    if (!(await provider.exists(parent))) {
      if (target.parent === undefined || !(await provider.exists(target.root))) {
        throw errors.databaseMissing(target.root, name);
      }
      throw errors.parentMissing(
        branchName(target.root, parentName),
        `create branch "${printable(name)}"`,
      );
    }
    if (!(await provider.mayCreate(user, parent))) {
      throw errors.mayNotCreateBranch(user, branch, parent);
    }
    return this.exclusive(target.root, async () => {
      const catalog = await this.catalog();
      if (catalog.branches.has(name)) return {};
      this.checkLimit(catalog, target.root);
      this.options.creationQuota.admit(user, () => madeBy(catalog, user));
      const record: BranchRecord = {
        kind: 'branch',
        root: target.root,
        branch,
        parent: parentName,
        createdAt: new Date(this.now()).toISOString(),
        mode: provider.copyMethod.mode,
        createdBy: user,
      };
      try {
        await this.make(parent, database, record, true, user);
        return {};
      } catch (error) {
        const fallback =
          error instanceof PgError &&
          error.code === '55006' &&
          target.parent === undefined &&
          this.settings.useRootSnapshot
            ? newestAuto(catalog, target.root)
            : undefined;
        if (!fallback) throw error;
        const snapshot = fallback.record.snapshot!;
        record.fromSnapshot = snapshot;
        await this.make(fallback.physical, database, record, false, user);
        const age = formatAge(this.now() - Date.parse(fallback.record.createdAt));
        return {
          notice: `pgbranch: "${target.root}" was busy (${(error as Error).message.replace(/^cannot branch "[^"]*": /, '')}), so branch "${branch}" was made from its restore point ${snapshot}: the data is ${age} old`,
        };
      }
    });
  };

  // ---- changing --------------------------------------------------------------------------

  async reset(name: string): Promise<BranchInfo> {
    return this.change(name, 'reset', async (entry, catalog) => {
      const record = entry.record;
      if (!record || !record.parent) {
        throw new PgError(
          '55000',
          `cannot reset "${printable(entry.name)}": it was made outside pgbranch, so its parent is unknown`,
          undefined,
          `Delete it and create it again from its parent: npx pgbranch branch create ${entry.name} --from <parent>`,
          'ERROR',
        );
      }
      const parentFull = branchName(entry.root, record.parent);
      const parent = catalog.branches.get(parentFull);
      if (!parent) throw errors.parentMissing(parentFull, `reset "${printable(entry.name)}"`);
      const fresh: BranchRecord = {
        ...record,
        createdAt: new Date(this.now()).toISOString(),
        mode: this.options.provider.copyMethod.mode,
      };
      delete fresh.fromSnapshot;
      delete fresh.restoredFrom;
      await this.counted('reset', this.replace(entry, parent.physical, true, fresh, 'reset'));
    });
  }

  async restore(name: string, snapshot: string): Promise<BranchInfo> {
    return this.change(name, 'restore', async (entry, catalog) => {
      const point = this.snapshotOf(catalog, entry, snapshot);
      const record: BranchRecord = {
        ...(entry.record ?? defaultRecord(entry)),
        restoredFrom: snapshot,
      };
      await this.counted('restore', this.replace(entry, point.physical, false, record, 'restored'));
    });
  }

  async snapshot(name: string, snapshot: string): Promise<SnapshotInfo> {
    validateSnapshotName(snapshot);
    const { root } = parseBranchName(name);
    return this.exclusive(root, () => this.takeSnapshot(name, snapshot, false));
  }

  async deleteSnapshot(name: string, snapshot: string): Promise<DeleteResult> {
    const { root } = parseBranchName(name);
    return this.exclusive(root, async () => {
      const catalog = await this.catalog();
      const entry = this.entry(catalog, name);
      const point = this.snapshotOf(catalog, entry, snapshot);
      if (entry.record?.protected) {
        throw errors.branchProtected(entry.name, `delete restore point "${snapshot}" of`);
      }
      await this.options.provider.drop(point.physical);
      this.options.log.info(
        { event: 'snapshot_deleted', branch: entry.name, snapshot },
        `deleted restore point ${snapshot} of ${entry.name}`,
      );
      return { deleted: [`${entry.name}${SNAPSHOT_SEPARATOR}${snapshot}`] };
    });
  }

  async delete(name: string, options: { cascade?: boolean } = {}): Promise<DeleteResult> {
    return this.withBranch(name, 'delete', async (entry, catalog) => {
      const doomed = subtree(catalog, entry);
      const children = doomed.filter((e) => e !== entry);
      if (children.length > 0 && !options.cascade) {
        throw errors.branchHasChildren(
          entry.name,
          children.map((c) => c.name),
        );
      }
      const kept = doomed.find((e) => e.record?.protected);
      if (kept) throw errors.branchProtected(kept.name, 'delete');
      const deleted: string[] = [];
      for (const victim of doomed) deleted.push(...(await this.drop(victim, catalog, 'deleted')));
      return { deleted };
    });
  }

  async protect(name: string, on: boolean): Promise<BranchInfo> {
    return this.updateRecord(name, on ? 'protect' : 'unprotect', (record) => {
      if (on) record.protected = true;
      else delete record.protected;
    });
  }

  async expire(name: string, change: ExpiryChange): Promise<BranchInfo> {
    const expiresAt =
      change.expiresAt === undefined || change.expiresAt === null
        ? change.expiresAt
        : parseTime(change.expiresAt);
    if (change.ttlMs !== undefined && change.ttlMs !== null && !(change.ttlMs > 0)) {
      throw new PgError('22023', `invalid idle expiry ${change.ttlMs}: it must be positive`);
    }
    return this.updateRecord(name, 'set the expiry of', (record) => {
      if (expiresAt === null) delete record.expiresAt;
      else if (expiresAt !== undefined) record.expiresAt = expiresAt;
      if (change.ttlMs !== undefined) record.ttlMs = change.ttlMs;
    });
  }

  // ---- cleaning up -----------------------------------------------------------------------

  async gc(request: GcRequest): Promise<GcResult> {
    const keep = new Set(liveBranchNames(request.keep));
    const matches = patternsMatcher(request.patterns?.length ? request.patterns : ['*']);
    const catalog = await this.catalog();
    const candidates = new Set<BranchEntry>();
    for (const entry of catalog.branches.values()) {
      if (entry.branch === ROOT_BRANCH || keep.has(entry.branch)) continue;
      if (request.database !== undefined && entry.root !== request.database) continue;
      if (matches(entry.root, entry.branch)) candidates.add(entry);
    }
    const kept: GcResult['kept'] = [];
    const chosen: BranchEntry[] = [];
    for (const entry of candidates) {
      if (entry.record?.protected) {
        kept.push({ name: entry.name, reason: 'protected' });
        continue;
      }
      const staying = subtree(catalog, entry).filter(
        (e) => e !== entry && (!candidates.has(e) || e.record?.protected),
      );
      if (staying.length > 0) {
        kept.push({
          name: entry.name,
          reason: `branches made from it stay: ${staying.map((e) => e.name).join(', ')}`,
        });
        continue;
      }
      chosen.push(entry);
    }
    // Children before their parents.
    chosen.sort((a, b) => depth(catalog, b) - depth(catalog, a) || compareNames(a, b));
    const deleted: string[] = [];
    if (request.apply) {
      for (const entry of chosen) {
        await this.exclusive(entry.root, async () => {
          const fresh = await this.catalog();
          const current = fresh.branches.get(entry.name);
          if (current) deleted.push(...(await this.drop(current, fresh, 'deleted', 'gc')));
        });
      }
    } else deleted.push(...chosen.map((e) => e.name));
    kept.sort((a, b) => a.name.localeCompare(b.name));
    return { deleted, kept, applied: request.apply === true };
  }

  /** Either side may be a restore point, `app@x:before`: what a migration changed since it. */
  async diff(from: string, to: string): Promise<DiffResult> {
    const catalog = await this.catalog();
    const a = this.diffSide(catalog, from);
    const b = this.diffSide(catalog, to);
    const [before, after] = await Promise.all([this.readSchemaOf(a), this.readSchemaOf(b)]);
    const diff = diffSchemas(before, after);
    return { from: a.name, to: b.name, diff, text: formatDiff(diff, a.name, b.name) };
  }

  private diffSide(catalog: Catalog, name: string): DiffSide {
    const split = splitRestorePoint(name);
    if (!split) {
      const entry = this.entry(catalog, name);
      return { name: entry.name, physical: entry.physical, root: entry.root, point: false };
    }
    const entry = this.entry(catalog, split.branch);
    const point = this.snapshotOf(catalog, entry, split.point);
    return {
      name: `${entry.name}${SNAPSHOT_SEPARATOR}${split.point}`,
      physical: point.physical,
      root: entry.root,
      point: true,
    };
  }

  /** Notes that a client connected to `database` now (idle expiry counts from the last one). */
  touch(database: string): void {
    this.touched.set(database, this.now());
  }

  /**
   * One round of upkeep: writes last-connection times to the records, deletes expired branches,
   * and takes automatic restore points of quiet roots. Returns the names it deleted.
   */
  async sweep(): Promise<string[]> {
    if (this.sweeping) return [];
    this.sweeping = true;
    try {
      await this.flushTouched();
      await this.dropLeftovers();
      const deleted = await this.deleteExpired();
      await this.snapshotQuietRoots();
      return deleted;
    } finally {
      this.sweeping = false;
    }
  }

  // ---- internals -------------------------------------------------------------------------

  /** What is on the server now; sizes only where asked (see BranchProvider.list). */
  private async catalog(sizes: 'all' | readonly string[] = []): Promise<Catalog> {
    const branches = new Map<string, BranchEntry>();
    const snapshots: Catalog['snapshots'] = [];
    for (const db of await this.options.provider.list(sizes)) {
      const { record } = db;
      if (record?.kind === 'snapshot') {
        snapshots.push({ ...db, record });
        continue;
      }
      let root: string;
      let branch: string;
      if (record) {
        ({ root, branch } = record);
        // A copy being made aside for a reset carries the branch's record until it is swapped in.
        if (db.physical !== physicalName(root, branch)) continue;
      } else {
        const at = db.physical.indexOf(SEPARATOR);
        root = at < 0 ? db.physical : db.physical.slice(0, at);
        branch = at < 0 ? ROOT_BRANCH : db.physical.slice(at + 1);
      }
      const name = branchName(root, branch);
      branches.set(name, { ...db, root, branch, name });
    }
    snapshots.sort((a, b) => a.record.createdAt.localeCompare(b.record.createdAt));
    return { branches, snapshots };
  }

  private entry(catalog: Catalog, name: string): BranchEntry {
    const { root, branch } = parseBranchName(name);
    const entry = catalog.branches.get(branchName(root, branch));
    if (!entry) throw errors.branchMissing(branchName(root, branch));
    return entry;
  }

  /** The restore points of a branch, oldest first. */
  private pointsOf(catalog: Catalog, entry: BranchEntry): Catalog['snapshots'] {
    return catalog.snapshots.filter(
      (s) => s.record.root === entry.root && s.record.branch === entry.branch,
    );
  }

  private snapshotOf(catalog: Catalog, entry: BranchEntry, snapshot: string) {
    const point = this.pointsOf(catalog, entry).find((s) => s.record.snapshot === snapshot);
    if (!point) throw errors.snapshotMissing(entry.name, snapshot);
    return point;
  }

  private describe(entry: BranchEntry, catalog: Catalog, counts: Map<string, number>): BranchInfo {
    const record = entry.record;
    const isRoot = entry.branch === ROOT_BRANCH;
    const clients = counts.get(entry.physical) ?? 0;
    const lastConnected = this.lastConnected(entry);
    const ttlMs =
      isRoot || record?.ttlMs === null
        ? null
        : (record?.ttlMs ?? this.settings.policy.defaultTtl(entry.root, entry.branch) ?? null);
    const expiresAt = record?.expiresAt ?? null;
    return {
      name: entry.name,
      database: entry.root,
      branch: entry.branch,
      physical: entry.physical,
      parent: isRoot || !record?.parent ? null : branchName(entry.root, record.parent),
      fromSnapshot: record?.fromSnapshot ?? null,
      restoredFrom: record?.restoredFrom ?? null,
      dataAsOf: null,
      createdAt: record?.createdAt ?? null,
      lastConnectedAt: lastConnected === undefined ? null : new Date(lastConnected).toISOString(),
      sizeBytes: entry.sizeBytes,
      clone: record?.mode === 'clone',
      clients,
      protected: isRoot || record?.protected === true,
      expiresAt,
      ttlMs,
      expiresBy: expiryOf(expiresAt, ttlMs, lastConnected ?? timeOf(record?.createdAt)),
      origin: record ? 'pgbranch' : 'external',
      state: 'running',
      snapshots: this.pointsOf(catalog, entry).map((s) => ({
        name: s.record.snapshot!,
        of: entry.name,
        physical: s.physical,
        createdAt: s.record.createdAt,
        sizeBytes: s.sizeBytes,
        auto: s.record.auto === true,
      })),
    };
  }

  private lastConnected(entry: BranchEntry): number | undefined {
    const times = [this.touched.get(entry.physical), timeOf(entry.record?.lastConnectedAt)].filter(
      (t): t is number => t !== undefined,
    );
    return times.length > 0 ? Math.max(...times) : undefined;
  }

  /** pgbranch's own database and PostgreSQL's templates are never branched, whoever asks. */
  private checkBranchable(root: string, branch: string): void {
    if (root === this.options.maintenanceDatabase) {
      throw unbranchable(
        root,
        branch,
        "it is pgbranch's own database, which its administrative connections use",
      );
    }
    if (TEMPLATE_DATABASES.includes(root)) {
      throw unbranchable(
        root,
        branch,
        'it is a template database: PostgreSQL makes every new database from template1, and template0 is its pristine copy',
      );
    }
  }

  private checkLimit(catalog: Catalog, root: string): void {
    const max = this.settings.policy.maxPerDatabase;
    if (max === 0) return;
    let count = 0;
    for (const entry of catalog.branches.values()) {
      if (entry.root === root && entry.branch !== ROOT_BRANCH) count++;
    }
    if (count >= max) throw errors.branchLimit(root, max);
  }

  /** Clones `source` into `physical` with the policy's scripts, logging and counting it. */
  private async make(
    source: string,
    physical: string,
    record: BranchRecord,
    drainSource: boolean,
    user?: string,
  ): Promise<void> {
    const { cloner, provider, log } = this.options;
    const started = this.now();
    const name = branchName(record.root, record.branch);
    let cloneMs: number;
    try {
      const scripts = this.settings.policy.scriptsFor(record.root, record.branch);
      cloneMs = await cloner.clone(source, physical, record, { drainSource, scripts });
    } catch (error) {
      const code = (error as { code?: string }).code;
      // Another proxy on the same server is making it: once it has finished (its record is the
      // last step, after the branch is opened to connections), the branch is what we want.
      if (code === '42P04' && (await this.othersCreation(physical))) return;
      this.options.onCreated?.(provider.copyMethod.mode, this.now() - started, false);
      if (code !== undefined && (error as { script?: string }).script !== undefined) {
        throw new PgError(
          code,
          `could not create branch "${printable(name)}": ${(error as Error).message}`,
          'The branch was not created.',
          'Fix the script (branch.scripts), then connect or create again.',
        );
      }
      throw error;
    }
    const ms = this.now() - started;
    this.options.onCreated?.(provider.copyMethod.mode, ms, true);
    log.info(
      {
        event: 'branch_created',
        root: record.root,
        branch: record.branch,
        parent: branchName(record.root, record.parent),
        fromSnapshot: record.fromSnapshot,
        database: physical,
        mode: provider.copyMethod.mode,
        cloneMs,
        totalMs: ms,
        user,
      },
      `created branch ${name} from ${branchName(record.root, record.parent)}${record.fromSnapshot ? ` (restore point ${record.fromSnapshot})` : ''} (${provider.copyMethod.mode}) in ${ms} ms`,
    );
  }

  /**
   * Makes `entry` a copy of `source` under the same name: the copy is made aside first, so that a
   * failure leaves the branch as it was; then the branch's clients are drained and it is swapped.
   */
  private async replace(
    entry: BranchEntry,
    source: string,
    drainSource: boolean,
    record: BranchRecord,
    verb: 'reset' | 'restored',
  ): Promise<void> {
    const { provider, connections, cloner } = this.options;
    const aside = asideName(entry.physical);
    await provider.drop(aside);
    const started = this.now();
    const scripts =
      verb === 'reset' ? this.settings.policy.scriptsFor(entry.root, entry.branch) : [];
    await cloner.clone(source, aside, record, { drainSource, scripts });
    try {
      await this.drainClients(entry, verb);
      await provider.replace(entry.physical, aside);
    } catch (error) {
      await provider.drop(aside).catch(() => undefined);
      throw error;
    } finally {
      connections.closeDatabase(entry.physical);
      connections.resume(entry.physical);
    }
    this.options.log.info(
      {
        event: verb === 'reset' ? 'branch_reset' : 'branch_restored',
        branch: entry.name,
        restoredFrom: record.restoredFrom,
        totalMs: this.now() - started,
      },
      `${verb} branch ${entry.name}${verb === 'restored' ? ` to restore point ${record.restoredFrom}` : ''} in ${this.now() - started} ms`,
    );
  }

  /**
   * Pauses the branch's pools, which disconnects the clients that can't wait (see
   * BranchConnections.pause), then those whose transaction outlasts the drain. The caller resumes.
   */
  private async drainClients(
    entry: BranchEntry,
    verb: 'reset' | 'restored' | 'deleted',
  ): Promise<void> {
    const { clients, connections } = this.options;
    const busy = await connections.pause(entry.physical, this.settings.drainTimeoutMs, {
      name: entry.name,
      verb,
    });
    if (busy > 0) {
      const error = errors.branchTerminated(entry.name, verb);
      for (const client of clients.on(entry.physical)) {
        if (client.serverPid() !== undefined) client.terminate(error);
      }
    }
  }

  /**
   * Waits for another proxy's creation of `physical` to end: true once the branch is complete,
   * false if it failed (its database dropped) or is still not done after a minute.
   */
  private async othersCreation(physical: string): Promise<boolean> {
    const { provider } = this.options;
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      if ((await provider.record(physical)) !== null) return true;
      if (!(await provider.exists(physical))) return false;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return false;
  }

  /** Drops a branch and its restore points, disconnecting its clients. Returns what went. */
  private async drop(
    entry: BranchEntry,
    catalog: Catalog,
    verb: 'deleted',
    why: 'gc' | 'expired' | 'request' = 'request',
  ): Promise<string[]> {
    const { provider, connections } = this.options;
    const operation = why === 'request' ? 'delete' : why === 'expired' ? 'expire' : 'gc';
    await this.drainClients(entry, verb);
    try {
      await this.counted(operation, provider.drop(entry.physical));
    } finally {
      connections.closeDatabase(entry.physical);
      connections.resume(entry.physical);
      this.options.forget(entry.physical);
      this.touched.delete(entry.physical);
    }
    const gone = [entry.name];
    for (const point of this.pointsOf(catalog, entry)) {
      await provider.drop(point.physical);
      gone.push(`${entry.name}${SNAPSHOT_SEPARATOR}${point.record.snapshot}`);
    }
    this.options.log.info(
      { event: why === 'expired' ? 'branch_expired' : 'branch_deleted', branch: entry.name, why },
      `${why === 'expired' ? 'expired' : 'deleted'} branch ${entry.name}${why === 'gc' ? ' (gc: no live git branch)' : ''}`,
    );
    return gone;
  }

  /** Tells the metrics how `work` ended, and passes its result or failure on. */
  private async counted<T>(operation: Operation, work: Promise<T>): Promise<T> {
    try {
      const result = await work;
      this.options.onOperation?.(operation, true);
      return result;
    } catch (error) {
      this.options.onOperation?.(operation, false);
      throw error;
    }
  }

  private async takeSnapshot(name: string, snapshot: string, auto: boolean): Promise<SnapshotInfo> {
    const catalog = await this.catalog();
    const entry = this.entry(catalog, name);
    if (this.pointsOf(catalog, entry).some((s) => s.record.snapshot === snapshot)) {
      throw new PgError(
        '42P04',
        `branch "${printable(entry.name)}" already has a restore point "${printable(snapshot)}"`,
        undefined,
        'Pick another name, or delete the old one first.',
        'ERROR',
      );
    }
    const physical = snapshotPhysicalName(entry.root, entry.branch, snapshot);
    const record: BranchRecord = {
      kind: 'snapshot',
      root: entry.root,
      branch: entry.branch,
      parent: entry.record?.parent ?? '',
      createdAt: new Date(this.now()).toISOString(),
      mode: this.options.provider.copyMethod.mode,
      snapshot,
    };
    if (auto) record.auto = true;
    const started = this.now();
    try {
      await this.counted(
        auto ? 'auto_snapshot' : 'snapshot',
        this.options.cloner.clone(entry.physical, physical, record, {
          drainSource: true,
          readOnly: true,
        }),
      );
    } catch (error) {
      if (error instanceof PgError && error.code === '55006') {
        throw new PgError(
          '55006',
          `cannot take restore point "${printable(snapshot)}" of "${printable(entry.name)}": ${error.message.replace(/^cannot branch "[^"]*": /, '')}`,
          error.detail,
          error.hint,
          'ERROR',
        );
      }
      throw error;
    }
    this.options.log.info(
      {
        event: 'snapshot_taken',
        branch: entry.name,
        snapshot,
        auto,
        totalMs: this.now() - started,
      },
      `took restore point ${snapshot} of ${entry.name} in ${this.now() - started} ms`,
    );
    const sizes = await this.options.provider.list([physical]);
    return {
      name: snapshot,
      of: entry.name,
      physical,
      createdAt: record.createdAt,
      sizeBytes: sizes.find((d) => d.physical === physical)?.sizeBytes ?? 0,
      auto,
    };
  }

  /** Runs a change of one branch's contents (reset, restore): never of a root or protected one. */
  private async change(
    name: string,
    action: 'reset' | 'restore',
    apply: (entry: BranchEntry, catalog: Catalog) => Promise<void>,
  ): Promise<BranchInfo> {
    return this.withBranch(name, action, async (entry, catalog) => {
      if (entry.record?.protected) throw errors.branchProtected(entry.name, action);
      await apply(entry, catalog);
      return this.get(entry.name);
    });
  }

  private async updateRecord(
    name: string,
    action: string,
    update: (record: BranchRecord) => void,
  ): Promise<BranchInfo> {
    return this.withBranch(name, action, async (entry) => {
      // A branch made outside pgbranch is adopted: it gets a record, with its parent unknown.
      const record = { ...(entry.record ?? defaultRecord(entry)) };
      update(record);
      await this.options.provider.setRecord(entry.physical, record);
      return this.get(entry.name);
    });
  }

  /** Runs `work` on a branch (never a root) under its root's lock, with a fresh catalog. */
  private async withBranch<T>(
    name: string,
    action: string,
    work: (entry: BranchEntry, catalog: Catalog) => Promise<T>,
  ): Promise<T> {
    const { root } = parseBranchName(name);
    return this.exclusive(root, async () => {
      const catalog = await this.catalog();
      const entry = this.entry(catalog, name);
      if (entry.branch === ROOT_BRANCH) {
        throw errors.rootImmutable(entry.name, action);
      }
      return work(entry, catalog);
    });
  }

  private async exclusive<T>(root: string, work: () => Promise<T>): Promise<T> {
    const before = this.locks.get(root) ?? Promise.resolve();
    const run = before.then(work, work);
    const settled = run.catch(() => undefined);
    this.locks.set(root, settled);
    void settled.then(() => {
      if (this.locks.get(root) === settled) this.locks.delete(root);
    });
    return run;
  }

  /**
   * Under the root's lock: a session on a database that is being cloned would fail the clone with
   * 55006 (and pgbranch's own sessions are not drained). A restore point takes no connections: it
   * lets this one in and closes again at once.
   */
  private async readSchemaOf(side: DiffSide) {
    const { provider } = this.options;
    return this.exclusive(side.root, async () => {
      const client = this.options.connectTo(side.physical);
      client.on('error', () => undefined);
      try {
        if (side.point) {
          await provider.allowConnections(side.physical, true);
          try {
            await client.connect();
          } finally {
            await this.closeAgain(side);
          }
        } else {
          await client.connect();
        }
        return await readSchema(client);
      } finally {
        await client.end().catch(() => undefined);
      }
    });
  }

  /** A restore point let in a diff's connection: it takes none again, or the log says it does. */
  private async closeAgain(side: DiffSide): Promise<void> {
    try {
      await this.options.provider.allowConnections(side.physical, false);
    } catch (error) {
      this.options.log.error(
        { err: error, event: 'restore_point_left_open', database: side.physical },
        `restore point ${side.name} may still take connections: ${(error as Error).message}; run ALTER DATABASE "${side.physical}" WITH ALLOW_CONNECTIONS false`,
      );
    }
  }

  /** Writes last-connection times to the branches' records (on each sweep, and at stop). */
  async flushTouched(): Promise<void> {
    if (this.touched.size === 0) return;
    const catalog = await this.catalog();
    for (const entry of catalog.branches.values()) {
      const at = this.touched.get(entry.physical);
      if (at === undefined || !entry.record) continue;
      if ((timeOf(entry.record.lastConnectedAt) ?? 0) >= at) continue;
      await this.options.provider
        .setRecord(entry.physical, { ...entry.record, lastConnectedAt: new Date(at).toISOString() })
        .catch((error: unknown) =>
          this.options.log.warn(
            { err: error, branch: entry.name },
            'could not record last connection',
          ),
        );
    }
  }

  /** Copies made aside for a reset or restore that a crash left behind. */
  private async dropLeftovers(): Promise<void> {
    if (this.locks.size > 0) return;
    for (const db of await this.options.provider.list([])) {
      if (db.physical.startsWith(ASIDE_PREFIX)) {
        this.options.log.info(
          { event: 'leftover_dropped', database: db.physical },
          `dropped ${db.physical}, left behind by an interrupted reset or restore`,
        );
        await this.options.provider.drop(db.physical);
      }
    }
  }

  private async deleteExpired(): Promise<string[]> {
    // Clients connected now are using their branch: idle expiry counts from now.
    for (const [database, n] of this.options.clients.counts()) {
      if (n > 0) this.touched.set(database, this.now());
    }
    const catalog = await this.catalog();
    const deleted: string[] = [];
    for (const entry of catalog.branches.values()) {
      if (!this.hasExpired(entry, catalog)) continue;
      const children = subtree(catalog, entry).filter((e) => e !== entry);
      if (children.length > 0) {
        if (!this.blockedExpiries.has(entry.name)) {
          this.blockedExpiries.add(entry.name);
          this.options.log.warn(
            {
              event: 'branch_expiry_blocked',
              branch: entry.name,
              children: children.map((c) => c.name),
            },
            `branch ${entry.name} has expired but branches were made from it; it stays until they go`,
          );
        }
        continue;
      }
      try {
        await this.exclusive(entry.root, async () => {
          // Looked at again under the lock: it may have been used, changed or deleted meanwhile.
          const fresh = await this.catalog();
          const current = fresh.branches.get(entry.name);
          if (current && this.hasExpired(current, fresh)) {
            deleted.push(...(await this.drop(current, fresh, 'deleted', 'expired')));
          }
        });
      } catch (error) {
        this.options.log.warn(
          { err: error, branch: entry.name },
          `could not delete expired branch ${entry.name}: ${(error as Error).message}`,
        );
      }
    }
    return deleted;
  }

  private hasExpired(entry: BranchEntry, catalog: Catalog): boolean {
    if (entry.branch === ROOT_BRANCH) return false;
    const counts = this.options.clients.counts();
    if ((counts.get(entry.physical) ?? 0) > 0) this.touched.set(entry.physical, this.now());
    const info = this.describe(entry, catalog, counts);
    return !info.protected && info.expiresBy !== null && Date.parse(info.expiresBy) <= this.now();
  }

  /**
   * Every interval, a quiet root with branches gets a restore point, the first an interval after it
   * got its first branch: not at once, which on a copying provider doubled a root's disk use a
   * minute after its first branch. Where restore points would be copies, only when asked for.
   */
  private async snapshotQuietRoots(): Promise<void> {
    const interval = this.settings.rootSnapshotIntervalMs;
    if (interval === 0) return;
    const catalog = await this.catalog();
    const counts = this.options.clients.counts();
    for (const [root, branchedAt] of this.rootsBranchedSince(catalog)) {
      const rootEntry = catalog.branches.get(root);
      if (!rootEntry || rootEntry.record) continue;
      const newest = newestAuto(catalog, root);
      const since = newest ? Date.parse(newest.record.createdAt) : branchedAt;
      if (this.now() - since < interval) continue;
      if (!this.autoPointsAllowed()) return;
      if ((counts.get(root) ?? 0) > 0) continue;
      if ((await this.options.provider.sessionsOn(root)) > 0) continue;
      const name = `${AUTO_PREFIX}${compactTime(this.now())}`;
      try {
        await this.exclusive(root, () => this.takeSnapshot(root, name, true));
        for (const old of catalog.snapshots) {
          if (old.record.root === root && old.record.branch === ROOT_BRANCH && old.record.auto) {
            await this.options.provider.drop(old.physical);
          }
        }
      } catch (error) {
        // Busy after all: the next round tries again.
        this.options.log.debug(
          { err: error, root },
          `no automatic restore point of ${root} this time`,
        );
      }
    }
  }

  /**
   * The roots that have branches, each with the time it got them: its oldest branch's creation,
   * or when this pgbranch first saw it with branches, whichever is earlier.
   */
  private rootsBranchedSince(catalog: Catalog): Map<string, number> {
    const since = new Map<string, number>();
    for (const entry of catalog.branches.values()) {
      if (entry.branch === ROOT_BRANCH) continue;
      const seen = this.rootsSeenBranched.get(entry.root) ?? this.now();
      this.rootsSeenBranched.set(entry.root, seen);
      const created = timeOf(entry.record?.createdAt) ?? seen;
      since.set(entry.root, Math.min(since.get(entry.root) ?? seen, created));
    }
    for (const root of this.rootsSeenBranched.keys()) {
      if (!since.has(root)) this.rootsSeenBranched.delete(root);
    }
    return since;
  }

  /** Clones, or copies asked for with branch.root_snapshot_copies; said once when it is neither. */
  private autoPointsAllowed(): boolean {
    const { copyMethod } = this.options.provider;
    if (copyMethod.mode === 'clone' || this.settings.rootSnapshotCopies) return true;
    if (!this.saidNoCopies) {
      this.saidNoCopies = true;
      this.options.log.info(
        { event: 'auto_snapshots_off', reason: copyMethod.reason },
        `no automatic restore points of roots: here each would be a full copy as large as its root (${copyMethod.reason}); set branch.root_snapshot_copies: true to take them anyway`,
      );
    }
    return false;
  }
}

/**
 * 0A000: branching this database is not something pgbranch does, for any role, whatever state the
 * database is in (not 42501, which would send the user looking for a privilege, nor 55006, which
 * says the database is busy and might be free later).
 */
function unbranchable(database: string, branch: string, why: string): PgError {
  return new PgError(
    '0A000',
    `cannot branch "${printable(database)}": ${why}`,
    undefined,
    `Create a database for your project (CREATE DATABASE app) and branch that: app@${printable(branch)}`,
  );
}

function notABranch(name: string): PgError {
  return new PgError(
    '42602',
    `"${printable(name)}" names a root database, not a branch`,
    undefined,
    `Name the branch after "@": ${name}@feature-x`,
    'ERROR',
  );
}

function validateSnapshotName(name: string): void {
  validateBranchName(name);
  if (name.includes(SNAPSHOT_SEPARATOR)) {
    throw new PgError(
      '42602',
      `invalid restore point name "${printable(name)}": it contains "${SNAPSHOT_SEPARATOR}"`,
      undefined,
      'Use letters, digits, "-", "_" or ".".',
      'ERROR',
    );
  }
}

/** One side of a diff: a branch, or a restore point of one. */
interface DiffSide {
  name: string;
  physical: string;
  root: string;
  point: boolean;
}

function defaultRecord(entry: BranchEntry): BranchRecord {
  return { kind: 'branch', root: entry.root, branch: entry.branch, parent: '', createdAt: '' };
}

function parseTime(text: string): string {
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) {
    throw new PgError(
      '22007',
      `invalid expiry "${printable(text)}": not a date or time`,
      undefined,
      'Write a date such as 2026-12-01 or a time such as 2026-12-01T18:00:00Z.',
      'ERROR',
    );
  }
  return new Date(ms).toISOString();
}

function timeOf(iso: string | undefined | null): number | undefined {
  if (!iso) return undefined;
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? undefined : ms;
}

/** When a branch expires: the earlier of its absolute expiry and `ttlMs` after `since`; null never. */
export function expiryOf(
  expiresAt: string | null,
  ttlMs: number | null,
  since: number | undefined,
) {
  const times: number[] = [];
  if (expiresAt) times.push(Date.parse(expiresAt));
  if (ttlMs !== null && since !== undefined) times.push(since + ttlMs);
  return times.length > 0 ? new Date(Math.min(...times)).toISOString() : null;
}

/** The branch and every branch made from it, children before their parents. */
function subtree(catalog: Catalog, entry: BranchEntry): BranchEntry[] {
  const out: BranchEntry[] = [];
  const visit = (node: BranchEntry) => {
    for (const child of catalog.branches.values()) {
      if (child.root === node.root && child.record?.parent === node.branch && child !== node) {
        visit(child);
      }
    }
    out.push(node);
  };
  visit(entry);
  return out;
}

function depth(catalog: Catalog, entry: BranchEntry): number {
  let n = 0;
  let node: BranchEntry | undefined = entry;
  while (node?.record?.parent && n < 1000) {
    node = catalog.branches.get(branchName(node.root, node.record.parent));
    n++;
  }
  return n;
}

function newestAuto(catalog: Catalog, root: string) {
  return catalog.snapshots
    .filter((s) => s.record.root === root && s.record.branch === ROOT_BRANCH && s.record.auto)
    .at(-1);
}

/** Names of live git branches from `git ls-remote --heads` lines or plain names, one per entry. */
export function liveBranchNames(lines: string[]): string[] {
  const names: string[] = [];
  for (const raw of lines.flatMap((l) => l.split('\n'))) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const ref = /^[0-9a-f]{7,64}\s+(\S.*)$/i.exec(line)?.[1] ?? line;
    names.push(ref.replace(/^refs\/heads\//, ''));
  }
  return names;
}

/** A name for the copy made aside during a reset or restore, unique per branch, within 63 bytes. */
function asideName(physical: string): string {
  return `${ASIDE_PREFIX}${createHash('sha256').update(physical).digest('hex').slice(0, 16)}`;
}

function compareNames(a: { name: string }, b: { name: string }): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

function compactTime(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
}

function formatAge(ms: number): string {
  const minutes = Math.round(ms / 60_000);
  if (minutes < 1) return 'less than a minute';
  if (minutes < 120) return `${minutes} minute${minutes === 1 ? '' : 's'}`;
  const hours = Math.round(minutes / 60);
  return hours < 48 ? `${hours} hours` : `${Math.round(hours / 24)} days`;
}
