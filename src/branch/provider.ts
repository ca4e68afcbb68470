// One interface for the ways a branch can be made. The manager decides when; a provider decides how.

/** How this provider's branches are made on this server and filesystem, detected at start. */
export interface CopyMethod {
  mode: 'clone' | 'copy';
  /** Why, for a person: version, setting and filesystem. */
  reason: string;
}

/**
 * What pgbranch keeps about a branch or restore point, with the database itself (a comment on it),
 * so that it survives restarts and travels with the server. Records from before restore points
 * existed have no `kind` and are branches.
 */
/**
 * What branch.copy_method makes of what was detected: `clone` refuses to start where cloning is
 * impossible, saying why; `copy` copies even where cloning would work.
 */
export function withCopyMethodSetting(
  detected: CopyMethod,
  wanted: 'auto' | 'clone' | 'copy',
): CopyMethod {
  if (wanted === 'clone' && detected.mode !== 'clone') {
    throw new Error(
      `branch.copy_method is clone, but branches can't be cloned here: ${detected.reason}. Use copy_method auto or copy, or move the data directory to XFS (reflink=1), btrfs or ZFS 2.2+.`,
    );
  }
  if (wanted === 'copy' && detected.mode === 'clone') {
    return { mode: 'copy', reason: 'branch.copy_method is copy (cloning would be possible here)' };
  }
  return detected;
}

export interface BranchRecord {
  kind?: 'branch' | 'snapshot';
  root: string;
  /** The branch; for a restore point, the branch it belongs to. */
  branch: string;
  parent: string;
  createdAt: string;
  /** How it was made. */
  mode?: CopyMethod['mode'];
  /** A branch: the restore point of its parent it was made from. */
  fromSnapshot?: string;
  /** A branch: its own restore point it was last restored to. */
  restoredFrom?: string;
  /** A restore point: its name, and whether pgbranch took it on its own. */
  snapshot?: string;
  auto?: boolean;
  protected?: boolean;
  expiresAt?: string;
  /** Idle expiry; null means never, even where a pattern default applies. */
  ttlMs?: number | null;
  lastConnectedAt?: string;
  /** The role whose connect made it (branch.max_per_role); absent when made otherwise. */
  createdBy?: string;
}

/** A database on the server as the lifecycle sees it. */
export interface DatabaseEntry {
  physical: string;
  /** Null for a database pgbranch did not make (a root, or one created by hand). */
  record: BranchRecord | null;
  /** 0 when it was not asked for. */
  sizeBytes: number;
}

export interface CreateOptions {
  /** A restore point: nobody may connect to it. */
  readOnly?: boolean;
  /** SQL run in the new database before it is given its final name; a failure undoes the creation. */
  scripts?: { name: string; sql: string }[];
}

export interface BranchProvider {
  readonly copyMethod: CopyMethod;
  exists(physical: string): Promise<boolean>;
  /** Sessions connected to a database that are not pgbranch's own administrative ones. */
  sessionsOn(physical: string): Promise<number>;
  /** Whether a role may cause a branch of `parentPhysical` to be created. */
  mayCreate(user: string, parentPhysical: string): Promise<boolean>;
  /** Makes `physical` a copy of `parentPhysical`, which has no sessions. All or nothing. */
  create(
    physical: string,
    parentPhysical: string,
    record: BranchRecord,
    options?: CreateOptions,
  ): Promise<void>;
  drop(physical: string): Promise<void>;
  /**
   * Lets `physical` take connections or not (a restore point does not, but its schema is read for
   * a diff through a connection made while it briefly does).
   */
  allowConnections(physical: string, allow: boolean): Promise<void>;
  /**
   * Every database but the templates and the maintenance database; sizes only of those named
   * (0 for the others), since measuring one means walking its files.
   */
  list(sizes?: 'all' | readonly string[]): Promise<DatabaseEntry[]>;
  record(physical: string): Promise<BranchRecord | null>;
  setRecord(physical: string, record: BranchRecord): Promise<void>;
  /** Replaces `physical` with `replacement` (dropping the first): the branch keeps its name. */
  replace(physical: string, replacement: string): Promise<void>;
}
