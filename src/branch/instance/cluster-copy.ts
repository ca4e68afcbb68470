// A new data directory that is a consistent copy of a cluster: of a running one under the backup
// API (pg_backup_start, every file, pg_backup_stop, then the WAL written in between), of a stopped
// one as it lies. Files are cloned (reflink) where the filesystem can, copied where it can't. All
// or nothing: a copy that fails or is aborted leaves no target behind and no source in backup mode.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import { runsOn, type OsUser } from './postmaster.js';

export interface CopyProgress {
  bytes: number;
  files: number;
  /** What the copy will come to; grows once, by the WAL, when the source is running. */
  totalBytes: number;
}

export interface CopyClusterOptions {
  sourceDataDir: string;
  /** Must not exist; created, with its parent if need be. */
  target: string;
  /** A running source: how to open a superuser session on it (copyCluster ends the session). */
  running?: {
    connect: () => Promise<pg.Client>;
    /**
     * The copy is for a standby of the source, which replays and streams what it lacks: no backup
     * API (no checkpoint on the source), pg_control first and the WAL last (see copyForStandby).
     * The source must keep the WAL from its last checkpoint until the standby streams: a physical
     * slot, made before the copy.
     */
    forStandby?: boolean;
  };
  /** Whom the copy belongs to (files and directories are chowned as they are made). */
  owner?: OsUser;
  onProgress?: (progress: CopyProgress) => void;
  signal?: AbortSignal;
  /** false: copy every file byte by byte even where the filesystem could clone it. */
  clone?: boolean;
}

export interface CopyClusterResult {
  /** clone: every file is a reflink clone; copy: at least one was copied byte by byte. */
  mode: 'clone' | 'copy';
  bytes: number;
  files: number;
  ms: number;
  /** The backup's WAL range (running source only): the copy recovers to stopLsn. */
  startLsn?: string;
  stopLsn?: string;
  /** Where a running copy's time went: pg_backup_start (its checkpoint), the files, the stop, the WAL. */
  phases?: { backupStartMs: number; filesMs: number; backupStopMs: number; walMs: number };
}

/** What FICLONE fails with where the filesystem (or the kernel) has no reflink. */
const NO_CLONE = new Set(['ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EINVAL', 'ENOSYS', 'ENOTTY']);

/** Files copies never take (pg_basebackup's list, plus signal files and the log's pointer). */
const EXCLUDED_FILES = new Set([
  'postmaster.pid',
  'postmaster.opts',
  'postgresql.auto.conf.tmp',
  'current_logfiles',
  'current_logfiles.tmp',
  'backup_label',
  'tablespace_map',
  'backup_manifest',
  // A copy is a primary of its own, never a standby or an archive recovery.
  'standby.signal',
  'recovery.signal',
]);

/**
 * Directories copied empty: PostgreSQL clears or rebuilds what they hold at start, and a
 * replication slot copied would hold WAL back in the copy for a consumer that never comes.
 */
const EMPTIED_DIRS = new Set([
  'pg_dynshmem',
  'pg_notify',
  'pg_replslot',
  'pg_serial',
  'pg_snapshots',
  'pg_stat_tmp',
  'pg_subtrans',
]);

/**
 * Files copied at once. Each copy holds one of libuv's 4 threads for as long as it takes (a byte
 * copy of a 1 GB segment, seconds): two leave the proxy's own file and crypto work room.
 */
const COPY_CONCURRENCY = 2;
/** A byte copy's chunk: large enough that the system calls cost nothing beside the bytes. */
const COPY_CHUNK = 4 * 1024 * 1024;

/** One thing to make in the copy, by its path relative to the data directory. */
interface Entry {
  rel: string;
  kind: 'dir' | 'file' | 'link';
  size: number;
  mode: number;
}

/**
 * Copies `sourceDataDir` to `target`, consistently: under the backup API on a session of
 * `running`, or as it lies when no server runs on it.
 */
