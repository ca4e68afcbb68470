// The local physical standby of a source, in `<data_dir>/source`: a replication slot on the source
// first (so no WAL the standby needs is recycled), a base backup into a scratch directory renamed
// into place only once complete, then a postmaster of the source's major version in standby mode
// that streams from the slot by itself, reachable only by pgbranch on a private socket directory.
// A later start reuses the standby after checking it still follows the same cluster. While it
// runs, its status says when it can no longer follow the source (another cluster at the URL, a
// timeline it can't take, WAL or a slot gone), and a resync rebuilds it beside the old one.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import type { Logger } from 'pino';
import { errors, PgError } from '../errors.js';
import {
  alive,
  serverOwner,
  startPostmaster,
  stopLeftover,
  type OsUser,
  type Postmaster,
} from '../branch/instance/postmaster.js';
import { CannotStart } from '../preflight.js';
import { pgClientConfig, type Endpoint } from '../upstream/endpoint.js';
import { receiveBaseBackup, type BackupProgress } from './base-backup.js';
import type { MakingStep } from './making.js';
import { findBinaries, type SourceBinaries } from './binaries.js';
import { formatLsn, parseLsn, type Lsn } from './lsn.js';
import { checkSourceVersion, explainConnectError, majorOf } from './refusals.js';
import { ReplicationConnection, type SystemIdentity } from './replication-connection.js';
import { archiveCommand, prepareArchive } from './wal-archive.js';
import {
  describeSource,
  parseSourceUrl,
  passfileLine,
  primaryConninfo,
  type SourceTarget,
} from './source-url.js';

/** The port in the standby's socket name: its socket directory is its own. */
const STANDBY_PORT = 5432;
const RECORD_FILE = 'standby.json';
const OWNER_FILE = 'pgbranch.pid';
/** The base backup's scratch directory: renamed to STANDBY_DIR once complete. */
const PARTIAL_DIR = '.standby-partial';
const STANDBY_DIR = 'standby';
/** The standby a resync replaces, renamed aside while the new one is moved into place. */
const OLD_DIR = '.standby-old';
/**
 * Settings a hot standby must have at least as high as its primary's, or it refuses to start
 * (PostgreSQL checks them against the primary's WAL).
 */
const AT_LEAST_PRIMARY = [
  'max_connections',
  'max_worker_processes',
  'max_wal_senders',
  'max_prepared_transactions',
  'max_locks_per_transaction',
];
/** A standby that was just made waits for the WAL of its backup period before it is consistent. */
const FIRST_START_TIMEOUT_MS = 30 * 60_000;
const START_TIMEOUT_MS = 5 * 60_000;

export interface StandbyOptions {
  /** source.url */
  url: string;
  /** source.bin_dir */
  binDir?: string | undefined;
  /** pgbranch's data directory; the standby lives in `<dataDir>/source`. */
  dataDir: string;
  /** source.max_rate: the base backup's rate limit in kB/s; 0 or undefined for none. */
  maxRateKbps?: number;
  log: Logger;
  /** The base backup's progress, about once a second (the log prints it too). */
  onProgress?: (progress: BackupProgress) => void;
  /** Each step of the start as it begins (the base backup's progress comes by onProgress). */
  onStep?: (step: MakingStep) => void;
  /** Stops a base backup under way (Ctrl-C): nothing of it is kept, the slot is dropped. */
  signal?: AbortSignal;
  /** Archive every WAL segment received there (archive_mode = always): the source's history. */
  archiveDir?: string | undefined;
}

/** What the standby's health reporting shows. */
export interface StandbyStatus {
  source: string;
  /** The source's server_version as it last reported it. */
  version: string;
  systemId: string;
  /** Streaming from the source now (pg_stat_wal_receiver). */
  connected: boolean;
  receiveLsn: string | null;
  replayLsn: string | null;
  /** The source's current position; null when it can't be reached. */
  sourceLsn: string | null;
  /** Source position less replayed position; null when the source can't be reached. */
  lagBytes: number | null;
  /**
   * 0 when the standby has replayed the source's position; else the age of the newest transaction
   * replayed; with the source unreachable, the time since the standby last heard from it.
   */
  lagSeconds: number | null;
  /**
   * Why the standby can't follow the source any more (another cluster at source.url, a timeline
   * it can't take, WAL or its slot gone there), with what to run; null when nothing is wrong.
   */
  problem: string | null;
}

export interface ResyncOptions {
  /** The new base backup's progress, about once a second (the log prints it too). */
  onProgress?: (progress: BackupProgress) => void;
  /**
   * Runs the swap (old postmaster stopped, directories renamed, new one started): the caller
   * refuses the standby's clients meanwhile and replaces what followed the old one.
   */
  swap?: <T>(work: () => Promise<T>) => Promise<T>;
}

