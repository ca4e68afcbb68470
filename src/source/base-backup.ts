// A base backup of a source, received into a directory: BASE_BACKUP on a replication connection,
// each archive's tar stream written out as it arrives (the data directory into `target`, each
// tablespace into a directory of its own, its link in pg_tblspc pointed there), with progress.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { promisify } from 'node:util';
import type { OsUser } from '../branch/instance/postmaster.js';
import { ArchiveWriter } from './archive-writer.js';
import type {
  BaseBackupResult,
  ReplicationConnection,
  TablespaceInfo,
} from './replication-connection.js';
import { TarParser } from './tar.js';

/** Bytes received but not yet written past which the connection stops reading. */
const BACKLOG_HIGH = 32 * 1024 * 1024;
/** ... and resumes below this. */
const BACKLOG_LOW = 8 * 1024 * 1024;
/** Progress is reported this often at most. */
const PROGRESS_EVERY_MS = 1000;

export interface BackupProgress {
  /** Bytes of the data directory (and tablespaces) received so far. */
  bytes: number;
  /** The source's estimate of the whole; null until it is known. */
  totalBytes: number | null;
  /** Bytes per second since the copy began. */
  rate: number;
  /** At that rate, until the estimate is reached; null when unknown. */
  secondsLeft: number | null;
  elapsedMs: number;
}

export interface ReceiveBackupOptions {
  connection: ReplicationConnection;
  /** Created (0700); the data directory of the backup. */
  target: string;
  /** Where a tablespace's files go (`<oid>` given), created as needed. */
  tablespaceDir: (oid: string) => string;
  /** Where the data directory's link to the tablespace points (tablespaceDir by default). */
  tablespaceLink?: (oid: string) => string;
  owner?: OsUser | undefined;
  label: string;
  maxRateKbps?: number;
  onProgress?: (progress: BackupProgress) => void;
}

export interface ReceivedBackup extends BaseBackupResult {
  bytes: number;
  ms: number;
  /** Of which the COPY: from the end of the source's checkpoint to the last byte written. */
  copyMs: number;
  tablespaces: TablespaceInfo[];
}

/** Runs BASE_BACKUP into `target`; the files are on disk (synced) when it resolves. */
export async function receiveBaseBackup(options: ReceiveBackupOptions): Promise<ReceivedBackup> {
  const { connection, target, owner } = options;
  fs.mkdirSync(target, { mode: 0o700 });
  if (owner) fs.chownSync(target, owner.uid, owner.gid);
  const started = Date.now();
  let copyStarted = started;
  let totalBytes: number | null = null;
  let tablespaces: TablespaceInfo[] = [];
  let bytes = 0;
  let reportedAt = started;
  let archive: { parser: TarParser; writer: ArchiveWriter } | undefined;
  const writers: ArchiveWriter[] = [];

  const report = (force: boolean) => {
    const now = Date.now();
    if (!options.onProgress || (!force && now - reportedAt < PROGRESS_EVERY_MS)) return;
    reportedAt = now;
    const elapsedMs = now - copyStarted;
    const rate = elapsedMs > 0 ? (bytes * 1000) / elapsedMs : 0;
    options.onProgress({
      bytes,
      totalBytes,
      rate,
      secondsLeft:
        totalBytes !== null && rate > 0 ? Math.max(0, (totalBytes - bytes) / rate) : null,
      elapsedMs,
    });
  };
  const endArchive = () => {
    archive?.parser.end();
    archive = undefined;
  };

  const result = await connection
    .baseBackup(
      { label: options.label, maxRateKbps: options.maxRateKbps },
      {
        started: (_start, list) => {
          copyStarted = reportedAt = Date.now();
          tablespaces = list;
          const sizes = list.map((t) => t.bytes);
          totalBytes = sizes.every((size) => size !== null)
            ? sizes.reduce<number>((sum, size) => sum + size!, 0)
            : null;
        },
        archive: (name, location) => {
          endArchive();
          const oid = /^(\d+)\.tar$/.exec(name)?.[1];
          if (name !== 'base.tar' && (oid === undefined || location === null)) {
            throw new Error(
              `BASE_BACKUP sent an archive named ${name}, which pgbranch can't place`,
            );
          }
          const root = oid === undefined ? target : options.tablespaceDir(oid);
          if (oid !== undefined) {
            fs.mkdirSync(root, { recursive: true, mode: 0o700 });
            if (owner) fs.chownSync(root, owner.uid, owner.gid);
          }
          const writer = new ArchiveWriter({
            root,
            owner,
            // The data directory links each tablespace by its oid: to where it now lies here.
            linkTarget: (entry) => {
              const linked = /^pg_tblspc\/(\d+)$/.exec(entry.path)?.[1];
              if (linked === undefined) return entry.linkTarget!;
              return (options.tablespaceLink ?? options.tablespaceDir)(linked);
            },
          });
          writers.push(writer);
          archive = { parser: new TarParser(writer), writer };
        },
        data: (chunk) => {
          if (!archive) throw new Error('BASE_BACKUP sent data before naming its archive');
          archive.parser.push(chunk);
          bytes += chunk.length;
          report(false);
          const { writer } = archive;
          return writer.backlog > BACKLOG_HIGH ? writer.drained(BACKLOG_LOW) : undefined;
        },
        progress: () => report(false),
      },
    )
    .catch(async (error: unknown) => {
      // The file being written when the stream broke is closed; what was written is the caller's
      // to remove.
      await Promise.all(writers.map((writer) => writer.abandon()));
      throw error;
    });
  endArchive();
  for (const writer of writers) await writer.finish();
  const copyMs = Date.now() - copyStarted;
  // One sync of the whole file system (what pg_basebackup does with --sync-method=syncfs): the
  // backup is renamed into place only once every byte of it is durable.
  await syncFileSystem(target);
  report(true);
  return { ...result, bytes, ms: Date.now() - started, copyMs, tablespaces };
}

/** syncfs(2) on the file system holding `dir`, through coreutils' `sync -f`; `sync` elsewhere. */
async function syncFileSystem(dir: string): Promise<void> {
  const run = promisify(execFile);
  try {
    await run('sync', ['-f', dir]);
  } catch {
    await run('sync', []);
  }
}
