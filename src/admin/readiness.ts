// Readiness for /readyz: pgbranch is ready when it takes clients and its server answers. Liveness
// (/healthz) asks neither: a server that is down makes pgbranch unready, not dead.
import type pg from 'pg';

export type Readiness = { ready: true } | { ready: false; reason: string };

/** How long the server has to answer `select 1` before pgbranch counts as not ready. */
export const PROBE_TIMEOUT_MS = 2000;

export interface ReadinessSources {
  /** Whether pgbranch is stopping (SIGTERM or SIGINT): it takes no new clients then. */
  stopping(): boolean;
  /** Whether the proxy's listener takes connections. */
  listening(): boolean;
  /** pgbranch's administrative connections to its server. */
  admin: pg.Pool;
}

export function readinessCheck(
  sources: ReadinessSources,
  timeoutMs = PROBE_TIMEOUT_MS,
): () => Promise<Readiness> {
  return async () => {
    if (sources.stopping()) return { ready: false, reason: 'pgbranch is shutting down' };
    if (!sources.listening())
      return { ready: false, reason: 'pgbranch does not listen for clients' };
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`no answer to select 1 within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      await Promise.race([sources.admin.query('select 1'), late]);
      return { ready: true };
    } catch (error) {
      return {
        ready: false,
        reason: `the PostgreSQL server does not answer: ${(error as Error).message}`,
      };
    } finally {
      clearTimeout(timer);
    }
  };
}
