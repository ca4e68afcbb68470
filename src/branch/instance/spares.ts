// Warm spares: for a running instance that branches are made of (the root, and a branch while
// branches of it are made), one standby of it kept streaming and replaying, so that a new branch
// is that standby promoted: tenths of a second whatever the size, with no checkpoint and no copy
// on the parent while a client waits. A new spare is made behind each one taken, off the
// client's time; where none is ready, the branch is copied under the backup API as before.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import type { Logger } from 'pino';
import { copyCluster, POSITION_SQL, StandbyCopyRaced } from './cluster-copy.js';
import type { OsUser, Postmaster } from './postmaster.js';

/** What a spare is a standby of. */
export interface SpareSource {
  /** Whose spare: '' for the root instance, a branch's name otherwise. */
  key: string;
  pgDataDir: string;
  connect: () => Promise<pg.Client>;
  /** Where the spare's walreceiver reaches the source (libpq keywords; trust, replication). */
  conninfo: string;
  /**
   * Where the data comes from further up (a source's server, which the root follows): a branch
   * waits for the spare to replay the position `position()` reads there when it is asked for, up
   * to `maxWaitMs`; past that it is made of what was replayed, and says how far behind it is.
   * Without, the position is the source instance's own, and a spare that can't reach it in time
   * is not used.
   */
  upstream?: Upstream | undefined;
  /** How many spares of it to keep ready (1 when unset); each is made after the one before. */
  keep?: number | undefined;
}

/** The server the root instance follows (a source), further up than any spare's source. */
export interface Upstream {
  /** How notices name it: `db.prod:5432`. */
  name: string;
  /** Its current WAL position; throws when it can't be reached. */
  position: () => Promise<string>;
  /** source.max_wait */
  maxWaitMs: number;
}

/** How a branch's data stands against its root's upstream when it was made. */
export type Freshness =
  /** It holds every transaction the upstream had committed when the branch was asked for. */
  | { state: 'fresh' }
  /** The standby had not replayed the upstream's position `wanted` within source.max_wait. */
  | { state: 'behind'; wanted: string }
  /** The upstream could not be asked its position: the branch holds what was replayed. */
  | { state: 'unreachable'; reason: string };

export interface SparesOptions {
  /** Where instances live: a spare's directory becomes its branch's when taken. */
  dir: string;
  owner?: OsUser | undefined;
  superuser: string;
  /** A postmaster on `<dir>/pg` with its socket in `<dir>/run`, with these settings added. */
  start: (dir: string, settings: Record<string, string>) => Promise<Postmaster>;
  /** false: copies are byte copies even where the filesystem could clone (branch.copy_method). */
  clone: boolean;
  /** How long a branch waits for a spare to replay what its source had when it was asked. */
  catchUpMs: number;
  /** The settings instances run with (branch.instance_settings over the defaults). */
  settings: Record<string, string>;
  log: Logger;
}

/** A spare taken: a running primary now, with everything its source had when it was asked for. */
export interface TakenSpare {
  dir: string;
  postmaster: Postmaster;
  mode: 'clone' | 'copy';
  /** The position it replayed to before its promotion. */
  lsn: string;
  /** The moment its data is of: the ask, when it caught up; else its last replayed commit's. */
  asOf: Date;
  /** With an upstream: whether it caught up with it. */
  freshness?: Freshness | undefined;
  /** Time from the ask to the promotion's end, and its parts. */
  ms: number;
  phases: {
    /** Waiting for a spare that was being made when the branch was asked for. */
    waitMs: number;
    positionMs: number;
    catchUpMs: number;
    promoteMs: number;
  };
}

interface Spare {
  source: SpareSource;
  dir: string;
  slot: string;
  state: 'making' | 'ready' | 'gone';
  postmaster?: Postmaster;
  mode: 'clone' | 'copy';
  /** Settles once making it has ended, either way. */
  made: Promise<void>;
  /** A session on the source kept for reading its position when the spare is taken. */
  watch?: pg.Client | undefined;
}

/** A source whose spare could not be made is not tried again for this long. */
const RETRY_AFTER_MS = 60_000;
/** How long a new spare is given to replay what its source had when it became consistent. */
const READY_CATCH_UP_MS = 120_000;
/** Attempts at a copy that races a checkpoint (each a new copy). */
const COPY_ATTEMPTS = 3;

/** Directory names of spares (and of the branches they became): `i-<random>`. */
export const SPARE_DIR_PREFIX = 'i-';

