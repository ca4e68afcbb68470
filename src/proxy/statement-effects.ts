// What a statement's text says about the session state it may leave on a server connection, read
// from the bytes without decoding them (simple queries are classified on every message).
//
// Transaction mode hands a server connection to another client after each transaction, which is
// only right when the transaction left nothing behind that belongs to its client: temporary
// objects and statements prepared with SQL PREPARE do. Their text usually says so (CREATE TEMP,
// PREPARE), but a function, a trigger or a DO block can create a temporary table where the text
// can't tell. So the relay asks the server (pg_my_temp_schema(), pg_prepared_statements) after a
// transaction unless every statement in it is one of the plainly harmless kinds below: a SELECT,
// SHOW, transaction control and the like, calling no function beyond well-known built-ins. A
// statement that may only reach such state through functions (a write, whose triggers run code,
// or a call of a function of the database's own) is asked about only where the database has
// functions that could (RUNS_CODE; the relay keeps what the server said for a few seconds).

/** The server must be asked after the transaction whether it left session state behind. */
export const NEEDS_CHECK = 1;
/** As NEEDS_CHECK, but only where the database has functions that could make session state. */
export const RUNS_CODE = 8;
/**
 * The text must be read as a string: it may change settings (SET, RESET, DISCARD, set_config) or
 * pin the client (LISTEN, session advisory locks, WITH HOLD), or it holds DDL or DEALLOCATE.
 */
export const READ_TEXT = 16;
/** DEALLOCATE or DISCARD: the server connection's prepared statements must be read back. */
export const DEALLOCATES = 2;
/** DROP, ALTER or CREATE: possibly one that needs a database without sessions (see below). */
export const MAY_NEED_DATABASE = 4;

/** Writes: they can create nothing themselves, but their triggers run functions. */
const WRITES = new Set(
  'insert update delete merge copy truncate with'
    .split(' ')
    .map((w) => hashWord(Buffer.from(w, 'latin1'), 0, w.length)),
);

/** Statements that can't create anything by themselves (what they call is looked at apart). */
const HARMLESS_FIRST_WORDS = (
  'select show begin start commit end rollback abort savepoint release fetch move close ' +
  'declare values table set reset listen unlisten notify deallocate discard'
).split(' ');

/**
 * Words that may stand before "(" without calling user code: SQL keywords, type names with a
 * modifier, and built-in functions that create nothing.
 */
const HARMLESS_BEFORE_PAREN = (
  'in exists any all some values and or not as on using where over filter then else when ' +
  'case by from join select returning set is like ilike between distinct limit offset ' +
  'having group order window partition row array cast lateral with union except intersect ' +
  'within into for nulls lock of ' +
  // types with modifiers
  'numeric decimal varchar char character varying timestamp timestamptz time interval bit ' +
  'float ' +
  // built-in functions
  'count sum avg min max coalesce nullif greatest least now lower upper length char_length ' +
  'octet_length abs round floor ceil ceiling trunc mod power sqrt exp ln log sign random ' +
  'array_agg string_agg json_agg jsonb_agg json_object_agg jsonb_object_agg ' +
  'json_build_object jsonb_build_object json_build_array jsonb_build_array to_json to_jsonb ' +
  'row_to_json jsonb_set json_array_elements jsonb_array_elements jsonb_each json_each ' +
  'bool_and bool_or every row_number rank dense_rank lag lead first_value last_value ntile ' +
  'unnest generate_series date_trunc date_part extract age make_interval to_char ' +
  'to_timestamp to_date to_number substring substr trim btrim ltrim rtrim position replace ' +
  'split_part concat concat_ws format left right starts_with regexp_replace regexp_matches ' +
  'regexp_match encode decode md5 gen_random_uuid nextval currval setval lastval ' +
  'array_length cardinality array_position array_remove array_append array_cat ' +
  'current_setting set_config current_database current_schema version pg_backend_pid ' +
  'pg_sleep txid_current pg_current_xact_id pg_advisory_xact_lock pg_try_advisory_xact_lock ' +
  'pg_advisory_xact_lock_shared pg_try_advisory_xact_lock_shared pg_advisory_lock ' +
  'pg_try_advisory_lock pg_advisory_unlock pg_advisory_unlock_all'
).split(' ');

