// postgres.js as a differential driver, one connection per client (max: 1, so that BEGIN and COMMIT
// as SQL stay on it). `sql.unsafe` with `simple: true` is a Simple Query; otherwise the extended
// protocol, with `prepare: true` for a named statement (postgres.js names and caches it by text, and
// prepares again by itself when the server says the statement is gone or its plan changed).
// LISTEN is postgres.js's own `sql.listen`, which opens a connection of its own.
import { Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import postgres from 'postgres';
import { errorOutcome, jsonSafe, type RawResult } from '../outcome.js';
import type { ClientAction, QueryAction } from '../scenario.js';
import {
  notConnected,
  Notifications,
  observed,
  type ConnectionInfo,
  type Driver,
  type DriverOutcome,
  type DriverSession,
} from './driver.js';

interface Client {
  sql: postgres.Sql;
  notices: string[];
  notifications: Notifications;
  listening: Map<string, () => Promise<void>>;
}

/** A result in `values()` form: rows as arrays, with the command tag and columns. */
type Result = unknown[][] & {
  command?: string | null;
  count?: number | null;
  columns?: { name: string; type: number }[] | null;
};

export const postgresJs: Driver = {
  name: 'postgres.js',
  open: () => Promise.resolve(new PostgresJsSession()),
};

class PostgresJsSession implements DriverSession {
  private readonly clients = new Map<string, Client>();

  connect(name: string, connection: ConnectionInfo): Promise<DriverOutcome> {
    const state: Client = {
      sql: undefined as unknown as postgres.Sql,
      notices: [],
      notifications: new Notifications(),
      listening: new Map(),
    };
    state.sql = postgres({
      host: connection.host,
      port: connection.port,
      user: connection.user,
      password: connection.password,
      database: connection.database,
      max: 1,
      idle_timeout: 0,
      max_lifetime: 0,
      connect_timeout: 10,
      onnotice: (notice) => state.notices.push(String(notice.code ?? '?')),
    });
    this.clients.set(name, state);
    // postgres.js connects on first use: reserving the connection connects without a query.
    return observed(
      state,
      async () => {
        const reserved = await state.sql.reserve();
        reserved.release();
        return {};
      },
      errorOutcome,
    );
  }

  run(name: string, action: ClientAction): Promise<DriverOutcome> {
    const state = this.clients.get(name);
    if (!state) return Promise.resolve(notConnected(name));
    return observed(state, () => perform(state, action), errorOutcome);
  }

  async disconnect(name: string): Promise<DriverOutcome> {
    const state = this.clients.get(name);
    if (!state) return notConnected(name);
    this.clients.delete(name);
    return observed(state, async () => (await state.sql.end({ timeout: 5 }), {}), errorOutcome);
  }

  abandon(name: string): void {
    const state = this.clients.get(name);
    this.clients.delete(name);
    void state?.sql.end({ timeout: 0 }).catch(() => undefined);
  }

  async close(): Promise<void> {
    await Promise.all(
      [...this.clients.values()].map((s) => s.sql.end({ timeout: 1 }).catch(() => undefined)),
    );
    this.clients.clear();
  }
}

/** postgres.js takes `simple` in unsafe()'s options; its type declarations leave it out. */
function options(o: { prepare?: boolean; simple: boolean }): postgres.UnsafeQueryOptions {
  return o as postgres.UnsafeQueryOptions;
}

function query(sql: postgres.Sql, action: Omit<QueryAction, 'do'>) {
  const extended = action.protocol === 'extended' || !!action.params || !!action.name;
  return sql
    .unsafe(action.sql, action.params ?? [], options({ prepare: !!action.name, simple: !extended }))
    .values();
}

async function perform(state: Client, action: ClientAction): Promise<DriverOutcome> {
  const { sql } = state;
  switch (action.do) {
    case 'query':
      return { results: results((await query(sql, action)) as unknown as Result) };
    case 'pipeline': {
      const sent = action.queries.map((q) =>
        Promise.resolve(query(sql, q)).then(
          (r): DriverOutcome => ({ results: results(r as unknown as Result) }),
          errorOutcome,
        ),
      );
      return { pipeline: await Promise.all(sent) };
    }
    case 'copy-in': {
      const writable = await sql.unsafe(action.sql).writable();
      await pipeline(Readable.from([Buffer.from(action.data)]), writable);
      return {};
    }
    case 'copy-out': {
      // Flowing, not iterated: postgres.js pauses its socket when the stream's buffer fills, and
      // if COPY's end arrived in the same read nothing resumes it, so the next query would hang.
      const readable = await sql.unsafe(action.sql).readable();
      const chunks: Buffer[] = [];
      readable.on('data', (chunk: Buffer) => chunks.push(chunk));
      await finished(readable);
      return { copied: Buffer.concat(chunks).toString() };
    }
    case 'cursor': {
      const rows: unknown[][] = [];
      const cursor = sql
        .unsafe(action.sql, [], options({ simple: false }))
        .values()
        .cursor(action.batch);
      for await (const batch of cursor) {
        for (const row of batch as unknown as unknown[][]) rows.push(row.map(jsonSafe));
      }
      return { results: [{ command: null, rowCount: rows.length, rows }] };
    }
    case 'listen': {
      const { channel } = action;
      const listener = await sql.listen(channel, (payload) =>
        state.notifications.push({ channel, payload }),
      );
      state.listening.set(channel, listener.unlisten);
      return {};
    }
    case 'unlisten':
      await state.listening.get(action.channel)?.();
      state.listening.delete(action.channel);
      return {};
    case 'notification':
      return state.notifications.next(action.channel);
  }
}

/** One result, or several from a simple query of several statements. */
function results(outcome: Result): RawResult[] {
  const several = outcome.length > 0 && 'command' in (outcome[0] as object);
  return (several ? (outcome as unknown as Result[]) : [outcome]).map((r) => ({
    command: r.command ?? null,
    rowCount: r.count ?? null,
    fields: (r.columns ?? []).map((c): [string, number] => [c.name, c.type]),
    rows: [...r].map((row) => row.map(jsonSafe)),
  }));
}
