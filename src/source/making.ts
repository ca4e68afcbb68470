// How far the making of a source's standby is, while pgbranch starts with a source: connecting,
// server binaries, the base backup (hours for a large source), the first start's recovery. The
// proxy port, the admin API and the CLI tell it to whoever asks in the meantime (a client gets
// 57P03 with this line, `pgbranch source status` and GET /v1/source the whole of it).
import { errors, type PgError } from '../errors.js';
import type { BackupProgress } from './base-backup.js';
import { progressLine } from './standby.js';

export type MakingStep = 'connecting' | 'binaries' | 'backup' | 'starting';

const STEP_TEXT: Record<MakingStep, string> = {
  connecting: 'connecting to the source',
  binaries: "finding (or installing) the server binaries of the source's version",
  backup: 'base backup starting',
  starting: 'starting the standby (a new one first replays the WAL written during its base backup)',
};

/** What GET /v1/source answers while the standby is being made (`making` tells it apart). */
export interface SourceMaking {
  source: string;
  making: {
    step: MakingStep;
    /** The step in words, with the base backup's figures: what the log and 57P03 say. */
    description: string;
    startedAt: string;
    /** The base backup's progress, once it runs. */
    backup: Omit<BackupProgress, 'elapsedMs'> | null;
  };
}

export class StandbyMaking {
  private step: MakingStep = 'connecting';
  private backup: BackupProgress | null = null;
  private readonly startedAt = new Date().toISOString();

  constructor(
    /** host:port of the source. */
    readonly source: string,
  ) {}

  stepped(step: MakingStep): void {
    this.step = step;
  }

  progressed(progress: BackupProgress): void {
    this.step = 'backup';
    this.backup = progress;
  }

  /** `base backup: 412 MB of 1.0 GB (40%), 96 MB/s, 6 s left`, or the step in words. */
  description(): string {
    return this.step === 'backup' && this.backup ? progressLine(this.backup) : STEP_TEXT[this.step];
  }

  status(): SourceMaking {
    const backup = this.backup && {
      bytes: this.backup.bytes,
      totalBytes: this.backup.totalBytes,
      rate: this.backup.rate,
      secondsLeft: this.backup.secondsLeft,
    };
    return {
      source: this.source,
      making: {
        step: this.step,
        description: this.description(),
        startedAt: this.startedAt,
        backup,
      },
    };
  }

  /** What a client connecting meanwhile gets: 57P03, as a server that is starting up. */
  refusal(): PgError {
    return errors.standbyBeingMade(this.source, this.description());
  }
}