/** FNV-1a of a word's bytes, lower-cased: words are compared without making strings. */
function hashWord(bytes: Buffer, start: number, end: number): number {
  let h = 0x811c9dc5;
  for (let i = start; i < end; i++) {
    h ^= bytes[i]! | 0x20;
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

function hashes(words: string[]): Set<number> {
  return new Set(words.map((w) => hashWord(Buffer.from(w, 'latin1'), 0, w.length)));
}

const HARMLESS_FIRST = hashes(HARMLESS_FIRST_WORDS);
const HARMLESS_CALLS = hashes(HARMLESS_BEFORE_PAREN);
const DEALLOCATE = hashWord(Buffer.from('deallocate'), 0, 10);
const DISCARD = hashWord(Buffer.from('discard'), 0, 7);
const DDL = new Set(['drop', 'alter', 'create'].map((w) => hashWord(Buffer.from(w), 0, w.length)));
const SET = hashWord(Buffer.from('set'), 0, 3);
const RESET = hashWord(Buffer.from('reset'), 0, 5);
const LISTEN = hashWord(Buffer.from('listen'), 0, 6);

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x09 || c === 0x0d;
}

function isWordByte(c: number): boolean {
  const l = c | 0x20;
  return (l >= 0x61 && l <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x5f || c === 0x24;
}

/**
 * NEEDS_CHECK and DEALLOCATES flags of the SQL text in bytes[start, end). Conservative: a false
 * NEEDS_CHECK costs one query after the transaction, a missed one could hand a client's temporary
 * table to another.
 */
export function statementEffects(bytes: Buffer, start: number, end: number): number {
  let effects = 0;
  let atStatementStart = true;
  let i = start;
  while (i < end) {
    const c = bytes[i]!;
    if (atStatementStart) {
      if (isSpace(c) || c === 0x3b /* ; */) {
        i++;
        continue;
      }
      atStatementStart = false;
      let j = i;
      while (j < end && isWordByte(bytes[j]!)) j++;
      const word = hashWord(bytes, i, j);
      if (WRITES.has(word)) effects |= RUNS_CODE;
      else if (!HARMLESS_FIRST.has(word)) effects |= NEEDS_CHECK;
      if (word === DEALLOCATE || word === DISCARD) effects |= DEALLOCATES | READ_TEXT;
      else if (DDL.has(word)) effects |= MAY_NEED_DATABASE | READ_TEXT;
      else if (word === SET || word === RESET || word === LISTEN) effects |= READ_TEXT;
      i = j;
      continue;
    }
    if (c === 0x3b) {
      atStatementStart = true;
    } else if (c === 0x28 /* ( */) {
      if (!harmlessCall(bytes, start, i)) effects |= RUNS_CODE;
    } else if ((c | 0x20) === 0x74 /* t */ && i + 4 <= end) {
      // "temp", "temporary", "pg_temp": a temporary object named in the text.
      if (
        (bytes[i + 1]! | 0x20) === 0x65 &&
        (bytes[i + 2]! | 0x20) === 0x6d &&
        (bytes[i + 3]! | 0x20) === 0x70
      ) {
        effects |= NEEDS_CHECK;
      }
    } else if (i + 1 < end && mayPinOrSet(c, bytes[i + 1]!)) {
      effects |= READ_TEXT;
    }
    i++;
  }
  return effects;
}

/**
 * The letters of what pins a client or sets a setting without saying SET first: "_c" of
 * set_config, "li" of listen, "ad" of advisory, "ho" of hold. A false positive costs a decode.
 */
function mayPinOrSet(c: number, next: number): boolean {
  const n = next | 0x20;
  if (c === 0x5f /* _ */) return n === 0x63;
  const l = c | 0x20;
  return (l === 0x6c && n === 0x69) || (l === 0x61 && n === 0x64) || (l === 0x68 && n === 0x6f);
}

/** Whether the "(" at `paren` follows nothing, or a word that calls no user code. */
function harmlessCall(bytes: Buffer, start: number, paren: number): boolean {
  let e = paren;
  while (e > start && isSpace(bytes[e - 1]!)) e--;
  let s = e;
  while (s > start && isWordByte(bytes[s - 1]!)) s--;
  if (s === e) {
    // "((", ", (", "= (": no name before it. A quoted or qualified name is a call we can't judge.
    return !(e > start && bytes[e - 1] === 0x22);
  }
  if (s > start && (bytes[s - 1] === 0x2e /* . */ || bytes[s - 1] === 0x22)) return false;
  // A number before "(" is not a call.
  const first = bytes[s]!;
  if (first >= 0x30 && first <= 0x39) return true;
  return HARMLESS_CALLS.has(hashWord(bytes, s, e));
}

/** What a DEALLOCATE statement names: all of them, or one (as the server folds the name). */
export function deallocateTarget(sql: string): { all: true } | { name: string } | undefined {
  const match = /^\s*deallocate\s+(?:prepare\s+)?(?:"((?:[^"]|"")+)"|([^\s;"]+))\s*;?\s*$/i.exec(
    sql,
  );
  if (!match) return undefined;
  if (match[1] !== undefined) return { name: match[1].replace(/""/g, '"') };
  const word = match[2]!;
  if (word.toLowerCase() === 'all') return { all: true };
  return { name: word.toLowerCase() };
}

/** Whether a statement is DISCARD ALL or DEALLOCATE ALL: every prepared statement goes. */
export function dropsAllStatements(sql: string): boolean {
  return /^\s*(discard\s+all|deallocate\s+(prepare\s+)?all)\s*;?\s*$/i.test(sql);
}

/** Whether a statement starts with DROP, ALTER or CREATE: the cheap test before databaseNeeded(). */
export function startsWithDdl(bytes: Buffer, start: number, end: number): boolean {
  let i = start;
  while (i < end && isSpace(bytes[i]!)) i++;
  let j = i;
  while (j < end && isWordByte(bytes[j]!)) j++;
  return DDL.has(hashWord(bytes, i, j));
}

const NAME = '("(?:[^"]|"")+"|[^\\s;"(),=]+)';
/**
 * Statements that PostgreSQL refuses while anyone else is connected to the database they name
 * (SQLSTATE 55006, after waiting 5 s): DROP DATABASE, ALTER DATABASE ... RENAME or SET
 * TABLESPACE, and CREATE DATABASE ... TEMPLATE.
 */
const NEEDS_DATABASE = new RegExp(
  `^\\s*(?:drop\\s+database\\s+(?:if\\s+exists\\s+)?${NAME}|` +
    `alter\\s+database\\s+${NAME}\\s+(?:rename|set\\s+tablespace)\\b|` +
    `create\\s+database\\s[\\s\\S]*?\\btemplate\\s*(?:=\\s*)?${NAME})`,
  'i',
);

/**
 * The database a statement needs to itself (see NEEDS_DATABASE), named as the server knows it, or
 * undefined.
 */
export function databaseNeeded(sql: string): string | undefined {
  const match = NEEDS_DATABASE.exec(sql);
  const name = match?.[1] ?? match?.[2] ?? match?.[3];
  if (name === undefined) return undefined;
  return name.startsWith('"') ? name.slice(1, -1).replace(/""/g, '"') : name.toLowerCase();
}
