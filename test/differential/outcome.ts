// What a step gave, in a form that is the same for the same behaviour whichever target served it:
// results as the driver decoded them (JSON-safe), command tags, the SQLSTATE of an error or of each
// notice. Messages are kept to show a person, never compared: pgbranch's statement names may
// appear in them where the client's would.
import { createHash } from 'node:crypto';

/** A result as a driver hands it over, before normalising. */
export interface RawResult {
  command: string | null;
  rowCount?: number | null;
  /** [name, type oid] per column. */
  fields?: [string, number][];
  rows?: unknown[][];
}

export interface ResultSet {
  command: string | null;
  rowCount?: number | null;
  /** `name:oid`; types made in the run's own database are `name:user` (their oids differ). */
  fields?: string[];
  rows?: unknown[][];
  /** Large results: how many rows, and a hash of them. */
  digest?: string;
}

export interface Outcome {
  /** SQLSTATE; `client:<code>` for a driver's own error; `timeout` when the step did not end. */
  error?: string;
  message?: string;
  results?: ResultSet[];
  /** COPY TO data (or its digest). */
  copied?: string;
  notification?: { channel: string; payload: string };
  /** One outcome per query of a pipeline. */
  pipeline?: Outcome[];
  /** SQLSTATEs of the notices and warnings received during the step. */
  notices?: string[];
}

/** Object identifiers from here on belong to objects made in a database, not to the system. */
const FIRST_NORMAL_OBJECT_ID = 16384;

export function normaliseResult(raw: RawResult, digest = false): ResultSet {
  const set: ResultSet = { command: raw.command };
  if (raw.rowCount !== undefined) set.rowCount = raw.rowCount;
  if (raw.fields && raw.fields.length > 0) {
    set.fields = raw.fields.map(
      ([name, oid]) => `${name}:${oid >= FIRST_NORMAL_OBJECT_ID ? 'user' : oid}`,
    );
  }
  if (raw.rows) {
    if (digest) set.digest = digestOf(raw.rows.length, JSON.stringify(raw.rows));
    else set.rows = raw.rows;
  }
  return set;
}

export function digestOf(count: number, text: string): string {
  return `${count}:${createHash('sha256').update(text).digest('hex').slice(0, 16)}`;
}

/** A driver's value as JSON can hold it, the same way every time. */
export function jsonSafe(value: unknown): unknown {
  if (value === null || value === undefined) return null;
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'number') return Number.isFinite(value) ? value : String(value);
  if (typeof value !== 'object') return value;
  if (Buffer.isBuffer(value)) return `\\x${value.toString('hex')}`;
  if (value instanceof Date)
    return Number.isNaN(value.getTime()) ? 'Invalid Date' : value.toISOString();
  if (Array.isArray(value)) return value.map(jsonSafe);
  const out: Record<string, unknown> = {};
  for (const [key, inner] of Object.entries(value)) out[key] = jsonSafe(inner);
  return out;
}

/**
 * An error as an outcome: its SQLSTATE when the server sent it (pg's and postgres.js's errors from
 * an ErrorResponse carry its severity), else the driver's own code.
 */
export function errorOutcome(error: unknown): { error: string; message: string } {
  const e = error as { code?: unknown; severity?: unknown; name?: string; message?: string };
  const code = typeof e?.code === 'string' ? e.code : undefined;
  return {
    error: code && e.severity !== undefined ? code : `client:${code ?? e?.name ?? 'Error'}`,
    message: e?.message ?? String(error),
  };
}

/** The part of an outcome that must be equal for two runs to behave alike. */
export function comparable(outcome: Outcome | undefined): string {
  if (!outcome) return 'not run';
  return JSON.stringify(strip(outcome));
}

function strip(outcome: Outcome): Outcome {
  const rest = { ...outcome };
  delete rest.message;
  if (rest.pipeline) rest.pipeline = rest.pipeline.map(strip);
  return rest;
}

/** One line for a person: the error with its message, or the results. */
export function summarise(outcome: Outcome | undefined): string {
  if (!outcome) return 'not run';
  const text = JSON.stringify(outcome);
  return text.length > 600 ? `${text.slice(0, 600)}...` : text;
}
