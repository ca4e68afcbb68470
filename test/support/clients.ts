// Real clients for tests: psql (the machine's), and node-postgres.
import { afterEach } from 'vitest';
import { execFile } from 'node:child_process';
import pg from 'pg';

export interface PsqlResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs psql -X -A -t with the given SQL; never throws on a failed query (read `code`). */
export function psql(
  url: string,
  sql: string,
  options: { env?: Record<string, string>; timeoutMs?: number; args?: string[] } = {},
): Promise<PsqlResult> {
  return new Promise((resolve) => {
    execFile(
      'psql',
      ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', ...(options.args ?? []), '-d', url, '-c', sql],
      {
        env: { ...process.env, PGCONNECT_TIMEOUT: '30', ...options.env },
        timeout: options.timeoutMs ?? 60_000,
      },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
        resolve({ code, stdout: stdout.trim(), stderr: stderr.trim() });
      },
    );
  });
}

/** A node-postgres client for a URL or a config, with `config` over it; not connected yet. */
function newClient(url: string | pg.ClientConfig, config: pg.ClientConfig): pg.Client {
  return new pg.Client(
    typeof url === 'string' ? { connectionString: url, ...config } : { ...url, ...config },
  );
}

/** A connected node-postgres client; the caller ends it. */
export async function connect(
  url: string | pg.ClientConfig,
  config: pg.ClientConfig = {},
): Promise<pg.Client> {
  const client = newClient(url, config);
  await client.connect();
  return client;
}

/**
 * Connects, keeping the NOTICEs the server sends from the start (a new branch's creation says how
 * it was made in them): the session, and the notices so far and to come.
 */
export async function connectWithNotices(
  url: string | pg.ClientConfig,
  config: pg.ClientConfig = {},
): Promise<{ client: pg.Client; notices: string[] }> {
  const client = newClient(url, config);
  const notices: string[] = [];
  client.on('notice', (notice) => notices.push(notice.message ?? ''));
  await client.connect();
  return { client, notices };
}

/** Connects, runs one query, disconnects: the rows. */
export async function queryOnce<T extends pg.QueryResultRow = pg.QueryResultRow>(
  url: string,
  sql: string,
  params: unknown[] = [],
): Promise<T[]> {
  const client = await connect(url);
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

/** The SQLSTATE a connection attempt fails with (undefined when it succeeds). */
export async function connectError(
  url: string | pg.ClientConfig,
  config: pg.ClientConfig = {},
): Promise<{ code?: string; message: string } | undefined> {
  const client = new pg.Client(
    typeof url === 'string' ? { connectionString: url, ...config } : { ...url, ...config },
  );
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.end();
    return undefined;
  } catch (error) {
    const e = error as { code?: string; message: string };
    return { code: e.code, message: e.message };
  }
}

/**
 * A connect whose clients are ended after each test, whatever happened in it, so that one failure
 * does not cascade into the next tests. Call once at a test file's top level. `track` adds a client
 * the test connected itself (to watch its startup messages, say).
 */
export function connectEndedAfterEachTest(): ((config: pg.ClientConfig) => Promise<pg.Client>) & {
  track(client: pg.Client): pg.Client;
} {
  const opened = new Set<pg.Client>();
  afterEach(async () => {
    await Promise.all([...opened].map((client) => client.end().catch(() => undefined)));
    opened.clear();
  });
  const track = (client: pg.Client) => {
    client.on('error', () => undefined);
    opened.add(client);
    return client;
  };
  return Object.assign(async (config: pg.ClientConfig) => track(await connect(config)), {
    track,
  });
}
