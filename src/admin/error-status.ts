// The admin API answers failures as the SQL console would, with the SQLSTATE and the words of the
// PgError, and picks the HTTP status from the SQLSTATE so that plain HTTP clients can branch on it.
import { errors, PgError, sqlstateOf } from '../errors.js';

export interface ErrorBody {
  error: { code: string; message: string; detail?: string; hint?: string };
}

/** Exact codes first, then classes (the first two characters). */
const BY_CODE: Record<string, number> = {
  '3D000': 404, // no such database or branch
  '42704': 404, // no such restore point
  '42P04': 409, // exists with another parent
  '2BP01': 409, // has children
  '55006': 409, // can't be drained
  '53400': 409, // a policy limit such as branch.max_per_database: retrying won't help
  '54000': 409,
  '42501': 403, // the root, a protected branch, a name policy
  '42602': 400, // bad name
  '0A000': 400, // not something pgbranch does: branching its own database or a template
  '28000': 401, // no or wrong token
  '28P01': 401,
};

const BY_CLASS: Record<string, number> = {
  '22': 400, // data exceptions: bad values, dates, durations
  '42': 400, // other syntax errors in what was asked
  '55': 409, // not in the state the request needs: in use, or made outside pgbranch
  '53': 503, // out of resources: connections
  '57': 503, // shutting down
  '08': 503, // the PostgreSQL server is unreachable
};

export function httpStatus(code: string): number {
  return BY_CODE[code] ?? BY_CLASS[code.slice(0, 2)] ?? 500;
}

export function errorBody(
  code: string,
  message: string,
  detail?: string,
  hint?: string,
): ErrorBody {
  return {
    error: {
      code,
      message,
      ...(detail === undefined ? {} : { detail }),
      ...(hint === undefined ? {} : { hint }),
    },
  };
}

/** Fastify's own errors (a bad body, a failed schema) carry an HTTP status and a FST_ code. */
interface FrameworkError extends Error {
  statusCode?: number;
  validation?: { keyword: string; params: Record<string, unknown> }[];
  code?: string;
}

/** The status and body for anything a route threw. */
export function errorReply(error: unknown): { status: number; body: ErrorBody } {
  if (error instanceof PgError) return reply(error);
  const e = error as FrameworkError;
  if (e.validation) {
    // 22023 invalid_parameter_value: a request that does not match the route's schema. Ajv's
    // message for an unknown property does not name it; a misspelt one is the usual cause.
    const unknown = e.validation.find((v) => v.keyword === 'additionalProperties')?.params
      .additionalProperty;
    const message = unknown === undefined ? e.message : `${e.message}: "${String(unknown)}"`;
    return { status: 400, body: errorBody('22023', message, undefined, 'See /openapi.json.') };
  }
  if (e.statusCode !== undefined && e.statusCode >= 400 && e.statusCode < 500) {
    // Malformed JSON, a wrong content type, a body too large: 08P01 protocol_violation.
    return { status: e.statusCode, body: errorBody('08P01', e.message) };
  }
  // The server's own refusal (node-postgres keeps its SQLSTATE): starting up after a restart,
  // out of connection slots, ... is the server's code, not an internal error.
  const code = sqlstateOf(error);
  if (code !== undefined) {
    const { detail, hint } = error as { detail?: string; hint?: string };
    return { status: httpStatus(code), body: errorBody(code, e.message, detail, hint) };
  }
  // The server's socket refused or dropped (it is down, or starting again): 08006, as clients get.
  const syscall = (error as { syscall?: string }).syscall;
  if (
    syscall === 'connect' ||
    /^(ECONNRESET|EPIPE)$/.test(String((error as { code?: unknown }).code))
  ) {
    return reply(errors.upstreamUnavailable(e.message));
  }
  // XX000 internal_error: a bug or a failure nobody foresaw; the message is all there is.
  return { status: 500, body: errorBody('XX000', e?.message ?? String(error)) };
}

function reply(error: PgError): { status: number; body: ErrorBody } {
  return {
    status: httpStatus(error.code),
    body: errorBody(error.code, error.message, error.detail, error.hint),
  };
}
