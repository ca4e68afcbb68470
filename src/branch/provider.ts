// One interface for the ways a branch can be made. The manager decides when; a provider decides how.

/** How this provider's branches are made on this server and filesystem, detected at start. */
export interface CopyMethod {
  mode: 'clone' | 'copy';
  /** Why, for a person: version, setting and filesystem. */
  reason: string;
}

export interface BranchRecord {
  root: string;
  branch: string;
  parent: string;
  createdAt: string;
}

export interface BranchProvider {
  readonly copyMethod: CopyMethod;
  exists(physical: string): Promise<boolean>;
  /** Sessions connected to a database that are not pgbranch's own administrative ones. */
  sessionsOn(physical: string): Promise<number>;
  /** Whether a role may cause a branch of `parentPhysical` to be created. */
  mayCreate(user: string, parentPhysical: string): Promise<boolean>;
  /** Makes `physical` a copy of `parentPhysical`, which has no sessions. All or nothing. */
  create(physical: string, parentPhysical: string, record: BranchRecord): Promise<void>;
  drop(physical: string): Promise<void>;
}
