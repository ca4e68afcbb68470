// The CLI's side of the admin API: one request, JSON in and out, over node:http or node:https
// (fetch gives up after five minutes without an answer, and a copy of a large database takes
// longer). Failures are sorted into the two a script must tell apart: pgbranch said no (ApiError),
// or it could not be asked at all (Unreachable), and the latter by what a person has to do about it.
import http from 'node:http';
import https from 'node:https';
import type { ErrorBody } from '../admin/error-status.js';

/** pgbranch answered with an error: the SQLSTATE and its words. */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    readonly body: ErrorBody,
  ) {
    super(body.error.message);
  }
}

/**
 * Why the admin API could not be asked: nothing listens at the URL (`refused`), something that is
 * not pgbranch's admin API answers (`foreign`), the connection ended before an answer (`dropped`:
 * pgbranch stopped, and what it was asked may have happened), the request failed on the way
 * (`network`), the API refused the token: none was sent (`no-token`) or another than the
 * server's (`wrong-token`), or HTTPS failed: the certificate is not trusted (`untrusted`) or not
 * for the host asked (`wrong-name`), or plain HTTP answered an HTTPS request (`not-https`).
 */
export type UnreachableKind =
  | 'refused'
  | 'foreign'
  | 'dropped'
  | 'network'
  | 'no-token'
  | 'wrong-token'
  | 'untrusted'
  | 'wrong-name'
  | 'not-https';

/** No admin API answered at the URL, or it would not answer without the right token. */
export class Unreachable extends Error {
  override name = 'Unreachable';
  constructor(
    readonly url: string,
    readonly kind: UnreachableKind,
    reason: string,
  ) {
    super(reason);
  }
}

export class AdminClient {
  constructor(
    /** `http://127.0.0.1:9931`, or `https://...` */
    readonly url: string,
    private readonly token?: string,
    /** Over HTTPS: the CA that signed pgbranch's certificate; undefined: the system's CAs. */
    private readonly ca?: Buffer,
  ) {}

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.token !== undefined) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let response: { status: number; text: string };
    try {
      response = await send(
        this.url + path,
        { method, headers, ...(this.ca ? { ca: this.ca } : {}) },
        body === undefined ? undefined : JSON.stringify(body),
      );
    } catch (error) {
      const { kind, reason } = connectFailure(error as NodeJS.ErrnoException);
      throw new Unreachable(this.url, kind, reason);
    }
    const text = response.text;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new Unreachable(
        this.url,
        'foreign',
        `it answered HTTP ${response.status} with something other than JSON`,
      );
    }
    if (response.status >= 200 && response.status < 300) return parsed as T;
    const error = (parsed as Partial<ErrorBody>).error;
    if (typeof error?.code !== 'string' || typeof error.message !== 'string') {
      throw new Unreachable(
        this.url,
        'foreign',
        `it answered HTTP ${response.status} without a pgbranch error`,
      );
    }
    if (response.status === 401) {
      throw this.token === undefined
        ? new Unreachable(this.url, 'no-token', 'it requires a token, and none was given')
        : new Unreachable(this.url, 'wrong-token', 'it refused the token given');
    }
    throw new ApiError(response.status, parsed as ErrorBody);
  }
}

/** One request; resolves with the whole answer, however long it takes to come. */
function send(
  url: string,
  options: https.RequestOptions,
  body: string | undefined,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const request = (url.startsWith('https:') ? https : http).request(url, options, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('error', reject);
      response.on('end', () => {
        if (!response.complete) {
          reject(Object.assign(new Error('the answer was cut short'), { code: 'ECONNRESET' }));
          return;
        }
        resolve({ status: response.statusCode ?? 0, text: Buffer.concat(chunks).toString() });
      });
    });
    request.on('error', reject);
    request.end(body);
  });
}

function connectFailure(error: NodeJS.ErrnoException): { kind: UnreachableKind; reason: string } {
  if (error.code?.startsWith('HPE_')) {
    // llhttp's codes: what came back was not HTTP (a PostgreSQL port answers with a packet).
    return { kind: 'foreign', reason: 'it answered with something other than HTTP' };
  }
  switch (error.code) {
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      return { kind: 'wrong-name', reason: error.message };
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'CERT_HAS_EXPIRED':
    case 'CERT_NOT_YET_VALID':
      return { kind: 'untrusted', reason: `its certificate is not trusted: ${error.message}` };
    case 'EPROTO':
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
    case 'ERR_SSL_PACKET_LENGTH_TOO_LONG':
      // OpenSSL reads an HTTP answer's first bytes as a TLS record of an unknown version.
      if (/wrong version number|packet length too long|WRONG_VERSION/i.test(error.message)) {
        return { kind: 'not-https', reason: 'it answered an HTTPS request with plain HTTP' };
      }
      break;
    case 'ECONNREFUSED':
      return { kind: 'refused', reason: 'nothing is listening there' };
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return { kind: 'network', reason: 'the host name does not resolve' };
    case 'ECONNRESET':
    case 'EPIPE':
      return { kind: 'dropped', reason: 'the connection ended before an answer came' };
  }
  return { kind: 'network', reason: error.message };
}