export class Spares {
  /** By source key: its spares, ready or being made (at most one being made at a time). */
  private readonly spares = new Map<string, Spare[]>();
  private readonly failedAt = new Map<string, number>();
  /** Slots of this pgbranch's spares: one prefix per instances directory. */
  private readonly slotPrefix: string;
  private closed = false;

  constructor(private readonly options: SparesOptions) {
    const hash = createHash('sha256').update(path.resolve(options.dir)).digest('hex').slice(0, 8);
    this.slotPrefix = `pgbranch_spare_${hash}_`;
  }

  /**
   * Makes a spare of `source` in the background, unless it has as many as it keeps, one is being
   * made (the next follows once it is ready), or one failed lately.
   */
  prepare(source: SpareSource): void {
    const list = this.spares.get(source.key) ?? [];
    if (this.closed || list.length >= (source.keep ?? 1)) return;
    if (list.some((spare) => spare.state === 'making')) return;
    const failed = this.failedAt.get(source.key);
    if (failed !== undefined && Date.now() - failed < RETRY_AFTER_MS) return;
    const spare: Spare = {
      source,
      dir: path.join(this.options.dir, `${SPARE_DIR_PREFIX}${randomBytes(6).toString('hex')}`),
      slot: `${this.slotPrefix}${randomBytes(4).toString('hex')}`,
      state: 'making',
      mode: 'clone',
      made: Promise.resolve(),
    };
    this.spares.set(source.key, [...list, spare]);
    spare.made = this.make(spare).then(
      // The next one, where more are kept.
      () => this.prepare(source),
      (error: unknown) => {
        this.unlist(spare);
        if (error instanceof NoLongerWanted) {
          void this.remove(spare);
          return;
        }
        this.failedAt.set(source.key, Date.now());
        this.options.log.warn(
          { event: 'spare_failed', parent: source.key || null, err: error },
          `could not make a warm standby of ${describe(source)}; its branches are copied under the backup API meanwhile: ${(error as Error).message}`,
        );
        void this.remove(spare);
      },
    );
  }

  /** Takes `spare` off its source's list; whether it was there. */
  private unlist(spare: Spare): boolean {
    const list = this.spares.get(spare.source.key);
    const at = list?.indexOf(spare) ?? -1;
    if (at < 0) return false;
    list!.splice(at, 1);
    if (list!.length === 0) this.spares.delete(spare.source.key);
    return true;
  }

  private listed(spare: Spare): boolean {
    return this.spares.get(spare.source.key)?.includes(spare) ?? false;
  }

  private readyOf(key: string): Spare | undefined {
    return this.spares.get(key)?.find((spare) => spare.state === 'ready');
  }

  /**
   * The spare of `source`, caught up with what the source had now and promoted; undefined where
   * none is ready or it can't catch up in time (the caller copies instead). A spare of a standby
   * (a source's root) that is still being made is waited for.
   */
  async take(source: SpareSource): Promise<TakenSpare | undefined> {
    const asked = Date.now();
    let spare = this.readyOf(source.key);
    const making = this.spares.get(source.key)?.find((s) => s.state === 'making');
    if (!spare && making && source.upstream) {
      // A standby's copy recovers from its last restartpoint, as far back as the upstream's
      // last checkpoint: the spare under way started that same recovery earlier, so waiting for
      // it is never slower than a copy made now (and the machine does that work once, not twice).
      await making.made;
      // Taken by another branch meanwhile, or failed: this one is copied.
      spare = this.readyOf(source.key);
    }
    if (!spare) return undefined;
    // Nobody else takes it from here on.
    this.unlist(spare);
    const ready = Date.now();
    const { upstream } = source;
    try {
      const [wanted, client] = await Promise.all([
        upstream ? upstreamPosition(upstream) : this.position(spare),
        this.session(spare),
      ]);
      const positioned = Date.now();
      let caught: CaughtUp;
      let phases: TakenSpare['phases'];
      try {
        caught = await catchUp(client, wanted, ready, upstream, this.options.catchUpMs);
        const replayed = Date.now();
        await promote(client);
        phases = {
          waitMs: ready - asked,
          positionMs: positioned - ready,
          catchUpMs: replayed - positioned,
          promoteMs: Date.now() - replayed,
        };
      } finally {
        await client.end().catch(() => undefined);
      }
      void this.dropSlot(source, spare.slot);
      spare.state = 'gone';
      return {
        dir: spare.dir,
        postmaster: spare.postmaster!,
        mode: spare.mode,
        lsn: caught.at,
        asOf: caught.asOf,
        freshness: caught.freshness,
        ms: Date.now() - asked,
        phases,
      };
    } catch (error) {
      this.options.log.warn(
        { event: 'spare_not_taken', parent: source.key || null, err: error },
        `the warm standby of ${describe(source)} could not become a branch (${(error as Error).message}); copying instead`,
      );
      await this.remove(spare);
      return undefined;
    }
  }

