// The lifecycle of instance branches (branch.provider: instance), behind the same CLI, HTTP API and
// SQL console as database branches. A branch is a whole instance: `app@feature-x` and
// `billing@feature-x` name the same branch `feature-x`, and it is listed once, by its branch name.
// Restore points are stopped copies of an instance; a diff reads database `app` of both sides.
import path from 'node:path';
import type pg from 'pg';
import type { Logger } from 'pino';
import type { InstanceBranches, InstanceView } from '../branch/instance/instances.js';
import {
  ROOT_BRANCH,
  SEPARATOR,
  SNAPSHOT_SEPARATOR,
  parseMoment,
  splitRestorePoint,
  validateBranchName,
} from '../branch/names.js';
import { errors, PgError } from '../errors.js';
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
  SnapshotInfo,
} from './model.js';
import { patternsMatcher, type Policy } from './policy.js';
import { expiryOf, liveBranchNames } from './service.js';

/** The root instance (the embedded server), as it is listed. */
export interface RootInstance {
  createdAt: string | null;
  diskBytes: () => number;
  clients: () => number;
  withSession<T>(database: string, work: (client: pg.Client) => Promise<T>): Promise<T>;
}

export class InstanceLifecycle implements Lifecycle {
  constructor(
    private readonly instances: InstanceBranches,
    private readonly root: RootInstance,
    /** The configured policy (idle expiry by pattern), as it is after a RELOAD. */
    private readonly policy: () => Policy,
    private readonly log: Logger,
  ) {}

  list(): Promise<BranchInfo[]> {
    const views = this.instances.list();
    const rootInfo: BranchInfo = {
      ...blank(ROOT_BRANCH),
      physical: 'pg',
      createdAt: this.root.createdAt,
      sizeBytes: this.root.diskBytes(),
      clients: this.root.clients(),
      protected: true,
      origin: 'pgbranch',
    };
    return Promise.resolve([
      rootInfo,
      ...views
        .map((view) => info(view, this.policy().defaultTtl('', view.record.name)))
        .sort((a, b) => a.name.localeCompare(b.name)),
    ]);
  }

  copying(name: string): { bytes: number; totalBytes: number } | undefined {
    return this.instances.copying(branchOf(name));
  }

  async get(name: string): Promise<BranchInfo> {
    const branch = branchOf(name);
    const found = (await this.list()).find((b) => b.name === branch);
    if (!found) throw errors.branchMissing(name);
    return found;
  }

  async create(request: CreateRequest): Promise<CreateResult> {
    const branch = branchOf(request.name);
    if (branch === ROOT_BRANCH) throw errors.rootImmutable(request.name, 'create');
    validateBranchName(branch);
    const parent = request.parent === undefined ? undefined : branchOf(request.parent);
    const fromParent = parent === ROOT_BRANCH ? undefined : parent;
    if (fromParent !== undefined && !this.instances.has(fromParent)) {
      throw errors.branchMissing(request.parent!);
    }
    const started = Date.now();
    const at = request.at === undefined ? undefined : parseMoment(request.at);
    const created = await this.instances.make(branch, fromParent, request.snapshot, at);
    if (created && (request.expiresAt !== undefined || request.ttlMs !== undefined)) {
      this.instances.setExpiry(branch, { expiresAt: request.expiresAt, ttlMs: request.ttlMs });
    }
    return { branch: await this.get(branch), created, ms: Date.now() - started };
  }

  async reset(name: string): Promise<BranchInfo> {
    const branch = this.changeable(name, 'reset');
    await this.refuseProtected(name, branch, 'reset');
    await this.instances.reset(branch);
    return this.get(branch);
  }

  async delete(name: string, options: { cascade?: boolean } = {}): Promise<DeleteResult> {
    const branch = this.changeable(name, 'delete');
    await this.refuseProtected(name, branch, 'delete');
    const all = this.instances.list();
    const below = descendants(branch, all);
    if (below.length > 0 && !options.cascade) throw errors.branchHasChildren(branch, below);
    const protectedOnes = all.filter((v) => below.includes(v.record.name) && v.record.protected);
    if (protectedOnes.length > 0) {
      throw errors.branchProtected(protectedOnes[0]!.record.name, 'delete');
    }
    // Children first: the deepest were found last.
    const deleted: string[] = [];
    for (const child of [...below].reverse()) {
      await this.instances.remove(child);
      deleted.push(child);
    }
    await this.instances.remove(branch);
    deleted.push(branch);
    return { deleted };
  }