export interface Standby {
  /** The private socket pgbranch reaches it on (trust, for pgbranch's OS user only). */
  endpoint: { socketDir: string; port: number };
  pgDataDir: string;
  /** The source's bootstrap superuser: pgbranch's own sessions on the standby log in as it. */
  superuser: string;
  /** The database of source.url, where pgbranch's own sessions go. */
  database: string;
  binaries: SourceBinaries;
  /** `replicator@db.prod:5432` */
  source: string;
  version: string;
  systemId: string;
  /** True when this start made it (a base backup ran). */
  created: boolean;
  /**
   * The source's WAL position now (IDENTIFY_SYSTEM): throws when the source can't be reached, or
   * is another cluster than the one the standby follows.
   */
  currentLsn(): Promise<Lsn>;
  status(): Promise<StandbyStatus>;
  /**
   * Rebuilds the standby from the source as it is now: a new base backup beside the old standby
   * (which serves meanwhile, its streaming paused so the slot can be made again), then the swap.
   * On failure the old standby is kept, or put back.
   */
  resync(options?: ResyncOptions): Promise<void>;
  stop(): Promise<void>;
}

interface StandbyRecord {
  source: string;
  systemId: string;
  slot: string;
  version: string;
  createdAt: string;
  backup: { startLsn: string; endLsn: string; bytes: number; ms: number };
}

export async function startStandby(options: StandbyOptions): Promise<Standby> {
  const { log } = options;
  let target: SourceTarget;
  try {
    target = parseSourceUrl(options.url);
  } catch (error) {
    throw new CannotStart((error as Error).message, { cause: error });
  }
  const source = describeSource(target);
  const root = path.join(path.resolve(options.dataDir), 'source');
  // A client certificate for a source that asks for one: named in source.url, or in pgbranch's
  // directory for the source (used when it exists, by pgbranch and by the standby alike).
  target.sslcert ??= path.join(root, 'client.crt');
  target.sslkey ??= path.join(root, 'client.key');
  const standbyDir = path.join(root, STANDBY_DIR);
  const pgDataDir = path.join(standbyDir, 'pg');
  fs.mkdirSync(root, { recursive: true, mode: 0o755 });
  claim(root);
  const owner = serverOwner();
  putBackAfterSwap(root, log);
  if (fs.existsSync(path.join(pgDataDir, 'postmaster.pid'))) await stopLeftover(pgDataDir, log);
  const partial = path.join(root, PARTIAL_DIR);
  if (fs.existsSync(partial)) {
    log.warn(
      { event: 'source_backup_leftover_removed', dir: partial },
      `removing the base backup of the source left unfinished by a pgbranch that was stopped (${partial}); it starts again`,
    );
    fs.rmSync(partial, { recursive: true, force: true });
  }
  const exists = fs.existsSync(path.join(pgDataDir, 'PG_VERSION'));
  const slot = slotName(root);

  let connection: ReplicationConnection | undefined;
  try {
    connection = await ReplicationConnection.open(target, {
      onNotice: (message) => log.debug({ event: 'source_notice', notice: message }, message),
    });
  } catch (error) {
    const explained = explainConnectError(error, target);
    // An existing standby goes on serving what it has while the source is away; it reconnects.
    const unreachable = explained instanceof PgError && explained.code === '08001';
    if (!exists || !unreachable) throw explained;
    log.warn(
      { event: 'source_unreachable', source, err: explained },
      `${explained.message}: starting the standby with what it has; it reconnects by itself`,
    );
  }
  try {
    const version = connection?.serverVersion ?? readRecord(root)?.version ?? 'unknown';
    if (connection) checkSourceVersion(target, version);
    const major = connection
      ? majorOf(version)
      : Number(readText(path.join(pgDataDir, 'PG_VERSION')));
    const identity = await connection?.identifySystem();
    options.onStep?.('binaries');
    const binaries = await findBinaries({
      major,
      binDir: options.binDir,
      cacheDir: path.join(path.resolve(options.dataDir), 'binaries'),
      log,
    });
    log.info(
      {
        event: 'source_binaries',
        postgres: binaries.postgres,
        version: binaries.version,
        origin: binaries.origin,
      },
      `the standby runs PostgreSQL ${binaries.version} from ${binaries.origin}`,
    );
    let created = false;
    let systemId: string;
    if (exists) {
      systemId = controlSystemId(pgDataDir);
      if (identity && identity.systemId !== systemId) {
        throw errors.sourceChanged(source, standbyDir, systemId, identity.systemId);
      }
      if (connection && !(await connection.readSlot(slot))) {
        await connection.createPhysicalSlot(slot);
        log.warn(
          { event: 'source_slot_recreated', slot },
          `the replication slot ${slot} was gone from the source and was made again: WAL the source removed meanwhile is lost to the standby, which then can't catch up (make a new standby by removing ${standbyDir})`,
        );
      }
      log.info(
        { event: 'source_standby_reused', dir: pgDataDir, systemId },
        `reusing the standby of ${source} in ${pgDataDir}`,
      );
    } else {
      systemId = identity!.systemId;
      const record = await makeStandby({
        connection: connection!,
        target,
        source,
        slot,
        version,
        systemId,
        partial,
        standbyDir,
        owner,
        maxRateKbps: options.maxRateKbps || undefined,
        signal: options.signal,
        log,
        onProgress: options.onProgress,
      });
      fs.renameSync(partial, standbyDir);
      fsyncDir(root);
      writeRecord(root, record);
      created = true;
    }
    // Without the source its settings can't be read: the configuration of the last start stays.
    const settings = connection && (await sourceSettings(connection));
    connection?.close();
    connection = undefined;
    options.onStep?.('starting');
    const running = await runStandby({
      target,
      root,
      binaries,
      owner,
      log,
      created,
      settings,
      archiveDir: options.archiveDir,
    });
    log.info(
      {
        event: 'source_standby_running',
        source,
        pid: running.postmaster.pid,
        dir: pgDataDir,
        systemId,
      },
      `the standby of ${source} runs (pid ${running.postmaster.pid}) and streams from slot ${slot}`,
    );
    return standbyHandle({
      target,
      state: { ...running, binaries, version, systemId, created },
      root,
      options,
    });
  } finally {
    connection?.close();
  }
}

