// Where the PostgreSQL server is and how pgbranch logs in to it for its own administrative work.
import net from 'node:net';
import path from 'node:path';
import type { UpstreamTls } from './server-tls.js';

export type Endpoint =
  | {
      host: string;
      port: number;
      /** TLS as the upstream URL asks for it (sslmode...); undefined: none. */
      tls?: UpstreamTls | undefined;
    }
  | { socketDir: string; port: number };

export function connectSocket(endpoint: Endpoint): net.Socket {
  const socket =
    'socketDir' in endpoint
      ? net.connect({ path: path.join(endpoint.socketDir, `.s.PGSQL.${endpoint.port}`) })
      : net.connect({ host: endpoint.host, port: endpoint.port });
  socket.setNoDelay(true);
  return socket;
}

export function describeEndpoint(endpoint: Endpoint): string {
  return 'socketDir' in endpoint
    ? `${endpoint.socketDir}/.s.PGSQL.${endpoint.port}`
    : `${endpoint.host}:${endpoint.port}`;
}

/** node-postgres connection settings for the same endpoint. */
export function pgClientConfig(endpoint: Endpoint): { host: string; port: number } {
  return 'socketDir' in endpoint
    ? { host: endpoint.socketDir, port: endpoint.port }
    : { host: endpoint.host, port: endpoint.port };
}