export async function copyCluster(options: CopyClusterOptions): Promise<CopyClusterResult> {
  const started = Date.now();
  const source = fs.realpathSync(options.sourceDataDir);
  const target = path.resolve(options.target);
  refuseTablespaces(source);
  if (!options.running) refuseRunning(source);
  options.signal?.throwIfAborted();
  fs.mkdirSync(path.dirname(target), { recursive: true });
  try {
    fs.mkdirSync(target, { mode: 0o700 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    throw new Error(`${target} already exists: a copy never goes over anything`, { cause: error });
  }
  try {
    const copier = new Copier(source, target, options);
    await copier.claimTarget();
    const lsns = !options.running
      ? await copyStopped(copier)
      : options.running.forStandby
        ? await copyForStandby(copier, options.running)
        : await copyRunning(copier, options.running);
    return { ...copier.result(), ...lsns, ms: Date.now() - started };
  } catch (error) {
    await fsp.rm(target, { recursive: true, force: true });
    throw error;
  }
}

async function copyStopped(copier: Copier): Promise<Record<string, never>> {
  const entries = await listTree(copier.source, '', { running: false });
  await copier.copyAll(entries);
  // A copy taken under the backup API and never started since (a restore point) still needs its
  // label: without it recovery starts at pg_control's checkpoint, copied last, which may be one
  // that ended while the files were copied, and the changes before it to files copied earlier
  // would never be replayed. A cluster that has run since has none (recovery renames it).
  const label = await fsp
    .readFile(path.join(copier.source, 'backup_label'), 'utf8')
    .catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    });
  if (label !== undefined) await copier.writeFile('backup_label', label);
  return {};
}

/**
 * The backup API on one session: pg_backup_start (fast checkpoint), every file but the WAL with
 * pg_control last (as pg_basebackup sends it), pg_backup_stop, then the WAL from the start to the
 * stop. pg_backup_stop has the WAL on disk when it returns: on a primary it writes the
 * backup-end record and switches segment, and the switch flushes the WAL up to the switch
 * (xlog.c, do_pg_backup_stop and XLogInsertRecord); on a standby the stop point is the minimum
 * recovery point, WAL already replayed, so read from disk.
 */
async function copyRunning(
  copier: Copier,
  running: NonNullable<CopyClusterOptions['running']>,
): Promise<Pick<CopyClusterResult, 'startLsn' | 'stopLsn' | 'phases'>> {
  const session = await running.connect();
  let mark = Date.now();
  const lap = () => {
    const ms = Date.now() - mark;
    mark += ms;
    return ms;
  };
  // A broken session fails the query in flight; without a listener it would also throw.
  session.on('error', () => undefined);
  let inBackup = false;
  try {
    const { rows } = await session.query<{ version: number; dir: string; segment: string }>(
      `select current_setting('server_version_num')::int as version,
              current_setting('data_directory') as dir,
              (select setting from pg_settings where name = 'wal_segment_size') as segment`,
    );
    const server = rows[0]!;
    if (server.version < 150000) {
      throw new Error(
        `instance branches need PostgreSQL 15 or later (its backup API); the source runs ${server.version}`,
      );
    }
    if (fs.realpathSync(server.dir) !== copier.source) {
      throw new Error(
        `the running server's data directory is ${server.dir}, not ${copier.source}: nothing was copied`,
      );
    }
    const segmentSize = Number(server.segment);
    await reserveWal(session);
    copier.signal?.throwIfAborted();

    const label = `pgbranch copy ${path.basename(copier.target)}`.slice(0, 1000);
    lap();
    const start = await session.query<{ lsn: string }>(
      'select pg_backup_start($1, fast => true)::text as lsn',
      [label],
    );
    inBackup = true;
    const startLsn = start.rows[0]!.lsn;
    const backupStartMs = lap();
    copier.signal?.throwIfAborted();

    const entries = await listTree(copier.source, '', { running: true });
    const control = entries.find((e) => e.rel === path.join('global', 'pg_control'));
    if (!control)
      throw new Error(`${copier.source} has no global/pg_control: not a data directory`);
    await copier.copyAll(
      entries.filter((e) => e !== control),
      control.size,
    );
    await copier.copyAll([control]);
    const filesMs = lap();

    const stop = await session.query<{ lsn: string; labelfile: string; spcmapfile: string }>(
      'select lsn::text, labelfile, spcmapfile from pg_backup_stop(wait_for_archive => false)',
    );
    inBackup = false;
    const { lsn: stopLsn, labelfile, spcmapfile } = stop.rows[0]!;
    const backupStopMs = lap();
    // A tablespace made while the copy ran: its files live outside the data directory.
    if (spcmapfile.trim()) refuseTablespaces(copier.source, spcmapfile);
    refuseTablespaces(copier.source);

    await copier.copyAll(await walBetween(copier.source, startLsn, stopLsn, segmentSize), 0, false);
    await copier.writeFile('backup_label', labelfile);
    const phases = { backupStartMs, filesMs, backupStopMs, walMs: lap() };
    return { startLsn, stopLsn, phases };
  } catch (error) {
    // The session ending aborts the backup too, but say so to the server while it can hear.
    if (inBackup) await session.query('select pg_backup_stop(false)').catch(() => undefined);
    throw error;
  } finally {
    await session.end().catch(() => undefined);
  }
}