/**
 * A pgbranch stopped during a resync's swap, between its two renames: the old standby is put
 * back (the new one is a partial backup to the next start, which removes it).
 */
function putBackAfterSwap(root: string, log: Logger): void {
  const old = path.join(root, OLD_DIR);
  if (!fs.existsSync(old)) return;
  const standbyDir = path.join(root, STANDBY_DIR);
  if (fs.existsSync(standbyDir)) {
    fs.rmSync(old, { recursive: true, force: true });
    return;
  }
  log.warn(
    { event: 'source_resync_undone', dir: standbyDir },
    `a resync of the standby was stopped during its swap: the old standby is put back in ${standbyDir}`,
  );
  fs.renameSync(old, standbyDir);
}

interface RunStandbyOptions {
  target: SourceTarget;
  root: string;
  binaries: SourceBinaries;
  owner: OsUser | undefined;
  log: Logger;
  /** Just made: its first start replays the WAL of the backup period, which may take long. */
  created: boolean;
  /** The source's settings the standby must match; undefined keeps the last configuration. */
  settings: Record<string, string> | undefined;
  /** Where it archives every WAL segment it receives (the source's history); none without. */
  archiveDir: string | undefined;
}

interface RunningStandby {
  postmaster: Postmaster;
  superuser: string;
  database: string;
}

/** Configures the standby in `<root>/standby` to stream from the source, and starts it. */
async function runStandby(options: RunStandbyOptions): Promise<RunningStandby> {
  const { target, root, owner, log } = options;
  const pgDataDir = path.join(root, STANDBY_DIR, 'pg');
  if (options.settings) writeConfig(pgDataDir, options.settings, owner, options.archiveDir);
  const passfile = path.join(root, 'passfile');
  writeOwned(passfile, passfileLine(target), owner);
  writeStreaming(pgDataDir, streamingConninfo(target, root), slotName(root), owner);
  writeOwned(path.join(pgDataDir, 'standby.signal'), '', owner);
  const postmaster = await startPostmaster({
    binary: options.binaries.postgres,
    pgDataDir,
    socketDir: path.join(root, 'run'),
    port: STANDBY_PORT,
    owner,
    log,
    startTimeoutMs: options.created ? FIRST_START_TIMEOUT_MS : START_TIMEOUT_MS,
  });
  try {
    return { postmaster, ...(await findSuperuser(postmaster.endpoint, target)) };
  } catch (error) {
    await postmaster.stop();
    throw error;
  }
}

/** How the standby reaches the source: libpq keywords, the password in the passfile. */
function streamingConninfo(target: SourceTarget, root: string): string {
  return primaryConninfo(
    target,
    { passfile: path.join(root, 'passfile'), sslcert: target.sslcert!, sslkey: target.sslkey! },
    'pgbranch_standby',
  );
}

/** postgresql.auto.conf: where the standby streams from; conninfo null stops its streaming. */
function writeStreaming(
  pgDataDir: string,
  conninfo: string | null,
  slot: string,
  owner: OsUser | undefined,
): void {
  writeOwned(
    path.join(pgDataDir, 'postgresql.auto.conf'),
    '# Written by pgbranch at each start: how the standby reaches the source.\n' +
      (conninfo === null
        ? '# Streaming paused while a new standby is made (pgbranch source resync).\n'
        : `primary_conninfo = ${confValue(conninfo)}\n`) +
      `primary_slot_name = ${confValue(slot)}\n`,
    owner,
  );
}