  async protect(name: string, on: boolean): Promise<BranchInfo> {
    const branch = this.changeable(name, on ? 'protect' : 'unprotect');
    this.instances.setProtected(branch, on);
    return this.get(branch);
  }

  async snapshot(name: string, snapshot: string): Promise<SnapshotInfo> {
    const branch = this.changeable(name, 'take a restore point of');
    validateBranchName(snapshot);
    await this.instances.snapshot(branch, snapshot);
    return (await this.get(branch)).snapshots.find((s) => s.name === snapshot)!;
  }

  async restore(name: string, snapshot: string): Promise<BranchInfo> {
    const branch = this.changeable(name, 'restore');
    await this.refuseProtected(name, branch, 'restore');
    await this.instances.restore(branch, snapshot);
    return this.get(branch);
  }

  async deleteSnapshot(name: string, snapshot: string): Promise<DeleteResult> {
    const branch = this.changeable(name, 'delete a restore point of');
    await this.instances.deleteSnapshot(branch, snapshot);
    return { deleted: [`${branch}${SNAPSHOT_SEPARATOR}${snapshot}`] };
  }

  async expire(name: string, change: ExpiryChange): Promise<BranchInfo> {
    const branch = this.changeable(name, 'set the expiry of');
    if (change.expiresAt && Number.isNaN(Date.parse(change.expiresAt))) {
      throw new PgError(
        '22007',
        `invalid date "${change.expiresAt}"`,
        undefined,
        undefined,
        'ERROR',
      );
    }
    this.instances.setExpiry(branch, change);
    return this.get(branch);
  }

  gc(request: GcRequest): Promise<GcResult> {
    return this.collect(request);
  }

  private async collect(request: GcRequest): Promise<GcResult> {
    const keep = new Set(liveBranchNames(request.keep));
    const matches = patternsMatcher(request.patterns?.length ? request.patterns : ['*']);
    const all = this.instances.list();
    const candidates = new Set(
      all.map((v) => v.record.name).filter((branch) => !keep.has(branch) && matches('', branch)),
    );
    const kept: GcResult['kept'] = [];
    const chosen: string[] = [];
    for (const view of all) {
      const branch = view.record.name;
      if (!candidates.has(branch)) continue;
      if (view.record.protected) {
        kept.push({ name: branch, reason: 'protected' });
        continue;
      }
      const staying = descendants(branch, all).filter(
        (child) =>
          !candidates.has(child) || all.find((v) => v.record.name === child)?.record.protected,
      );
      if (staying.length > 0) {
        kept.push({ name: branch, reason: `branches made from it stay: ${staying.join(', ')}` });
        continue;
      }
      chosen.push(branch);
    }
    // Children before their parents.
    chosen.sort((a, b) => depthOf(b, all) - depthOf(a, all) || a.localeCompare(b));
    if (request.apply) {
      for (const branch of chosen) {
        if (this.instances.has(branch)) await this.instances.remove(branch);
      }
    }
    kept.sort((a, b) => a.name.localeCompare(b.name));
    return { deleted: chosen, kept, applied: request.apply === true };
  }

  /**
   * The schema difference of one database (`app@x`: database app of instance x; `app` alone: of
   * the root instance) between two branches; either may be a restore point (`app@x:before`),
   * read from a scratch copy of it.
   */
  async diff(from: string, to: string): Promise<DiffResult> {
    const sides = [from, to].map((name) => {
      const split = splitRestorePoint(name);
      const branchPart = split ? split.branch : name;
      const at = branchPart.indexOf(SEPARATOR);
      const database = at < 0 ? branchPart : branchPart.slice(0, at);
      // A diff names databases: `app` alone is database app of the root instance.
      const branch = at < 0 ? ROOT_BRANCH : branchOf(branchPart);
      if (branch !== ROOT_BRANCH && !this.instances.has(branch)) throw errors.branchMissing(name);
      if (split && branch === ROOT_BRANCH) throw notYet('restore points of the root instance');
      return { database, branch, point: split?.point };
    });
    const [before, after] = await Promise.all(
      sides.map((side) =>
        side.point !== undefined
          ? this.instances.withPointSession(side.branch, side.point, side.database, readSchema)
          : side.branch === ROOT_BRANCH
            ? this.root.withSession(side.database, readSchema)
            : this.instances.withSession(side.branch, side.database, readSchema),
      ),
    );
    const diff = diffSchemas(before!, after!);
    return { from, to, diff, text: formatDiff(diff, from, to) };
  }

