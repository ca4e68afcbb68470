// Instance branches: a branch is a PostgreSQL instance of its own, on a copy-on-write copy of its
// parent instance's data directory taken while the parent runs (the backup API), so the parent is
// never drained or paused. `app@feature-x` is database app of instance feature-x. Instances start
// on first connect, are suspended (shut down cleanly) when idle, and at most maxRunning run at once.
// This file decides when; cluster-copy.ts and postmaster.ts do the work.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import type { Logger } from 'pino';
import { errors, PgError } from '../../errors.js';
import type { Endpoint } from '../../upstream/endpoint.js';
import type { BranchResolver, Resolution } from '../manager.js';
import type { BranchTarget } from '../names.js';
import type { CopyMethod } from '../provider.js';
import type { PastBranch, StartInstance } from '../../source/history.js';
import { copyCluster } from './cluster-copy.js';
import { startPostmaster, stopLeftover, type Postmaster } from './postmaster.js';
import { parseLsn } from '../../source/lsn.js';
import {
  catchUp,
  socketConninfo,
  SPARE_DIR_PREFIX,
  Spares,
  upstreamPosition,
  type Freshness,
  type SpareSource,
  type Upstream,
} from './spares.js';

/** The port in every instance's socket name: each has a socket directory of its own. */
const INSTANCE_PORT = 5432;
const RECORD_FILE = 'instance.json';
/** A creation that takes longer than this tells its waiting clients how far the copy is, this often. */
const PROGRESS_EVERY_MS = 1_000;
const CREATING_PREFIX = '.creating-';
/** An instance's directory while a reset swaps in its new copy: put back at start if left alone. */
const OLD_PREFIX = '.old-';
/** Restore points live apart from their instance's directory (a reset replaces that). */
const POINTS_DIR = 'points';
const POINT_FILE = 'point.json';
/**
 * How long a new branch waits for a warm spare to replay what its parent had when it was asked:
 * past it the branch is copied instead, which takes longer than this.
 */
const SPARE_CATCH_UP_MS = 3_000;
/** A warm spare taken is made again this long after (see fromSpare). */
const REPLENISH_AFTER_MS = 3_000;

export interface InstanceRecord {
  name: string;
  /** The instance it was copied from; null for a branch of the root. */
  parent: string | null;
  createdAt: string;
  mode: 'clone' | 'copy';
  protected?: boolean;
  lastConnectedAt?: string;
  /** The restore point of its parent it was made from. */
  fromSnapshot?: string;
  /** Its own restore point it was last restored to (until the next reset). */
  restoredFrom?: string;
  /** Absolute expiry (ISO), and idle expiry after the last connection. */
  expiresAt?: string;
  ttlMs?: number | null;
  /** The role whose connect made it (branch.max_per_role); absent when made otherwise. */
  createdBy?: string;
  /** Made from a warm standby: the moment its data is of, and the WAL position it holds. */
  dataAsOf?: string;
  lsn?: string;
  /**
   * A branch of the root's upstream (a source), named as notices name it: its data is the
   * source's at dataAsOf, or as far as the standby had replayed (behind, unreachable).
   */
  of?: string;
  /** The upstream's position the standby had not replayed within source.max_wait. */
  behind?: string;
  /** Why the upstream's position could not be read when it was made. */
  unreachable?: string;
}

/** A restore point of an instance branch: a stopped copy of it, nobody connects to. */
export interface PointRecord {
  name: string;
  of: string;
  createdAt: string;
  mode: 'clone' | 'copy';
}

/** An instance branch as the lifecycle sees it. */
export interface InstanceView {
  record: InstanceRecord;
  running: boolean;
  clients: number;
  /** Its directory, relative to the data directory (`instances/<id>`). */
  dir: string;
  /** Disk its files take (blocks allocated; a clone's shared blocks counted in full). */
  diskBytes: number;
  points: (PointRecord & { diskBytes: number })[];
}

export interface InstanceBranchesOptions {
  /** Whether a new instance is a reflink clone of its parent here, or a full copy. */
  copyMethod: CopyMethod;
  /** The root instance: the embedded server, running. */
  root: {
    pgDataDir: string;
    connect: () => Promise<pg.Client>;
    /** Where a standby of it connects (libpq keywords), for warm spares; none without. */
    replicationConninfo?: string | undefined;
    /** The server it is a standby of (a source): new branches wait to replay its position. */
    upstream?: Upstream | undefined;
    /** Warm spares of it kept ready; 1 when unset. */
    warmSpares?: number | undefined;
  };
  /**
   * branch.warm_spare: keep a standby of each parent being branched (the root always) replayed
   * and ready, so that a new branch is a promotion instead of a copy under the backup API.
   */
  warmSpare: boolean;
  /** The superuser of every instance (the root's), reached with trust on the private socket. */
  superuser: string;
  /** Where instances live (`<data_dir>/instances`). */
  dir: string;
  /** The postgres binary (the root's major version). */
  binary: string;
  /** As root, instances run as this OS account, like the embedded server. */
  owner?: { uid: number; gid: number } | undefined;
  /** Called on each new copy before it starts (a root whose configuration lives elsewhere). */
  prepareCopy?: ((pgDataDir: string) => void) | undefined;
  /** Settings of every instance (`-c name=value`). */
  settings: Record<string, string>;
  suspendAfterMs: number;
  maxRunning: number;
  /**
   * branch.scripts: SQL run in a new instance before any client sees it (the masking of personal
   * data), by database; `mayHave` says whether to start the copy for them at all.
   */
  scripts: {
    mayHave: (branch: string) => boolean;
    for: (database: string, branch: string) => { name: string; sql: string }[];
  };
  /** Whether a role may cause a branch to be made (as for CREATE DATABASE). */
  mayCreate: (user: string) => Promise<boolean>;
  /**
   * Throws when a role may not make another branch now (the creation quota); `made` counts the
   * branches it made that exist.
   */
  admitCreation: (user: string, made: () => number) => void;
  /** An instance stops: pgbranch's pools of it must go first. */
  onStopping: (endpoint: Endpoint) => void;
  /** A source's history, which makes branches at past moments (pgbranch.at); none without. */
  history?: (() => PastMoments | undefined) | undefined;
  log: Logger;
}