interface MakeStandbyOptions {
  connection: ReplicationConnection;
  target: SourceTarget;
  source: string;
  slot: string;
  version: string;
  systemId: string;
  partial: string;
  standbyDir: string;
  owner: OsUser | undefined;
  maxRateKbps: number | undefined;
  signal: AbortSignal | undefined;
  log: Logger;
  onProgress: ((progress: BackupProgress) => void) | undefined;
}

/**
 * The slot, then the base backup into the scratch directory (tablespaces beside the data
 * directory), for the caller to rename into place once every byte is on disk.
 */
async function makeStandby(options: MakeStandbyOptions): Promise<StandbyRecord> {
  const { connection, slot, log, partial, standbyDir, owner } = options;
  const existing = await connection.readSlot(slot);
  // A slot of an earlier, unfinished attempt holds WAL from back then: made afresh instead.
  if (existing) await connection.dropSlot(slot);
  await connection.createPhysicalSlot(slot);
  log.info(
    { event: 'source_backup_started', source: options.source, slot },
    `making a standby of ${options.source} (PostgreSQL ${options.version}): replication slot ${slot} made, base backup starting`,
  );
  fs.mkdirSync(partial, { mode: 0o755 });
  const { signal } = options;
  signal?.throwIfAborted();
  const abort = () => connection.close();
  signal?.addEventListener('abort', abort, { once: true });
  let last: BackupProgress | undefined;
  const backup = await receiveBaseBackup({
    connection,
    target: path.join(partial, 'pg'),
    // Links in pg_tblspc point where the tablespaces will be once the standby is in place.
    tablespaceDir: (oid) => path.join(partial, 'tablespaces', oid),
    tablespaceLink: (oid) => path.join(standbyDir, 'tablespaces', oid),
    owner,
    label: `pgbranch standby ${os.hostname()}`,
    maxRateKbps: options.maxRateKbps,
    onProgress: (progress) => {
      last = progress;
      log.info({ event: 'source_backup_progress', ...progress }, progressLine(progress));
      options.onProgress?.(progress);
    },
  })
    .catch(async (error: unknown) => {
      // The slot would hold WAL on the source for a standby that does not exist: dropped, on a
      // connection of its own (this one may be what failed). A pgbranch killed here can't, and
      // the next start drops and makes it again.
      await dropSlotAfterFailure(options.target, slot, log);
      fs.rmSync(partial, { recursive: true, force: true });
      if (signal?.aborted) {
        throw new CannotStart(
          `stopped during the base backup of ${options.source}${last ? ` (${progressLine(last).replace(/^base backup: /, '')})` : ''}: nothing of it was kept, and the next start begins it again`,
          { cause: error },
        );
      }
      throw error;
    })
    .finally(() => signal?.removeEventListener('abort', abort));
  log.info(
    {
      event: 'source_backup_done',
      bytes: backup.bytes,
      ms: backup.ms,
      startLsn: formatLsn(backup.start.lsn),
      endLsn: formatLsn(backup.end.lsn),
    },
    `base backup of ${options.source} done: ${megabytes(backup.bytes)} in ${(backup.ms / 1000).toFixed(1)} s (${megabytes((backup.bytes * 1000) / Math.max(1, backup.ms))}/s), WAL ${formatLsn(backup.start.lsn)} to ${formatLsn(backup.end.lsn)}`,
  );
  return {
    source: options.source,
    systemId: options.systemId,
    slot,
    version: options.version,
    createdAt: new Date().toISOString(),
    backup: {
      startLsn: formatLsn(backup.start.lsn),
      endLsn: formatLsn(backup.end.lsn),
      bytes: backup.bytes,
      ms: backup.ms,
    },
  };
}

/** What a resync replaces: the postmaster and what the source was when the standby was made. */
interface StandbyState extends RunningStandby {
  binaries: SourceBinaries;
  version: string;
  systemId: string;
  created: boolean;
}

interface HandleParts {
  target: SourceTarget;
  state: StandbyState;
  root: string;
  options: StandbyOptions;
}

