// What a transaction-mode client believes about its session, kept by the proxy because its server
// connections change under it: settings (startup parameters, SET statements, reported parameters)
// and named prepared statements. Also what each server connection currently carries, so that only
// the difference is replayed when a server connection moves to another client.
import { createHash } from 'node:crypto';
import { quoteLiteral } from '../branch/database-provider.js';
import type { ServerConnection } from '../pool/pool.js';
import { splitOptions } from '../wire/startup.js';
import { statementEffects } from './statement-effects.js';

/** Reported parameters a client may set; the others (server_version, is_superuser, ...) it can't. */
const SETTABLE_NAMES = [
  'application_name',
  'client_encoding',
  'DateStyle',
  'IntervalStyle',
  'TimeZone',
  'search_path',
  'standard_conforming_strings',
  'default_transaction_read_only',
];
const SETTABLE_REPORTED = new Set(SETTABLE_NAMES);

/** Startup parameters that are not settings. */
const NOT_SETTINGS = new Set(['user', 'database', 'options', 'replication']);

export interface PreparedStatement {
  /** The name on server connections: derived from the statement itself, so clients share it. */
  serverName: string;
  /** The Parse message's body after the statement name: query text and parameter types. */
  definition: Buffer;
  /** Whether running it may change session settings (SET, RESET, set_config...). */
  maySet: boolean;
  /** statementEffects() of its text. */
  effects: number;
  /**
   * Its result columns as this client was told them (a Describe of the statement, or of a portal
   * bound to it), from rowShape(): it must not run where the statement has other columns now.
   */
  shape: Buffer | undefined;
  /** Its parameter types as this client was told them (Describe of the statement), if it was. */
  parameterTypes: Buffer | undefined;
}

/** What a server connection's statement was described as, since it was last defined there. */
export interface ServerShape {
  row: Buffer;
  parameterTypes: Buffer | undefined;
}

export class ClientState {
  /** SET statements to replay, in order: from startup parameters, then the client's own. */
  readonly statements: string[] = [];
  /** The statements joined: equal keys mean equal settings. */
  statementsKey = '';
  /** Reported parameters as the client last saw them. */
  readonly reported = new Map<string, string>();
  readonly prepared = new Map<string, PreparedStatement>();
  /** Changes whenever its settings may have changed (SET, reported parameters). */
  version = 0;
  /** Why the client is pinned to a server connection (session behaviour), once it is. */
  pinned: string | undefined;

  constructor(startupParameters: ReadonlyMap<string, string>) {
    for (const [name, value] of startupParameters) {
      if (NOT_SETTINGS.has(name)) continue;
      this.statements.push(setConfig(name, value));
    }
    const options = startupParameters.get('options');
    if (options) {
      const words = splitOptions(options);
      for (let i = 0; i < words.length; i++) {
        let setting: string | undefined;
        if (words[i] === '-c' && i + 1 < words.length) setting = words[++i];
        else if (words[i]!.startsWith('-c')) setting = words[i]!.slice(2);
        else if (words[i]!.startsWith('--')) setting = words[i]!.slice(2);
        const eq = setting?.indexOf('=') ?? -1;
        if (setting && eq > 0) {
          const name = setting.slice(0, eq).replace(/-/g, '_');
          this.statements.push(setConfig(name, setting.slice(eq + 1)));
        }
      }
    }
    this.statementsKey = this.statements.join(';\n');
  }

  /**
   * Takes the session settings read back from a server connection at the end of a transaction
   * (name and value of every setting whose source is the session) as the client's own.
   */
  adoptSettings(settings: readonly (readonly [string, string])[]): void {
    this.statements.length = 0;
    for (const [name, value] of settings) this.statements.push(setConfig(name, value));
    this.statementsKey = this.statements.join(';\n');
    this.version++;
  }

  /** Defines a named statement; returns its server-side name. */
  define(name: string, definition: Buffer): PreparedStatement {
    const textEnd = Math.max(0, definition.indexOf(0));
    const statement = {
      serverName: `pgbranch_${createHash('sha1').update(definition).digest('hex').slice(0, 24)}`,
      definition: Buffer.from(definition),
      maySet: MAY_SET.test(definition.toString('utf8', 0, textEnd)),
      effects: statementEffects(definition, 0, textEnd),
      shape: undefined,
      parameterTypes: undefined,
    };
    this.prepared.set(name, statement);
    return statement;
  }
}

