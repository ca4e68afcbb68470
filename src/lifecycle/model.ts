// What the branch lifecycle works with, as plain data: branches, restore points, and the requests
// that the CLI, the HTTP API and the SQL console turn into calls on the one LifecycleService.
import type { SchemaDiff } from './diff.js';

/** A branch as listed: everything a person deciding whether to keep it wants to see. */
export interface BranchInfo {
  /** `app@feature-x`, or `app` for a root. */
  name: string;
  /** The root database, `app`. */
  database: string;
  /** `main` for the root itself. */
  branch: string;
  /** The database that holds it on the server (differs from `name` for long names). */
  physical: string;
  /**
   * The branch it was made from, in full as clients write it (`app` for the root, `app@develop`);
   * null for a root, or for a branch made outside pgbranch.
   */
  parent: string | null;
  /** The restore point of `parent` it was made from, if any. */
  fromSnapshot: string | null;
  /** Its own restore point it was last restored to, if any (until the next reset). */
  restoredFrom: string | null;
  /** ISO times; null where unknown (roots, branches made outside pgbranch). */
  createdAt: string | null;
  lastConnectedAt: string | null;
  /** pg_database_size: what the server reports, shared blocks counted in full. */
  sizeBytes: number;
  /** Made by a copy-on-write clone: its blocks are shared with its parent until written. */
  clone: boolean;
  /** Clients connected to it through this pgbranch now. */
  clients: number;
  /** Roots are always protected. */
  protected: boolean;
  /** Absolute expiry, ISO. */
  expiresAt: string | null;
  /** Idle expiry: deleted this long after its last connection (or creation). */
  ttlMs: number | null;
  /** When the sweeper will delete it, the earlier of both expiries; null when never. */
  expiresBy: string | null;
  /** `pgbranch` when pgbranch made it; `external` for a database named like a branch made by hand. */
  origin: 'pgbranch' | 'external';
  /**
   * Whether it takes connections now: a database branch always does; an instance branch is
   * `suspended` while its instance is shut down (it starts on the next connect).
   */
  state: 'running' | 'suspended';
  /** Restore points of this branch, oldest first. */
  snapshots: SnapshotInfo[];
  /**
   * The moment its data is of, ISO: an instance branch made from its parent's warm standby (the
   * connect that made it, or the last commit the standby had replayed); null elsewhere.
   */
  dataAsOf: string | null;
}

/** A restore point: a read-only clone of a branch at one moment. */
export interface SnapshotInfo {
  /** The restore point's own name, e.g. `before-migration`, or `auto-20261125T170000Z` for roots. */
  name: string;
  /** The branch it belongs to, `app@feature-x`. */
  of: string;
  physical: string;
  createdAt: string;
  sizeBytes: number;
  /** Taken automatically (roots, when quiet). */
  auto: boolean;
}

export interface CreateRequest {
  /** `app@feature-x`. */
  name: string;
  /**
   * The parent: a branch of the same database, in full (`app`, `app@develop`) or by its branch name
   * alone (`main`, `develop`); default the root.
   */
  parent?: string;
  /** Create from this restore point of the parent instead of its current state. */
  snapshot?: string;
  /**
   * Create as the source was at this moment (ISO 8601 with its zone, or back from now as -1h):
   * with a source only.
   */
  at?: string;
  /** Absolute expiry, ISO date or date-time. */
  expiresAt?: string;
  /** Idle expiry in milliseconds. */
  ttlMs?: number;
}

export interface CreateResult {
  branch: BranchInfo;
  /** False when the branch existed already with the same parent (creation is idempotent). */
  created: boolean;
  ms: number;
}

export interface DeleteResult {
  /** Branches and restore points dropped, children first. */
  deleted: string[];
}

export interface ExpiryChange {
  /** An ISO date-time, or null to clear. Absent leaves it as it is. */
  expiresAt?: string | null;
  ttlMs?: number | null;
}

export interface GcRequest {
  /** Live git branch names, or lines of `git ls-remote --heads` (`<sha>\trefs/heads/<name>`). */
  keep: string[];
  /** Only branches whose branch name matches one of these patterns (`*` any); default all. */
  patterns?: string[];
  /** Only branches of this root database; default all. */
  database?: string;
  /** False (the default) only reports what would be deleted. */
  apply?: boolean;
}

export interface GcResult {
  /** Deleted (apply) or to be deleted (dry run). */
  deleted: string[];
  /** Matched but kept because they are protected or have children that are kept. */
  kept: { name: string; reason: string }[];
  applied: boolean;
}

export interface DiffResult {
  from: string;
  to: string;
  diff: SchemaDiff;
  /** The diff as text for a person (diff-format.ts). */
  text: string;
}

export interface ListOptions {
  /**
   * Whose sizes to read, by physical name (branches and restore points); the others may list 0.
   * Default all. For database branches pg_database_size walks every file (0.5-0.7 s for 300 of
   * them on a busy server); instance branches know their sizes and list them anyway.
   */
  sizes?: 'all' | readonly string[];
}

/**
 * The operations, one service behind the CLI, the HTTP API and the SQL console. Names are
 * `database@branch` (`app` or `app@main` for a root). Failures are PgErrors with a SQLSTATE:
 * 3D000 no such database or branch, 42704 no such restore point, 42P04 exists with another parent,
 * 42501 root or protected, 2BP01 has children (ask for cascade), 55006 can't be drained,
 * 42602 / 22023 / 22007 bad names, values or dates, 53400 branch.max_per_database reached.
 */
export interface Lifecycle {
  list(database?: string, options?: ListOptions): Promise<BranchInfo[]>;
  /**
   * How far the copy that makes (or resets, or restores) a branch is, while one runs; only where
   * copies report it (instance branches).
   */
  copying?(name: string): { bytes: number; totalBytes: number } | undefined;
  get(name: string): Promise<BranchInfo>;
  create(request: CreateRequest): Promise<CreateResult>;
  /** Drains the branch's clients and makes it a fresh clone of its parent's current state. */
  reset(name: string): Promise<BranchInfo>;
  snapshot(name: string, snapshot: string): Promise<SnapshotInfo>;
  /** Resets the branch to one of its restore points. */
  restore(name: string, snapshot: string): Promise<BranchInfo>;
  deleteSnapshot(name: string, snapshot: string): Promise<DeleteResult>;
  delete(name: string, options?: { cascade?: boolean }): Promise<DeleteResult>;
  protect(name: string, on: boolean): Promise<BranchInfo>;
  expire(name: string, change: ExpiryChange): Promise<BranchInfo>;
  gc(request: GcRequest): Promise<GcResult>;
  diff(from: string, to: string): Promise<DiffResult>;
}