function standbyHandle(parts: HandleParts): Standby {
  const { target, root, options } = parts;
  const { log } = options;
  let state = parts.state;
  const source = describeSource(target);
  const pgDataDir = path.join(root, STANDBY_DIR, 'pg');
  /** One replication connection kept for IDENTIFY_SYSTEM, opened again after a failure. */
  let link: Promise<ReplicationConnection> | undefined;
  const identify = async (): Promise<SystemIdentity> => {
    const opening = (link ??= ReplicationConnection.open(target, { timeoutMs: 5_000 }));
    try {
      const connection = await opening;
      if (connection.closed) throw new Error(`the connection to ${source} was lost`);
      return await connection.identifySystem();
    } catch (error) {
      if (link === opening) link = undefined;
      void opening.then(
        (connection) => connection.close(),
        () => undefined,
      );
      throw explainConnectError(error, target);
    }
  };
  /** A session on the standby as pgbranch's own (its superuser, on the private socket). */
  const session = async (): Promise<pg.Client> => {
    const client = new pg.Client({
      ...pgClientConfig(endpoint),
      ssl: false,
      user: state.superuser,
      database: state.database,
      application_name: 'pgbranch',
    });
    client.on('error', () => undefined);
    await client.connect();
    return client;
  };
  /** Stops or starts again the standby's walreceiver (a reload reads primary_conninfo). */
  const streaming = async (on: boolean) => {
    const owner = serverOwner();
    writeStreaming(pgDataDir, on ? streamingConninfo(target, root) : null, slotName(root), owner);
    const client = await session();
    try {
      await client.query('SELECT pg_reload_conf()');
      if (on) return;
      // A walreceiver that does not stream holds no slot on the source (one that waits for a
      // timeline it can't have may stay, and does no harm).
      const deadline = Date.now() + 30_000;
      const streams = "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'";
      while ((await client.query(streams)).rowCount !== 0) {
        if (Date.now() > deadline) {
          throw new Error('the old standby still streamed 30 s after it was told to stop');
        }
        await sleep(50);
      }
    } finally {
      await client.end().catch(() => undefined);
    }
  };
  let resyncing: Promise<void> | undefined;
  /** Stops a resync's base backup when pgbranch stops. */
  const stopping = new AbortController();
  /** Postmasters pgbranch stopped itself (a resync's swap, pgbranch stopping): not restarted. */
  const stopped = new WeakSet<Postmaster>();
  const stopPostmaster = async (postmaster: Postmaster) => {
    stopped.add(postmaster);
    await postmaster.stop('fast');
  };
  /**
   * A standby postmaster that ends by itself (killed, out of memory, a crash it did not recover
   * from) is started again, as the embedded server is: `app` and new branches answer again once
   * it is back; while it is down they fail (08006) and the log says why.
   */
  const supervise = (postmaster: Postmaster) => {
    void postmaster.exited.then(async (code) => {
      if (stopped.has(postmaster) || stopping.signal.aborted || state.postmaster !== postmaster) {
        return;
      }
      log.warn(
        { event: 'source_standby_exited', code, lastLines: postmaster.recentLog().slice(-5) },
        `the standby's postmaster exited by itself (${code === null ? 'killed by a signal' : `code ${code}`}); starting it again`,
      );
      for (let attempt = 1; !stopping.signal.aborted; attempt++) {
        try {
          const running = await runStandby({
            target,
            root,
            binaries: state.binaries,
            owner: serverOwner(),
            log,
            created: false,
            settings: undefined,
            archiveDir: options.archiveDir,
          });
          if (stopping.signal.aborted) {
            await stopPostmaster(running.postmaster);
            return;
          }
          state = { ...state, ...running };
          supervise(running.postmaster);
          log.info(
            { event: 'source_standby_restarted', pid: running.postmaster.pid, attempt },
            `the standby runs again (pid ${running.postmaster.pid})`,
          );
          return;
        } catch (error) {
          const waitMs = Math.min(30_000, 1000 * 2 ** (attempt - 1));
          log.error(
            { event: 'source_standby_restart_failed', attempt, err: error },
            `the standby did not start again (${(error as Error).message}); next try in ${waitMs / 1000} s`,
          );
          await sleep(waitMs);
        }
      }
    });
  };
  supervise(state.postmaster);
  const resync = async (resyncOptions: ResyncOptions) => {
    let connection: ReplicationConnection;
    try {
      connection = await ReplicationConnection.open(target, {
        onNotice: (message) => log.debug({ event: 'source_notice', notice: message }, message),
      });
    } catch (error) {
      throw explainConnectError(error, target);
    }
    const owner = serverOwner();
    const slot = slotName(root);
    const partial = path.join(root, PARTIAL_DIR);
    const standbyDir = path.join(root, STANDBY_DIR);
    try {
      const version = connection.serverVersion;
      checkSourceVersion(target, version);
      const major = majorOf(version);
      if (major !== majorOf(state.binaries.version)) {
        throw new PgError(
          '55000',
          `the source ${source} now runs PostgreSQL ${major}, and the standby and its branches ${majorOf(state.binaries.version)}: a resync can't change the major version`,
          undefined,
          `Stop pgbranch, remove ${standbyDir}, and start it again: it makes a standby of PostgreSQL ${major}.`,
        );
      }
      const identity = await connection.identifySystem();
      log.info(
        { event: 'source_resync_started', source, systemId: identity.systemId },
        `resync: making a new standby of ${source} (system identifier ${identity.systemId}) beside the old one, which serves meanwhile`,
      );
      let record: StandbyRecord;
      try {
        // The old standby holds the slot while it streams: paused, so that it can be made anew.
        await streaming(false);
        await dropSlotWhenReleased(connection, slot);
        record = await makeStandby({
          connection,
          target,
          source,
          slot,
          version,
          systemId: identity.systemId,
          partial,
          standbyDir,
          owner,
          maxRateKbps: options.maxRateKbps || undefined,
          signal: stopping.signal,
          log,
          onProgress: resyncOptions.onProgress,
        });
      } catch (error) {
        await streaming(true).catch(() => undefined);
        throw error;
      }
      const settings = await sourceSettings(connection);
      connection.close();
      const swap = resyncOptions.swap ?? ((work) => work());
      await swap(async () => {
        const old = path.join(root, OLD_DIR);
        await stopPostmaster(state.postmaster);
        fs.renameSync(standbyDir, old);
        fs.renameSync(partial, standbyDir);
        fsyncDir(root);
        const binaries = state.binaries;
        let running: RunningStandby;
        try {
          running = await runStandby({
            target,
            root,
            binaries,
            owner,
            log,
            created: true,
            settings,
            archiveDir: options.archiveDir,
          });
        } catch (error) {
          fs.renameSync(standbyDir, partial);
          fs.renameSync(old, standbyDir);
          fs.rmSync(partial, { recursive: true, force: true });
          state = {
            ...state,
            ...(await runStandby({
              target,
              root,
              binaries,
              owner,
              log,
              created: false,
              settings: undefined,
              archiveDir: options.archiveDir,
            })),
          };
          supervise(state.postmaster);
          log.error(
            { event: 'source_resync_failed', err: error },
            `resync: the new standby did not start, the old one is back: ${(error as Error).message}`,
          );
          throw error;
        }
        if (running.superuser !== state.superuser) {
          log.error(
            { event: 'source_superuser_changed', was: state.superuser, now: running.superuser },
            `resync: the source's bootstrap superuser is now ${running.superuser}, and pgbranch's sessions on the standby log in as ${state.superuser} until it is restarted: restart pgbranch`,
          );
        }
        writeRecord(root, record);
        state = { ...running, binaries, version, systemId: identity.systemId, created: true };
        supervise(state.postmaster);
        await fs.promises.rm(old, { recursive: true, force: true });
      });
      log.info(
        {
          event: 'source_resync_done',
          source,
          pid: state.postmaster.pid,
          systemId: state.systemId,
        },
        `resync: the new standby of ${source} runs (pid ${state.postmaster.pid}) and streams from slot ${slot}`,
      );
    } finally {
      connection.close();
    }
  };
  const endpoint = state.postmaster.endpoint;
  return {
    endpoint,
    pgDataDir,
    get superuser() {
      return state.superuser;
    },
    get database() {
      return state.database;
    },
    get binaries() {
      return state.binaries;
    },
    source,
    get version() {
      return state.version;
    },
    get systemId() {
      return state.systemId;
    },
    get created() {
      return state.created;
    },
    currentLsn: async () => {
      // The old standby does not stream while a resync makes the new one: nothing to wait for.
      if (resyncing) {
        throw new PgError(
          '55000',
          `the standby of ${source} is being made again (pgbranch source resync), its streaming paused meanwhile`,
        );
      }
      const identity = await identify();
      // Another cluster's position means nothing to this standby: a new branch waits for none.
      if (identity.systemId !== state.systemId) {
        throw new PgError('55000', anotherCluster(source, state.systemId));
      }
      return identity.xlogpos;
    },
    status: async () => {
      const identity = await identify().catch(() => null);
      const sourceLsn = identity?.xlogpos ?? null;
      const client = await session();
      try {
        const { rows } = await client.query<{
          receive: string | null;
          replay: string | null;
          replay_age: number | null;
          status: string | null;
          heard_age: number | null;
        }>(
          `SELECT pg_last_wal_receive_lsn()::text AS receive, pg_last_wal_replay_lsn()::text AS replay,
                  extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_age,
                  r.status, extract(epoch FROM now() - r.latest_end_time)::float8 AS heard_age
             FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true`,
        );
        const row = rows[0]!;
        const replay = row.replay === null ? null : parseLsn(row.replay);
        const lagBytes =
          sourceLsn === null || replay === null
            ? null
            : Number(sourceLsn > replay ? sourceLsn - replay : 0n);
        const lagSeconds =
          lagBytes === 0
            ? 0
            : lagBytes !== null
              ? (row.replay_age ?? null)
              : (row.heard_age ?? null);
        const connected = row.status === 'streaming';
        const problem =
          identity && identity.systemId !== state.systemId
            ? anotherCluster(source, state.systemId)
            : connected
              ? null
              : streamingProblem(state.postmaster.recentLog(), source, state.systemId);
        return {
          source,
          version: state.version,
          systemId: state.systemId,
          connected,
          receiveLsn: row.receive,
          replayLsn: row.replay,
          sourceLsn: sourceLsn === null ? null : formatLsn(sourceLsn),
          lagBytes,
          lagSeconds,
          problem:
            problem &&
            `${problem}. Run pgbranch source resync to rebuild the standby from it (branches keep running)`,
        };
      } finally {
        await client.end().catch(() => undefined);
      }
    },
    resync: (resyncOptions = {}) => {
      if (resyncing) {
        return Promise.reject(errors.resyncRunning(source));
      }
      resyncing = resync(resyncOptions).finally(() => (resyncing = undefined));
      return resyncing;
    },
    stop: async () => {
      stopping.abort();
      await resyncing?.catch(() => undefined);
      void link?.then(
        (connection) => connection.close(),
        () => undefined,
      );
      link = undefined;
      await stopPostmaster(state.postmaster);
      fs.rmSync(path.join(root, OWNER_FILE), { force: true });
    },
  };
}