/**
 * A copy of a running cluster for a standby of it, taken without the backup API: pg_control
 * first, then every file but the WAL, then the WAL as it is by then. The standby starts from the
 * checkpoint in the pg_control it got, whose redo point is no later than anything the files were
 * copied after; every change to a page after that redo point is in the WAL from it (full_page_writes
 * puts the whole page in the first), and WAL goes to disk before the pages it describes, so the
 * WAL copied last covers every page copied before it. Crash recovery of the copy replays to the
 * end of that WAL, and the standby then streams on from the source: the same reasoning as a
 * crash-consistent snapshot, with pg_control taken first so that a checkpoint finishing during
 * the copy can't have the standby start from a redo point after some file's copy. The caller's
 * slot (made before) keeps the WAL from that redo point on the source meanwhile.
 */
async function copyForStandby(
  copier: Copier,
  running: NonNullable<CopyClusterOptions['running']>,
): Promise<Record<string, never>> {
  const session = await running.connect();
  session.on('error', () => undefined);
  try {
    const { rows } = await session.query<{ fpw: string; dir: string; segment: string }>(
      `select current_setting('full_page_writes') as fpw, current_setting('data_directory') as dir,
              (select setting from pg_settings where name = 'wal_segment_size') as segment`,
    );
    const segmentSize = Number(rows[0]!.segment);
    if (rows[0]!.fpw !== 'on') {
      throw new Error(
        'full_page_writes is off on the source: a copy for a standby needs it (a torn page is mended from its full image in the WAL)',
      );
    }
    if (fs.realpathSync(rows[0]!.dir) !== copier.source) {
      throw new Error(
        `the running server's data directory is ${rows[0]!.dir}, not ${copier.source}: nothing was copied`,
      );
    }
    const control = path.join('global', 'pg_control');
    const controlStat = await fsp.stat(path.join(copier.source, control));
    await copier.copyAll([
      { rel: 'global', kind: 'dir', size: 0, mode: 0o700 },
      { rel: control, kind: 'file', size: controlStat.size, mode: controlStat.mode & 0o7777 },
    ]);
    const redo = await redoPoint(copier.target);
    const entries = await listTree(copier.source, '', { running: true });
    await copier.copyAll(entries.filter((e) => e.rel !== control && e.rel !== 'global'));
    // Where the WAL is written to now: every page copied is described before it. Segments past it
    // are recycled ones waiting for use; the standby streams what comes next.
    const { rows: now } = await session.query<{ lsn: string }>(POSITION_SQL);
    const first = Number(redo / BigInt(segmentSize));
    const last = segmentOf(now[0]!.lsn, segmentSize, true);
    await copier.copyAll(await walFiles(copier.source, first, last, segmentSize), 0, false);
    await everySegment(copier.target, first, last, segmentSize);
    return {};
  } finally {
    await session.end().catch(() => undefined);
  }
}

/** SizeOfXLogLongPHD and SizeOfXLogShortPHD: a WAL segment's first page header, and others'. */
const LONG_PAGE_HEADER = 40;
const SHORT_PAGE_HEADER = 24;
/**
 * A primary's position for a standby to reach: the insert position, less the header of the page
 * (or segment) it points into when no record has been written there yet (after a segment switch,
 * the insert position is 0/3000028 while a standby that has everything has replayed to 0/3000000,
 * the end of the last record, and never gets further on an idle primary).
 */
