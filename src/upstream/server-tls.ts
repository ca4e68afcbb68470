// TLS from pgbranch to its PostgreSQL server when the upstream URL asks for it, read as libpq reads
// sslmode, sslrootcert, sslcert and sslkey, for pgbranch's pooled server connections, its cancel
// requests and its administrative connections (node-postgres) alike.
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { errors, PgError } from '../errors.js';

export const SSL_MODES = [
  'disable',
  'allow',
  'prefer',
  'require',
  'verify-ca',
  'verify-full',
] as const;
export type SslMode = (typeof SSL_MODES)[number];

export interface UpstreamTls {
  mode: SslMode;
  /** The CAs that may have signed the server's certificate; undefined: the system's (sslrootcert=system). */
  ca?: Buffer;
  /** Where they came from, for messages. */
  rootCert?: string;
  /** A client certificate and its key (sslcert, sslkey), for servers that ask for one. */
  cert?: Buffer;
  key?: Buffer;
  /** The URL's host: what verify-full checks the certificate against, and the SNI sent. */
  host: string;
}

/** A URL parameter pgbranch can't honour or a file it can't read: start-up stops with it. */
export class UpstreamTlsError extends Error {
  override name = 'UpstreamTlsError';
}

/** The ssl* parameters libpq knows that pgbranch does not implement: refused, not ignored. */
const UNSUPPORTED = ['sslcrl', 'sslcrldir', 'sslpassword', 'sslnegotiation', 'sslcompression'];
const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

/** What the upstream URL asks for, before its files are read. */
export interface UpstreamTlsRequest {
  mode: Exclude<SslMode, 'disable'>;
  host: string;
  rootCert?: string;
  certFile?: string;
  keyFile?: string;
}

/**
 * What the upstream URL's ssl* parameters ask for, or undefined for no TLS. Throws
 * UpstreamTlsError naming the parameter when they are wrong or pgbranch can't honour them. Without
 * sslmode pgbranch uses no TLS (libpq's default is prefer); an sslrootcert, sslcert or sslkey
 * without sslmode is refused rather than guessed at, except sslrootcert=system, which means
 * verify-full as in libpq.
 */
export function parseUpstreamTls(url: URL): UpstreamTlsRequest | undefined {
  const params = url.searchParams;
  for (const name of UNSUPPORTED) {
    if (params.has(name)) {
      throw new UpstreamTlsError(
        `${name} in the upstream URL is not supported by pgbranch; supported: sslmode, sslrootcert, sslcert, sslkey`,
      );
    }
  }
  const given = params.get('sslmode');
  const rootCert = params.get('sslrootcert') || undefined;
  const certFile = params.get('sslcert') || undefined;
  const keyFile = params.get('sslkey') || undefined;
  if (given !== null && !(SSL_MODES as readonly string[]).includes(given)) {
    throw new UpstreamTlsError(
      `sslmode=${given} in the upstream URL is not a mode: use one of ${SSL_MODES.join(', ')}`,
    );
  }
  let mode = given as SslMode | null;
  if (mode === null) {
    if (rootCert === 'system') mode = 'verify-full';
    else if (rootCert || certFile || keyFile) {
      const which = rootCert ? 'sslrootcert' : certFile ? 'sslcert' : 'sslkey';
      throw new UpstreamTlsError(
        `${which} in the upstream URL needs an sslmode too: add sslmode=verify-full ` +
          `(or verify-ca, require); without sslmode pgbranch does not use TLS to the server`,
      );
    } else return undefined;
  }
  if (mode === 'disable') return undefined;
  if (rootCert === 'system' && mode !== 'verify-full') {
    throw new UpstreamTlsError(
      `sslrootcert=system in the upstream URL needs sslmode=verify-full (it has sslmode=${mode}), as libpq requires`,
    );
  }
  // As libpq: require with a root certificate checks the chain, as verify-ca does.
  if (mode === 'require' && rootCert) mode = 'verify-ca';
  if ((mode === 'verify-ca' || mode === 'verify-full') && !rootCert) {
    throw new UpstreamTlsError(
      `sslmode=${mode} in the upstream URL needs sslrootcert: the file of the CA that signed the ` +
        `server's certificate (or sslrootcert=system for the system's CAs)`,
    );
  }
  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw new UpstreamTlsError(
      `${certFile ? 'sslcert' : 'sslkey'} in the upstream URL needs ${certFile ? 'sslkey' : 'sslcert'} too: a client certificate goes with its key`,
    );
  }
  return { mode, host: hostOf(url), rootCert, certFile, keyFile };
}