/**
 * What the standby's own log says of why it does not stream, when it is something it can't get
 * over by itself; null while its last word on streaming is a success or a plain failure to
 * connect (the source is down: it reconnects by itself).
 */
export function streamingProblem(
  serverLog: readonly string[],
  source: string,
  systemId: string,
): string | null {
  for (let i = serverLog.length - 1; i >= 0; i--) {
    const line = serverLog[i]!;
    if (/started streaming WAL|could not connect to the primary server/.test(line)) return null;
    for (const [pattern, problem] of STREAMING_PROBLEMS) {
      if (pattern.test(line)) return problem(source, systemId);
    }
  }
  return null;
}

/** The same words whether IDENTIFY_SYSTEM or the standby's log found it: logged once. */
function anotherCluster(source: string, systemId: string): string {
  return `the source ${source} is now another cluster (not the one of system identifier ${systemId} the standby follows): it was re-initialised, or source.url names another server`;
}

const STREAMING_PROBLEMS: [RegExp, (source: string, systemId: string) => string][] = [
  [/database system identifier differs between the primary and standby/, anotherCluster],
  [
    /is not in this server's history|forked off current database system timeline|is not a child of database system timeline|of the primary is behind recovery timeline/,
    (source) =>
      `the standby can't follow the timeline of the source ${source}: it was failed over to a server whose history does not hold the standby's position`,
  ],
  [
    /is ahead of the WAL flush position of this server/,
    (source) =>
      `the source ${source} is behind what the standby replayed: it was restored from an older backup, or lost WAL`,
  ],
  [
    /requested WAL segment \S+ has already been removed/,
    (source) => `the source ${source} has removed WAL the standby still needs`,
  ],
  [
    /replication slot "[^"]+" does not exist/,
    (source) => `the standby's replication slot is gone from the source ${source}`,
  ],
];