const PRIMARY_POSITION = `select i - case when mod(i - '0/0'::pg_lsn, s) = ${LONG_PAGE_HEADER} then ${LONG_PAGE_HEADER}
                                          when mod(i - '0/0'::pg_lsn, b) = ${SHORT_PAGE_HEADER} then ${SHORT_PAGE_HEADER}
                                          else 0 end
    from (select pg_current_wal_insert_lsn() as i,
                 (select setting::numeric from pg_settings where name = 'wal_segment_size') as s,
                 (select setting::numeric from pg_settings where name = 'wal_block_size') as b) as p`;

/**
 * A server's position: everything it has committed (a primary's, as above), or replayed (a
 * standby's), as `lsn`.
 */
export const POSITION_SQL = `select case when pg_is_in_recovery() then pg_last_wal_replay_lsn()::text
                                        else (${PRIMARY_POSITION})::text end as lsn`;

/** The redo point of the checkpoint in a data directory's pg_control. */
async function redoPoint(pgDataDir: string): Promise<bigint> {
  const control = await fsp.readFile(path.join(pgDataDir, 'global', 'pg_control'));
  // ControlFileData: system_identifier, version, catalog version, state, time, checkPoint, then
  // checkPointCopy whose first field is the redo point (the layout of every release since 9.x).
  return control.readBigUInt64LE(40);
}

