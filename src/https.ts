// HTTPS for pgbranch's HTTP servers (the admin API, the metrics) with the proxy's certificate and
// key, renewed with it on SIGHUP and RELOAD. Which of them serve HTTPS: config/load.ts servesHttps.
import http from 'node:http';
import https from 'node:https';
import type tls from 'node:tls';

export interface HttpsCertificate {
  cert: Buffer;
  key: Buffer;
}

const options = (pem: HttpsCertificate): tls.SecureContextOptions => ({
  cert: pem.cert,
  key: pem.key,
  minVersion: 'TLSv1.2',
});

/** An HTTP server, or an HTTPS one with this certificate. */
export function createServer(
  pem: HttpsCertificate | undefined,
  handler: http.RequestListener,
): http.Server {
  return pem ? https.createServer(options(pem), handler) : http.createServer(handler);
}

/** New connections get the new certificate; those open keep theirs. Plain HTTP: nothing to do. */
export function renewCertificate(server: http.Server, pem: HttpsCertificate): void {
  if (server instanceof https.Server) server.setSecureContext(options(pem));
}
