// The page's side of the admin API: each request carries the token (kept for this browser
// session only), failures arrive as ApiFailure with their SQLSTATE, and follow() reads the live
// branch list from /v1/events over fetch, since EventSource cannot send an Authorization header.
import type { BranchInfo } from '../src/lifecycle/model.js';

export interface ErrorInfo {
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

export class ApiFailure extends Error {
  constructor(
    readonly status: number,
    readonly info: ErrorInfo,
  ) {
    super(info.message);
  }
}

/** Where clients connect; host null: every interface, so the name this page was reached at. */
export interface ProxyAddress {
  host: string | null;
  port: number;
  user: string;
}

const TOKEN_KEY = 'pgbranch.adminToken';

export const adminToken = {
  get: (): string | undefined => sessionStorage.getItem(TOKEN_KEY) ?? undefined,
  set: (token: string) => sessionStorage.setItem(TOKEN_KEY, token),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

function headers(json: boolean): Record<string, string> {
  const token = adminToken.get();
  return {
    accept: 'application/json',
    ...(json ? { 'content-type': 'application/json' } : {}),
    ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
  };
}

async function failure(response: Response): Promise<ApiFailure> {
  const text = await response.text();
  try {
    const body = JSON.parse(text) as { error?: ErrorInfo };
    if (body.error) return new ApiFailure(response.status, body.error);
  } catch {
    // Not the admin API's JSON: a proxy in between, say. Its words are all there is.
  }
  return new ApiFailure(response.status, {
    code: 'XX000',
    message: `HTTP ${response.status}: ${text.slice(0, 200) || response.statusText}`,
  });
}

const unreachable = (error: unknown) =>
  new ApiFailure(0, {
    code: '08006',
    message: `pgbranch did not answer: ${(error as Error).message}`,
    hint: 'Is pgbranch running? The page reconnects by itself.',
  });

export async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
  } catch (error) {
    throw unreachable(error);
  }
  if (!response.ok) throw await failure(response);
  return (await response.json()) as T;
}

/** `/v1/branches/app%40feature%2Fx` and what follows it. */
export const branchPath = (name: string, rest = '') =>
  `/v1/branches/${encodeURIComponent(name)}${rest}`;

export interface FeedHandlers {
  branches(branches: BranchInfo[]): void;
  /** A failure event, or the stream refused (401: the token; the feed then stops). */
  failure(failure: ApiFailure): void;
  live(on: boolean): void;
}

const RECONNECT_MS = 1000;

/** Follows /v1/events until stopped (or refused for the token); reconnects when cut off. */
export function follow(handlers: FeedHandlers): () => void {
  let stopped = false;
  let controller: AbortController | undefined;
  const dispatch = (block: string) => {
    let event = 'message';
    let data = '';
    for (const line of block.split('\n')) {
      if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data += line.slice(6);
    }
    if (event === 'branches') {
      handlers.branches((JSON.parse(data) as { branches: BranchInfo[] }).branches);
    } else if (event === 'failure') {
      handlers.failure(new ApiFailure(503, (JSON.parse(data) as { error: ErrorInfo }).error));
    }
  };
  void (async () => {
    while (!stopped) {
      controller = new AbortController();
      try {
        const response = await fetch('/v1/events', {
          headers: headers(false),
          signal: controller.signal,
        });
        if (!response.ok) {
          const refused = await failure(response);
          handlers.failure(refused);
          if (refused.status === 401) return;
        } else {
          handlers.live(true);
          const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value;
            for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
              dispatch(buffer.slice(0, end));
              buffer = buffer.slice(end + 2);
            }
          }
        }
      } catch (error) {
        if (stopped) return;
        handlers.failure(unreachable(error));
      }
      handlers.live(false);
      if (!stopped) await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
  })();
  return () => {
    stopped = true;
    controller?.abort();
  };
}
