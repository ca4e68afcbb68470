// node-postgres (pg) as a differential driver. Simple queries are text without values; the
// extended protocol is `queryMode: 'extended'` or values; named statements are pg's `name`, which
// pg parses once per connection and then only binds. COPY and batched reads go through pg's own
// extension points (a Submittable, and the `rows` option that reads a portal in batches).
import pg from 'pg';
import { errorOutcome, jsonSafe, type RawResult } from '../outcome.js';
import type { ClientAction, Params, QueryAction } from '../scenario.js';
import {
  notConnected,
  Notifications,
  observed,
  quoteIdent,
  type ConnectionInfo,
  type Driver,
  type DriverOutcome,
  type DriverSession,
} from './driver.js';

interface Client {
  client: pg.Client;
  notices: string[];
  notifications: Notifications;
}

/** pg's query options that its type declarations leave out. */
type Config = pg.QueryArrayConfig & { queryMode?: 'extended'; rows?: number };

export const nodePostgres: Driver = {
  name: 'pg',
  open: () => Promise.resolve(new PgSession()),
};

class PgSession implements DriverSession {
  private readonly clients = new Map<string, Client>();

  connect(name: string, connection: ConnectionInfo): Promise<DriverOutcome> {
    const client = new pg.Client({ ...connection, connectionTimeoutMillis: 10_000 });
    const state: Client = { client, notices: [], notifications: new Notifications() };
    // A broken connection fails the step that uses it; the event itself needs no handling.
    client.on('error', () => undefined);
    client.on('notice', (notice) => state.notices.push(notice.code ?? '?'));
    client.on('notification', (n) =>
      state.notifications.push({ channel: n.channel, payload: n.payload ?? '' }),
    );
    this.clients.set(name, state);
    return observed(state, async () => (await client.connect(), {}), errorOutcome);
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
    return observed(state, async () => (await state.client.end(), {}), errorOutcome);
  }

  abandon(name: string): void {
    const state = this.clients.get(name);
    this.clients.delete(name);
    state?.client.connection.stream.destroy();
  }

  async close(): Promise<void> {
    await Promise.all([...this.clients.values()].map((s) => s.client.end().catch(() => undefined)));
    this.clients.clear();
  }
}

async function perform(state: Client, action: ClientAction): Promise<DriverOutcome> {
  const { client } = state;
  switch (action.do) {
    case 'query':
      return { results: results(await client.query(queryConfig(action))) };
    case 'pipeline': {
      // pg sends a query only when the one before has ended, so this is what it does anyway.
      const outcomes: DriverOutcome[] = [];
      for (const query of action.queries) {
        outcomes.push(
          await client
            .query(queryConfig(query))
            .then((r): DriverOutcome => ({ results: results(r) }), errorOutcome),
        );
      }
      return { pipeline: outcomes };
    }
    case 'copy-in':
    case 'copy-out': {
      const copy = new Copy(action.sql, action.do === 'copy-in' ? action.data : undefined);
      client.query(copy);
      const done = await copy.done;
      return action.do === 'copy-in'
        ? { results: [{ command: done.command }] }
        : { copied: done.data };
    }
    case 'cursor': {
      const config: Config = { text: action.sql, rowMode: 'array', rows: action.batch };
      return { results: results(await client.query(config)) };
    }
    case 'listen':
      await client.query(`listen ${quoteIdent(action.channel)}`);
      return {};
    case 'unlisten':
      await client.query(`unlisten ${quoteIdent(action.channel)}`);
      return {};
    case 'notification':
      return state.notifications.next(action.channel);
  }
}

function queryConfig(action: Omit<QueryAction, 'do'>): Config {
  const config: Config = { text: action.sql, rowMode: 'array' };
  if (action.params) config.values = action.params satisfies Params;
  if (action.name) config.name = action.name;
  else if (action.protocol === 'extended') config.queryMode = 'extended';
  return config;
}

/** One result, or several from a simple query of several statements. */
function results(outcome: pg.QueryArrayResult | pg.QueryArrayResult[]): RawResult[] {
  return (Array.isArray(outcome) ? outcome : [outcome]).map((r) => ({
    command: r.command ?? null,
    rowCount: r.rowCount,
    fields: r.fields.map((f): [string, number] => [f.name, f.dataTypeID]),
    rows: r.rows.map((row) => row.map(jsonSafe)),
  }));
}

/** COPY FROM STDIN (with `data`) or COPY TO STDOUT through pg's Submittable interface. */
class Copy implements pg.Submittable {
  readonly done: Promise<{ command: string | null; data: string }>;
  private resolve!: (value: { command: string | null; data: string }) => void;
  private reject!: (error: unknown) => void;
  private command: string | null = null;
  private readonly chunks: Buffer[] = [];

  constructor(
    private readonly text: string,
    private readonly data: string | undefined,
  ) {
    this.done = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  submit(connection: pg.Connection): void {
    (connection as unknown as { query(text: string): void }).query(this.text);
  }

  handleCopyInResponse(connection: CopyConnection): void {
    if (this.data === undefined) {
      connection.sendCopyFail('the scenario has no data for this COPY');
      return;
    }
    connection.sendCopyFromChunk(Buffer.from(this.data));
    connection.endCopyFrom();
  }

  /** pg's parser reuses its buffer: the chunk is copied before the next read overwrites it. */
  handleCopyData(message: { chunk: Buffer }): void {
    this.chunks.push(Buffer.from(message.chunk));
  }

  handleCommandComplete(message: { text: string }): void {
    this.command = message.text;
  }

  /** pg drops its active query on an error: ReadyForQuery will not reach this one. */
  handleError(error: unknown): void {
    this.reject(error);
  }

  handleReadyForQuery(): void {
    this.resolve({ command: this.command, data: Buffer.concat(this.chunks).toString() });
  }

  handleRowDescription(): void {}
  handleDataRow(): void {}
  handleEmptyQuery(): void {}
  handlePortalSuspended(): void {}
}

interface CopyConnection {
  sendCopyFromChunk(chunk: Buffer): void;
  endCopyFrom(): void;
  sendCopyFail(message: string): void;
}