/** What makes a branch of the source as it was at a past moment (source/history.ts). */
export interface PastMoments {
  branchAt(at: Date, dir: string, start: StartInstance): Promise<PastBranch>;
}

interface Instance {
  id: string;
  dir: string;
  record: InstanceRecord;
  postmaster: Postmaster | undefined;
  /** A start or stop under way. */
  transition: Promise<void> | undefined;
  clients: number;
  lastUsed: number;
  suspendTimer: NodeJS.Timeout | undefined;
}

/** A directory name for a branch name: any Unicode, slashes, 255 characters fit. */
function instanceId(name: string): string {
  return createHash('sha256').update(name).digest('hex').slice(0, 24);
}

export class InstanceBranches implements BranchResolver {
  private readonly instances = new Map<string, Instance>();
  private readonly creating = new Map<
    string,
    { done: Promise<Instance>; listeners: Set<(message: string) => void> }
  >();
  private closed = false;
  /** Copies under way, by branch name: how far each is (for the CLI's progress bar). */
  private readonly copies = new Map<string, { bytes: number; totalBytes: number }>();
  /** Warm standbys of parents, promoted into new branches (undefined: branch.warm_spare off). */
  readonly spares: Spares | undefined;

  private constructor(private readonly options: InstanceBranchesOptions) {
    this.spares = options.warmSpare
      ? new Spares({
          dir: options.dir,
          owner: options.owner,
          superuser: options.superuser,
          settings: options.settings,
          start: (dir, settings) => this.startOn(dir, settings),
          clone: options.copyMethod.mode === 'clone',
          catchUpMs: SPARE_CATCH_UP_MS,
          log: options.log,
        })
      : undefined;
  }

  /** The root instance's data directory (the embedded server's, or a local upstream's). */
  get rootDataDir(): string {
    return this.options.root.pgDataDir;
  }

  get copyMethod(): CopyMethod {
    return this.options.copyMethod;
  }

  /**
   * Opens the instances directory: removes copies a killed pgbranch left half made, and stops
   * instances it left running; every instance that existed is still there, suspended.
   */
  static async open(options: InstanceBranchesOptions): Promise<InstanceBranches> {
    fs.mkdirSync(options.dir, { recursive: true, mode: 0o755 });
    const branches = new InstanceBranches(options);
    // Restore points half taken by a pgbranch that was killed.
    const points = path.join(options.dir, POINTS_DIR);
    if (fs.existsSync(points)) {
      for (const of of fs.readdirSync(points)) {
        for (const entry of fs.readdirSync(path.join(points, of))) {
          if (entry.startsWith(CREATING_PREFIX)) {
            fs.rmSync(path.join(points, of, entry), { recursive: true, force: true });
          }
        }
      }
    }
    // A reset killed between its two renames: the branch is its old copy again.
    for (const name of fs.readdirSync(options.dir)) {
      if (!name.startsWith(OLD_PREFIX)) continue;
      const id = name.slice(OLD_PREFIX.length);
      const current = path.join(options.dir, id);
      if (fs.existsSync(current)) {
        fs.rmSync(path.join(options.dir, name), { recursive: true, force: true });
      } else fs.renameSync(path.join(options.dir, name), current);
    }
    for (const entry of fs.readdirSync(options.dir, { withFileTypes: true })) {
      if (!entry.isDirectory()) continue;
      const dir = path.join(options.dir, entry.name);
      const pgDataDir = path.join(dir, 'pg');
      if (fs.existsSync(path.join(pgDataDir, 'postmaster.pid'))) {
        await stopLeftover(pgDataDir, options.log);
      }
      if (entry.name.startsWith(CREATING_PREFIX)) {
        options.log.warn(
          { event: 'instance_leftover_removed', dir },
          `removing a branch instance left half made by a pgbranch that was stopped: ${dir}`,
        );
        fs.rmSync(dir, { recursive: true, force: true });
        continue;
      }
      const record = readRecord(dir);
      if (!record) {
        // A warm spare of the last run (never a branch: taking one writes its record).
        if (entry.name.startsWith(SPARE_DIR_PREFIX))
          fs.rmSync(dir, { recursive: true, force: true });
        continue;
      }
      branches.instances.set(instanceId(record.name), {
        id: instanceId(record.name),
        dir,
        record,
        postmaster: undefined,
        transition: undefined,
        clients: 0,
        lastUsed: 0,
        suspendTimer: undefined,
      });
    }
    const root = branches.rootSpareSource();
    if (root) branches.spares?.prepare(root);
    return branches;
  }

  async resolve(
    target: BranchTarget,
    user: string,
    notify?: (message: string) => void,
  ): Promise<Resolution> {
    if (target.branch === undefined) return { database: target.root, created: false };
    const { instance, created } = await this.find(
      target.branch,
      target.parent,
      user,
      notify,
      target.at,
    );
    instance.record.lastConnectedAt = new Date().toISOString();
    instance.clients++;
    instance.lastUsed = Date.now();
    clearTimeout(instance.suspendTimer);
    instance.suspendTimer = undefined;
    try {
      await this.running(instance);
    } catch (error) {
      this.left(instance);
      throw error;
    }
    let gone = false;
    return {
      database: target.root,
      created,
      endpoint: endpointOf(instance),
      leave: () => {
        if (gone) return;
        gone = true;
        this.left(instance);
      },
      ...(created ? { notice: creationNotice(target.branch, instance.record) } : {}),
    };
  }

  forget(): void {
    // A database dropped inside an instance is the instance's business; the instance stays.
  }

  /**
   * The root instance was replaced where it lies (a source's standby made again): its warm spare,
   * a standby of the old one, goes, and one of the new root is made.
   */
  async rootReplaced(): Promise<void> {
    await this.spares?.discard('');
    const root = this.rootSpareSource();
    if (root && !this.closed) this.spares?.prepare(root);
  }

  /** Instances that run now, and all of them: for the banner, metrics and tests. */
  census(): { running: number; total: number } {
    let running = 0;
    for (const instance of this.instances.values()) if (instance.postmaster) running++;
    return { running, total: this.instances.size };
  }

  /** Stops every running instance (pgbranch stops). */
  async close(): Promise<void> {
    this.closed = true;
    await this.spares?.close();
    await Promise.all([...this.instances.values()].map((i) => this.suspend(i, 'stop')));
  }