/**
 * Drops the slot once the walsender of the standby that streamed from it has let go of it
 * (55006 meanwhile); a source without it has nothing to drop.
 */
async function dropSlotWhenReleased(connection: ReplicationConnection, slot: string) {
  const deadline = Date.now() + 30_000;
  while (await connection.readSlot(slot)) {
    try {
      await connection.dropSlot(slot);
      return;
    } catch (error) {
      if ((error as { code?: string }).code !== '55006' || Date.now() > deadline) throw error;
      await sleep(100);
    }
  }
}

async function dropSlotAfterFailure(target: SourceTarget, slot: string, log: Logger) {
  try {
    const connection = await ReplicationConnection.open(target, { timeoutMs: 5_000 });
    try {
      await connection.dropSlot(slot);
    } finally {
      connection.close();
    }
  } catch (error) {
    log.warn(
      { event: 'source_slot_left', slot, err: error },
      `the base backup failed and the replication slot ${slot} could not be dropped on the source; it holds WAL there until pgbranch starts again, or until it is dropped: SELECT pg_drop_replication_slot('${slot}')`,
    );
  }
}

/**
 * The slot's name: pgbranch, this host and this data directory, so that it is the same at every
 * start and two pgbranches following one source never share one.
 */
export function slotName(root: string, host = os.hostname()): string {
  const hash = createHash('sha256').update(root).digest('hex').slice(0, 8);
  const name = host
    .toLowerCase()
    .replace(/[^a-z0-9_]+/g, '_')
    .replace(/^_+|_+$/g, '');
  return `pgbranch_${name.slice(0, 40)}_${hash}`;
}

/** The source's settings the standby needs: its own must be at least as high. */
async function sourceSettings(connection: ReplicationConnection): Promise<Record<string, string>> {
  const settings: Record<string, string> = {};
  for (const name of AT_LEAST_PRIMARY) settings[name] = await connection.show(name);
  return settings;
}

/**
 * The standby's own configuration, in place of the source's (whose paths, libraries and
 * certificates are production's): hot standby, the settings that must match the source, and a
 * pg_hba.conf that lets in only local connections on the private socket directory.
 */
