// How a connection names its branch: `db@branch` in the database name, or pgbranch.branch and
// pgbranch.parent in the `options` startup parameter; and how a branch maps to a database name.
import { createHash } from 'node:crypto';
import { errors, PgError } from '../errors.js';
import { joinOptions, splitOptions } from '../wire/startup.js';

export const ROOT_BRANCH = 'main';
export const SEPARATOR = '@';
/** PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes. */
export const MAX_IDENTIFIER_BYTES = 63;
export const MAX_BRANCH_LENGTH = 255;
/** PostgreSQL's own template databases: never listed as roots, never branched. */
export const TEMPLATE_DATABASES: readonly string[] = ['template0', 'template1'];

export interface BranchTarget {
  /** The project's root database, e.g. `app`. */
  root: string;
  /** The branch, or undefined for the root itself (`app` and `app@main`). */
  branch?: string;
  /** The branch to create it from when it does not exist yet; undefined means the root. */
  parent?: string;
  /** Create it as the source was at this moment (pgbranch.at) when it does not exist yet. */
  at?: Date;
}

export type PoolMode = 'session' | 'transaction';

export interface ParsedConnectTarget {
  target: BranchTarget;
  /** Asked for with options=-c pgbranch.pool_mode=...; undefined leaves it to the configuration. */
  poolMode?: PoolMode;
  /** The `options` parameter without pgbranch's own settings; undefined when nothing is left. */
  options?: string;
}

/** Splits `app@feature-x` into its database and branch, checking the database part. */
function splitName(name: string): { root: string; branch: string | undefined } {
  const at = name.indexOf(SEPARATOR);
  const root = at < 0 ? name : name.slice(0, at);
  if (root.length === 0) {
    throw errors.invalidDatabaseName(name, 'the database name before "@" is empty');
  }
  if (Buffer.byteLength(root) > MAX_IDENTIFIER_BYTES) {
    throw errors.invalidDatabaseName(root, `longer than ${MAX_IDENTIFIER_BYTES} bytes`);
  }
  return { root, branch: at < 0 ? undefined : name.slice(at + 1) };
}

/**
 * A branch as the lifecycle names it: `app` (the root, branch `main`), `app@main`, `app@feature-x`.
 */
export function parseBranchName(name: string): { root: string; branch: string } {
  const { root, branch } = splitName(name);
  if (branch === undefined) return { root, branch: ROOT_BRANCH };
  validateBranchName(branch);
  return { root, branch };
}

