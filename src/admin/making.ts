// The admin API while a source's standby is being made, before anything else of pgbranch exists:
// GET /v1/source says how far it is (what `pgbranch source status` prints), /healthz answers,
// /readyz says why pgbranch is not ready, and every other route 503 with SQLSTATE 57P03. The
// full admin API takes the port over once the standby runs.
import type http from 'node:http';
import type { Logger } from 'pino';
import { hostInUrl, reachableHost } from '../config/load.js';
import { createServer, type HttpsCertificate } from '../https.js';
import type { StandbyMaking } from '../source/making.js';
import { bearerCheck } from './auth.js';
import { errorBody } from './error-status.js';
import { adminListenProblem, BEARER_CHALLENGE, checkAdminExposure, unauthorized } from './http.js';

export interface MakingAdminOptions {
  host: string;
  port: number;
  token: string | undefined;
  https: HttpsCertificate | undefined;
  making: StandbyMaking;
  log: Logger;
}

export interface MakingAdmin {
  url: string;
  /** The port listened on: the full admin API takes the same one (admin.port 0 included). */
  port: number;
  close(): Promise<void>;
}

export async function serveAdminWhileMaking(options: MakingAdminOptions): Promise<MakingAdmin> {
  const { host, port, token, making } = options;
  checkAdminExposure(host, token);
  const authorized = token === undefined ? () => true : bearerCheck(token);
  const send = (response: http.ServerResponse, status: number, body: unknown) => {
    const text = JSON.stringify(body);
    response.writeHead(status, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(text),
      ...(status === 401 ? { 'www-authenticate': BEARER_CHALLENGE } : {}),
      // Polled for progress: never a stale answer.
      'cache-control': 'no-store',
    });
    response.end(text);
  };
  const server = createServer(options.https, (request, response) => {
    const route = `${request.method} ${(request.url ?? '/').split('?')[0]}`;
    if (route === 'GET /healthz') return send(response, 200, { status: 'ok' });
    const refusal = making.refusal();
    if (route === 'GET /readyz') {
      return send(response, 503, { status: 'not ready', reason: refusal.message });
    }
    if (!authorized(request.headers.authorization)) {
      return send(response, 401, unauthorized(request.headers.authorization));
    }
    if (route === 'GET /v1/source') return send(response, 200, making.status());
    send(response, 503, errorBody(refusal.code, refusal.message, undefined, refusal.hint));
  });
  // A client that sends a body the route ignores must not leave it unread.
  server.on('request', (request: http.IncomingMessage) => request.resume());
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, resolve);
    });
  } catch (error) {
    throw adminListenProblem(host, port, error);
  }
  const address = server.address();
  const bound = typeof address === 'object' && address ? address.port : port;
  const url = `${options.https ? 'https' : 'http'}://${hostInUrl(reachableHost(host))}:${bound}`;
  options.log.info(
    { event: 'admin_listening_while_making', url },
    `admin API listening on ${url} (GET /v1/source tells how far the standby is)`,
  );
  let closed: Promise<void> | undefined;
  return {
    url,
    port: bound,
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      })),
  };
}
