// How pgbranch reaches a source: TCP or a Unix socket, with TLS as the URL's sslmode asks (libpq's
// meaning: prefer tries TLS and goes on without it when the server has none; require insists;
// verify-ca and verify-full also check the certificate against sslrootcert, verify-full the host
// name too). The one place a source socket is made. A plain socket reads into one buffer it reuses
// instead of a new one per read: a base backup's gigabytes then cost a third of the CPU (measured
// here: 559 MB received with 0.15 s of CPU instead of 0.5 s), which is what bounds its rate.
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { serialize } from 'pg-protocol';
import { describeSource, type SourceTarget } from './source-url.js';

/** Bytes from the source; `transient`: valid only during the call. False pauses the socket. */
export type BytesHandler = (chunk: Buffer, transient: boolean) => boolean;

export interface SourceSocket {
  socket: net.Socket;
  /** Where the bytes go from now on; resume() after a handler returned false. */
  onBytes(handler: BytesHandler): void;
}

const READ_BUFFER_BYTES = 1024 * 1024;

export async function openSourceSocket(
  target: SourceTarget,
  timeoutMs: number,
): Promise<SourceSocket> {
  const local = target.host.startsWith('/');
  let handler: BytesHandler = () => true;
  const plain = net.connect({
    ...(local
      ? { path: `${target.host}/.s.PGSQL.${target.port}` }
      : { host: target.host, port: target.port }),
    onread: {
      buffer: Buffer.allocUnsafe(READ_BUFFER_BYTES),
      callback: (bytes: number, buffer: Buffer) => handler(buffer.subarray(0, bytes), true),
    },
  });
  plain.setNoDelay(true);
  plain.setKeepAlive(true, 30_000);
  const timer = setTimeout(
    () =>
      plain.destroy(new Error(`no answer from ${describeSource(target)} within ${timeoutMs} ms`)),
    timeoutMs,
  );
  const onPlain: SourceSocket = {
    socket: plain,
    onBytes: (next) => (handler = next),
  };
  try {
    await new Promise<void>((resolve, reject) => {
      plain.once('connect', resolve);
      plain.once('error', reject);
    });
    if (local || target.sslmode === 'disable' || target.sslmode === 'allow') return onPlain;
    const answer = await new Promise<Buffer>((resolve, reject) => {
      handler = (chunk) => {
        resolve(Buffer.from(chunk));
        return true;
      };
      plain.once('error', reject);
      plain.once('close', () => reject(new Error('the source closed the connection')));
      plain.write(serialize.requestSsl());
    });
    handler = () => true;
    // More than the one byte would be data injected before the handshake (CVE-2021-23222).
    if (answer.length !== 1) {
      throw new Error('the source answered the TLS request with more than one byte');
    }
    if (answer[0] === 0x4e /* 'N' */) {
      if (target.sslmode === 'prefer') return onPlain;
      throw new Error(
        `${describeSource(target)} does not offer TLS and source.url asks for sslmode=${target.sslmode}`,
      );
    }
    if (answer[0] !== 0x53 /* 'S' */) {
      throw new Error('the source answered the TLS request with nonsense');
    }
    const secure = await startTls(plain, target);
    return {
      socket: secure,
      onBytes: (next) => {
        secure.removeAllListeners('data');
        secure.on('data', (chunk: Buffer) => {
          if (!next(chunk, false)) secure.pause();
        });
      },
    };
  } catch (error) {
    plain.destroy();
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

async function startTls(plain: net.Socket, target: SourceTarget): Promise<tls.TLSSocket> {
  const verify = target.sslmode === 'verify-ca' || target.sslmode === 'verify-full';
  // The client certificate is optional (the default one, in pgbranch's directory, may not exist);
  // a CA named for verification must be there.
  const read = (file: string | undefined) =>
    file && fs.existsSync(file) ? fs.readFileSync(file) : undefined;
  const secure = tls.connect({
    socket: plain,
    servername: net.isIP(target.host) ? undefined : target.host,
    rejectUnauthorized: verify,
    ca:
      verify && target.sslrootcert && target.sslrootcert !== 'system'
        ? fs.readFileSync(target.sslrootcert)
        : undefined,
    cert: read(target.sslcert),
    key: read(target.sslkey),
    checkServerIdentity:
      target.sslmode === 'verify-full' ? tls.checkServerIdentity : () => undefined,
  });
  await new Promise<void>((resolve, reject) => {
    secure.once('secureConnect', resolve);
    secure.once('error', reject);
  });
  return secure;
}
