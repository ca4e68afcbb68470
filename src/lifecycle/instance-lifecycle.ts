// The lifecycle of instance branches (branch.provider: instance), behind the same CLI, HTTP API and
// SQL console as database branches. A branch is a whole instance: `app@feature-x` and
// `billing@feature-x` name the same branch `feature-x`, and it is listed once, by its branch name.
// What instances can't do yet is refused with 0A000 and says so.
import type { InstanceBranches, InstanceView } from '../branch/instance/instances.js';
import { ROOT_BRANCH, SEPARATOR, validateBranchName } from '../branch/names.js';
import { errors, PgError } from '../errors.js';
import type {
  BranchInfo,
  CreateRequest,
  CreateResult,
  DeleteResult,
  DiffResult,
  ExpiryChange,
  GcResult,
  Lifecycle,
  SnapshotInfo,
} from './model.js';

/** The root instance (the embedded server), as it is listed. */
export interface RootInstance {
  createdAt: string | null;
  diskBytes: () => number;
  clients: () => number;
}

export class InstanceLifecycle implements Lifecycle {
  constructor(
    private readonly instances: InstanceBranches,
    private readonly root: RootInstance,
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
      ...views.map((view) => info(view)).sort((a, b) => a.name.localeCompare(b.name)),
    ]);
  }

  async get(name: string): Promise<BranchInfo> {
    const branch = branchOf(name);
    const found = (await this.list()).find((b) => b.name === branch);
    if (!found) throw errors.branchMissing(name);
    return found;
  }

  async create(request: CreateRequest): Promise<CreateResult> {
    if (request.snapshot !== undefined) throw notYet('branches from restore points');
    if (request.expiresAt !== undefined || request.ttlMs !== undefined) throw notYet('expiry');
    const branch = branchOf(request.name);
    if (branch === ROOT_BRANCH) throw errors.rootImmutable(request.name, 'create');
    validateBranchName(branch);
    const parent = request.parent === undefined ? undefined : branchOf(request.parent);
    const fromParent = parent === ROOT_BRANCH ? undefined : parent;
    if (fromParent !== undefined && !this.instances.has(fromParent)) {
      throw errors.branchMissing(request.parent!);
    }
    const started = Date.now();
    const created = await this.instances.make(branch, fromParent);
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

  snapshot(): Promise<SnapshotInfo> {
    return Promise.reject(notYet('restore points'));
  }

  restore(): Promise<BranchInfo> {
    return Promise.reject(notYet('restore points'));
  }

  deleteSnapshot(): Promise<DeleteResult> {
    return Promise.reject(notYet('restore points'));
  }

  expire(_name: string, _change: ExpiryChange): Promise<BranchInfo> {
    return Promise.reject(notYet('expiry'));
  }

  gc(): Promise<GcResult> {
    return Promise.reject(notYet('gc'));
  }

  diff(): Promise<DiffResult> {
    return Promise.reject(notYet('diff'));
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

function info(view: InstanceView): BranchInfo {
  const { record } = view;
  return {
    ...blank(record.name),
    physical: view.dir,
    parent: record.parent ?? ROOT_BRANCH,
    createdAt: record.createdAt,
    lastConnectedAt: record.lastConnectedAt ?? null,
    sizeBytes: view.diskBytes,
    clone: record.mode === 'clone',
    clients: view.clients,
    protected: record.protected === true,
    origin: 'pgbranch',
    state: view.running ? 'running' : 'suspended',
  };
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
    'Use branch.provider database for them, or connect to a branch to make it and delete it to start again.',
    'ERROR',
  );
}