/** Reads the branch a client asks for from its database name and `options` parameter. */
export function parseConnectTarget(database: string, options?: string): ParsedConnectTarget {
  const { root, branch: fromName } = splitName(database);
  let fromOption: string | undefined;
  let parent: string | undefined;
  let poolMode: PoolMode | undefined;
  let at: Date | undefined;
  let rest = options;
  if (options !== undefined && options.includes('pgbranch.')) {
    const words = splitOptions(options);
    const kept: string[] = [];
    for (let i = 0; i < words.length; i++) {
      const word = words[i]!;
      let setting: string | undefined;
      if (word === '-c' && i + 1 < words.length && words[i + 1]!.startsWith('pgbranch.')) {
        setting = words[++i]!;
      } else if (word.startsWith('-cpgbranch.')) setting = word.slice(2);
      else if (word.startsWith('--pgbranch.')) setting = word.slice(2);
      if (setting === undefined) {
        kept.push(word);
        continue;
      }
      const eq = setting.indexOf('=');
      const name = eq < 0 ? setting : setting.slice(0, eq);
      const value = eq < 0 ? '' : setting.slice(eq + 1);
      if (name === 'pgbranch.branch') fromOption = value;
      else if (name === 'pgbranch.parent') parent = value;
      else if (name === 'pgbranch.at') at = parseMoment(value);
      else if (name === 'pgbranch.pool_mode') {
        if (value !== 'session' && value !== 'transaction') {
          throw new PgError(
            '22023',
            `invalid value for parameter "pgbranch.pool_mode": "${value}"`,
            undefined,
            'Available values: session, transaction.',
          );
        }
        poolMode = value;
      } else {
        throw new PgError(
          '42704',
          `unrecognized configuration parameter "${name}"`,
          undefined,
          'pgbranch understands pgbranch.branch, pgbranch.parent, pgbranch.at and pgbranch.pool_mode in options.',
        );
      }
    }
    rest = kept.length > 0 ? joinOptions(kept) : undefined;
  }
  if (fromName !== undefined && fromOption !== undefined && fromName !== fromOption) {
    throw errors.conflictingBranchNames(root, fromName, fromOption);
  }
  const named = fromOption ?? fromName;
  const point = named === undefined ? undefined : splitRestorePoint(`${root}${SEPARATOR}${named}`);
  if (point) throw errors.restorePointConnect(point.branch, point.point);
  if (named !== undefined) validateBranchName(named);
  const parentName = parent === undefined ? undefined : parentBranch(root, parent);
  if (parentName !== undefined) validateBranchName(parentName);
  const branch = named === undefined || named === ROOT_BRANCH ? undefined : named;
  const target: BranchTarget = { root };
  if (branch !== undefined) target.branch = branch;
  if (parentName !== undefined && parentName !== ROOT_BRANCH) target.parent = parentName;
  if (at !== undefined) {
    if (branch === undefined) {
      throw new PgError(
        '22023',
        `pgbranch.at makes a new branch as the source was then: name one (${root}${SEPARATOR}name)`,
        undefined,
        `Connect to ${root}${SEPARATOR}<branch> with options=-c pgbranch.at=...; ${root} itself is the source now.`,
      );
    }
    target.at = at;
  }
  const parsed: ParsedConnectTarget = { target };
  if (rest !== undefined) parsed.options = rest;
  if (poolMode !== undefined) parsed.poolMode = poolMode;
  return parsed;
}

/** A branch's name as clients write it: `app` for the root, `app@feature-x` for a branch. */
export function branchName(root: string, branch: string): string {
  return branch === ROOT_BRANCH ? root : `${root}${SEPARATOR}${branch}`;
}

/**
 * A parent as the lifecycle wants it, a branch name within `database`: `app@develop` and
 * `develop` are `develop`; `app`, `app@main` and `main` are the root. A branch of another
 * database is refused (22023).
 */
export function parentWithin(database: string, parent: string): string {
  if (parent === database) return ROOT_BRANCH;
  const at = parent.indexOf(SEPARATOR);
  if (at < 0) return parent;
  if (parent.slice(0, at) !== database) {
    throw new PgError(
      '22023',
      `cannot branch "${database}" from "${parent}": a branch's parent is a branch of the same database`,
      undefined,
      `Name the parent ${database}@${parent.slice(at + 1) || ROOT_BRANCH}, or ${database} for the root.`,
      'ERROR',
    );
  }
  return parent.slice(at + 1) || ROOT_BRANCH;
}

/**
 * A parent as users write it, in full (`app`, `app@develop`) or by its branch name alone (`main`,
 * `develop`), as a branch name within `database`. A bare name may itself hold "@" (a branch named
 * release@2), so only the database's own prefix is taken off.
 */
export function parentBranch(database: string, given: string): string {
  if (given === database) return ROOT_BRANCH;
  if (!given.startsWith(`${database}${SEPARATOR}`)) return given;
  return given.slice(database.length + SEPARATOR.length) || ROOT_BRANCH;
}

