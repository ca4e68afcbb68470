// A source's past: restore points of its standby (copy-on-write clones taken under the backup API
// every source.snapshot_interval, in `<data_dir>/source/history`) and the WAL since the oldest (the
// standby's archive, wal-archive.ts), both kept for source.retention. A branch at moment T is a
// clone of the newest point at or before T, recovered to T (recovery_target_time) and promoted.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import type { Logger } from 'pino';
import { copyCluster, segmentOf } from '../branch/instance/cluster-copy.js';
import type { OsUser, Postmaster } from '../branch/instance/postmaster.js';
import { errors, utc } from '../errors.js';
import { formatLsn, parseLsn, type Lsn } from './lsn.js';
import { ARCHIVE_DIR, gatherWal, pruneArchive, restoreCommand } from './wal-archive.js';

const HISTORY_DIR = 'history';
const POINT_FILE = 'point.json';
/** The system identifier of the cluster the points and the archive are of. */
const SYSTEM_FILE = 'system-id';
const CREATING_PREFIX = '.creating-';
/** The WAL a recovery reads, beside its data directory; removed once it is promoted. */
const RESTORE_DIR = 'wal-restore';
/** Replaying a long stretch of WAL takes a while: a recovery may take this long. */
const RECOVERY_TIMEOUT_MS = 30 * 60_000;
const ENDED_BEFORE_TARGET = /recovery ended before configured recovery target was reached/;

/** A restore point of the standby, as its point.json records it. */
export interface HistoryPoint {
  id: string;
  /** When the copy was complete: every commit in it happened before (the earliest moment it serves). */
  at: string;
  /** The backup's WAL range: recovery starts at startLsn and is consistent at stopLsn. */
  startLsn: string;
  stopLsn: string;
  mode: 'clone' | 'copy';
  ms: number;
}

/** The moments a branch of the source can be made at. */
export interface HistoryWindow {
  from: Date;
  to: Date;
}

export interface SourceHistoryOptions {
  /** `<data_dir>/source`: restore points go in its history/, the WAL in its wal-archive/. */
  root: string;
  /** The standby's data directory, and a superuser session on it. */
  standby: {
    pgDataDir: string;
    superuser: string;
    systemId: string;
    connect: () => Promise<pg.Client>;
  };
  /** The source's WAL position now; throws when the source can't be reached. */
  sourceLsn: () => Promise<Lsn>;
  /** source.retention and source.snapshot_interval, in ms. */
  retentionMs: number;
  intervalMs: number;
  /** How long a moment newer than what is known replayed waits for the standby to catch up. */
  maxWaitMs: number;
  /** false: points are byte copies even where the filesystem could clone. */
  clone: boolean;
  owner: OsUser | undefined;
  log: Logger;
}

/** A branch at a past moment, recovered and promoted, running. */
export interface PastBranch {
  dir: string;
  postmaster: Postmaster;
  mode: 'clone' | 'copy';
  /** Where its recovery stopped. */
  lsn: string;
  asOf: Date;
  /** The restore point it was recovered from. */
  point: string;
  ms: number;
}

/** A postmaster on `<dir>/pg` with these settings added, waiting up to `timeoutMs` for it. */
export type StartInstance = (
  dir: string,
  settings: Record<string, string>,
  timeoutMs: number,
) => Promise<Postmaster>;

/** What the standby had replayed when asked. */
interface Replayed {
  lsn: Lsn;
  /** The newest commit replayed, read before lsn: that commit is at or before it. */
  commitBefore: Date | null;
  /** The newest commit replayed, read after lsn: no commit up to lsn is newer. */
  commitAfter: Date | null;
  /** When the standby's postmaster started: commits older than its start may not show above. */
  startedAt: Date;
  segmentSize: number;
}

export class SourceHistory {
  private points: HistoryPoint[] = [];
  /** Restore points a branch is being made from, kept from pruning meanwhile. */
  private readonly inUse = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;
  private closed = false;
  /** Stops a restore point's copy under way when pgbranch stops. */
  private readonly stopping = new AbortController();
  /** The last moment the standby was seen to have replayed everything the source had. */
  private caughtUpAt: Date | null = null;
  /** The newest commit seen replayed. */
  private lastCommit: Date | null = null;
  private segmentSize = 16 * 1024 * 1024;