  /** Stops and removes the spare of `key`: its source stops, is replaced, or goes. */
  async discard(key: string): Promise<void> {
    const list = this.spares.get(key);
    if (!list) return;
    this.spares.delete(key);
    await Promise.all(
      list.map(async (spare) => {
        await spare.made;
        await this.remove(spare);
      }),
    );
    this.options.log.info(
      { event: 'spare_discarded', parent: key || null, count: list.length },
      `stopped the warm standby of ${describe(list[0]!.source)}${list.length > 1 ? ` and ${list.length - 1} more` : ''} (its parent stopped, changed or went)`,
    );
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.spares.keys()].map((key) => this.discard(key)));
  }

  /** The spares running now (for the banner and tests). */
  running(): number {
    let count = 0;
    for (const list of this.spares.values()) {
      for (const spare of list) if (spare.state === 'ready') count++;
    }
    return count;
  }

  /** Settles once every spare under way is ready or has failed (tests, benchmarks). */
  async settled(): Promise<void> {
    await Promise.all([...this.spares.values()].flat().map((s) => s.made));
  }

  private async make(spare: Spare): Promise<void> {
    const { source } = spare;
    const started = Date.now();
    this.options.log.info(
      { event: 'spare_making', parent: source.key || null },
      `making a warm standby of ${describe(source)} for its next branch`,
    );
    fs.mkdirSync(spare.dir, { mode: 0o755 });
    // The slot first: the source keeps its WAL from its redo point until the spare streams it.
    const admin = await source.connect();
    admin.on('error', () => undefined);
    let floors: Record<string, string>;
    try {
      floors = await hotStandbyFloors(admin, this.options.settings);
      // Slots of spares a killed pgbranch left: they would hold the source's WAL for ever.
      await admin.query(
        `select pg_drop_replication_slot(slot_name) from pg_replication_slots
          where slot_name like $1 and not active`,
        [`${this.slotPrefix}%`],
      );
      await admin.query('select pg_create_physical_replication_slot($1, true, false)', [
        spare.slot,
      ]);
    } finally {
      await admin.end().catch(() => undefined);
    }
    const target = path.join(spare.dir, 'pg');
    const copyFrom = Date.now();
    for (let attempt = 1; ; attempt++) {
      try {
        const copied = await copyCluster({
          sourceDataDir: source.pgDataDir,
          target,
          running: { connect: source.connect, forStandby: true },
          owner: this.options.owner,
          clone: this.options.clone,
        });
        spare.mode = copied.mode;
        break;
      } catch (error) {
        if (!(error instanceof StandbyCopyRaced) || attempt === COPY_ATTEMPTS) throw error;
      }
    }
    const copyMs = Date.now() - copyFrom;
    const signal = path.join(target, 'standby.signal');
    fs.writeFileSync(signal, '', { mode: 0o600 });
    if (this.options.owner) fs.chownSync(signal, this.options.owner.uid, this.options.owner.gid);
    if (this.closed || !this.listed(spare)) throw new NoLongerWanted();
    spare.postmaster = await this.options.start(spare.dir, {
      ...floors,
      hot_standby: 'on',
      primary_conninfo: `${source.conninfo} application_name=${spare.slot}`,
      primary_slot_name: spare.slot,
    });
    if (this.closed || !this.listed(spare)) throw new NoLongerWanted();
    // Taking connections: consistent, its recovery from the copy's checkpoint behind it.
    const consistentAt = Date.now();
    await this.catchUpWithSource(spare);
    if (this.closed || !this.listed(spare)) throw new NoLongerWanted();
    spare.watch = await source.connect();
    spare.watch.on('error', () => undefined);
    spare.state = 'ready';
    this.failedAt.delete(source.key);
    void spare.postmaster.exited.then(() => {
      if (spare.state !== 'ready' || !this.listed(spare)) return;
      this.options.log.warn(
        { event: 'spare_exited', parent: source.key || null },
        `the warm standby of ${describe(source)} stopped on its own; another is made at the next branch`,
      );
      this.unlist(spare);
      void this.remove(spare);
    });
    this.options.log.info(
      {
        event: 'spare_ready',
        parent: source.key || null,
        mode: spare.mode,
        ms: Date.now() - started,
        // Two of its parts, for telling what the making costs the source (bench:branch); the
        // rest of ms is the start and recovery to consistency, between them.
        copyMs,
        catchUpMs: Date.now() - consistentAt,
      },
      `a warm standby of ${describe(source)} is ready for its next branch (${spare.mode}, ${Date.now() - started} ms)`,
    );
  }

  /**
   * Ready means caught up: a standby that has just become consistent may still have minutes of its
   * source's WAL to replay (from the checkpoint its copy started at), and a branch taken from it
   * then would wait for that, or be made behind. It waits for the position its source had now,
   * up to READY_CATCH_UP_MS (past it, a source writing faster than the spare replays, it is ready
   * as it is, and a branch waits up to source.max_wait as before).
   */
  private async catchUpWithSource(spare: Spare): Promise<void> {
    const target = await this.position(spare);
    const client = await this.session(spare);
    try {
      await waitForReplay(client, target, READY_CATCH_UP_MS, true, 100);
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  /**
   * The source's position now: everything it has committed (a primary's insert position), or
   * replayed (a standby's). On the session kept for it (a new login costs tens of milliseconds).
   */
  private async position(spare: Spare): Promise<string> {
    const sql = POSITION_SQL;
    const kept = spare.watch;
    spare.watch = undefined;
    if (kept) {
      try {
        const { rows } = await kept.query<{ lsn: string }>(sql);
        return rows[0]!.lsn;
      } catch {
        // The source restarted since: a new session.
      } finally {
        await kept.end().catch(() => undefined);
      }
    }
    const client = await spare.source.connect();
    client.on('error', () => undefined);
    try {
      return (await client.query<{ lsn: string }>(sql)).rows[0]!.lsn;
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  private async remove(spare: Spare): Promise<void> {
    spare.state = 'gone';
    await spare.watch?.end().catch(() => undefined);
    spare.watch = undefined;
    await spare.postmaster?.stop('fast');
    await fs.promises.rm(spare.dir, { recursive: true, force: true });
    await this.dropSlot(spare.source, spare.slot);
  }

  /**
   * Drops a spare's slot on its source. A promoted spare's walreceiver takes a moment to let go of
   * it (55006 meanwhile); a source that is gone or stopped has no slot to keep.
   */
  private async dropSlot(source: SpareSource, slot: string): Promise<void> {
    for (let attempt = 0; attempt < 50; attempt++) {
      let client: pg.Client | undefined;
      try {
        client = await source.connect();
        client.on('error', () => undefined);
        await client.query(
          'select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1',
          [slot],
        );
        return;
      } catch (error) {
        if ((error as { code?: string }).code !== '55006') return;
        await new Promise((resolve) => setTimeout(resolve, 100));
      } finally {
        await client?.end().catch(() => undefined);
      }
    }
  }

  private async session(spare: Spare): Promise<pg.Client> {
    const client = new pg.Client({
      host: spare.postmaster!.endpoint.socketDir,
      port: spare.postmaster!.endpoint.port,
      user: this.options.superuser,
      database: 'postgres',
      application_name: 'pgbranch',
    });
    client.on('error', () => undefined);
    await client.connect();
    return client;
  }
}

/** A spare discarded (its source stopped or went, pgbranch stops) while it was being made. */
class NoLongerWanted extends Error {}

/** Settings a hot standby may not have below its primary's (it would pause replay otherwise). */
const HOT_STANDBY_FLOORS = [
  'max_connections',
  'max_worker_processes',
  'max_wal_senders',
  'max_prepared_transactions',
  'max_locks_per_transaction',
];

/**
 * What a standby of the source needs of those settings: the source's, where they are above the
 * instances' own. A branch made of the spare keeps them until its next start.
 */
async function hotStandbyFloors(
  client: pg.Client,
  settings: Record<string, string>,
): Promise<Record<string, string>> {
  const { rows } = await client.query<{ name: string; setting: string }>(
    'select name, setting from pg_settings where name = any($1)',
    [HOT_STANDBY_FLOORS],
  );
  const floors: Record<string, string> = {};
  for (const { name, setting } of rows) {
    const own = Number(settings[name] ?? 0);
    floors[name] = String(Math.max(own, Number(setting)));
  }
  return floors;
}

/** The upstream's position, or why it could not be read (the branch is made of what is there). */
export async function upstreamPosition(
  upstream: Upstream,
): Promise<string | { unreachable: string }> {
  try {
    return await upstream.position();
  } catch (error) {
    return { unreachable: (error as Error).message };
  }
}

function freshnessOf(wanted: string | { unreachable: string }, caughtUp: boolean): Freshness {
  if (typeof wanted !== 'string') return { state: 'unreachable', reason: wanted.unreachable };
  return caughtUp ? { state: 'fresh' } : { state: 'behind', wanted };
}

/** What a standby replayed before it became a branch, and the moment its data is of. */
export interface CaughtUp {
  at: string;
  /** The ask, when it caught up; else its last replayed commit's time. */
  asOf: Date;
  /** With an upstream: whether it caught up with it. */
  freshness: Freshness | undefined;
}

/**
 * Waits for the standby on `client` to replay `wanted`, read at `asked`. With an upstream, up to
 * its max_wait, then it is what was replayed (at once where the upstream could not be asked);
 * without, up to `timeoutMs`, then it throws.
 */
export async function catchUp(
  client: pg.Client,
  wanted: string | { unreachable: string },
  asked: number,
  upstream: Upstream | undefined,
  timeoutMs: number,
): Promise<CaughtUp> {
  const replay = await waitForReplay(
    client,
    // Unreachable: nothing to wait for.
    typeof wanted === 'string' ? wanted : '0/0',
    upstream?.maxWaitMs ?? timeoutMs,
    upstream !== undefined,
  );
  const freshness = upstream && freshnessOf(wanted, replay.caughtUp);
  const fresh = !freshness || freshness.state === 'fresh';
  return {
    at: replay.at,
    asOf: fresh ? new Date(asked) : (replay.lastCommit ?? new Date(asked)),
    freshness,
  };
}

/** How far a standby got: its replay position, and its last replayed commit's time. */
interface Replay {
  caughtUp: boolean;
  at: string;
  lastCommit: Date | null;
}

/**
 * Waits until the standby on `client` has replayed up to `lsn`. Past `timeoutMs` it throws, or,
 * where `orWhatItHas`, resolves with how far it got.
 */
async function waitForReplay(
  client: pg.Client,
  lsn: string,
  timeoutMs: number,
  orWhatItHas: boolean,
  pollMs = 5,
): Promise<Replay> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { rows } = await client.query<{
      caught: boolean;
      at: string | null;
      last: Date | null;
    }>(
      `select pg_last_wal_replay_lsn() >= $1::pg_lsn as caught,
              pg_last_wal_replay_lsn()::text as at, pg_last_xact_replay_timestamp() as last`,
      [lsn],
    );
    const { caught, at, last } = rows[0]!;
    if (caught || (orWhatItHas && Date.now() > deadline)) {
      return { caughtUp: caught, at: at ?? '0/0', lastCommit: last };
    }
    if (Date.now() > deadline) {
      throw new Error(
        `it had replayed to ${at ?? 'nothing'} after ${timeoutMs} ms, short of ${lsn}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}

/**
 * Promotes the standby on `client` and resolves once it takes writes. pg_promote's own wait looks
 * every 100 ms; this looks every 5.
 */
async function promote(client: pg.Client): Promise<void> {
  const { rows } = await client.query<{ signalled: boolean }>(
    'select pg_promote(false) as signalled',
  );
  if (!rows[0]!.signalled) throw new Error('pg_promote could not signal the postmaster');
  const deadline = Date.now() + 60_000;
  for (;;) {
    const { rows: state } = await client.query<{ recovering: boolean }>(
      'select pg_is_in_recovery() as recovering',
    );
    if (!state[0]!.recovering) return;
    if (Date.now() > deadline) throw new Error('it was still in recovery 60 s after pg_promote');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function describe(source: SpareSource): string {
  return source.key ? `branch ${source.key}` : 'the root instance';
}

/** libpq keywords for a private socket, quoted as libpq wants. */
export function socketConninfo(socketDir: string, port: number, user: string): string {
  const quote = (value: string) => `'${value.replace(/[\\']/g, (c) => `\\${c}`)}'`;
  return `host=${quote(socketDir)} port=${port} user=${quote(user)} dbname=postgres`;
}