/** The source's WAL segments numbered `first` to `last` (any timeline), and history files. */
async function walFiles(
  source: string,
  first: number,
  last: number,
  segmentSize: number,
): Promise<Entry[]> {
  const perLogId = 0x1_0000_0000 / segmentSize;
  const wal: Entry[] = [];
  for (const name of await fsp.readdir(path.join(source, 'pg_wal'))) {
    const segment = /^[0-9A-F]{8}([0-9A-F]{8})([0-9A-F]{8})$/.exec(name);
    if (segment) {
      const number = parseInt(segment[1]!, 16) * perLogId + parseInt(segment[2]!, 16);
      if (number < first || number > last) continue;
    } else if (!/^[0-9A-F]{8}\.history$/.test(name)) continue;
    const rel = path.join('pg_wal', name);
    try {
      const stat = await fsp.stat(path.join(source, rel));
      wal.push({ rel, kind: 'file', size: stat.size, mode: stat.mode & 0o7777 });
    } catch (error) {
      // Recycled meanwhile: everySegment says whether the copy needed it.
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }
  return wal;
}

/**
 * Checks that the copy holds every WAL segment from its redo point to the source's position. A
 * checkpoint that ended during the copy may have recycled one older than the slot's start (the
 * slot reserves from the redo point of the checkpoint under way, pg_control names the one
 * before): the copy is then refused with StandbyCopyRaced, and a new one succeeds.
 */
async function everySegment(
  target: string,
  first: number,
  last: number,
  segmentSize: number,
): Promise<void> {
  const perLogId = 0x1_0000_0000 / segmentSize;
  const present = new Set<number>();
  for (const name of await fsp.readdir(path.join(target, 'pg_wal'))) {
    const segment = /^[0-9A-F]{8}([0-9A-F]{8})([0-9A-F]{8})$/.exec(name);
    if (segment) present.add(parseInt(segment[1]!, 16) * perLogId + parseInt(segment[2]!, 16));
  }
  for (let number = first; number <= last; number++) {
    if (!present.has(number)) {
      throw new StandbyCopyRaced(
        `WAL segment ${walFileName(number, perLogId)} after the copy's redo point went before the copy had it (a checkpoint ended meanwhile)`,
      );
    }
  }
}

/** A copy for a standby lost a race with a checkpoint: a new copy will do. */
export class StandbyCopyRaced extends Error {}

/**
 * A temporary physical slot on the session keeps the WAL from the backup's start until the copy
 * has it (a checkpoint during a long copy would recycle it otherwise), and goes with the session.
 * Where no slot is free the copy goes on without: a removed segment is then reported by name.
 */
async function reserveWal(session: pg.Client): Promise<void> {
  const name = `pgbranch_copy_${process.pid}_${randomBytes(4).toString('hex')}`;
  try {
    await session.query('select pg_create_physical_replication_slot($1, true, true)', [name]);
  } catch (error) {
    const code = (error as { code?: string }).code;
    // 53400: all slots in use; 55000: max_replication_slots = 0.
    if (code !== '53400' && code !== '55000') throw error;
  }
}

/** The WAL segments from `startLsn` to `stopLsn` (whatever their timeline) and history files. */
async function walBetween(
  source: string,
  startLsn: string,
  stopLsn: string,
  segmentSize: number,
): Promise<Entry[]> {
  const first = segmentOf(startLsn, segmentSize, false);
  const last = segmentOf(stopLsn, segmentSize, true);
  const perLogId = 0x1_0000_0000 / segmentSize;
  const wal: Entry[] = [];
  const found = new Set<number>();
  for (const name of await fsp.readdir(path.join(source, 'pg_wal'))) {
    const segment = /^[0-9A-F]{8}([0-9A-F]{8})([0-9A-F]{8})$/.exec(name);
    const history = /^[0-9A-F]{8}\.history$/.test(name);
    if (!segment && !history) continue;
    if (segment) {
      const number = parseInt(segment[1]!, 16) * perLogId + parseInt(segment[2]!, 16);
      if (number < first || number > last) continue;
      found.add(number);
    }
    const rel = path.join('pg_wal', name);
    const stat = await fsp.stat(path.join(source, rel));
    wal.push({ rel, kind: 'file', size: stat.size, mode: stat.mode & 0o7777 });
  }
  for (let number = first; number <= last; number++) {
    if (!found.has(number)) {
      throw new Error(
        `WAL segment ${walFileName(number, perLogId)} (any timeline) between the backup's start ${startLsn} and stop ${stopLsn} is gone from ${source}/pg_wal; the copy would not recover`,
      );
    }
  }
  return wal;
}

/** The segment holding `lsn`; an end LSN on a boundary belongs to the segment before it. */
export function segmentOf(lsn: string, segmentSize: number, end: boolean): number {
  const [high, low] = lsn.split('/');
  const position = (BigInt(`0x${high}`) << 32n) + BigInt(`0x${low}`) - (end ? 1n : 0n);
  return Number(position / BigInt(segmentSize));
}

/** The name of segment `number` on timeline 1, for messages (any timeline counts). */
function walFileName(number: number, perLogId: number): string {
  const hex = (n: number) => n.toString(16).toUpperCase().padStart(8, '0');
  return `${hex(1)}${hex(Math.floor(number / perLogId))}${hex(number % perLogId)}`;
}

/** Copies files and makes directories in the target, cloning while the filesystem lets it. */
class Copier {
  readonly signal: AbortSignal | undefined;
  private clone = true;
  private copied = 0;
  private bytes = 0;
  private files = 0;
  private totalBytes = 0;

  constructor(
    readonly source: string,
    readonly target: string,
    private readonly options: CopyClusterOptions,
  ) {
    this.signal = options.signal;
    this.clone = options.clone !== false;
  }

  result(): { mode: 'clone' | 'copy'; bytes: number; files: number } {
    return { mode: this.copied === 0 ? 'clone' : 'copy', bytes: this.bytes, files: this.files };
  }

  /** The data directory itself: mode 0700, as PostgreSQL demands, and the owner's. */
  async claimTarget(): Promise<void> {
    await fsp.chmod(this.target, 0o700);
    if (this.options.owner) await this.chown(this.target);
  }

  /**
   * Makes every directory (in order), then copies the files, a few at once; `later` is what will
   * be added after these (for the total). A file gone meanwhile is skipped where `missingOk`,
   * as pg_basebackup does (WAL replay recreates what the copy needs of it).
   */
  async copyAll(entries: Entry[], later = 0, missingOk = true): Promise<void> {
    for (const entry of entries) this.totalBytes += entry.kind === 'file' ? entry.size : 0;
    const reported = this.totalBytes + later;
    for (const entry of entries) {
      if (entry.kind === 'dir') await this.makeDir(entry);
      if (entry.kind === 'link') await this.copyLink(entry);
    }
    const files = entries.filter((e) => e.kind === 'file');
    let next = 0;
    let failure: { error: unknown } | undefined;
    const worker = async () => {
      while (!failure && next < files.length) {
        const entry = files[next++]!;
        try {
          this.signal?.throwIfAborted();
          await this.copyFile(entry, missingOk, () =>
            this.options.onProgress?.({
              bytes: this.bytes,
              files: this.files,
              totalBytes: reported,
            }),
          );
        } catch (error) {
          failure ??= { error };
        }
      }
    };
    await Promise.all(Array.from({ length: COPY_CONCURRENCY }, worker));
    if (failure) throw failure.error;
  }

  async writeFile(rel: string, content: string): Promise<void> {
    const file = path.join(this.target, rel);
    await fsp.writeFile(file, content, { mode: 0o600, flag: 'wx' });
    if (this.options.owner) await this.chown(file);
  }

  private async makeDir(entry: Entry): Promise<void> {
    const dir = path.join(this.target, entry.rel);
    await fsp.mkdir(dir);
    await fsp.chmod(dir, entry.mode);
    if (this.options.owner) await this.chown(dir);
  }

  private async copyLink(entry: Entry): Promise<void> {
    const link = path.join(this.target, entry.rel);
    await fsp.symlink(await fsp.readlink(path.join(this.source, entry.rel)), link);
    if (this.options.owner) await fsp.lchown(link, this.options.owner.uid, this.options.owner.gid);
  }

  /** Copies one file; `progressed` is told after it, and after each chunk of a byte copy. */
  private async copyFile(entry: Entry, missingOk: boolean, progressed: () => void): Promise<void> {
    const from = path.join(this.source, entry.rel);
    const to = path.join(this.target, entry.rel);
    const { COPYFILE_EXCL, COPYFILE_FICLONE_FORCE } = fs.constants;
    try {
      if (this.clone) {
        try {
          await fsp.copyFile(from, to, COPYFILE_EXCL | COPYFILE_FICLONE_FORCE);
        } catch (error) {
          if (!NO_CLONE.has((error as NodeJS.ErrnoException).code ?? '')) throw error;
          this.clone = false;
        }
      }
      if (!this.clone) {
        // Where a copy raced a clone that failed, the clone's attempt left no file (libuv
        // removes it), so EXCL holds.
        if (entry.size > COPY_CHUNK) await this.copyBytes(from, to, entry.mode, progressed);
        else {
          await fsp.copyFile(from, to, COPYFILE_EXCL);
          this.bytes += entry.size;
        }
        this.copied++;
      }
    } catch (error) {
      if (missingOk && (error as NodeJS.ErrnoException).code === 'ENOENT' && !fs.existsSync(from)) {
        return;
      }
      throw error;
    }
    // The copy has the source's mode; the owner is ours until chowned.
    if (this.options.owner) await this.chown(to);
    if (this.clone) this.bytes += entry.size;
    this.files++;
    progressed();
  }

  /**
   * A byte copy in chunks, counted as it goes: a 1 GB segment takes seconds, and whoever waits
   * hears how far it is meanwhile. (Smaller files go to the kernel's copyFile whole.)
   */
  private async copyBytes(
    from: string,
    to: string,
    mode: number,
    progressed: () => void,
  ): Promise<void> {
    const source = await fsp.open(from, 'r');
    try {
      const target = await fsp.open(to, 'wx', mode);
      try {
        const buffer = Buffer.allocUnsafe(COPY_CHUNK);
        for (;;) {
          this.signal?.throwIfAborted();
          const { bytesRead } = await source.read(buffer, 0, COPY_CHUNK, null);
          if (bytesRead === 0) break;
          await target.write(buffer, 0, bytesRead);
          this.bytes += bytesRead;
          progressed();
        }
        // open's mode is masked by the umask; the copy gets the source's exactly.
        await target.chmod(mode);
      } finally {
        await target.close();
      }
    } finally {
      await source.close();
    }
  }

  private chown(file: string): Promise<void> {
    return fsp.chown(file, this.options.owner!.uid, this.options.owner!.gid);
  }
}

/**
 * What a copy takes, directories before what they hold. A running source leaves out pg_wal's
 * files (the WAL is copied after pg_backup_stop) and, as pg_basebackup does, temporary relations
 * and unlogged relations' forks but the init fork (recovery resets unlogged relations from it).
 */
async function listTree(root: string, rel: string, rules: { running: boolean }): Promise<Entry[]> {
  const entries: Entry[] = [];
  const dir = path.join(root, rel);
  const names = await fsp.readdir(dir);
  const databaseDir = rules.running && isDatabaseDir(rel);
  const present = new Set(names);
  for (const name of names) {
    if (EXCLUDED_FILES.has(name) || name.startsWith('pgsql_tmp')) continue;
    if (name.startsWith('pg_internal.init')) continue;
    if (databaseDir && skippedRelationFile(name, present)) continue;
    const childRel = path.join(rel, name);
    let stat: fs.Stats;
    try {
      stat = await fsp.lstat(path.join(root, childRel));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue; // gone meanwhile
      throw error;
    }
    // pg_wal may be a link to another disk: the copy gets a directory of its own.
    if (childRel === 'pg_wal' && stat.isSymbolicLink())
      stat = await fsp.stat(path.join(root, childRel));
    const mode = stat.mode & 0o7777;
    if (stat.isDirectory()) {
      entries.push({ rel: childRel, kind: 'dir', size: 0, mode });
      if (EMPTIED_DIRS.has(name)) continue;
      if (childRel === 'pg_wal' && rules.running) {
        entries.push(...(await listDirsOnly(root, childRel)));
        continue;
      }
      entries.push(...(await listTree(root, childRel, rules)));
    } else if (stat.isFile()) {
      entries.push({ rel: childRel, kind: 'file', size: stat.size, mode });
    } else if (stat.isSymbolicLink()) {
      entries.push({ rel: childRel, kind: 'link', size: 0, mode });
    }
    // Sockets and pipes have no place in a data directory; pg_basebackup skips them too.
  }
  return entries;
}

/** The subdirectories under `rel`, empty (pg_wal/archive_status, pg_wal/summaries). */
async function listDirsOnly(root: string, rel: string): Promise<Entry[]> {
  const entries: Entry[] = [];
  for (const dirent of await fsp.readdir(path.join(root, rel), { withFileTypes: true })) {
    if (!dirent.isDirectory()) continue;
    const childRel = path.join(rel, dirent.name);
    const stat = await fsp.stat(path.join(root, childRel));
    entries.push({ rel: childRel, kind: 'dir', size: 0, mode: stat.mode & 0o7777 });
    entries.push(...(await listDirsOnly(root, childRel)));
  }
  return entries;
}

/** base/<oid>, or pg_tblspc/<oid>/PG_<version>/<oid> for an in-place tablespace. */
function isDatabaseDir(rel: string): boolean {
  const parts = rel.split(path.sep);
  if (!/^\d+$/.test(parts.at(-1) ?? '')) return false;
  return (
    (parts.length === 2 && parts[0] === 'base') ||
    (parts.length === 4 && parts[0] === 'pg_tblspc' && parts[2]!.startsWith('PG_'))
  );
}

/** A temporary relation's file, or an unlogged relation's fork other than its init fork. */
export function skippedRelationFile(name: string, present: Set<string>): boolean {
  if (/^t\d+_\d+(_(fsm|vm|init))?(\.\d+)?$/.test(name)) return true;
  const relation = /^(\d+)(_(fsm|vm|init))?(\.\d+)?$/.exec(name);
  if (!relation || relation[3] === 'init') return false;
  return present.has(`${relation[1]}_init`);
}

/**
 * Tablespaces elsewhere than in the data directory (links in pg_tblspc) would have the copy share
 * the parent's files: refused, naming them. In-place tablespaces are copied as any directory.
 */
function refuseTablespaces(source: string, spcmapfile?: string): void {
  const dir = path.join(source, 'pg_tblspc');
  let links: string[] = [];
  try {
    links = fs
      .readdirSync(dir, { withFileTypes: true })
      .filter((d) => d.isSymbolicLink())
      .map((d) => `pg_tblspc/${d.name} -> ${fs.readlinkSync(path.join(dir, d.name))}`);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const mapped = spcmapfile?.trim() ? [spcmapfile.trim()] : [];
  if (links.length === 0 && mapped.length === 0) return;
  throw new Error(
    `instance branches can't copy tablespaces outside the data directory (${[...links, ...mapped].join(', ')}): move their tables to pg_default, or use the database provider`,
  );
}

/** A stopped copy is only consistent if nothing writes to it meanwhile. */
function refuseRunning(source: string): void {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(path.join(source, 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return;
  }
  if (Number.isInteger(pid) && pid > 0 && runsOn(pid, source)) {
    throw new Error(
      `a PostgreSQL server (pid ${pid}) runs on ${source}: a running source is copied under the backup API (pass running), or stop it first`,
    );
  }
}
