// The proxy's listeners, TCP and (listen.socket_dir) the Unix socket, whose handler can change
// while they listen: with a source, pgbranch listens before its standby exists (the first base
// backup can take hours) and answers every client with how far it is, then takes clients on the
// same sockets once it runs, with no moment where the port is closed.
import fs from 'node:fs';
import net from 'node:net';
import type { Config } from '../config/schema.js';
import { CannotStart, listenProblem } from '../preflight.js';
import { isLoopback } from '../config/load.js';
import { listenOnSocket } from './unix-socket.js';

/** What serves a client: `local` for one on loopback or the Unix socket. */
export type ClientHandler = (socket: net.Socket, local: boolean) => void;

export class ClientListeners {
  private readonly tcp: net.Server;
  private unix: net.Server | undefined;
  /** The TCP port listened on (listen.port, or the one picked for 0). */
  port = 0;
  socketPath: string | undefined;

  private constructor(private handler: ClientHandler) {
    this.tcp = net.createServer((socket) =>
      // A listener on :: sees IPv4 clients as ::ffff:a.b.c.d.
      this.handler(socket, isLoopback((socket.remoteAddress ?? '').replace(/^::ffff:/, ''))),
    );
  }

  /** Listens on listen.host:listen.port and the socket; a failure is CannotStart, in words. */
  static async open(listen: Config['listen'], handler: ClientHandler): Promise<ClientListeners> {
    const listeners = new ClientListeners(handler);
    const { tcp } = listeners;
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject);
        tcp.listen(listen.port, listen.host, resolve);
      });
    } catch (error) {
      // Free when checked at start, taken since.
      const { host, port } = listen;
      throw new CannotStart(listenProblem({ key: 'listen.port', host, port }, error), {
        cause: error,
      });
    }
    listeners.port = (tcp.address() as net.AddressInfo).port;
    if (listen.socket_dir !== undefined) {
      // Socket clients are local.
      const unix = net.createServer((socket) => listeners.handler(socket, true));
      try {
        // Named after the TCP port, as PostgreSQL names its socket, so -h DIR -p PORT finds it.
        listeners.socketPath = await listenOnSocket(unix, listen.socket_dir, listeners.port);
      } catch (error) {
        tcp.close();
        throw new CannotStart((error as Error).message, { cause: error });
      }
      listeners.unix = unix;
    }
    return listeners;
  }

  /** Clients that connect from now on go to `handler`. */
  serve(handler: ClientHandler): void {
    this.handler = handler;
  }

  get listening(): boolean {
    return this.tcp.listening;
  }

  /** Stops accepting clients: closes both listeners and removes the socket file. */
  async close(): Promise<void> {
    const { unix, socketPath } = this;
    await Promise.all([
      new Promise<void>((resolve) => this.tcp.close(() => resolve())),
      unix &&
        new Promise<void>((resolve) =>
          unix.close(() => {
            if (socketPath) fs.rmSync(socketPath, { force: true });
            resolve();
          }),
        ),
    ]);
  }
}