  /** Every instance branch, for the lifecycle's list. */
  list(): InstanceView[] {
    return [...this.instances.values()].map((instance) => ({
      record: instance.record,
      running: instance.postmaster !== undefined,
      clients: instance.clients,
      dir: path.join(path.basename(this.options.dir), instance.id),
      diskBytes: diskUsage(instance.dir),
      points: this.pointsOf(instance.record.name),
    }));
  }

  /**
   * Saves instance `name` as it is now as restore point `point`: a copy (under the backup API
   * while it runs) that nobody connects to. 42710 when it has one of that name.
   */
  async snapshot(name: string, point: string): Promise<PointRecord> {
    const instance = this.mustGet(name);
    const dir = this.pointDir(name, point);
    if (fs.existsSync(dir)) {
      throw new PgError(
        '42710',
        `branch "${name}" already has a restore point "${point}"`,
        undefined,
        `Delete it first (npx pgbranch branch snapshot-delete ${name} ${point}), or pick another name.`,
        'ERROR',
      );
    }
    while (instance.transition) await instance.transition;
    const staging = `${path.dirname(dir)}/${CREATING_PREFIX}${randomBytes(4).toString('hex')}`;
    fs.mkdirSync(staging, { recursive: true, mode: 0o755 });
    try {
      const copied = await copyCluster({
        clone: this.options.copyMethod.mode === 'clone',
        sourceDataDir: path.join(instance.dir, 'pg'),
        target: path.join(staging, 'pg'),
        running: instance.postmaster
          ? { connect: () => connectTo(instance, this.options.superuser) }
          : undefined,
        owner: this.options.owner,
      });
      const record: PointRecord = {
        name: point,
        of: name,
        createdAt: new Date().toISOString(),
        mode: copied.mode,
      };
      fs.writeFileSync(path.join(staging, POINT_FILE), `${JSON.stringify(record, null, 2)}\n`);
      fs.renameSync(staging, dir);
      this.options.log.info(
        { event: 'snapshot_taken', branch: name, snapshot: point, provider: 'instance' },
        `took restore point ${point} of branch instance ${name} (${copied.mode}) in ${copied.ms} ms`,
      );
      return record;
    } catch (error) {
      fs.rmSync(staging, { recursive: true, force: true });
      throw error;
    }
  }

  /** Resets instance `name` to its restore point `point`, as reset() does to its parent. */
  async restore(name: string, point: string): Promise<void> {
    this.mustGetPoint(name, point);
    await this.replaceWith(name, { of: name, name: point });
    const instance = this.mustGet(name);
    instance.record = { ...instance.record, restoredFrom: point };
    writeRecord(instance.dir, instance.record);
  }

  async deleteSnapshot(name: string, point: string): Promise<void> {
    this.mustGetPoint(name, point);
    await fs.promises.rm(this.pointDir(name, point), { recursive: true, force: true });
  }