/** Statements that may change session settings: the settings are read back after them. */
export const MAY_SET = /(^|;)\s*(set|reset|discard)\b|\bset_config\s*\(/i;

/** The session settings a client's statements left behind, as the server keeps them. */
export const SESSION_SETTINGS =
  "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session' ORDER BY name";

/**
 * Sets a parameter to a value exactly as the server spells it. set_config takes the value as the
 * setting's text, where SET name = 'value' would make a list such as search_path one quoted name.
 */
function setConfig(name: string, value: string): string {
  return `SELECT pg_catalog.set_config(${quoteLiteral(name)}, ${quoteLiteral(value)}, false)`;
}

/** What a server connection carries for transaction-mode clients. */
export interface ServerState {
  /** The client whose settings it carried last, and that client's version then. */
  owner: ClientState | undefined;
  ownerVersion: number;
  /** ClientState.statementsKey of the SET statements in effect on it ('' for none). */
  appliedKey: string;
  /** Server-side prepared statement names, oldest first. */
  prepared: Map<string, true>;
  /** What server-side statements were described as since they were last defined. */
  shapes: Map<string, ServerShape>;
  /** Reported parameters as the server last sent them. */
  reported: Map<string, string>;
  /** Reported parameters as they were at login, which RESET ALL returns to. */
  initial: ReadonlyMap<string, string>;
}

const serverStates = new WeakMap<ServerConnection, ServerState>();

export function serverState(conn: ServerConnection): ServerState {
  let state = serverStates.get(conn);
  if (!state) {
    state = {
      owner: undefined,
      ownerVersion: 0,
      appliedKey: '',
      prepared: new Map(),
      shapes: new Map(),
      reported: new Map(conn.session.parameters),
      initial: conn.session.parameters,
    };
    serverStates.set(conn, state);
  }
  return state;
}

/**
 * Whether a server connection already carries this client's settings (settingsFor would return
 * undefined), found without building anything: asked at every transaction.
 */
export function carriesSettings(server: ServerState, client: ClientState): boolean {
  // Back with the client it last served, with nothing changed since.
  if (server.owner === client && server.ownerVersion === client.version) return true;
  if (server.appliedKey !== client.statementsKey) return false;
  for (const name of SETTABLE_NAMES) {
    const value = client.reported.get(name);
    if (value !== undefined && server.reported.get(name) !== value) return false;
  }
  return true;
}

/**
 * The statements that make a server connection carry this client's settings, or undefined when
 * it already does: the client's SET statements (after RESET ALL, when another client's are in
 * effect), then any reported parameter whose value differs.
 */
export function settingsFor(client: ClientState, server: ServerState): string | undefined {
  if (carriesSettings(server, client)) return undefined;
  const parts: string[] = [];
  let base: ReadonlyMap<string, string> = server.reported;
  if (server.appliedKey !== client.statementsKey) {
    if (server.appliedKey !== '') {
      parts.push('RESET ALL');
      base = server.initial;
    }
    parts.push(...client.statements);
  }
  for (const [name, value] of client.reported) {
    if (SETTABLE_REPORTED.has(name) && base.get(name) !== value) {
      parts.push(setConfig(name, value));
    }
  }
  return parts.length > 0 ? parts.join('; ') : undefined;
}

/** Equal shapes are one Buffer, so that the check at every Bind compares references. */
const interned = new Map<string, Buffer>();

/**
 * What must stay the same for a client to read a prepared statement's rows as it was told: from a
 * RowDescription (or NoData) frame, each column's name, type and modifier, as PostgreSQL compares
 * them when it decides that a cached plan changed its result type (not the table and column
 * numbers, which a table recreated with the same columns changes, nor the format codes, which a
 * portal's Bind chose).
 */
export function rowShape(row: Buffer): Buffer {
  const parts: Buffer[] = [];
  if (row[0] === 0x54 /* T */) {
    const count = row.readInt16BE(5);
    parts.push(row.subarray(5, 7));
    let i = 7;
    for (let f = 0; f < count; f++) {
      const nameEnd = row.indexOf(0, i);
      parts.push(row.subarray(i, nameEnd + 1));
      // table oid (4), column number (2), then type oid (4), size (2), modifier (4), format (2)
      const at = nameEnd + 1 + 6;
      parts.push(row.subarray(at, at + 4), row.subarray(at + 6, at + 10));
      i = at + 12;
    }
  }
  return intern(Buffer.concat(parts));
}

/** A ParameterDescription frame's parameter types. */
export function parameterTypes(frame: Buffer): Buffer {
  return intern(Buffer.from(frame.subarray(5)));
}

function intern(shape: Buffer): Buffer {
  const key = shape.toString('latin1');
  let found = interned.get(key);
  if (!found) interned.set(key, (found = shape));
  return found;
}
