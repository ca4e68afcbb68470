// pool.max_client_connections_per_branch and pool.max_client_connections_per_role: the clients one
// branch, or one role, may have connected at once, counted from login to departure.
import { errors } from '../errors.js';

export interface ClientLimits {
  /** 0: no limit. */
  perBranch: number;
  /** 0: no limit. */
  perRole: number;
}

export class ClientQuotas {
  private readonly byBranch = new Map<string, number>();
  private readonly byRole = new Map<string, number>();

  constructor(
    /** The limits as configured now (after a RELOAD too). */
    private readonly limits: () => ClientLimits,
  ) {}

  /** Counts a client of `branch` logged in as `role`, or throws 53300; returns its release. */
  admit(branch: string, role: string): () => void {
    const { perBranch, perRole } = this.limits();
    if (perBranch > 0 && (this.byBranch.get(branch) ?? 0) >= perBranch) {
      throw errors.tooManyBranchClients(branch, perBranch);
    }
    if (perRole > 0 && (this.byRole.get(role) ?? 0) >= perRole) {
      throw errors.tooManyRoleClients(role, perRole);
    }
    add(this.byBranch, branch, 1);
    add(this.byRole, role, 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      add(this.byBranch, branch, -1);
      add(this.byRole, role, -1);
    };
  }
}

function add(counts: Map<string, number>, key: string, by: number): void {
  const count = (counts.get(key) ?? 0) + by;
  if (count === 0) counts.delete(key);
  else counts.set(key, count);
}