/** Reads the files a request names; throws UpstreamTlsError naming one that can't be used. */
export function loadUpstreamTls(request: UpstreamTlsRequest): UpstreamTls {
  const read = (param: string, file: string) => {
    try {
      return fs.readFileSync(file);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new UpstreamTlsError(
        `${param}=${file} in the upstream URL can't be read: ${code === 'ENOENT' ? 'no such file' : (error as Error).message}`,
      );
    }
  };
  const settings: UpstreamTls = { mode: request.mode, host: request.host };
  if (request.rootCert) settings.rootCert = request.rootCert;
  if (request.rootCert && request.rootCert !== 'system') {
    settings.ca = read('sslrootcert', request.rootCert);
  }
  if (request.certFile && request.keyFile) {
    settings.cert = read('sslcert', request.certFile);
    settings.key = read('sslkey', request.keyFile);
  }
  // A broken file is better said at start than at every connection.
  try {
    tls.createSecureContext(secureContextOptions(settings));
  } catch (error) {
    throw new UpstreamTlsError(
      `the TLS files in the upstream URL can't be used: ${(error as Error).message}`,
    );
  }
  return settings;
}

function hostOf(url: URL): string {
  const host = url.hostname || '127.0.0.1';
  return host.startsWith('[') ? host.slice(1, -1) : host;
}

function secureContextOptions(settings: UpstreamTls): tls.SecureContextOptions {
  return {
    minVersion: 'TLSv1.2',
    ...(settings.ca ? { ca: settings.ca } : {}),
    ...(settings.cert ? { cert: settings.cert, key: settings.key } : {}),
  };
}

/** Whether a connection in this mode starts with an SSLRequest (allow tries plain text first). */
export function asksForTls(settings: UpstreamTls | undefined): boolean {
  return settings !== undefined && settings.mode !== 'allow';
}

/** Whether this mode refuses a server that won't do TLS. */
function insists(mode: SslMode): boolean {
  return mode === 'require' || mode === 'verify-ca' || mode === 'verify-full';
}

/** node:tls options for the client side: what to verify, by mode. */
function verifyOptions(settings: UpstreamTls): tls.ConnectionOptions {
  const verify = settings.mode === 'verify-ca' || settings.mode === 'verify-full';
  return {
    ...secureContextOptions(settings),
    // As libpq: the host name as SNI, never an address.
    ...(net.isIP(settings.host) === 0 ? { servername: settings.host } : {}),
    host: settings.host,
    rejectUnauthorized: verify,
    // verify-ca checks the chain only; verify-full also the name, as Node does by default.
    ...(settings.mode === 'verify-full' ? {} : { checkServerIdentity: () => undefined }),
  };
}

/**
 * Takes a connected socket to the server through the SSLRequest and, when the server answers S,
 * the TLS handshake: resolves with the socket to speak the protocol on (the TLS socket, or the
 * same one when prefer met a server without TLS). `where` names the server in errors.
 */
export function startServerTls(
  socket: net.Socket,
  settings: UpstreamTls,
  where: string,
): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      socket.removeListener('data', onAnswer);
      socket.removeListener('error', onError);
      socket.removeListener('close', onClose);
    };
    const onError = (error: Error) => {
      cleanup();
      reject(errors.upstreamUnavailable(`${where}: ${error.message}`));
    };
    const onClose = () => {
      cleanup();
      reject(errors.upstreamUnavailable(`${where} closed the connection during the SSLRequest`));
    };
    const onAnswer = (chunk: Buffer) => {
      cleanup();
      // Anything after the one byte would be a man in the middle's injection (CVE-2021-23222).
      if (chunk.length !== 1 || (chunk[0] !== 0x53 && chunk[0] !== 0x4e)) {
        socket.destroy();
        reject(
          errors.upstreamUnavailable(`${where} answered the SSLRequest with an invalid response`),
        );
        return;
      }
      if (chunk[0] === 0x4e) {
        if (insists(settings.mode)) {
          socket.destroy();
          reject(serverWithoutTls(where, settings.mode));
          return;
        }
        resolve(socket);
        return;
      }
      const secure = tls.connect({ socket, ...verifyOptions(settings) });
      const failed = (error: Error) => {
        secure.destroy();
        socket.destroy();
        reject(tlsFailure(where, settings, error));
      };
      secure.once('error', failed);
      secure.once('secureConnect', () => {
        secure.removeListener('error', failed);
        // An error of the socket underneath ends the TLS socket, whose owner is listening.
        socket.on('error', (error) => secure.destroy(error));
        resolve(secure);
      });
    };
    socket.on('data', onAnswer);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.write(SSL_REQUEST);
  });
}

