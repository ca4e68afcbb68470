// A source's health as pgbranch reports it (SHOW SOURCE, `pgbranch source status`, GET /v1/source,
// metrics): the standby's status, checked every 10 s so that a source that was failed over or
// re-initialised is logged once, when it happens; and the resync that rebuilds the standby while
// branches keep running, during whose swap the standby's own clients are refused with 57P03.
import fs from 'node:fs';
import type { Logger } from 'pino';
import { diskUsage } from '../branch/instance/instances.js';
import { errors } from '../errors.js';
import type { BackupProgress } from './base-backup.js';
import type { Standby, StandbyStatus } from './standby.js';

const CHECK_INTERVAL_MS = 10_000;

/** The moments a branch of the source can be made at: its oldest and newest restore point. */
export interface RetentionWindow {
  from: string;
  to: string;
}

export interface ResyncProgress {
  /** `backup` while the new base backup is received (the old standby serves), then `swap`. */
  phase: 'backup' | 'swap';
  startedAt: string;
  bytes: number;
  totalBytes: number | null;
  rate: number;
  secondsLeft: number | null;
}

export interface SourceStatus extends StandbyStatus {
  /** The standby's data directory, and the disk its files take. */
  dataDir: string;
  diskBytes: number;
  /** Oldest and newest moment a branch can be made at; null where no restore points are kept. */
  window: RetentionWindow | null;
  /** A resync under way; null when none runs. */
  resync: ResyncProgress | null;
}

/** What the console, the admin API and the CLI ask of a source. */
export interface SourceControl {
  status(): Promise<SourceStatus>;
  /** Rebuilds the standby; resolves with its status once the new one runs. */
  resync(): Promise<SourceStatus>;
}

export interface SourceHealthOptions {
  standby: Standby;
  log: Logger;
  /** The restore points' window, where they are kept; without, window is null. */
  window?: () => Promise<RetentionWindow | null>;
  /**
   * Runs around a resync's swap: what follows the old standby (the root's warm spare) is stopped
   * before it, and made again of the new one after.
   */
  swap?: <T>(work: () => Promise<T>) => Promise<T>;
  checkIntervalMs?: number;
}

export class SourceHealth implements SourceControl {
  private problem: string | null = null;
  private readonly timer: NodeJS.Timeout;
  private progress: ResyncProgress | null = null;
  /** Settles when the swap under way ends; undefined outside one. */
  private swapped: Promise<void> | undefined;
  /** The last status read, answered while the standby is down for the swap. */
  private last: StandbyStatus | undefined;

  constructor(private readonly options: SourceHealthOptions) {
    this.timer = setInterval(() => {
      if (this.swapped) return;
      this.check().catch((error: unknown) =>
        options.log.debug({ err: error }, 'source health check failed'),
      );
    }, options.checkIntervalMs ?? CHECK_INTERVAL_MS);
    this.timer.unref();
  }

  /** The standby's status, with a problem logged once when it appears, changes or clears. */
  async check(): Promise<StandbyStatus> {
    if (this.swapped && this.last) return { ...this.last, connected: false };
    const status = await this.options.standby.status();
    this.last = status;
    if (status.problem !== this.problem) {
      if (status.problem) {
        this.options.log.warn(
          { event: 'source_problem', source: status.source, problem: status.problem },
          status.problem,
        );
      } else {
        this.options.log.info(
          { event: 'source_problem_cleared', source: status.source },
          `the standby follows the source ${status.source} again`,
        );
      }
      this.problem = status.problem;
    }
    return status;
  }

  async status(): Promise<SourceStatus> {
    const status = await this.check();
    const dataDir = this.options.standby.pgDataDir;
    return {
      ...status,
      dataDir,
      // Between a swap's renames the directory is briefly not there.
      diskBytes: fs.existsSync(dataDir) ? diskUsage(dataDir) : 0,
      window: (await this.options.window?.()) ?? null,
      resync: this.progress && { ...this.progress },
    };
  }

  async resync(): Promise<SourceStatus> {
    if (this.progress) throw errors.resyncRunning(this.options.standby.source);
    const startedAt = new Date().toISOString();
    const track = (progress: BackupProgress, phase: ResyncProgress['phase']) => {
      const { bytes, totalBytes, rate, secondsLeft } = progress;
      this.progress = { phase, startedAt, bytes, totalBytes, rate, secondsLeft };
    };
    track({ bytes: 0, totalBytes: null, rate: 0, secondsLeft: null, elapsedMs: 0 }, 'backup');
    const outer = this.options.swap ?? ((work) => work());
    try {
      await this.options.standby.resync({
        onProgress: (progress) => track(progress, 'backup'),
        swap: (work) =>
          outer(async () => {
            if (this.progress) this.progress.phase = 'swap';
            let done!: () => void;
            this.swapped = new Promise((resolve) => (done = resolve));
            try {
              return await work();
            } finally {
              this.swapped = undefined;
              done();
            }
          }),
      });
    } finally {
      this.progress = null;
    }
    return this.status();
  }

  /** A resync is swapping the standby for the new one: it takes no connections meanwhile. */
  get swapping(): boolean {
    return this.swapped !== undefined;
  }

  /**
   * Resolves when the standby takes connections: at once, or when the swap under way ends. A
   * swap longer than `timeoutMs` is refused with 57P03.
   */
  async running(timeoutMs: number): Promise<void> {
    const swapped = this.swapped;
    if (!swapped) return;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), timeoutMs);
    });
    try {
      if (await Promise.race([swapped.then(() => false), late])) {
        throw errors.sourceResyncing(this.options.standby.source);
      }
    } finally {
      clearTimeout(timer);
    }
  }

  /** For the metrics: connected means streaming with no problem. */
  async gauges(): Promise<{
    source: string;
    connected: boolean;
    lagBytes: number | null;
    lagSeconds: number | null;
  }> {
    const status = await this.check();
    return {
      source: status.source,
      connected: status.connected && status.problem === null,
      lagBytes: status.lagBytes,
      lagSeconds: status.lagSeconds,
    };
  }

  close(): void {
    clearInterval(this.timer);
  }
}