  /** Deletes instance branches past their expiry with no clients and no children; their names. */
  async sweep(now = Date.now()): Promise<string[]> {
    const deleted: string[] = [];
    const all = this.instances.list();
    for (const view of all) {
      const branch = info(view, this.policy().defaultTtl('', view.record.name));
      if (branch.expiresBy === null || Date.parse(branch.expiresBy) > now) continue;
      if (branch.protected || branch.clients > 0 || descendants(branch.name, all).length > 0) {
        continue;
      }
      await this.instances.remove(branch.name);
      this.log.info(
        { event: 'branch_expired', branch: branch.name, provider: 'instance' },
        `deleted expired branch instance ${branch.name}`,
      );
      deleted.push(branch.name);
    }
    return deleted;
  }

  /** The branch `name` names, which must exist and not be the root instance. */
  private changeable(name: string, action: string): string {
    const branch = branchOf(name);
    if (branch === ROOT_BRANCH) throw errors.rootImmutable(name, action);
    if (!this.instances.has(branch)) throw errors.branchMissing(name);
    return branch;
  }

  private async refuseProtected(name: string, branch: string, action: string): Promise<void> {
    if ((await this.get(branch)).protected) throw errors.branchProtected(name, action);
  }
}

/** `feature-x` from `app@feature-x` or `feature-x`; `main` for a root database or `main`. */
function branchOf(name: string): string {
  const at = name.indexOf(SEPARATOR);
  if (at < 0) return name === '' ? ROOT_BRANCH : name;
  return name.slice(at + 1) || ROOT_BRANCH;
}

/** Branches made from `branch`, directly or not, parents before children. */
function descendants(branch: string, all: InstanceView[]): string[] {
  const found: string[] = [];
  let frontier = [branch];
  while (frontier.length > 0) {
    const next = all.filter((v) => v.record.parent !== null && frontier.includes(v.record.parent));
    frontier = next.map((v) => v.record.name).filter((n) => !found.includes(n));
    found.push(...frontier);
  }
  return found;
}

function info(view: InstanceView, defaultTtl: number | undefined): BranchInfo {
  const { record } = view;
  const expiresAt = record.expiresAt ?? null;
  const ttlMs = record.ttlMs === undefined ? (defaultTtl ?? null) : record.ttlMs;

  return {
    ...blank(record.name),
    physical: view.dir,
    parent: record.parent ?? ROOT_BRANCH,
    fromSnapshot: record.fromSnapshot ?? null,
    restoredFrom: record.restoredFrom ?? null,
    dataAsOf: record.dataAsOf ?? null,
    createdAt: record.createdAt,
    lastConnectedAt: record.lastConnectedAt ?? null,
    sizeBytes: view.diskBytes,
    clone: record.mode === 'clone',
    clients: view.clients,
    protected: record.protected === true,
    expiresAt,
    ttlMs,
    expiresBy: expiryOf(expiresAt, ttlMs, Date.parse(record.lastConnectedAt ?? record.createdAt)),
    origin: 'pgbranch',
    state: view.running ? 'running' : 'suspended',
    snapshots: view.points.map((p) => ({
      name: p.name,
      of: record.name,
      physical: path.join(path.dirname(view.dir), 'points'),
      createdAt: p.createdAt,
      sizeBytes: p.diskBytes,
      auto: false,
    })),
  };
}

/** How many parents up to the root instance. */
function depthOf(branch: string, all: InstanceView[]): number {
  let depth = 0;
  let parent = all.find((v) => v.record.name === branch)?.record.parent ?? null;
  while (parent !== null && depth < 1000) {
    depth++;
    parent = all.find((v) => v.record.name === parent)?.record.parent ?? null;
  }
  return depth;
}

function blank(name: string): BranchInfo {
  return {
    name,
    database: '',
    branch: name,
    physical: '',
    parent: null,
    fromSnapshot: null,
    restoredFrom: null,
    dataAsOf: null,
    createdAt: null,
    lastConnectedAt: null,
    sizeBytes: 0,
    clone: false,
    clients: 0,
    protected: false,
    expiresAt: null,
    ttlMs: null,
    expiresBy: null,
    origin: 'pgbranch',
    state: 'running',
    snapshots: [],
  };
}

function notYet(what: string): PgError {
  return new PgError(
    '0A000',
    `${what}: not supported for instance branches yet`,
    undefined,
    'Use branch.provider database for it.',
    'ERROR',
  );
}