function writeConfig(
  pgDataDir: string,
  settings: Record<string, string>,
  owner: OsUser | undefined,
  archiveDir: string | undefined,
): void {
  if (archiveDir) prepareArchive(archiveDir, owner);
  const lines = [
    '# Written by pgbranch at each start: the standby of a source. The source configuration',
    '# (its paths, libraries and certificates are its own) is not used here.',
    'hot_standby = on',
    // Feedback would hold back VACUUM on the source for the standby's queries: never.
    'hot_standby_feedback = off',
    ...(archiveDir
      ? ['archive_mode = always', `archive_command = ${confValue(archiveCommand(archiveDir))}`]
      : ['archive_mode = off']),
    ...Object.entries(settings).map(([name, value]) => `${name} = ${confValue(value)}`),
  ];
  writeOwned(path.join(pgDataDir, 'postgresql.conf'), `${lines.join('\n')}\n`, owner);
  writeOwned(
    path.join(pgDataDir, 'pg_hba.conf'),
    '# Written by pgbranch: only pgbranch reaches the standby, on its private socket directory;\n' +
      '# replication for the warm spares of branches, which stream from it.\n' +
      'local all all trust\nlocal replication all trust\n',
    owner,
  );
  writeOwned(path.join(pgDataDir, 'pg_ident.conf'), '', owner);
}

/** The bootstrap superuser (oid 10), asked on the standby as the replication role (trust). */
async function findSuperuser(
  endpoint: Endpoint,
  target: SourceTarget,
): Promise<{ superuser: string; database: string }> {
  let lastError: unknown;
  for (const database of [...new Set([target.database, 'postgres', 'template1'])]) {
    const client = new pg.Client({
      ...pgClientConfig(endpoint),
      ssl: false,
      user: target.user,
      database,
    });
    try {
      await client.connect();
      const { rows } = await client.query<{ name: string }>(
        'SELECT rolname AS name FROM pg_roles WHERE oid = 10',
      );
      return { superuser: rows[0]!.name, database };
    } catch (error) {
      lastError = error;
    } finally {
      await client.end().catch(() => undefined);
    }
  }
  throw new Error(`could not open a session on the standby: ${(lastError as Error).message}`, {
    cause: lastError,
  });
}

/** The system identifier in global/pg_control (its first field, a uint64 in the machine's order). */
function controlSystemId(pgDataDir: string): string {
  const control = fs.readFileSync(path.join(pgDataDir, 'global', 'pg_control'));
  return (
    os.endianness() === 'LE' ? control.readBigUInt64LE(0) : control.readBigUInt64BE(0)
  ).toString();
}

/**
 * One pgbranch per standby: a second on the same data directory is refused while the first runs;
 * one that was killed leaves its pid behind, which the next start takes over.
 */
function claim(root: string): void {
  const file = path.join(root, OWNER_FILE);
  const pid = Number(readText(file));
  if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
    throw new CannotStart(
      `another pgbranch (pid ${pid}) runs the standby in ${root}: stop it first, or use another --data-dir`,
    );
  }
  fs.writeFileSync(file, `${process.pid}\n`);
}

function readRecord(root: string): StandbyRecord | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(root, RECORD_FILE), 'utf8')) as StandbyRecord;
  } catch {
    return undefined;
  }
}

function writeRecord(root: string, record: StandbyRecord): void {
  fs.writeFileSync(path.join(root, RECORD_FILE), `${JSON.stringify(record, null, 2)}\n`);
}

/** A file only its owner (the server's OS user) reads: 0600. */
function writeOwned(file: string, text: string, owner: OsUser | undefined): void {
  fs.writeFileSync(file, text, { mode: 0o600 });
  fs.chmodSync(file, 0o600);
  if (owner) fs.chownSync(file, owner.uid, owner.gid);
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return '';
  }
}

function confValue(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

/** `base backup: 412 MB of 1.0 GB (40%), 96 MB/s, 6 s left` */
export function progressLine(progress: BackupProgress): string {
  const { bytes, totalBytes, rate, secondsLeft } = progress;
  const of =
    totalBytes === null
      ? ''
      : ` of ${megabytes(totalBytes)} (${Math.min(100, Math.floor((bytes * 100) / Math.max(1, totalBytes)))}%)`;
  const left = secondsLeft === null ? '' : `, ${Math.ceil(secondsLeft)} s left`;
  return `base backup: ${megabytes(bytes)}${of}, ${megabytes(rate)}/s${left}`;
}

function megabytes(bytes: number): string {
  return bytes >= 1024 ** 3
    ? `${(bytes / 1024 ** 3).toFixed(1)} GB`
    : `${(bytes / 1024 ** 2).toFixed(bytes < 10 * 1024 ** 2 ? 1 : 0)} MB`;
}
