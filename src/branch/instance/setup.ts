// What `branch.provider: instance` needs from the configuration and the machine: the root instance's
// data directory on this host, the server binaries, and the instances' settings and limits.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { Logger } from 'pino';
import type { Config } from '../../config/schema.js';
import { detectCloneSupport } from '../copy-on-write.js';
import type { CreationQuota } from '../../lifecycle/creation-quota.js';
import type { Policy } from '../../lifecycle/policy.js';
import { withCopyMethodSetting, type CopyMethod } from '../provider.js';
import type { Endpoint } from '../../upstream/endpoint.js';
import { InstanceBranches, sumOfFiles, type InstanceBranchesOptions } from './instances.js';
import { serverBinaries, serverOwner } from './postmaster.js';
import type { Upstream } from './spares.js';

/**
 * Small settings for instances that mostly sit idle: a branch is a preview or a test database,
 * not production. Every one can be overridden with branch.instance_settings.
 */
export const INSTANCE_DEFAULTS: Record<string, string> = {
  shared_buffers: '16MB',
  max_connections: '30',
  max_wal_size: '256MB',
  min_wal_size: '32MB',
  max_worker_processes: '4',
  max_parallel_workers: '2',
  autovacuum_max_workers: '1',
  // Recovery from the copy's backup_label syncs the data directory first: one syncfs() instead
  // of an fsync of every file, which took most of a start on large clusters.
  recovery_init_sync_method: 'syncfs',
  // A copy inherits its parent's configuration: it must not archive into the parent's archive.
  archive_mode: 'off',
  // A new WAL segment (one at every promotion of a warm standby) is made sparse, not written full
  // of zeros first: 16 MB written and synced while the client waits, for space a copy-on-write
  // filesystem would not keep in place anyway.
  wal_init_zero: 'off',
};

/** Memory an idle instance is budgeted at when max_running is sized from the machine. */
const BUDGET_PER_INSTANCE = 64 * 1024 * 1024;

/** branch.max_running, or (0) a quarter of the machine's memory at 64 MB an instance, 2 to 64. */
export function maxRunning(configured: number, totalMemory = os.totalmem()): number {
  if (configured > 0) return configured;
  return Math.max(2, Math.min(64, Math.floor(totalMemory / 4 / BUDGET_PER_INSTANCE)));
}

/** `name=value, name=value` over the defaults. */
export function instanceSettings(text: string): Record<string, string> {
  const settings = { ...INSTANCE_DEFAULTS };
  for (const item of text.split(',')) {
    const trimmed = item.trim();
    if (!trimmed) continue;
    const eq = trimmed.indexOf('=');
    if (eq <= 0) {
      throw new Error(
        `branch.instance_settings: "${trimmed}" is not name=value (e.g. "shared_buffers=32MB, max_connections=50")`,
      );
    }
    settings[trimmed.slice(0, eq).trim()] = trimmed.slice(eq + 1).trim();
  }
  return settings;
}

/** The root instance: the embedded server, or an upstream whose data directory is on this host. */
export interface RootInstanceSetup {
  pgDataDir: string;
  /** A superuser session on it (for the backup API). */
  connect: () => Promise<pg.Client>;
  /** The role instances are reached as, with trust on their private sockets. */
  superuser: string;
  /**
   * Where a standby of it connects (libpq keywords, trust and replication allowed there): warm
   * spares need it; without, every branch is a copy under the backup API.
   */
  replicationConninfo?: string;
  /** The postgres binary of its major version; the embedded one's when undefined. */
  binary?: string;
  /** The server it is a standby of (a source): new branches wait to replay its position. */
  upstream?: Upstream;
  /** Warm spares of the root kept ready (source.warm_standbys); 1 when unset. */
  warmSpares?: number;
  /**
   * Its postgresql.conf and pg_hba.conf live outside its data directory (Debian's layout): a
   * copy gets its own, minimal ones.
   */
  configOutside?: boolean;
}

export interface InstanceSetup {
  config: Config;
  root: RootInstanceSetup;
  admin: pg.Pool;
  onStopping: (endpoint: Endpoint) => void;
  /** The configured policy as it is now (after a RELOAD too): branch.scripts. */
  policy: () => Policy;
  /** How many branches a role may make by connecting. */
  creationQuota: CreationQuota;
  /** A source's history, for branches at past moments. */
  history?: InstanceBranchesOptions['history'];
  log: Logger;
}