function serverWithoutTls(where: string, mode: SslMode): PgError {
  return errors.upstreamTls(
    `${where} does not accept TLS connections, and the upstream URL has sslmode=${mode}`,
    'Turn ssl on in the server (ssl = on, with ssl_cert_file and ssl_key_file), or lower sslmode in the upstream URL.',
  );
}

/** A handshake failure, worded for what the user can do about it. */
function tlsFailure(where: string, settings: UpstreamTls, error: Error): PgError {
  const code = (error as NodeJS.ErrnoException).code ?? '';
  const trusted =
    settings.rootCert === 'system'
      ? "the system's CAs (sslrootcert=system)"
      : `the CA in sslrootcert=${settings.rootCert}`;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return errors.upstreamTls(
      `the certificate of ${where} is not for "${settings.host}" (sslmode=verify-full): ${error.message}`,
      'Connect to a name the certificate holds (its subjectAltName), or use sslmode=verify-ca to check the CA only.',
    );
  }
  if (
    /CERT|SIGNATURE|ISSUER|SELF_SIGNED|VERIFY/.test(code) &&
    code !== 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA'
  ) {
    return errors.upstreamTls(
      `the certificate of ${where} was not signed by ${trusted} (sslmode=${settings.mode}): ${error.message}`,
      'Give the CA that signed the server certificate in sslrootcert, or check that the upstream URL names the right server.',
    );
  }
  return errors.upstreamTls(
    `TLS with ${where} failed (sslmode=${settings.mode}): ${error.message}`,
    settings.cert
      ? 'Check that the server accepts the client certificate in sslcert (its CA in the server’s ssl_ca_file).'
      : 'Check the server’s TLS settings (ssl, ssl_min_protocol_version) and the upstream URL.',
  );
}

/**
 * node-postgres's `ssl` for the administrative connections: the same checks as above. node-postgres
 * can't fall back between plain text and TLS, so prefer and allow are settled once, at start, by
 * `settleFallback`.
 */
export function pgSsl(settings: UpstreamTls | undefined): false | tls.ConnectionOptions {
  if (!settings || settings.mode === 'allow') return false;
  return verifyOptions(settings);
}

/**
 * For prefer and allow, what the administrative connections do, decided with the server at start:
 * prefer uses TLS when the server answers the SSLRequest with S; allow uses plain text unless the
 * server refuses it (`plainRefused` says whether it did). Other modes are returned as they are.
 */
export async function settleFallback(
  settings: UpstreamTls | undefined,
  endpoint: { host: string; port: number },
  plainRefused: () => Promise<boolean>,
): Promise<UpstreamTls | undefined> {
  if (settings?.mode === 'prefer') {
    const offers = await offersTls(endpoint);
    return offers ? { ...settings, mode: 'require' } : undefined;
  }
  if (settings?.mode === 'allow') {
    return (await plainRefused()) ? { ...settings, mode: 'require' } : undefined;
  }
  return settings;
}

/**
 * The SSLRequest and handshake once, at start, so that a wrong CA, a certificate for another name
 * or a server without TLS stops pgbranch with the reason instead of node-postgres's bare one.
 * Resolves when TLS works (or the mode lets it go without); rejects with a PgError otherwise.
 */
export function checkServerTls(
  settings: UpstreamTls,
  endpoint: { host: string; port: number },
  timeoutMs: number,
): Promise<void> {
  const where = `${endpoint.host}:${endpoint.port}`;
  return new Promise((resolve, reject) => {
    const socket = net.connect(endpoint);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(errors.upstreamUnavailable(`no answer from ${where} within ${timeoutMs} ms`));
    }, timeoutMs);
    const failed = (error: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(errors.upstreamUnavailable(`${where}: ${error.message}`));
    };
    socket.once('error', failed);
    socket.once('connect', () => {
      socket.removeListener('error', failed);
      startServerTls(socket, settings, where).then(
        (on) => {
          clearTimeout(timer);
          on.destroy();
          socket.destroy();
          resolve();
        },
        (error: unknown) => {
          clearTimeout(timer);
          reject(error as Error);
        },
      );
    });
  });
}

/** Whether the server answers an SSLRequest with S. */
function offersTls(endpoint: { host: string; port: number }): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(endpoint);
    const answer = (yes: boolean) => {
      socket.destroy();
      resolve(yes);
    };
    socket.setTimeout(10_000, () => answer(false));
    socket.once('connect', () => socket.write(SSL_REQUEST));
    socket.once('data', (chunk: Buffer) => answer(chunk[0] === 0x53));
    socket.once('error', () => answer(false));
    socket.once('close', () => answer(false));
  });
}
