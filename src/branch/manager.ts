// Finds the database behind a branch when a client connects, creating it on first use: once per
// branch however many clients ask at the same time (single flight). How a branch is made, and
// whether it may be, is the creator's business (the lifecycle service).
import { errors } from '../errors.js';
import type { Endpoint } from '../upstream/endpoint.js';
import { physicalName, type BranchTarget } from './names.js';

/** Makes the branch `database` for `target` on behalf of `user`; throws a PgError when it can't. */
export type Creator = (
  target: BranchTarget,
  database: string,
  user: string,
) => Promise<{ notice?: string }>;

export interface BranchManagerOptions {
  exists: (physical: string) => Promise<boolean>;
  create: Creator;
  /** Called on every resolution: the branch is in use (for idle expiry). */
  onConnect?: (database: string) => void;
}

export interface Resolution {
  database: string;
  /** True when this call created the branch (or waited on the creation that did). */
  created: boolean;
  /** Something the client should be told about its new branch (e.g. that its data is older). */
  notice?: string;
  /** Where the database is when not on the main server: a branch instance's private socket. */
  endpoint?: Endpoint;
  /** Called once when the client that asked is gone (an instance may suspend when idle). */
  leave?: () => void;
}

/** Finds where a client's branch lives, making it first if it does not exist. */
export interface BranchResolver {
  /**
   * `notify` hears what a client waiting for a long creation should be told meanwhile (progress
   * of a copy), as it happens.
   */
  resolve(
    target: BranchTarget,
    user: string,
    notify?: (message: string) => void,
  ): Promise<Resolution>;
  /** Forgets that a database exists (it was dropped behind pgbranch's back, or deleted). */
  forget(database: string): void;
}

export class BranchManager implements BranchResolver {
  /** Databases known to exist, so that connecting to a branch costs no query after the first. */
  private readonly known = new Set<string>();
  private readonly inFlight = new Map<string, Promise<{ notice?: string }>>();

  constructor(private readonly options: BranchManagerOptions) {}

  /** The database to connect to for `target`, created from its parent if it does not exist yet. */
  async resolve(target: BranchTarget, user: string): Promise<Resolution> {
    const resolution = await this.find(target, user);
    this.options.onConnect?.(resolution.database);
    return resolution;
  }

  private async find(target: BranchTarget, user: string): Promise<Resolution> {
    if (target.branch === undefined) return { database: target.root, created: false };
    const database = physicalName(target.root, target.branch);
    if (this.known.has(database)) return { database, created: false };
    const pending = this.inFlight.get(database);
    if (pending) return { database, created: true, ...(await pending) };
    if (await this.options.exists(database)) {
      this.known.add(database);
      return { database, created: false };
    }
    // Past moments are of a source's history: database branches are of the server as it is.
    if (target.at) throw errors.noSourceHistory('pgbranch follows no source');
    // Re-check after the await: another client may have started the creation meanwhile.
    let creation = this.inFlight.get(database);
    if (!creation) {
      creation = this.options
        .create(target, database, user)
        .then((made) => {
          this.known.add(database);
          return made;
        })
        .finally(() => this.inFlight.delete(database));
      this.inFlight.set(database, creation);
    }
    return { database, created: true, ...(await creation) };
  }

  /** Forgets that a database exists (it was dropped behind pgbranch's back, or deleted). */
  forget(database: string): void {
    this.known.delete(database);
  }
}