  private constructor(private readonly options: SourceHistoryOptions) {}

  get dir(): string {
    return path.join(this.options.root, HISTORY_DIR);
  }

  get archiveDir(): string {
    return path.join(this.options.root, ARCHIVE_DIR);
  }

  /**
   * Reads the restore points kept on disk (removing any a killed pgbranch left half made) and
   * starts taking new ones in the background: the first right away when none is recent.
   */
  static open(options: SourceHistoryOptions): SourceHistory {
    const history = new SourceHistory(options);
    fs.mkdirSync(history.dir, { recursive: true, mode: 0o755 });
    history.forgetOtherCluster();
    for (const entry of fs.readdirSync(history.dir)) {
      const dir = path.join(history.dir, entry);
      if (entry.startsWith(CREATING_PREFIX)) {
        fs.rmSync(dir, { recursive: true, force: true });
        continue;
      }
      if (entry === SYSTEM_FILE) continue;
      try {
        history.points.push(
          JSON.parse(fs.readFileSync(path.join(dir, POINT_FILE), 'utf8')) as HistoryPoint,
        );
      } catch {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
    history.points.sort((a, b) => a.at.localeCompare(b.at));
    history.schedule(0);
    return history;
  }

  /**
   * Restore points and WAL of another cluster (the standby was made again, by a resync or
   * anew, of a source that was re-initialised) are of no use, and the archive would refuse the new cluster's segments of the
   * same names: both are emptied.
   */
  private forgetOtherCluster(): void {
    const file = path.join(this.dir, SYSTEM_FILE);
    const { systemId } = this.options.standby;
    let recorded: string | undefined;
    try {
      recorded = fs.readFileSync(file, 'utf8').trim();
    } catch {
      // None yet.
    }
    if (recorded !== undefined && recorded !== systemId) {
      this.options.log.warn(
        { event: 'source_history_forgotten', was: recorded, now: systemId },
        `the restore points and archived WAL are of another cluster (system ${recorded}; the standby's is ${systemId}): removed`,
      );
      for (const dir of [this.dir, this.archiveDir]) {
        for (const entry of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
          fs.rmSync(path.join(dir, entry), { recursive: true, force: true });
        }
      }
      this.points = [];
      this.caughtUpAt = null;
      this.lastCommit = null;
    }
    if (recorded !== systemId) fs.writeFileSync(file, `${systemId}\n`);
  }

  /** The restore points kept, oldest first. */
  list(): readonly HistoryPoint[] {
    return this.points;
  }

  /**
   * The moments a branch can be made at now: from the oldest restore point to the newest moment
   * known replayed (the standby caught up with the source then, or a commit of then replayed);
   * null before the first restore point.
   */
  window(): HistoryWindow | null {
    const oldest = this.points[0];
    if (!oldest) return null;
    const from = new Date(oldest.at);
    const known = Math.max(this.caughtUpAt?.getTime() ?? 0, this.lastCommit?.getTime() ?? 0);
    return { from, to: new Date(Math.max(from.getTime(), known)) };
  }

  /**
   * The window as of now: what the standby has replayed is read first (without waiting for it),
   * where window() gives it as of the last look (a tick or a branch).
   */
  async currentWindow(): Promise<HistoryWindow | null> {
    if (this.points.length > 0) await this.observe(true, 0).catch(() => undefined);
    return this.window();
  }

  /** Bytes on disk of the restore points and the archive (a clone's shared blocks in full). */
  async diskBytes(): Promise<number> {
    let total = 0;
    for (const dir of [this.dir, this.archiveDir]) {
      const entries = await fsp
        .readdir(dir, { recursive: true, withFileTypes: true })
        .catch(() => []);
      for (const entry of entries) {
        if (!entry.isFile()) continue;
        const stat = await fsp.stat(path.join(entry.parentPath, entry.name)).catch(() => null);
        total += (stat?.blocks ?? 0) * 512;
      }
    }
    return total;
  }

  /**
   * Makes, in `dir`, the source as it was at `at`: a clone of the newest restore point at or
   * before it, recovered to just before the first commit at or after `at`, promoted and running.
   * 22023 naming the window for a moment outside it.
   */
  async branchAt(at: Date, dir: string, start: StartInstance): Promise<PastBranch> {
    const started = Date.now();
    if (at.getTime() > Date.now()) {
      throw errors.momentOutsideWindow(at, 'it is in the future', this.window());
    }
    const known = this.window();
    // A moment newer than what is known replayed: the standby catches up with the source first.
    const replayed = await this.observe(known !== null && at > known.to);
    const window = this.window();
    if (!window || at < window.from) {
      throw errors.momentOutsideWindow(at, 'it is before the oldest restore point', window);
    }
    if (at > window.to) {
      throw errors.momentOutsideWindow(
        at,
        'the standby has not replayed that far (the source is ahead, or out of reach)',
        window,
      );
    }
    const point = this.points.filter((p) => new Date(p.at) <= at).at(-1)!;
    this.inUse.set(point.id, (this.inUse.get(point.id) ?? 0) + 1);
    try {
      // No commit up to the end of the WAL at or after `at`: recovery would end before its target,
      // so none is set and it replays to the end. Commits of before the standby's start may not be
      // in commitAfter, hence the last condition.
      const beforeAny =
        (replayed.commitAfter === null || replayed.commitAfter < at) && at >= replayed.startedAt;
      let result: Omit<PastBranch, 'ms'>;
      try {
        result = await this.recover(point, at, replayed, !beforeAny, dir, start);
      } catch (error) {
        if (beforeAny || !ENDED_BEFORE_TARGET.test((error as Error).message)) throw error;
        // The WAL up to its end has no commit at or after `at`: the moment is its end.
        await fsp.rm(dir, { recursive: true, force: true });
        result = await this.recover(point, at, replayed, false, dir, start);
      }
      this.options.log.info(
        {
          event: 'source_branch_at',
          at: at.toISOString(),
          point: point.id,
          lsn: result.lsn,
          ms: Date.now() - started,
        },
        `recovered the source as of ${utc(at)} (LSN ${result.lsn}) from restore point ${point.id} in ${Date.now() - started} ms`,
      );
      return { ...result, ms: Date.now() - started };
    } finally {
      const count = this.inUse.get(point.id)! - 1;
      if (count === 0) this.inUse.delete(point.id);
      else this.inUse.set(point.id, count);
    }
  }

  /** Stops taking restore points (pgbranch stops); waits for one under way. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.stopping.abort();
    await this.ticking;
  }

  /**
   * A clone of `point` in `<dir>/pg` recovering to `at` (or, without `target`, to the end of the
   * WAL the standby had replayed), started and waited for until promoted.
   */
  private async recover(
    point: HistoryPoint,
    at: Date,
    replayed: Replayed,
    target: boolean,
    dir: string,
    start: StartInstance,
  ): Promise<Omit<PastBranch, 'ms'>> {
    const { owner } = this.options;
    fs.mkdirSync(dir, { mode: 0o755 });
    let postmaster: Postmaster | undefined;
    try {
      const pointPg = path.join(this.dir, point.id, 'pg');
      const pgDataDir = path.join(dir, 'pg');
      const copied = await copyCluster({
        clone: this.options.clone,
        sourceDataDir: pointPg,
        target: pgDataDir,
        owner,
      });
      // The copy took the point's backup_label: it starts from the backup's checkpoint, and is
      // consistent at its end, only with it.
      writeOwned(path.join(pgDataDir, 'recovery.signal'), '', owner);
      const restoreDir = path.join(dir, RESTORE_DIR);
      await gatherWal({
        archiveDir: this.archiveDir,
        pgWal: path.join(this.options.standby.pgDataDir, 'pg_wal'),
        first: segmentOf(point.startLsn, replayed.segmentSize, false),
        last: segmentOf(formatLsn(replayed.lsn), replayed.segmentSize, true),
        segmentSize: replayed.segmentSize,
        endLsn: replayed.lsn,
        target: restoreDir,
        owner,
      });
      postmaster = await start(
        dir,
        {
          // Closed to clients until promoted (promoted() waits for that, not for the postmaster).
          hot_standby: 'off',
          restore_command: restoreCommand(restoreDir),
          recovery_target_timeline: 'latest',
          ...(target
            ? {
                // An offset, not Z: zone abbreviations are not loaded yet when the server reads it.
                recovery_target_time: at.toISOString().replace('T', ' ').replace('Z', '+00'),
                // Stops before the first commit at or after the moment: rows committed before it.
                recovery_target_inclusive: 'off',
                recovery_target_action: 'promote',
              }
            : {}),
        },
        RECOVERY_TIMEOUT_MS,
      );
      const lsn = await promoted(postmaster, this.options.standby.superuser);
      await fsp.rm(restoreDir, { recursive: true, force: true });
      return { dir, postmaster, mode: copied.mode, lsn, asOf: at, point: point.id };
    } catch (error) {
      await postmaster?.stop('immediate');
      await fsp.rm(dir, { recursive: true, force: true });
      throw error;
    }
  }

  /**
   * What the standby has replayed. With `catchUp`, the source's position is read first and the
   * standby given up to `waitMs` (source.max_wait) to replay it: then everything the source had
   * committed by the time of the ask is there.
   */
  private async observe(catchUp: boolean, waitMs = this.options.maxWaitMs): Promise<Replayed> {
    const asked = new Date();
    let wanted: Lsn | undefined;
    if (catchUp) {
      try {
        wanted = await this.options.sourceLsn();
      } catch {
        // Out of reach: what was replayed is all there is.
      }
    }
    const client = await this.options.standby.connect();
    client.on('error', () => undefined);
    try {
      const deadline = Date.now() + waitMs;
      for (;;) {
        // Three reads in this order (see Replayed).
        const before = await client.query<{ last: Date | null; size: string; started: Date }>(
          `select pg_last_xact_replay_timestamp() as last, pg_postmaster_start_time() as started,
                  (select setting from pg_settings where name = 'wal_segment_size') as size`,
        );
        const at = await client.query<{ lsn: string | null }>(
          'select pg_last_wal_replay_lsn()::text as lsn',
        );
        const after = await client.query<{ last: Date | null }>(
          'select pg_last_xact_replay_timestamp() as last',
        );
        const lsn = parseLsn(at.rows[0]!.lsn ?? '0/0');
        const replayed: Replayed = {
          lsn,
          commitBefore: before.rows[0]!.last,
          commitAfter: after.rows[0]!.last,
          startedAt: before.rows[0]!.started,
          segmentSize: Number(before.rows[0]!.size),
        };
        this.segmentSize = replayed.segmentSize;
        if (replayed.commitBefore && replayed.commitBefore > (this.lastCommit ?? new Date(0))) {
          this.lastCommit = replayed.commitBefore;
        }
        const caughtUp = wanted !== undefined && lsn >= wanted;
        if (caughtUp && asked > (this.caughtUpAt ?? new Date(0))) this.caughtUpAt = asked;
        if (caughtUp || wanted === undefined || Date.now() > deadline) return replayed;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  private schedule(delayMs: number): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      this.ticking = this.tick().finally(() => {
        this.ticking = undefined;
        this.schedule(this.options.intervalMs);
      });
    }, delayMs);
    this.timer.unref();
  }

  /** A restore point when the newest is an interval old, pruning, and what is replayed now. */
  private async tick(): Promise<void> {
    try {
      // A resync may have made the standby of another cluster.
      this.forgetOtherCluster();
      const newest = this.points.at(-1);
      if (!newest || Date.now() - Date.parse(newest.at) >= this.options.intervalMs * 0.9) {
        await this.take();
      }
      await this.observe(true);
      await this.prune();
    } catch (error) {
      if (this.closed) return;
      this.options.log.warn(
        { event: 'source_point_failed', err: error },
        `could not take a restore point of the standby: ${(error as Error).message}; trying again in ${Math.round(this.options.intervalMs / 1000)} s`,
      );
    }
  }

  /** A copy of the running standby under the backup API, renamed into place once complete. */
  private async take(): Promise<void> {
    const id = new Date().toISOString().replace(/[-:.]/g, '');
    const staging = path.join(this.dir, `${CREATING_PREFIX}${id}`);
    fs.mkdirSync(staging, { mode: 0o755 });
    try {
      const copied = await copyCluster({
        clone: this.options.clone,
        sourceDataDir: this.options.standby.pgDataDir,
        target: path.join(staging, 'pg'),
        running: { connect: this.options.standby.connect },
        owner: this.options.owner,
        signal: this.stopping.signal,
      });
      const point: HistoryPoint = {
        id,
        at: new Date().toISOString(),
        startLsn: copied.startLsn!,
        stopLsn: copied.stopLsn!,
        mode: copied.mode,
        ms: copied.ms,
      };
      fs.writeFileSync(path.join(staging, POINT_FILE), `${JSON.stringify(point, null, 2)}\n`);
      fs.renameSync(staging, path.join(this.dir, id));
      this.points.push(point);
      this.options.log.info(
        {
          event: 'source_point_taken',
          point: id,
          startLsn: point.startLsn,
          lsn: point.stopLsn,
          mode: point.mode,
          ms: point.ms,
        },
        `took restore point ${id} of the standby (${point.mode}, LSN ${point.stopLsn}) in ${point.ms} ms`,
      );
    } catch (error) {
      fs.rmSync(staging, { recursive: true, force: true });
      throw error;
    }
  }

  /**
   * Removes restore points older than source.retention (never the newest, nor one a branch is
   * being made from), then the archived WAL older than the oldest point left.
   */
  private async prune(): Promise<void> {
    const cutoff = Date.now() - this.options.retentionMs;
    const newest = this.points.at(-1);
    for (const point of [...this.points]) {
      if (point === newest || Date.parse(point.at) >= cutoff || this.inUse.has(point.id)) continue;
      this.points = this.points.filter((p) => p !== point);
      await fsp.rm(path.join(this.dir, point.id), { recursive: true, force: true });
      this.options.log.info(
        { event: 'source_point_pruned', point: point.id },
        `removed restore point ${point.id} of the standby (older than source.retention)`,
      );
    }
    const oldest = this.points[0];
    if (!oldest) return;
    const keepFrom = segmentOf(oldest.startLsn, this.segmentSize, false);
    await pruneArchive(this.archiveDir, keepFrom, this.segmentSize);
  }
}

/**
 * Waits until the recovering instance is promoted (its postmaster may say it is ready as soon as
 * recovery is consistent) and says where its recovery stopped. Throws with the server's last
 * lines if it exits meanwhile.
 */
async function promoted(postmaster: Postmaster, superuser: string): Promise<string> {
  let exited = false;
  void postmaster.exited.then(() => (exited = true));
  const deadline = Date.now() + RECOVERY_TIMEOUT_MS;
  let failures = 0;
  for (;;) {
    if (exited) {
      throw new Error(`the recovery stopped: ${postmaster.recentLog().join('\n')}`);
    }
    if (Date.now() > deadline) {
      throw new Error(`the recovery had not ended after ${RECOVERY_TIMEOUT_MS / 1000} s`);
    }
    const client = new pg.Client({
      user: superuser,
      host: postmaster.endpoint.socketDir,
      port: postmaster.endpoint.port,
      database: 'postgres',
      application_name: 'pgbranch',
    });
    client.on('error', () => undefined);
    try {
      await client.connect();
      const { rows } = await client.query<{ recovering: boolean; lsn: string | null }>(
        'select pg_is_in_recovery() as recovering, pg_last_wal_replay_lsn()::text as lsn',
      );
      if (!rows[0]!.recovering) return rows[0]!.lsn ?? 'unknown';
    } catch (error) {
      // 57P03: still recovering, not open to connections. Anything else may be the server going
      // away (a recovery that failed): the next turn says so once it has exited.
      if ((error as { code?: string }).code !== '57P03') {
        await Promise.race([postmaster.exited, new Promise((r) => setTimeout(r, 200))]);
        if (!exited && ++failures > 25) throw error;
      }
    } finally {
      await client.end().catch(() => undefined);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function writeOwned(file: string, text: string, owner: OsUser | undefined): void {
  fs.writeFileSync(file, text, { mode: 0o600 });
  if (owner) fs.chownSync(file, owner.uid, owner.gid);
}
