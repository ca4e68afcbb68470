// Cancel keys shared by the proxies of one server, as the Neon proxy shares them: psql and the
// drivers send a CancelRequest to the address they connected to, which behind a load balancer can
// be another proxy than the one running the query. Each proxy writes the keys it hands out to
// Redis (a hash of process id and secret, naming the proxy, with an expiry it renews while the
// client stays); a proxy that gets a key it does not know looks it up and asks the owner, over
// pub/sub, to cancel, and answers the client once the owner says it has.
import { createHash, randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { SharedCancels } from '../proxy/cancel.js';
import type { Peers } from './peers.js';

/** How long a key lives in Redis unless renewed; renewed at half of it while its client stays. */
const KEY_TTL_S = 3600;
/** How long a proxy waits for the owner of a key to say it has canceled. */
const ANSWER_TIMEOUT_MS = 5000;

type Message =
  | { kind: 'cancel'; to: string; from: string; id: string; processId: number; secret: string }
  | { kind: 'canceled'; to: string; id: string; done: boolean };

export class SharedCancelKeys implements SharedCancels {
  /** Redis keys of the cancel keys this proxy handed out and whose clients are still here. */
  private readonly live = new Set<string>();
  /** Cancels asked of other proxies, by request id, waiting for their answer. */
  private readonly asked = new Map<string, (done: boolean) => void>();
  private readonly renewal: NodeJS.Timeout;

  private constructor(
    private readonly peers: Peers,
    private readonly channel: string,
    /** Cancels with a key of this proxy's; undefined when it is not one. */
    private readonly cancelHere: (
      processId: number,
      secret: Buffer,
    ) => Promise<boolean> | undefined,
    private readonly log: Logger,
  ) {
    this.renewal = setInterval(() => this.renew(), (KEY_TTL_S * 1000) / 2);
    this.renewal.unref();
  }

  static async open(
    peers: Peers,
    cancelHere: (processId: number, secret: Buffer) => Promise<boolean> | undefined,
    log: Logger,
  ): Promise<SharedCancelKeys> {
    const shared = new SharedCancelKeys(peers, `${peers.channel}:cancel`, cancelHere, log);
    await peers.subscribe('cancel', (text) => shared.receive(text));
    return shared;
  }

  add(processId: number, secret: Buffer): void {
    const key = this.keyOf(processId, secret);
    this.live.add(key);
    this.peers.redis
      .set(key, this.peers.id, 'EX', KEY_TTL_S)
      .catch((error: unknown) => this.failed('share a cancel key', error));
  }

  remove(processId: number, secret: Buffer): void {
    const key = this.keyOf(processId, secret);
    if (!this.live.delete(key)) return;
    this.peers.redis.del(key).catch((error: unknown) => this.failed('drop a cancel key', error));
  }

  async cancel(processId: number, secret: Buffer): Promise<boolean> {
    let owner: string | null;
    try {
      owner = await this.peers.redis.get(this.keyOf(processId, secret));
    } catch (error) {
      this.failed('look up a cancel key', error);
      return false;
    }
    if (owner === null || owner === this.peers.id) return false;
    const id = randomBytes(8).toString('hex');
    const answered = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.asked.delete(id);
        resolve(false);
      }, ANSWER_TIMEOUT_MS);
      this.asked.set(id, (done) => {
        clearTimeout(timer);
        this.asked.delete(id);
        resolve(done);
      });
    });
    await this.send({
      kind: 'cancel',
      to: owner,
      from: this.peers.id,
      id,
      processId,
      secret: secret.toString('hex'),
    });
    return answered;
  }

  /** At shutdown: stops renewing; waiting cancels are answered as not done. */
  close(): void {
    clearInterval(this.renewal);
    for (const answer of this.asked.values()) answer(false);
  }

  private receive(text: string): void {
    let message: Message;
    try {
      message = JSON.parse(text) as Message;
    } catch {
      return;
    }
    if (message.to !== this.peers.id) return;
    if (message.kind === 'canceled') {
      this.asked.get(message.id)?.(message.done === true);
      return;
    }
    if (message.kind !== 'cancel' || !Number.isInteger(message.processId)) return;
    const answer = (done: boolean) =>
      void this.send({ kind: 'canceled', to: message.from, id: message.id, done });
    const here = this.cancelHere(message.processId, Buffer.from(String(message.secret), 'hex'));
    if (!here) return answer(false);
    here.then(answer, () => answer(false));
  }

  private async send(message: Message): Promise<void> {
    try {
      await this.peers.redis.publish(this.channel, JSON.stringify(message));
    } catch (error) {
      this.failed(`send a ${message.kind} to another proxy`, error);
    }
  }

  private renew(): void {
    if (this.live.size === 0) return;
    const batch = this.peers.redis.pipeline();
    for (const key of this.live) batch.expire(key, KEY_TTL_S);
    batch.exec().catch((error: unknown) => this.failed('renew cancel keys', error));
  }

  /** The Redis key of a cancel key: a hash, so that the secret is not written where it is listed. */
  private keyOf(processId: number, secret: Buffer): string {
    const id = Buffer.alloc(4);
    id.writeUInt32BE(processId >>> 0);
    const hash = createHash('sha256').update(id).update(secret).digest('hex').slice(0, 32);
    return `${this.peers.channel}:cancel:${hash}`;
  }

  private failed(what: string, error: unknown): void {
    // redis_error (peers.ts) says once why Redis fails; this says what went undone.
    this.log.debug({ err: error, event: 'cancel_key_failed' }, `could not ${what} in Redis`);
  }
}