  /** Instance `name`'s restore points, oldest first. */
  pointsOf(name: string): (PointRecord & { diskBytes: number })[] {
    const dir = path.join(this.options.dir, POINTS_DIR, instanceId(name));
    if (!fs.existsSync(dir)) return [];
    const points: (PointRecord & { diskBytes: number })[] = [];
    for (const entry of fs.readdirSync(dir)) {
      if (entry.startsWith('.')) continue;
      try {
        const record = JSON.parse(
          fs.readFileSync(path.join(dir, entry, POINT_FILE), 'utf8'),
        ) as PointRecord;
        points.push({ ...record, diskBytes: diskUsage(path.join(dir, entry)) });
      } catch {
        // Not a restore point (half written by a pgbranch that was killed): removed at start.
      }
    }
    return points.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  private pointDir(name: string, point: string): string {
    return path.join(this.options.dir, POINTS_DIR, instanceId(name), instanceId(point));
  }

  private mustGetPoint(name: string, point: string): void {
    this.mustGet(name);
    if (!fs.existsSync(path.join(this.pointDir(name, point), POINT_FILE))) {
      throw errors.snapshotMissing(name, point);
    }
  }

  /**
   * Makes instance `name` from `parent` (the root instance when undefined) without a client, as
   * the lifecycle's create does; false when it existed already with that parent. 42P04 when it
   * exists with another.
   */
  async make(
    name: string,
    parent: string | undefined,
    snapshot?: string,
    at?: Date,
  ): Promise<boolean> {
    const existing = this.instances.get(instanceId(name));
    if (existing) {
      if (existing.record.parent !== (parent ?? null)) {
        throw new PgError(
          '42P04',
          `branch "${name}" already exists, made from ${existing.record.parent ?? 'the root instance'}`,
          undefined,
          `It was not made from ${parent ?? 'the root instance'}; delete it first to make it again.`,
          'ERROR',
        );
      }
      return false;
    }
    if (snapshot !== undefined) {
      if (parent === undefined) {
        throw new PgError(
          '0A000',
          'the root instance has no restore points',
          undefined,
          undefined,
          'ERROR',
        );
      }
      this.mustGetPoint(parent, snapshot);
      const id = instanceId(name);
      const instance = await this.create(id, name, parent, undefined, () => undefined, true, {
        of: parent,
        name: snapshot,
      });
      return instance !== undefined;
    }
    const { created } = await this.find(name, parent, undefined, undefined, at);
    return created;
  }

  /** Stops instance `name` (its clients are disconnected, 57P01) and removes it. */
  async remove(name: string): Promise<void> {
    const instance = this.mustGet(name);
    await this.spares?.discard(name);
    await this.suspend(instance, 'stop');
    this.instances.delete(instance.id);
    await fs.promises.rm(instance.dir, { recursive: true, force: true });
    await fs.promises.rm(path.join(this.options.dir, POINTS_DIR, instance.id), {
      recursive: true,
      force: true,
    });
    this.options.log.info(
      { event: 'branch_deleted', branch: name, provider: 'instance' },
      `deleted branch instance ${name}`,
    );
  }

  /**
   * Makes instance `name` a fresh copy of its parent's current state, same name and connection
   * string: the copy is made aside first (a failure leaves the branch as it was), then the
   * instance is stopped (its clients get 57P01) and the new copy swapped in.
   */
  async reset(name: string): Promise<void> {
    await this.replaceWith(name, undefined);
    const instance = this.mustGet(name);
    if (instance.record.restoredFrom !== undefined) {
      instance.record = { ...instance.record, restoredFrom: undefined };
      writeRecord(instance.dir, instance.record);
    }
    this.options.log.info(
      { event: 'branch_reset', branch: name, provider: 'instance' },
      `reset branch instance ${name} to a new copy of ${instance.record.parent ?? 'the root instance'}`,
    );
  }

  /**
   * Swaps in a new copy of instance `name`'s parent (or of `point`): made aside first, so a
   * failure leaves the branch as it was; then the instance is stopped (its clients get 57P01) and
   * the copy renamed into place through .old-<id>, which a start after a kill puts back.
   */
  private async replaceWith(
    name: string,
    point: { of: string; name: string } | undefined,
  ): Promise<void> {
    const instance = this.mustGet(name);
    const replacement = await this.create(
      instance.id,
      name,
      instance.record.parent ?? undefined,
      undefined,
      () => undefined,
      false,
      point,
    );
    const swap = async () => {
      // Its standby follows what is replaced (branches of the new copy get a new one); a connect
      // meanwhile waits for the swap (running() waits for the transition).
      await this.stopNow(instance);
      const old = path.join(this.options.dir, `${OLD_PREFIX}${path.basename(instance.dir)}`);
      fs.renameSync(instance.dir, old);
      fs.renameSync(replacement.dir, instance.dir);
      instance.record = {
        ...replacement.record,
        createdAt: instance.record.createdAt,
        protected: instance.record.protected,
        expiresAt: instance.record.expiresAt,
        ttlMs: instance.record.ttlMs,
        fromSnapshot: instance.record.fromSnapshot,
      };
      writeRecord(instance.dir, instance.record);
      await fs.promises.rm(old, { recursive: true, force: true });
    };
    // Begun only once no other transition runs, and set as the transition before its first await:
    // within it nothing may wait for the instance's transition (itself).
    while (instance.transition) await instance.transition;
    instance.transition = swap().finally(() => (instance.transition = undefined));
    await instance.transition;
  }

  /**
   * Stops the instance's postmaster (its clients get 57P01) and its warm standby: of no use with
   * its parent stopped, which is copied as it lies. Part of a transition the caller has set.
   */
  private async stopNow(instance: Instance): Promise<void> {
    clearTimeout(instance.suspendTimer);
    instance.suspendTimer = undefined;
    await this.spares?.discard(instance.record.name);
    const postmaster = instance.postmaster;
    if (!postmaster) return;
    instance.postmaster = undefined;
    this.options.onStopping(postmaster.endpoint);
    await postmaster.stop('fast');
  }

  /** Sets (or, with null, clears) an instance's absolute or idle expiry; absent leaves it. */
  setExpiry(name: string, change: { expiresAt?: string | null; ttlMs?: number | null }): void {
    const instance = this.mustGet(name);
    const record = { ...instance.record };
    if (change.expiresAt !== undefined) record.expiresAt = change.expiresAt ?? undefined;
    if (change.ttlMs !== undefined) record.ttlMs = change.ttlMs;
    instance.record = record;
    writeRecord(instance.dir, record);
  }

  /**
   * Runs `work` on a superuser session of database `database` of instance `name` (started if
   * suspended, and kept from suspending meanwhile), as the lifecycle's diff does.
   */
  async withSession<T>(
    name: string,
    database: string,
    work: (client: pg.Client) => Promise<T>,
  ): Promise<T> {
    const instance = this.mustGet(name);
    instance.clients++;
    clearTimeout(instance.suspendTimer);
    try {
      await this.running(instance);
      const client = await connectTo(instance, this.options.superuser, database);
      try {
        return await work(client);
      } finally {
        await client.end().catch(() => undefined);
      }
    } finally {
      this.left(instance);
    }
  }

  /**
   * As withSession, on restore point `point` of instance `name`: nobody connects to a restore
   * point itself, so a scratch copy of it is started, read and removed.
   */
  async withPointSession<T>(
    name: string,
    point: string,
    database: string,
    work: (client: pg.Client) => Promise<T>,
  ): Promise<T> {
    this.mustGetPoint(name, point);
    const scratch = path.join(
      this.options.dir,
      `${CREATING_PREFIX}read-${randomBytes(4).toString('hex')}`,
    );
    fs.mkdirSync(scratch, { mode: 0o755 });
    try {
      await copyCluster({
        clone: this.options.copyMethod.mode === 'clone',
        sourceDataDir: path.join(this.pointDir(name, point), 'pg'),
        target: path.join(scratch, 'pg'),
        owner: this.options.owner,
      });
      const postmaster = await this.startOn(scratch);
      try {
        const client = await sessionOn(postmaster.endpoint, this.options.superuser, database);
        try {
          return await work(client);
        } finally {
          await client.end().catch(() => undefined);
        }
      } finally {
        await postmaster.stop('fast');
      }
    } finally {
      await fs.promises.rm(scratch, { recursive: true, force: true });
    }
  }

  setProtected(name: string, on: boolean): void {
    const instance = this.mustGet(name);
    instance.record = { ...instance.record, protected: on };
    writeRecord(instance.dir, instance.record);
  }

  /** How far the copy making (or resetting, restoring) branch `name` is, while one runs. */
  copying(name: string): { bytes: number; totalBytes: number } | undefined {
    return this.copies.get(name);
  }

  has(name: string): boolean {
    return this.instances.has(instanceId(name));
  }

  private mustGet(name: string): Instance {
    const instance = this.instances.get(instanceId(name));
    if (!instance) throw errors.branchMissing(name);
    return instance;
  }

  private async find(
    name: string,
    parent: string | undefined,
    /** Whose connect makes it (checked may create); undefined for the lifecycle's own. */
    user: string | undefined,
    notify: ((message: string) => void) | undefined,
    /** The source as it was at this moment (pgbranch.at), instead of its parent now. */
    at?: Date,
  ): Promise<{ instance: Instance; created: boolean }> {
    const id = instanceId(name);
    const existing = this.instances.get(id);
    if (existing) return { instance: existing, created: false };
    let creation = this.creating.get(id);
    if (!creation) {
      const listeners = new Set<(message: string) => void>();
      const progress = (message: string) => {
        for (const listener of listeners) listener(message);
      };
      creation = {
        done: this.create(id, name, parent, user, progress, true, undefined, at).finally(() =>
          this.creating.delete(id),
        ),
        listeners,
      };
      this.creating.set(id, creation);
    }
    if (notify) creation.listeners.add(notify);
    try {
      return { instance: await creation.done, created: true };
    } finally {
      if (notify) creation.listeners.delete(notify);
    }
  }

  /**
   * Copies the parent into a staging directory and, when `install`, renames it into place and
   * registers the instance; otherwise leaves it staged for reset() to swap in.
   */
  private async create(
    id: string,
    name: string,
    parentName: string | undefined,
    user: string | undefined,
    progress: (message: string) => void,
    install = true,
    /** A restore point of the parent (or, for restore(), of the branch) to copy instead. */
    point?: { of: string; name: string },
    at?: Date,
  ): Promise<Instance> {
    // The parent counts as in use while it is copied: an idle parent suspended (idle, or to make
    // room) under its own copy would fail the creation with a lost connection.
    const parent =
      parentName === undefined ? undefined : this.instances.get(instanceId(parentName));
    if (parent) {
      parent.clients++;
      clearTimeout(parent.suspendTimer);
      parent.suspendTimer = undefined;
    }
    try {
      return await this.copyOf(id, name, parentName, user, progress, install, point, at);
    } finally {
      if (parent) {
        parent.clients--;
        this.idle(parent);
      }
    }
  }

  private async copyOf(
    id: string,
    name: string,
    parentName: string | undefined,
    user: string | undefined,
    progress: (message: string) => void,
    install: boolean,
    point: { of: string; name: string } | undefined,
    at: Date | undefined,
  ): Promise<Instance> {
    const { log } = this.options;
    if (user !== undefined && !(await this.options.mayCreate(user))) {
      throw errors.mayNotCreateBranch(user, name, parentName ?? 'the root instance');
    }
    if (user !== undefined) {
      this.options.admitCreation(
        user,
        () => [...this.instances.values()].filter((i) => i.record.createdBy === user).length,
      );
    }
    const parent =
      parentName === undefined ? undefined : this.instances.get(instanceId(parentName));
    if (parentName !== undefined && !parent) {
      throw new PgError(
        '3D000',
        `parent branch "${parentName}" does not exist`,
        undefined,
        `Connect to it first (it is made on first connect), or leave pgbranch.parent out to branch the root.`,
      );
    }
    const started = Date.now();
    if (at !== undefined) return this.fromMoment(name, parentName, at, user, started);
    if (install && !point) {
      const fromSpare = await this.fromSpare(name, parent, user, started);
      if (fromSpare) return fromSpare;
    }
    const staging = path.join(
      this.options.dir,
      `${CREATING_PREFIX}${id}-${randomBytes(4).toString('hex')}`,
    );
    fs.mkdirSync(staging, { mode: 0o755 });
    let nextReport = started + PROGRESS_EVERY_MS;
    const onProgress = ({ bytes, totalBytes }: { bytes: number; totalBytes: number }) => {
      this.copies.set(name, { bytes, totalBytes });
      const now = Date.now();
      if (now < nextReport) return;
      nextReport = now + PROGRESS_EVERY_MS;
      const rate = bytes / 1024 ** 2 / ((now - started) / 1000);
      const left = rate > 0 ? (totalBytes - bytes) / 1024 ** 2 / rate : 0;
      // Before a whole megabyte, the rate says nothing yet (a running parent checkpoints first).
      const pace =
        bytes >= 1024 ** 2
          ? `${rate.toFixed(0)} MB/s, about ${Math.ceil(left)} s left`
          : 'starting';
      const message = `pgbranch: copying branch "${name}": ${Math.floor((100 * bytes) / Math.max(1, totalBytes))}% (${mb(bytes)} of ${mb(totalBytes)}, ${pace})`;
      progress(message);
      log.info(
        { event: 'branch_copy_progress', branch: name, bytes, totalBytes },
        message.slice('pgbranch: '.length),
      );
    };
    try {
      let copied: Awaited<ReturnType<typeof copyCluster>>;
      /** A copy of the root of an upstream: how fresh its data is. */
      let fresh: Partial<InstanceRecord> = {};
      if (point) {
        copied = await copyCluster({
          clone: this.options.copyMethod.mode === 'clone',
          sourceDataDir: path.join(this.pointDir(point.of, point.name), 'pg'),
          target: path.join(staging, 'pg'),
          owner: this.options.owner,
          onProgress,
        });
      } else if (parent) {
        // A running parent is copied under the backup API; a suspended one as it lies.
        await parent.transition;
        copied = await copyCluster({
          clone: this.options.copyMethod.mode === 'clone',
          sourceDataDir: path.join(parent.dir, 'pg'),
          target: path.join(staging, 'pg'),
          running: parent.postmaster
            ? { connect: () => connectTo(parent, this.options.superuser) }
            : undefined,
          owner: this.options.owner,
          onProgress,
        });
      } else {
        fresh = await this.catchUpRoot();
        copied = await copyCluster({
          clone: this.options.copyMethod.mode === 'clone',
          sourceDataDir: this.options.root.pgDataDir,
          target: path.join(staging, 'pg'),
          running: { connect: this.options.root.connect },
          owner: this.options.owner,
          onProgress,
        });
      }
      const record: InstanceRecord = {
        name,
        parent: parentName ?? null,
        createdAt: new Date().toISOString(),
        mode: copied.mode,
        ...(point && point.of !== name ? { fromSnapshot: point.name } : {}),
        ...(user !== undefined ? { createdBy: user } : {}),
        ...fresh,
      };
      this.options.prepareCopy?.(path.join(staging, 'pg'));
      // A restore point's copy was prepared when its branch was made.
      if (!point && this.options.scripts.mayHave(name)) await this.runScripts(name, staging);
      writeRecord(staging, record);
      const dir = install ? path.join(this.options.dir, id) : staging;
      if (install) fs.renameSync(staging, dir);
      const instance: Instance = {
        id,
        dir,
        record,
        postmaster: undefined,
        transition: undefined,
        clients: 0,
        lastUsed: Date.now(),
        suspendTimer: undefined,
      };
      if (install) this.instances.set(id, instance);
      // Its next branch is a promotion of a warm standby (a suspended parent is copied as it lies).
      if (install && parent?.postmaster) this.spares?.prepare(this.spareSourceOf(parent));
      log.info(
        {
          event: 'branch_created',
          branch: name,
          parent: record.parent,
          provider: 'instance',
          mode: copied.mode,
          bytes: copied.bytes,
          copyMs: copied.ms,
          ...(copied.phases ? { phases: copied.phases } : {}),
          ms: Date.now() - started,
        },
        `created branch instance ${name} from ${record.parent ?? 'the root instance'} (${copied.mode}, ${copied.bytes} bytes) in ${Date.now() - started} ms`,
      );
      return instance;
    } catch (error) {
      fs.rmSync(staging, { recursive: true, force: true });
      if (error instanceof PgError) throw error;
      throw errors.branchCreationFailed(name, (error as Error).message);
    } finally {
      this.copies.delete(name);
    }
  }

  /**
   * Runs branch.scripts in every database of the copy in `staging` that they name, on a postmaster
   * of its own there, stopped again before the copy is put in place: no client can see the data
   * before, and a pgbranch killed meanwhile leaves a staging directory, removed at start. A script
   * that fails fails the creation with its SQLSTATE and name.
   */
  private async runScripts(branch: string, staging: string): Promise<void> {
    const postmaster = await this.startOn(staging);
    try {
      await this.runScriptsOn(branch, postmaster.endpoint);
    } finally {
      await postmaster.stop('fast');
      fs.rmSync(path.join(staging, 'run'), { recursive: true, force: true });
    }
  }

  /** branch.scripts in every database they name of the instance at `endpoint`. */
  private async runScriptsOn(branch: string, endpoint: Postmaster['endpoint']): Promise<void> {
    const session = (database: string) => sessionOn(endpoint, this.options.superuser, database);
    {
      const admin = await session('postgres');
      let databases: string[];
      try {
        databases = (
          await admin.query<{ datname: string }>(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> 'postgres' ORDER BY 1",
          )
        ).rows.map((r) => r.datname);
      } finally {
        await admin.end();
      }
      for (const database of databases) {
        for (const script of this.options.scripts.for(database, branch)) {
          const client = await session(database);
          try {
            await client.query(script.sql);
          } catch (error) {
            const e = error as { code?: string; message?: string };
            throw new PgError(
              e.code ?? '58000',
              `could not create branch "${branch}": script ${script.name} failed in database ${database}: ${e.message ?? String(error)}`,
              'The branch was not created.',
              'Fix the script (branch.scripts), then connect or create again.',
            );
          } finally {
            await client.end().catch(() => undefined);
          }
          this.options.log.info(
            { event: 'branch_script_ran', branch, database, script: script.name },
            `ran ${script.name} in database ${database} of new branch instance ${branch}`,
          );
        }
      }
    }
  }

  /**
   * Makes branch `name` of a running parent (the root when undefined) by promoting the parent's
   * warm standby: undefined where there is none ready (the caller copies). The branch runs from
   * the start; scripts run in it before it is registered, so no client sees it before.
   */
  private async fromSpare(
    name: string,
    parent: Instance | undefined,
    user: string | undefined,
    started: number,
  ): Promise<Instance | undefined> {
    if (!this.spares) return undefined;
    if (parent) await parent.transition;
    const source = parent
      ? parent.postmaster && this.spareSourceOf(parent)
      : this.rootSpareSource();
    if (!source) return undefined;
    await this.makeRoom();
    const taken = await this.spares.take(source);
    if (!taken) {
      // For the next branch: none was ready, or it could not catch up.
      this.spares.prepare(source);
      return undefined;
    }
    // A new spare behind the one taken, once this branch's first client is served: the copy and
    // the new standby's recovery would compete with it (and with the parent) for the machine.
    setTimeout(() => {
      // A parent suspended meanwhile gets none (its next branch is copied as it lies).
      if (!this.closed && (!parent || parent.postmaster)) this.spares?.prepare(source);
    }, REPLENISH_AFTER_MS).unref();
    return this.installRunning(
      taken,
      {
        name,
        parent: parent?.record.name ?? null,
        createdAt: new Date().toISOString(),
        mode: taken.mode,
        ...(user !== undefined ? { createdBy: user } : {}),
        dataAsOf: taken.asOf.toISOString(),
        lsn: taken.lsn,
        ...freshnessFields(source.upstream, taken.freshness),
      },
      {
        from: 'warm_spare',
        lsn: taken.lsn,
        promoteMs: taken.ms,
        phases: taken.phases,
        ms: Date.now() - started,
      },
      `as of ${taken.lsn} (its warm standby promoted${taken.phases.waitMs >= 1000 ? `, ${(taken.phases.waitMs / 1000).toFixed(1)} s of it waiting for that standby to be ready` : ''}) in ${Date.now() - started} ms`,
    );
  }

  /**
   * Makes branch `name` of the source as it was at `at` (pgbranch.at): a restore point of the
   * standby recovered to that moment and promoted (source/history.ts), running from the start.
   */
  private async fromMoment(
    name: string,
    parent: string | undefined,
    at: Date,
    user: string | undefined,
    started: number,
  ): Promise<Instance> {
    const history = this.options.history?.();
    if (!history) {
      throw errors.noSourceHistory(
        this.options.history ? 'source.retention is 0' : 'pgbranch follows no source',
      );
    }
    if (parent !== undefined) {
      throw new PgError(
        '22023',
        `pgbranch.at and pgbranch.parent can't go together: a branch at a past moment is of the source`,
        undefined,
        `Leave out pgbranch.parent (or --from) to branch the source as it was at ${at.toISOString()}.`,
      );
    }
    await this.makeRoom();
    const dir = path.join(this.options.dir, `${SPARE_DIR_PREFIX}${randomBytes(6).toString('hex')}`);
    const past = await history.branchAt(at, dir, (d, settings, timeoutMs) =>
      this.startOn(d, settings, timeoutMs),
    );
    return this.installRunning(
      past,
      {
        name,
        parent: null,
        createdAt: new Date().toISOString(),
        mode: past.mode,
        ...(user !== undefined ? { createdBy: user } : {}),
        dataAsOf: past.asOf.toISOString(),
        lsn: past.lsn,
        ...(this.options.root.upstream ? { of: this.options.root.upstream.name } : {}),
      },
      {
        from: 'restore_point',
        point: past.point,
        lsn: past.lsn,
        recoverMs: past.ms,
        ms: Date.now() - started,
      },
      `as of ${past.asOf.toISOString()} (LSN ${past.lsn}, restore point ${past.point} recovered) in ${Date.now() - started} ms`,
    );
  }

  /**
   * Registers a new branch that already runs (a warm spare promoted, a past moment recovered):
   * scripts run in it first, so no client sees it before; it is removed if they fail.
   */
  private async installRunning(
    running: { dir: string; postmaster: Postmaster },
    record: InstanceRecord,
    logged: Record<string, unknown>,
    how: string,
  ): Promise<Instance> {
    const instance: Instance = {
      id: instanceId(record.name),
      dir: running.dir,
      record,
      postmaster: undefined,
      transition: undefined,
      clients: 0,
      lastUsed: Date.now(),
      suspendTimer: undefined,
    };
    try {
      if (this.options.scripts.mayHave(record.name)) {
        await this.runScriptsOn(record.name, running.postmaster.endpoint);
      }
      // From here on it is a branch: a start after a kill keeps it.
      writeRecord(running.dir, record);
    } catch (error) {
      await running.postmaster.stop('fast');
      fs.rmSync(running.dir, { recursive: true, force: true });
      throw error;
    }
    this.adopt(instance, running.postmaster);
    this.instances.set(instance.id, instance);
    this.options.log.info(
      {
        event: 'branch_created',
        branch: record.name,
        parent: record.parent,
        provider: 'instance',
        mode: record.mode,
        ...logged,
      },
      `created branch instance ${record.name} from ${record.parent ?? 'the root instance'} ${how}`,
    );
    return instance;
  }

  /** The root as a source of warm spares; undefined where a standby can't reach it. */
  private rootSpareSource(): SpareSource | undefined {
    const { root } = this.options;
    if (root.replicationConninfo === undefined) return undefined;
    return {
      key: '',
      pgDataDir: root.pgDataDir,
      connect: root.connect,
      conninfo: root.replicationConninfo,
      upstream: root.upstream,
      keep: root.warmSpares,
    };
  }

  /**
   * Before the root is copied (no warm standby ready): waits, up to source.max_wait, for it to
   * replay what its upstream has committed now. The copy holds at least that.
   */
  private async catchUpRoot(): Promise<Partial<InstanceRecord>> {
    const { upstream } = this.options.root;
    if (!upstream) return {};
    const asked = Date.now();
    const wanted = await upstreamPosition(upstream);
    const client = await this.options.root.connect();
    client.on('error', () => undefined);
    try {
      const caught = await catchUp(client, wanted, asked, upstream, upstream.maxWaitMs);
      return {
        dataAsOf: caught.asOf.toISOString(),
        lsn: caught.at,
        ...freshnessFields(upstream, caught.freshness),
      };
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  /** A running branch as a source of warm spares, on its private socket. */
  private spareSourceOf(instance: Instance): SpareSource {
    const { endpoint } = instance.postmaster!;
    return {
      key: instance.record.name,
      pgDataDir: path.join(instance.dir, 'pg'),
      connect: () => connectTo(instance, this.options.superuser),
      conninfo: socketConninfo(endpoint.socketDir, endpoint.port, this.options.superuser),
    };
  }

  /** Starts the instance unless it runs, making room first within maxRunning. */
  private async running(instance: Instance): Promise<void> {
    while (instance.transition) await instance.transition;
    if (instance.postmaster) return;
    if (this.closed) throw errors.shuttingDown();
    await this.makeRoom(instance);
    if (instance.postmaster) return;
    const start = this.start(instance);
    instance.transition = start.finally(() => (instance.transition = undefined));
    await instance.transition;
  }

  /**
   * A postmaster on `<dir>/pg`, with its private socket in `<dir>/run` (made by startPostmaster,
   * mode 0700, for the owner): an instance, or a scratch copy (scripts, a restore point read).
   */
  private startOn(
    dir: string,
    extra?: Record<string, string>,
    startTimeoutMs?: number,
  ): Promise<Postmaster> {
    return startPostmaster({
      startTimeoutMs,
      binary: this.options.binary,
      pgDataDir: path.join(dir, 'pg'),
      socketDir: path.join(dir, 'run'),
      port: INSTANCE_PORT,
      settings: { ...this.options.settings, ...extra },
      owner: this.options.owner,
      log: this.options.log,
    });
  }

  private async start(instance: Instance): Promise<void> {
    const started = Date.now();
    this.adopt(instance, await this.startOn(instance.dir));
    this.options.log.info(
      { event: 'instance_started', branch: instance.record.name, ms: Date.now() - started },
      `started branch instance ${instance.record.name} in ${Date.now() - started} ms`,
    );
  }

  /** `postmaster` runs `instance` from now on; if it stops by itself, the next connect starts it. */
  private adopt(instance: Instance, postmaster: Postmaster): void {
    instance.postmaster = postmaster;
    void postmaster.exited.then(() => {
      if (instance.postmaster !== postmaster) return;
      // It stopped by itself (crashed, or was killed): the next connect starts it again.
      instance.postmaster = undefined;
      this.options.onStopping(postmaster.endpoint);
      this.options.log.warn(
        { event: 'instance_exited', branch: instance.record.name },
        `branch instance ${instance.record.name} stopped on its own; it starts again on the next connect`,
      );
      void this.spares?.discard(instance.record.name);
    });
  }

  /** Within maxRunning: suspends the least recently used idle instance when none is free. */
  private async makeRoom(wanted?: Instance): Promise<void> {
    for (;;) {
      const running = [...this.instances.values()].filter(
        (i) => i !== wanted && (i.postmaster || i.transition),
      );
      if (running.length < this.options.maxRunning) return;
      const idle = running
        .filter((i) => i.clients === 0 && !i.transition)
        .sort((a, b) => a.lastUsed - b.lastUsed)[0];
      if (!idle) {
        throw new PgError(
          '53300',
          `too many branch instances running: all ${this.options.maxRunning} (branch.max_running) have clients`,
          undefined,
          'Disconnect clients of another branch, or raise branch.max_running if the machine has the memory.',
        );
      }
      await this.suspend(idle, 'limit');
    }
  }

  private left(instance: Instance): void {
    instance.clients--;
    instance.lastUsed = Date.now();
    if (this.instances.get(instance.id) === instance) {
      instance.record.lastConnectedAt = new Date(instance.lastUsed).toISOString();
      writeRecord(instance.dir, instance.record);
    }
    this.idle(instance);
  }

  /** Suspends `instance` after branch.suspend_after once nothing uses it. */
  private idle(instance: Instance): void {
    if (instance.clients > 0 || this.closed || !instance.postmaster) return;
    clearTimeout(instance.suspendTimer);
    instance.suspendTimer = setTimeout(() => {
      instance.suspendTimer = undefined;
      if (instance.clients === 0) void this.suspend(instance, 'idle');
    }, this.options.suspendAfterMs);
    instance.suspendTimer.unref();
  }

  /** Shuts an instance down cleanly; the next connect starts it again. */
  private async suspend(instance: Instance, why: 'idle' | 'limit' | 'stop'): Promise<void> {
    while (instance.transition) await instance.transition;
    clearTimeout(instance.suspendTimer);
    instance.suspendTimer = undefined;
    if (!instance.postmaster) return;
    instance.transition = this.stopNow(instance).finally(() => (instance.transition = undefined));
    await instance.transition;
    this.options.log.info(
      { event: 'instance_suspended', branch: instance.record.name, reason: why },
      `suspended branch instance ${instance.record.name} (${why === 'idle' ? 'no clients' : why === 'limit' ? 'branch.max_running reached' : 'pgbranch stops'})`,
    );
  }
}

/** The record's fields for a branch of the root's upstream, from how fresh it came out. */
function freshnessFields(
  upstream: Upstream | undefined,
  freshness: Freshness | undefined,
): Partial<InstanceRecord> {
  if (!upstream || !freshness) return {};
  return {
    of: upstream.name,
    ...(freshness.state === 'behind' ? { behind: freshness.wanted } : {}),
    ...(freshness.state === 'unreachable' ? { unreachable: freshness.reason } : {}),
  };
}

/** What a client that made a branch is told: from what, how, and as of when. */
export function creationNotice(branch: string, record: InstanceRecord, now = Date.now()): string {
  const moment = record.dataAsOf && `${record.dataAsOf.slice(0, 19).replace('T', ' ')} UTC`;
  const asOf = moment ? ` as of ${moment} (LSN ${record.lsn})` : '';
  const made = `pgbranch: created branch "${branch}" (an instance of its own)`;
  if (record.of === undefined) {
    return `${made} from ${record.parent ?? 'the root instance'}${asOf} (${record.mode})`;
  }
  const age = record.dataAsOf
    ? `${Math.max(0, Math.round((now - Date.parse(record.dataAsOf)) / 1000))} s`
    : 'an unknown time';
  const lag = record.behind
    ? `; the standby had not replayed the source's position ${record.behind} within source.max_wait, ${lagBytes(record.behind, record.lsn)} behind: its data is ${age} old`
    : record.unreachable
      ? `; the source could not be reached (${record.unreachable}): its data is what the standby had replayed, ${age} old`
      : '';
  return `${made}, a branch of production (${record.of})${asOf} (${record.mode})${lag}`;
}

/** `3.2 MB` between two WAL positions. */
function lagBytes(ahead: string, at: string | undefined): string {
  if (at === undefined) return 'an unknown amount';
  const bytes = Number(parseLsn(ahead) - parseLsn(at));
  return bytes < 1024 * 1024 ? `${Math.max(0, bytes)} bytes` : mb(bytes);
}

function endpointOf(instance: Instance): Endpoint {
  return instance.postmaster!.endpoint;
}

function connectTo(instance: Instance, superuser: string, database = 'postgres') {
  return sessionOn(instance.postmaster!.endpoint, superuser, database);
}

/** A session of pgbranch's on an instance's private socket (trust there). */
async function sessionOn(
  endpoint: { socketDir: string; port: number },
  superuser: string,
  database: string,
): Promise<pg.Client> {
  const client = new pg.Client({
    host: endpoint.socketDir,
    port: endpoint.port,
    user: superuser,
    database,
    application_name: 'pgbranch',
  });
  // An instance that stops under a session fails the query in flight; unheard, the error event
  // would end pgbranch.
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

function writeRecord(dir: string, record: InstanceRecord): void {
  const file = path.join(dir, RECORD_FILE);
  fs.writeFileSync(`${file}.tmp`, `${JSON.stringify(record, null, 2)}\n`);
  fs.renameSync(`${file}.tmp`, file);
}

/** Bytes of disk the files under `dir` take (allocated blocks). */
/** Bytes on disk of the files under `dir` (what they really take: clones share blocks). */
export function diskUsage(dir: string): number {
  return sumOfFiles(dir, (stat) => stat.blocks * 512);
}

/**
 * `measure` of every file under `dir`, summed. Walked one directory at a time: a running server
 * renames and removes files and directories as it goes (a slot's `.tmp` directory, temporary
 * files), and whatever vanished meanwhile counts for nothing rather than failing the count.
 */
export function sumOfFiles(dir: string, measure: (stat: fs.Stats) => number): number {
  let total = 0;
  const pending = [dir];
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(next, { withFileTypes: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT' && next !== dir) continue;
      throw error;
    }
    for (const entry of entries) {
      const full = path.join(next, entry.name);
      if (entry.isDirectory()) pending.push(full);
      else if (entry.isFile()) {
        try {
          total += measure(fs.statSync(full));
        } catch {
          // Gone meanwhile.
        }
      }
    }
  }
  return total;
}

function readRecord(dir: string): InstanceRecord | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, RECORD_FILE), 'utf8')) as InstanceRecord;
  } catch {
    return undefined;
  }
}

function mb(bytes: number): string {
  return `${(bytes / 1024 ** 2).toFixed(0)} MB`;
}
