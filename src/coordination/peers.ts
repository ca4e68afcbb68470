// Several pgbranch proxies in front of one PostgreSQL server: before one of them clones, resets or
// drops a database, the others must let go of their connections to it too, or PostgreSQL refuses
// (the source of a clone must have no sessions). They tell each other through Redis pub/sub, on a
// channel named after the server's system identifier, so proxies of one server find each other
// with no setting but the Redis URL, and proxies of different servers never meet.
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';

export type DrainVerb = 'reset' | 'restored' | 'deleted';

export interface PeerMessage {
  kind: 'pause' | 'resume';
  database: string;
  /** The proxy that sent it. */
  from: string;
  /** pause: the branch is going away or being replaced; disconnect clients as the sender does. */
  terminate?: { name: string; verb: DrainVerb };
  /** resume: the database was replaced or dropped; close pooled connections to it. */
  closed?: boolean;
}

export class Peers {
  readonly id = randomUUID();
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

  /** Calls `handler` with every message other proxies send. */
  listen(handler: (message: PeerMessage) => void): void {
    this.subscriber.on('message', (channel: string, text: string) => {
      if (channel !== this.channel) return;
      let message: PeerMessage;
      try {
        message = JSON.parse(text) as PeerMessage;
      } catch {
        return;
      }
      if (message.from === this.id || typeof message.database !== 'string') return;
      handler(message);
    });
  }

  /** Tells the other proxies; a Redis failure is logged, never thrown (they may be none). */
  async send(message: Omit<PeerMessage, 'from'>): Promise<void> {
    try {
      await this.publisher.publish(this.channel, JSON.stringify({ ...message, from: this.id }));
    } catch (error) {
      this.log.warn(
        { err: error, event: 'redis_publish_failed', database: message.database },
        `could not tell other proxies to ${message.kind} ${message.database}: ${(error as Error).message}`,
      );
    }
  }

  close(): void {
    this.publisher.disconnect();
    this.subscriber.disconnect();
  }
}

function redacted(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
}
