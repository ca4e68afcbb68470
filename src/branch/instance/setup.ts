// What `branch.provider: instance` needs from the configuration and the machine: the root instance's
// data directory on this host, the server binaries, and the instances' settings and limits.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { Logger } from 'pino';
import type { Config } from '../../config/schema.js';
import { detectCloneSupport } from '../copy-on-write.js';
import type { Policy } from '../../lifecycle/policy.js';
import type { CopyMethod } from '../provider.js';
import type { Endpoint } from '../../upstream/endpoint.js';
import { InstanceBranches } from './instances.js';
import { serverBinaries, serverOwner } from './postmaster.js';

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

export interface InstanceSetup {
  config: Config;
  /** The root instance: where its data lives and how pgbranch reaches it as the superuser. */
  root: { pgDataDir: string; endpoint: Endpoint; superuser: string };
  admin: pg.Pool;
  onStopping: (endpoint: Endpoint) => void;
  /** The configured policy as it is now (after a RELOAD too): branch.scripts. */
  policy: () => Policy;
  log: Logger;
}

export async function openInstanceBranches(setup: InstanceSetup): Promise<InstanceBranches> {
  const { config, root, admin, log } = setup;
  const { postgres } = await serverBinaries();
  const connectRoot = async () => {
    const client = new pg.Client({
      ...('socketDir' in root.endpoint
        ? { host: root.endpoint.socketDir, port: root.endpoint.port }
        : root.endpoint),
      user: root.superuser,
      database: 'postgres',
      application_name: 'pgbranch',
    });
    await client.connect();
    return client;
  };
  return InstanceBranches.open({
    copyMethod: copyMethodFor(root.pgDataDir),
    root: { pgDataDir: root.pgDataDir, connect: connectRoot },
    superuser: root.superuser,
    dir: path.join(path.resolve(config.data_dir), 'instances'),
    binary: postgres,
    owner: serverOwner(),
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
    onStopping: setup.onStopping,
    scripts: {
      mayHave: (branch) => setup.policy().mayHaveScripts(branch),
      for: (database, branch) => setup.policy().scriptsFor(database, branch),
    },
    log,
  });
}

/** Whether instances are reflink clones of their parent here, found by cloning a file. */
function copyMethodFor(pgDataDir: string): CopyMethod {
  const support = detectCloneSupport(path.dirname(pgDataDir));
  if (support.supported) {
    return { mode: 'clone', reason: `${support.detail}: a new instance shares every block` };
  }
  return {
    mode: 'copy',
    reason: `${support.detail}; every new branch copies the whole data directory (${megabytes(directorySize(pgDataDir))} now)`,
  };
}

/** Bytes of the files under `dir` (what a full copy of it costs). */
export function directorySize(dir: string): number {
  let total = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += fs.statSync(path.join(entry.parentPath, entry.name)).size;
  }
  return total;
}

function megabytes(bytes: number): string {
  return bytes >= 1024 ** 3
    ? `${(bytes / 1024 ** 3).toFixed(1)} GB`
    : `${Math.round(bytes / 1024 ** 2)} MB`;
}
