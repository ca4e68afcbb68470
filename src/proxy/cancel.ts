// CancelRequest routing. Clients get BackendKeyData with their server connection's real process id
// and a secret of pgbranch's; a cancel that matches both is forwarded with the server's own key.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { connectSocket, type Endpoint } from '../upstream/endpoint.js';
import { cancelRequest } from '../wire/frontend.js';

interface Target {
  secret: Buffer;
  serverProcessId: number;
  serverSecret: Buffer;
}

export class CancelRegistry {
  private readonly targets = new Map<number, Target>();

  constructor(private readonly endpoint: Endpoint) {}

  /** Registers a client's session on a server connection; returns the secret to hand the client. */
  register(serverProcessId: number, serverSecret: Buffer): Buffer {
    const secret = randomBytes(4);
    this.targets.set(serverProcessId, { secret, serverProcessId, serverSecret });
    return secret;
  }

  unregister(serverProcessId: number, secret: Buffer): void {
    if (this.targets.get(serverProcessId)?.secret === secret) this.targets.delete(serverProcessId);
  }

  /** Forwards a client's CancelRequest if it names a live session; says whether it did. */
  cancel(processId: number, secret: Buffer): boolean {
    const target = this.targets.get(processId);
    if (!target || target.secret.length !== secret.length) return false;
    if (!timingSafeEqual(target.secret, secret)) return false;
    const socket = connectSocket(this.endpoint);
    socket.on('error', () => socket.destroy());
    socket.setTimeout(5000, () => socket.destroy());
    socket.once('connect', () =>
      socket.end(cancelRequest(target.serverProcessId, target.serverSecret)),
    );
    return true;
  }
}
