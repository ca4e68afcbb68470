// Several pgbranch proxies in front of one PostgreSQL server: before one of them clones, resets or
// drops a database, the others must let go of their connections to it too, or PostgreSQL refuses
// (the source of a clone must have no sessions). They tell each other through Redis pub/sub, on a
// channel named after the server's system identifier, so proxies of one server find each other
// with no setting but the Redis URL, and proxies of different servers never meet.
//
// A pause is a lease (leases.ts): its holder re-announces it while it lasts, and the others end it
// on its resume or when they have heard nothing of it for a few seconds, so that a proxy that dies
// strands nobody for long, and a clone that takes an hour keeps the others paused for the hour.
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { HEARTBEAT_MS, RemotePauses } from './leases.js';

export type DrainVerb = 'reset' | 'restored' | 'deleted';

/** The branch is going away or being replaced: disconnect clients as the sender does. */
export interface Termination {
  name: string;
  verb: DrainVerb;
}

/**
 * What proxies say to each other, less the sender. `pause` numbers the sender's pauses, so that two
 * pauses of one database by one proxy end one at a time; `held` is the heartbeat of a pause.
 */
type Announcement = { database: string; pause: number } & (
  | { kind: 'pause'; terminate?: Termination }
  | { kind: 'held' }
  | {
      kind: 'resume';
      /** The database was replaced or dropped: close pooled connections to it. */
      closed?: true;
    }
);

export type PeerMessage = Announcement & { from: string };

/** What this proxy does when others pause a database. */
export interface RemotePauseHandler {
  /** Another proxy paused `database`: one hold, which exactly one resume() ends. */
  pause(database: string, terminate?: Termination): void;
  resume(database: string): void;
  /** `database` was replaced or dropped: close the pooled connections to it. */
  close(database: string): void;
}

export class Peers {
  /**
   * This proxy in messages and in the others' logs: its host and process, and a random part for
   * hosts that look alike (containers).
   */
  readonly id = `${os.hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  private lastPause = 0;
  /** Pauses this proxy holds, by number, each with the timer that re-announces it. */
  private readonly held = new Map<number, { database: string; heartbeat: NodeJS.Timeout }>();
  private remote?: RemotePauses;

  private constructor(
    private readonly publisher: Redis,
    private readonly subscriber: Redis,
    readonly channel: string,
    private readonly log: Logger,
  ) {}

  /** Connects to Redis and subscribes; fails with a message naming the URL when it can't. */
  static async join(url: string, serverId: string, log: Logger): Promise<Peers> {
    const options = { lazyConnect: true, maxRetriesPerRequest: 3, connectTimeout: 5_000 };
    const publisher = new Redis(url, options);
    const subscriber = new Redis(url, options);
    for (const client of [publisher, subscriber]) {
      client.on('error', (error: Error) =>
        log.warn(
          { err: error, event: 'redis_error' },
          `Redis at ${redacted(url)}: ${error.message}`,
        ),
      );
    }
    const channel = `pgbranch:${serverId}`;
    try {
      await Promise.all([publisher.connect(), subscriber.connect()]);
      await subscriber.subscribe(channel);
    } catch (error) {
      publisher.disconnect();
      subscriber.disconnect();
      throw new Error(
        `cannot reach Redis at ${redacted(url)} (redis.url): ${(error as Error).message}. Start Redis, fix the URL, or unset redis.url to run one proxy alone`,
        { cause: error },
      );
    }
    return new Peers(publisher, subscriber, channel, log);
  }

  /** Tells the other proxies to pause `database`, and keeps telling them until resume(). */
  async pause(database: string, terminate?: Termination): Promise<void> {
    const pause = ++this.lastPause;
    const heartbeat = setInterval(
      () => void this.send({ kind: 'held', database, pause }),
      HEARTBEAT_MS,
    );
    heartbeat.unref();
    this.held.set(pause, { database, heartbeat });
    await this.send({ kind: 'pause', database, pause, ...(terminate ? { terminate } : {}) });
  }

  /** Ends one pause() of `database` (the oldest: they are alike) in the other proxies. */
  resume(database: string, closed: boolean): void {
    for (const [pause, held] of this.held) {
      if (held.database !== database) continue;
      // Stopped before the resume is sent, and both go down one connection in order: no heartbeat
      // of this pause reaches anyone after its resume.
      clearInterval(held.heartbeat);
      this.held.delete(pause);
      void this.send({
        kind: 'resume',
        database,
        pause,
        ...(closed ? { closed: true as const } : {}),
      });
      return;
    }
  }

  /** Redis commands, for state the proxies share besides messages (cancel keys). */
  get redis(): Redis {
    return this.publisher;
  }

  /**
   * Subscribes to `<channel>:<topic>`, a channel of this server's proxies for something else than
   * pauses; `handler` gets the text of each message.
   */
  async subscribe(topic: string, handler: (text: string) => void): Promise<void> {
    const name = `${this.channel}:${topic}`;
    await this.subscriber.subscribe(name);
    this.subscriber.on('message', (channel: string, text: string) => {
      if (channel === name) handler(text);
    });
  }

  /** Calls `handler` for the pauses other proxies hold, each ended once: on resume or lease end. */
  listen(handler: RemotePauseHandler): void {
    const remote = (this.remote = new RemotePauses(handler, this.log));
    this.subscriber.on('message', (channel: string, text: string) => {
      if (channel !== this.channel) return;
      const message = parse(text);
      if (message && message.from !== this.id) remote.receive(message);
    });
  }

  /** Publishes; a Redis failure is logged, never thrown (there may be no other proxy). */
  private async send(message: Announcement): Promise<void> {
    try {
      await this.publisher.publish(this.channel, JSON.stringify({ ...message, from: this.id }));
    } catch (error) {
      // A heartbeat that fails fails again a second later: redis_error has said why already.
      if (message.kind === 'held') return;
      this.log.warn(
        { err: error, event: 'redis_publish_failed', database: message.database },
        `could not tell other proxies to ${message.kind} ${message.database}: ${(error as Error).message}`,
      );
    }
  }

  /**
   * At shutdown: ends the pauses this proxy holds in the others (a clone it was making goes no
   * further), forgets theirs, and leaves Redis once what it said has gone out.
   */
  close(): void {
    for (const [pause, { database, heartbeat }] of this.held) {
      clearInterval(heartbeat);
      void this.send({ kind: 'resume', database, pause });
    }
    this.held.clear();
    this.remote?.close();
    this.subscriber.disconnect();
    this.publisher.quit().catch(() => this.publisher.disconnect());
  }
}

function parse(text: string): PeerMessage | undefined {
  let message: Partial<PeerMessage>;
  try {
    message = JSON.parse(text) as Partial<PeerMessage>;
  } catch {
    return undefined;
  }
  const { kind, from, database, pause } = message;
  const known = kind === 'pause' || kind === 'held' || kind === 'resume';
  return known &&
    typeof from === 'string' &&
    typeof database === 'string' &&
    Number.isInteger(pause)
    ? (message as PeerMessage)
    : undefined;
}

function redacted(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
}