export async function openInstanceBranches(setup: InstanceSetup): Promise<InstanceBranches> {
  const { config, root, admin, log } = setup;
  const binary = root.binary ?? (await serverBinaries()).postgres;
  const owner = serverOwner();
  const copyMethod = copyMethodFor(root.pgDataDir, config.branch.copy_method);
  return InstanceBranches.open({
    copyMethod,
    root: {
      pgDataDir: root.pgDataDir,
      connect: root.connect,
      replicationConninfo: root.replicationConninfo,
      upstream: root.upstream,
      warmSpares: root.warmSpares,
    },
    warmSpare:
      config.branch.warm_spare === 'on' ||
      (config.branch.warm_spare === 'auto' && copyMethod.mode === 'clone'),
    superuser: root.superuser,
    dir: path.join(path.resolve(config.data_dir), 'instances'),
    binary,
    owner,
    prepareCopy: root.configOutside ? (pgDataDir) => ownConfig(pgDataDir, owner) : undefined,
    settings: instanceSettings(config.branch.instance_settings),
    suspendAfterMs: config.branch.suspend_after,
    maxRunning: maxRunning(config.branch.max_running),
    mayCreate: async (user) =>
      (
        await admin.query(
          'SELECT 1 FROM pg_roles WHERE rolname = $1 AND (rolsuper OR rolcreatedb)',
          [user],
        )
      ).rowCount === 1,
    admitCreation: (user, made) => setup.creationQuota.admit(user, made),
    onStopping: setup.onStopping,
    scripts: {
      mayHave: (branch) => setup.policy().mayHaveScripts(branch),
      for: (database, branch) => setup.policy().scriptsFor(database, branch),
    },
    history: setup.history,
    log,
  });
}

/**
 * Whether instances are reflink clones of their parent here (found by cloning a file), as
 * branch.copy_method allows.
 */
function copyMethodFor(pgDataDir: string, wanted: 'auto' | 'clone' | 'copy'): CopyMethod {
  const support = detectCloneSupport(path.dirname(pgDataDir));
  const method = withCopyMethodSetting(
    support.supported
      ? { mode: 'clone', reason: `${support.detail}: a new instance shares every block` }
      : { mode: 'copy', reason: support.detail },
    wanted,
  );
  if (method.mode === 'clone') return method;
  return {
    mode: 'copy',
    reason: `${method.reason}; every new branch copies the whole data directory (${megabytes(directorySize(pgDataDir))} now)`,
  };
}

/** Bytes of the files under `dir` (what a full copy of it costs). */
function directorySize(dir: string): number {
  return sumOfFiles(dir, (stat) => stat.size);
}

function megabytes(bytes: number): string {
  return bytes >= 1024 ** 3
    ? `${(bytes / 1024 ** 3).toFixed(1)} GB`
    : `${Math.round(bytes / 1024 ** 2)} MB`;
}

/**
 * An upstream as the root instance: only where its data directory can be read here (the same
 * host), with the postgres binary of its major version. Throws, saying what to do, otherwise.
 */
export async function localUpstream(
  admin: pg.Pool,
  superuser: string,
  connect: () => Promise<pg.Client>,
): Promise<RootInstanceSetup> {
  const { rows } = await admin.query<{ data: string; version: number; conf: string; hba: string }>(
    `SELECT current_setting('data_directory') AS data,
            current_setting('server_version_num')::int AS version,
            current_setting('config_file') AS conf, current_setting('hba_file') AS hba`,
  );
  const { data, version, conf, hba } = rows[0]!;
  try {
    fs.accessSync(path.join(data, 'PG_VERSION'), fs.constants.R_OK);
  } catch {
    throw new Error(
      `branch.provider instance copies the parent's data directory, and the upstream's (${data}) can't be read here: ` +
        "run pgbranch on the server's host (as root or its owner), or use branch.provider database; " +
        'branches of a remote server will come as sources',
    );
  }
  const major = Math.floor(version / 10_000);
  if (major < 15) {
    throw new Error(
      `branch.provider instance needs PostgreSQL 15 or newer (the backup API as pg_backup_start); the upstream is ${major}`,
    );
  }
  const binary =
    major === 18 ? undefined : path.join('/usr/lib/postgresql', String(major), 'bin', 'postgres');
  if (binary !== undefined && !fs.existsSync(binary)) {
    throw new Error(
      `branch.provider instance runs branches with the upstream's own major version, and no PostgreSQL ${major} server binary is at ${binary}: install it (Debian: apt-get install postgresql-${major})`,
    );
  }
  return {
    pgDataDir: data,
    connect,
    superuser,
    binary,
    configOutside:
      path.dirname(path.resolve(conf)) !== path.resolve(data) ||
      path.dirname(path.resolve(hba)) !== path.resolve(data),
  };
}

/**
 * A copy of a cluster whose configuration lives elsewhere gets its own: an empty postgresql.conf
 * (pgbranch sets what instances need on the command line) and a pg_hba.conf that lets pgbranch in
 * on the instance's private socket only.
 */
function ownConfig(pgDataDir: string, owner: { uid: number; gid: number } | undefined): void {
  const files: [string, string][] = [
    [
      'postgresql.conf',
      "# Written by pgbranch: the parent's configuration lives outside its data directory.\n",
    ],
    [
      'pg_hba.conf',
      '# Written by pgbranch: only pgbranch reaches an instance, on its private socket.\nlocal all all trust\n',
    ],
    ['pg_ident.conf', ''],
  ];
  for (const [name, text] of files) {
    const file = path.join(pgDataDir, name);
    if (fs.existsSync(file)) continue;
    fs.writeFileSync(file, text, { mode: 0o600 });
    if (owner) fs.chownSync(file, owner.uid, owner.gid);
  }
}
