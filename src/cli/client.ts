// The CLI's side of the admin API: one request, JSON in and out, with Node's fetch. Failures are
// sorted into the two a script must tell apart: pgbranch said no (ApiError), or it could not be
// asked at all (Unreachable), and the latter by what a person has to do about it.
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
 * not pgbranch's admin API answers (`foreign`), the request failed on the way (`network`), or the
 * API refused the token: none was sent (`no-token`) or another than the server's (`wrong-token`).
 */
export type UnreachableKind = 'refused' | 'foreign' | 'network' | 'no-token' | 'wrong-token';

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
    /** `http://127.0.0.1:9931` */
    readonly url: string,
    private readonly token?: string,
  ) {}

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.token !== undefined) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let response: Response;
    try {
      response = await fetch(this.url + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      const { kind, reason } = connectFailure(error);
      throw new Unreachable(this.url, kind, reason);
    }
    const text = await response.text();
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
    if (response.ok) return parsed as T;
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

function connectFailure(error: unknown): { kind: UnreachableKind; reason: string } {
  const cause = (error as { cause?: NodeJS.ErrnoException }).cause;
  if (cause?.code?.startsWith('HPE_')) {
    // llhttp's codes: what came back was not HTTP (a PostgreSQL port answers with a packet).
    return { kind: 'foreign', reason: 'it answered with something other than HTTP' };
  }
  switch (cause?.code) {
    case 'ECONNREFUSED':
      return { kind: 'refused', reason: 'nothing is listening there' };
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return { kind: 'network', reason: 'the host name does not resolve' };
    case 'ECONNRESET':
    case 'UND_ERR_SOCKET':
      return { kind: 'foreign', reason: 'it closed the connection without an answer' };
  }
  if (cause?.message === 'bad port') {
    // fetch refuses the ports browsers block (6000, 6665-6669, ...), whatever listens there.
    return { kind: 'network', reason: 'fetch refuses to use this port, as browsers do' };
  }
  return { kind: 'network', reason: cause?.message ?? (error as Error).message };
}
