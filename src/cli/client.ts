// The CLI's side of the admin API: one request, JSON in and out, with Node's fetch. Failures are
// sorted into the two a script must tell apart: pgbranch said no (ApiError), or it could not be
// asked at all (Unreachable).
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

/** No admin API answered at the URL: nothing listens, something else does, or the token is wrong. */
export class Unreachable extends Error {
  override name = 'Unreachable';
  constructor(
    readonly url: string,
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
      throw new Unreachable(this.url, connectFailure(error));
    }
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new Unreachable(
        this.url,
        `it answered HTTP ${response.status} with something other than JSON: is this pgbranch's admin port?`,
      );
    }
    if (response.ok) return parsed as T;
    const error = (parsed as Partial<ErrorBody>).error;
    if (typeof error?.code !== 'string' || typeof error.message !== 'string') {
      throw new Unreachable(
        this.url,
        `it answered HTTP ${response.status} without a pgbranch error`,
      );
    }
    if (response.status === 401) {
      throw new Unreachable(
        this.url,
        this.token === undefined
          ? 'it requires an admin token: set PGBRANCH_ADMIN_TOKEN (admin.token) as the server has it'
          : 'it refused the admin token: PGBRANCH_ADMIN_TOKEN (admin.token) differs from the server’s',
      );
    }
    throw new ApiError(response.status, parsed as ErrorBody);
  }
}

function connectFailure(error: unknown): string {
  const cause = (error as { cause?: NodeJS.ErrnoException }).cause;
  switch (cause?.code) {
    case 'ECONNREFUSED':
      return 'nothing is listening there';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'the host name does not resolve';
    case 'ECONNRESET':
      return 'the connection was closed: is this pgbranch’s admin port?';
    default:
      return cause?.message ?? (error as Error).message;
  }
}
