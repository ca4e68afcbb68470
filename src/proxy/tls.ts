// TLS on the proxy port: the certificate and key read from their files (again on every reload),
// and taking a client connection over to TLS, after an SSLRequest or at once (direct TLS, as
// PostgreSQL 17+ clients with sslnegotiation=direct start it).
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import type net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';

export type TlsMode = 'allow' | 'require';

/** The ALPN protocol PostgreSQL 17+ names itself by; direct TLS must offer it. */
export const ALPN_POSTGRESQL = 'postgresql';

/** The first byte of a TLS handshake record: a client starting TLS at once (direct TLS). */
export const TLS_HANDSHAKE_BYTE = 0x16;

export interface ServerTls {
  mode: TlsMode;
  certFile: string;
  keyFile: string;
  context: tls.SecureContext;
  /** The server certificate (the first of the file): its fingerprint and validity for the logs. */
  certificate: X509Certificate;
  /** The files' contents, for the admin API and metrics when they serve HTTPS. */
  pem: { cert: Buffer; key: Buffer };
}

export class TlsFileError extends Error {
  override name = 'TlsFileError';
}

/**
 * Reads the certificate (with any intermediates after it) and key. Throws TlsFileError naming the
 * setting and file when one can't be read or they don't belong together.
 */
export function loadServerTls(settings: { cert: string; key: string; mode: TlsMode }): ServerTls {
  const read = (key: 'tls.cert' | 'tls.key', file: string) => {
    try {
      return fs.readFileSync(file);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new TlsFileError(
        `${key}: cannot read ${file}: ${code === 'ENOENT' ? 'no such file' : (error as Error).message}`,
      );
    }
  };
  const cert = read('tls.cert', settings.cert);
  const key = read('tls.key', settings.key);
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(cert);
  } catch (error) {
    throw new TlsFileError(
      `tls.cert: ${settings.cert} is not a PEM certificate: ${(error as Error).message}`,
    );
  }
  let context: tls.SecureContext;
  try {
    context = tls.createSecureContext({ cert, key, minVersion: 'TLSv1.2' });
  } catch (error) {
    throw new TlsFileError(
      `tls.key: ${settings.key} does not fit the certificate ${settings.cert}: ${(error as Error).message}`,
    );
  }
  return {
    mode: settings.mode,
    certFile: settings.cert,
    keyFile: settings.key,
    context,
    certificate,
    pem: { cert, key },
  };
}

/** What the logs and the banner say about the certificate in use. */
export function describeCertificate(tlsSettings: ServerTls): {
  certFile: string;
  subject: string;
  validTo: string;
  fingerprint256: string;
} {
  const { certificate } = tlsSettings;
  return {
    certFile: tlsSettings.certFile,
    subject: certificate.subject.replaceAll('\n', ', '),
    validTo: new Date(certificate.validTo).toISOString(),
    fingerprint256: certificate.fingerprint256,
  };
}

/**
 * Runs the server side of a TLS handshake on `socket` and resolves with the TLS socket once it is
 * done. `pending` holds bytes already read from the socket (a direct TLS ClientHello): the TLS
 * socket then reads through a stream that hands those out first. Without them, it takes the
 * socket's handle itself, which is faster. Rejects when the handshake fails or the socket closes.
 */
export function startTls(
  socket: net.Socket,
  settings: ServerTls,
  pending: Buffer,
  timeoutMs: number,
): Promise<tls.TLSSocket> {
  const secure = new tls.TLSSocket(pending.length > 0 ? replaying(socket, pending) : socket, {
    isServer: true,
    secureContext: settings.context,
    // A client that offers ALPN must offer postgresql (the handshake fails otherwise); one that
    // offers none is let through here, and direct TLS refuses it after the handshake.
    ALPNProtocols: [ALPN_POSTGRESQL],
  });
  if (pending.length > 0) {
    // The stream in between has no address; the session's logs and the console show the client's.
    Object.defineProperty(secure, 'remoteAddress', { value: socket.remoteAddress });
    Object.defineProperty(secure, 'remotePort', { value: socket.remotePort });
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error('TLS handshake timed out')), timeoutMs);
    const closed = () =>
      fail(new Error('the client closed the connection during the TLS handshake'));
    const fail = (error: Error) => {
      clearTimeout(timer);
      secure.removeListener('close', closed);
      secure.destroy();
      socket.destroy();
      reject(error);
    };
    secure.once('error', fail);
    secure.once('close', closed);
    secure.once('secure', () => {
      clearTimeout(timer);
      secure.removeListener('error', fail);
      secure.removeListener('close', closed);
      secure.on('error', () => secure.destroy());
      resolve(secure);
    });
  });
}

/** A stream over `socket` that reads `pending` first, then what the socket receives. */
function replaying(socket: net.Socket, pending: Buffer): Duplex {
  const stream = new Duplex({
    read: () => {
      socket.resume();
    },
    write: (chunk: Buffer, _encoding, callback) => {
      socket.write(chunk, callback);
    },
    final: (callback) => {
      socket.end(callback);
    },
    destroy: (error, callback) => {
      socket.destroy();
      callback(error);
    },
  });
  stream.push(pending);
  socket.on('data', (chunk: Buffer) => {
    if (!stream.push(chunk)) socket.pause();
  });
  socket.on('end', () => stream.push(null));
  socket.on('close', () => stream.destroy());
  return stream;
}