/** Branch names come from git and CI as they are; only what can't be stored or shown is refused. */
export function validateBranchName(name: string): void {
  if (name.length === 0) throw errors.invalidBranchName(name, 'it is empty');
  if (name.length > MAX_BRANCH_LENGTH) {
    throw errors.invalidBranchName(
      `${name.slice(0, 40)}...`,
      `it is ${name.length} characters long; the limit is ${MAX_BRANCH_LENGTH}`,
    );
  }
  // eslint-disable-next-line no-control-regex -- control characters are what this looks for
  if (/[\u0000-\u001f\u007f]/.test(name)) {
    throw errors.invalidBranchName(name, 'it contains a control character');
  }
  // `app@x:y` would be a branch and restore point "y" of branch "x" at once.
  if (name.includes(SNAPSHOT_SEPARATOR)) {
    throw errors.invalidBranchName(
      name,
      `it contains "${SNAPSHOT_SEPARATOR}", which separates a branch from its restore points (app@branch:point)`,
    );
  }
}

/**
 * The database that holds a branch: `root@branch` when that fits in 63 bytes, else a prefix of it
 * and a hash of the whole name, so that every long name still maps to one database, always the same.
 */
export function physicalName(root: string, branch?: string): string {
  if (branch === undefined || branch === ROOT_BRANCH) return root;
  return fitIdentifier(`${root}${SEPARATOR}${branch}`);
}

/** Separates a branch from the name of one of its restore points: `app@feature-x:before`. */
export const SNAPSHOT_SEPARATOR = ':';

/**
 * `app@x:before` as the branch `app@x` and its restore point `before`; undefined for a name with
 * no restore point in it (branch names can't hold the separator).
 */
export function splitRestorePoint(name: string): { branch: string; point: string } | undefined {
  const at = name.indexOf(SEPARATOR);
  const colon = at < 0 ? -1 : name.indexOf(SNAPSHOT_SEPARATOR, at);
  if (colon < 0) return undefined;
  return { branch: name.slice(0, colon), point: name.slice(colon + 1) };
}

/** The database that holds a restore point: `app@main:nightly`, `app@feature-x:before`. */
export function snapshotPhysicalName(root: string, branch: string, snapshot: string): string {
  return fitIdentifier(`${root}${SEPARATOR}${branch}${SNAPSHOT_SEPARATOR}${snapshot}`);
}

/** A name as it is when it fits in an identifier, else a prefix of it and a hash of the whole. */
function fitIdentifier(full: string): string {
  if (Buffer.byteLength(full) <= MAX_IDENTIFIER_BYTES) return full;
  const hash = createHash('sha256').update(full).digest('hex').slice(0, 12);
  const suffix = `~${hash}`;
  return truncateUtf8(full, MAX_IDENTIFIER_BYTES - suffix.length) + suffix;
}

function truncateUtf8(text: string, maxBytes: number): string {
  let out = '';
  let bytes = 0;
  for (const ch of text) {
    const size = Buffer.byteLength(ch);
    if (bytes + size > maxBytes) break;
    out += ch;
    bytes += size;
  }
  return out;
}

const RELATIVE_MOMENT = /^-\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)$/;
const ISO_MOMENT =
  /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?\s*(Z|[+-]\d{2}(:?\d{2})?)$/i;

/**
 * A past moment as pgbranch.at and --at take it: ISO 8601 with its zone (`2026-12-06T09:30:00Z`,
 * `2026-12-06 10:30:00+01:00`), or back from `now` (`-90s`, `-30m`, `-1h`, `-2d`). 22007 otherwise:
 * a moment without a zone would be read in some clock's zone, silently.
 */
export function parseMoment(value: string, now = Date.now()): Date {
  const text = value.trim();
  const relative = RELATIVE_MOMENT.exec(text);
  if (relative) {
    const unit = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[relative[2]!]!;
    return new Date(now - Math.round(Number(relative[1]) * unit));
  }
  if (ISO_MOMENT.test(text)) {
    // Date.parse wants the T, and at most milliseconds.
    const iso = text
      .replace(' ', 'T')
      .replace(/(\.\d{3})\d+/, '$1')
      .replace(/\s+/g, '')
      .replace(/([+-]\d{2})(\d{2})$/, '$1:$2')
      .replace(/([+-]\d{2})$/, '$1:00');
    const ms = Date.parse(iso);
    if (!Number.isNaN(ms)) return new Date(ms);
  }
  throw errors.invalidMoment(value);
}
