// The schema difference between two databases, for `pgbranch branch diff a b`. readSchema reads
// one database's catalog into a snapshot of named objects and their attributes; diffSchemas
// compares two snapshots. Both are plain data, so a snapshot or a diff can be sent as JSON.
import type pg from 'pg';

export type ObjectKind =
  | 'schema'
  | 'table'
  | 'column'
  | 'index'
  | 'constraint'
  | 'view'
  | 'materialized view'
  | 'function'
  | 'sequence'
  | 'type'
  | 'extension'
  | 'trigger';

/** The order in which snapshots and diffs list kinds. */
export const OBJECT_KINDS: readonly ObjectKind[] = [
  'schema',
  'table',
  'column',
  'index',
  'constraint',
  'view',
  'materialized view',
  'function',
  'sequence',
  'type',
  'extension',
  'trigger',
];

/**
 * What is compared for each kind, in the order changes are listed. An attribute that is not set
 * (a column without a default) is absent from `SchemaObject.attributes`.
 */
export const ATTRIBUTES: Readonly<Record<ObjectKind, readonly string[]>> = {
  schema: [],
  table: [
    'kind',
    'partition key',
    'partition of',
    'inherits',
    'persistence',
    'row security',
    'options',
  ],
  column: ['type', 'nullability', 'default', 'identity', 'generated', 'collation'],
  index: ['definition'],
  constraint: ['definition'],
  view: ['definition', 'options'],
  'materialized view': ['definition', 'options'],
  function: [
    'kind',
    'arguments',
    'returns',
    'language',
    'volatility',
    'strict',
    'security',
    'parallel',
    'leakproof',
    'cost',
    'rows',
    'config',
    'body',
    'definition',
  ],
  sequence: ['type', 'start', 'increment', 'minimum', 'maximum', 'cache', 'cycle', 'owned by'],
  type: [
    'kind',
    'labels',
    'attributes',
    'base type',
    'not null',
    'default',
    'constraints',
    'subtype',
  ],
  extension: ['version', 'schema'],
  trigger: ['definition', 'enabled'],
};

/**
 * A function's whole definition (pg_get_functiondef) changes whenever any of its other
 * attributes does; it is reported only for a change none of them shows.
 */
const FALLBACK_ATTRIBUTE: Partial<Record<ObjectKind, string>> = { function: 'definition' };

export interface SchemaObject {
  kind: ObjectKind;
  /**
   * Qualified, with identifiers quoted as SQL needs them: `public.users`, `public.users.email`
   * (column), `public.orders.orders_pkey` (constraint and trigger: named per table),
   * `public.users_email_idx` (index: named per schema), `public.total(a integer, b text)`
   * (function: with its identity arguments).
   */
  name: string;
  /** For a column: the name of its table. */
  table?: string;
  /**
   * For a column: its number in the table, to describe tables in column order. Not compared:
   * dropped columns leave gaps, so equal tables can number their columns differently.
   */
  position?: number;
  attributes: Record<string, string>;
}

export interface SchemaSnapshot {
  /** server_version_num of the server it was read from. */
  serverVersion: number;
  /** Sorted by kind (in OBJECT_KINDS order), then by name. */
  objects: SchemaObject[];
}

export interface DiffItem {
  kind: ObjectKind;
  name: string;
  /**
   * Added and removed objects: a one-line description (a column's type, an index's definition).
   * Changed objects: the attribute that changed (see ATTRIBUTES), with its values in before and
   * after; a value that is not set (no default) is absent.
   */
  detail?: string;
  before?: string;
  after?: string;
}

/**
 * Each list is sorted by kind (OBJECT_KINDS order), then name, then attribute (ATTRIBUTES order).
 * The columns of an added or removed table are in the table's description, not listed apart.
 */
export interface SchemaDiff {
  added: DiffItem[];
  removed: DiffItem[];
  changed: DiffItem[];
}

/** The oldest server whose catalog readSchema knows (pg_get_function_sqlbody came in 14). */
export const MIN_SERVER_VERSION = 140000;

/**
 * Reads a database's schema through a connected client, from the catalog. Runs in a read-only
 * repeatable-read transaction of its own, so the client must not be in one.
 *
 * Left out: the system schemas (pg_catalog, information_schema, pg_toast*, pg_temp*); objects that
 * belong to an extension (only the extension is listed); what a table inherits from its parent
 * (partitions' columns, constraints, index partitions and cloned triggers are its parent's);
 * constraint-backed indexes (listed as constraints); identity sequences (part of their column);
 * NOT NULL constraints (a column's nullability); aggregates, policies, rules, privileges, owners
 * and comments.
 */
export async function readSchema(client: pg.Client): Promise<SchemaSnapshot> {
  await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
  try {
    // With only pg_catalog on the path, every deparsed name outside it comes out qualified, so
    // two databases read from sessions with different search paths compare equal.
    await client.query('SET LOCAL search_path = pg_catalog');
    const { rows } = await client.query<{ version: string }>(
      `SELECT current_setting('server_version_num') AS version`,
    );
    const serverVersion = Number(rows[0]!.version);
    if (serverVersion < MIN_SERVER_VERSION) {
      throw new Error(
        `reading a schema needs PostgreSQL 14 or later; this server is version ${serverVersion}`,
      );
    }
    const objects: SchemaObject[] = [];
    for (const read of READERS) objects.push(...(await read(client)));
    await client.query('COMMIT');
    return { serverVersion, objects: objects.sort(compareObjects) };
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {});
    throw error;
  }
}

export function diffSchemas(from: SchemaSnapshot, to: SchemaSnapshot): SchemaDiff {
  const before = byKey(from.objects);
  const after = byKey(to.objects);
  const diff: SchemaDiff = { added: [], removed: [], changed: [] };
  const addedTables = new Set<string>();
  const removedTables = new Set<string>();
  for (const [key, object] of after) {
    if (!before.has(key) && object.kind === 'table') addedTables.add(object.name);
  }
  for (const [key, object] of before) {
    if (!after.has(key) && object.kind === 'table') removedTables.add(object.name);
  }
  const toColumns = columnsByTable(to.objects);
  const fromColumns = columnsByTable(from.objects);
  for (const [key, object] of after) {
    if (before.has(key) || (object.table !== undefined && addedTables.has(object.table))) continue;
    diff.added.push(item(object.kind, object.name, describe(object, toColumns)));
  }
  for (const [key, object] of before) {
    if (after.has(key) || (object.table !== undefined && removedTables.has(object.table))) continue;
    diff.removed.push(item(object.kind, object.name, describe(object, fromColumns)));
  }
  for (const [key, old] of before) {
    const now = after.get(key);
    if (now) diff.changed.push(...changes(old, now));
  }
  diff.added.sort(compareItems);
  diff.removed.sort(compareItems);
  diff.changed.sort(compareItems);
  return diff;
}

function changes(old: SchemaObject, now: SchemaObject): DiffItem[] {
  const fallback = FALLBACK_ATTRIBUTE[old.kind];
  const found: DiffItem[] = [];
  for (const attribute of ATTRIBUTES[old.kind]) {
    if (attribute === fallback) continue;
    const was = old.attributes[attribute];
    const is = now.attributes[attribute];
    if (was !== is) found.push(item(old.kind, old.name, attribute, was, is));
  }
  if (fallback && found.length === 0) {
    const was = old.attributes[fallback];
    const is = now.attributes[fallback];
    if (was !== is) found.push(item(old.kind, old.name, fallback, was, is));
  }
  return found;
}

/** Builds an item without undefined fields, so that its JSON and its equality are exact. */
function item(
  kind: ObjectKind,
  name: string,
  detail: string | undefined,
  before?: string,
  after?: string,
): DiffItem {
  const result: DiffItem = { kind, name };
  if (detail !== undefined) result.detail = detail;
  if (before !== undefined) result.before = before;
  if (after !== undefined) result.after = after;
  return result;
}

/** A one-line description of an added or removed object, in the words of its SQL definition. */
function describe(object: SchemaObject, columns: Map<string, SchemaObject[]>): string | undefined {
  const a = object.attributes;
  switch (object.kind) {
    case 'schema':
      return undefined;
    case 'table': {
      const own = (columns.get(object.name) ?? []).map(
        (o) => `${o.name.slice(object.name.length + 1)} ${describeColumn(o.attributes)}`,
      );
      return join([
        a['persistence'] === 'unlogged' ? 'unlogged' : undefined,
        own.length > 0 || !a['partition of'] ? `(${own.join(', ')})` : undefined,
        a['partition of'] && `partition of ${a['partition of']}`,
        a['inherits'] && `inherits (${a['inherits']})`,
        a['partition key'] && `partition by ${a['partition key']}`,
        a['options'] && `with (${a['options']})`,
      ]);
    }
    case 'column':
      return describeColumn(a);
    case 'function':
      return join([
        a['kind'] === 'function' ? undefined : a['kind'],
        a['returns'] && `returns ${a['returns']}`,
        `language ${a['language']}`,
        a['volatility'] === 'volatile' ? undefined : a['volatility'],
      ]);
    case 'sequence':
      return join([
        `as ${a['type']}`,
        `increment ${a['increment']}`,
        `minvalue ${a['minimum']}`,
        `maxvalue ${a['maximum']}`,
        `start ${a['start']}`,
        `cache ${a['cache']}`,
        a['cycle'] === 'yes' ? 'cycle' : 'no cycle',
        a['owned by'] && `owned by ${a['owned by']}`,
      ]);
    case 'type':
      return join([
        a['kind'],
        a['labels'] !== undefined ? `(${a['labels']})` : undefined,
        a['attributes'] !== undefined ? `(${a['attributes']})` : undefined,
        a['base type'] && `over ${a['base type']}`,
        a['subtype'] && `of ${a['subtype']}`,
        a['not null'] === 'yes' ? 'not null' : undefined,
        a['default'] && `default ${a['default']}`,
        a['constraints'],
      ]);
    case 'extension':
      return `version ${a['version']}, schema ${a['schema']}`;
    case 'trigger':
      return join([a['definition'], a['enabled'] === 'enabled' ? undefined : `(${a['enabled']})`]);
    default:
      return join([a['definition'], a['options'] && `with (${a['options']})`]);
  }
}

function describeColumn(a: Record<string, string>): string {
  return join([
    a['type'],
    a['collation'] && `collate ${a['collation']}`,
    a['nullability'] === 'not null' ? 'not null' : undefined,
    a['default'] && `default ${a['default']}`,
    a['identity'] && `generated ${a['identity']} as identity`,
    a['generated'] &&
      `generated always as (${a['generated'].replace(/ (stored|virtual)$/, ') $1')}`,
  ]);
}

function join(parts: (string | undefined)[]): string {
  return parts.filter((part) => part !== undefined && part !== '').join(' ');
}

function columnsByTable(objects: SchemaObject[]): Map<string, SchemaObject[]> {
  const columns = new Map<string, SchemaObject[]>();
  for (const object of objects) {
    if (object.table === undefined) continue;
    const list = columns.get(object.table) ?? [];
    list.push(object);
    columns.set(object.table, list);
  }
  for (const list of columns.values()) list.sort((a, b) => (a.position ?? 0) - (b.position ?? 0));
  return columns;
}

function byKey(objects: SchemaObject[]): Map<string, SchemaObject> {
  return new Map(objects.map((object) => [`${object.kind}\0${object.name}`, object]));
}

// Plain code-unit order, not the locale's: the same snapshot sorts the same everywhere.
function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function compareObjects(a: SchemaObject, b: SchemaObject): number {
  return (
    OBJECT_KINDS.indexOf(a.kind) - OBJECT_KINDS.indexOf(b.kind) || compareStrings(a.name, b.name)
  );
}

/** The order of diff items: by kind (OBJECT_KINDS), name, then attribute (ATTRIBUTES). */
export function compareItems(a: DiffItem, b: DiffItem): number {
  const attributes = ATTRIBUTES[a.kind];
  return (
    OBJECT_KINDS.indexOf(a.kind) - OBJECT_KINDS.indexOf(b.kind) ||
    compareStrings(a.name, b.name) ||
    attributes.indexOf(a.detail ?? '') - attributes.indexOf(b.detail ?? '')
  );
}

// ---- Reading the catalog ----

type Reader = (client: pg.Client) => Promise<SchemaObject[]>;

const USER_SCHEMA = (n: string) =>
  `${n}.nspname NOT IN ('pg_catalog', 'information_schema') AND ${n}.nspname !~ '^pg_(toast|temp)'`;

const NOT_IN_EXTENSION = (catalog: string, oid: string) =>
  `NOT EXISTS (SELECT FROM pg_depend x
               WHERE x.classid = '${catalog}'::regclass AND x.objid = ${oid} AND x.deptype = 'e')`;

const QUALIFIED = (n: string, name: string) =>
  `quote_ident(${n}.nspname) || '.' || quote_ident(${name})`;

/** The collation of a column or attribute when it is not its type's own, as SQL would name it. */
const COLLATION = (a: string, t: string) => `
  CASE WHEN ${a}.attcollation <> ${t}.typcollation THEN (
    SELECT CASE WHEN cn.nspname = 'pg_catalog' THEN '' ELSE quote_ident(cn.nspname) || '.' END
           || quote_ident(co.collname)
    FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
    WHERE co.oid = ${a}.attcollation) END`;

async function select<Row extends object>(client: pg.Client, sql: string): Promise<Row[]> {
  return (await client.query<Row>(sql)).rows;
}

/** Drops attributes that are not set, keeping the others in the order given. */
function attributes(values: Record<string, string | null | undefined>): Record<string, string> {
  const result: Record<string, string> = {};
  for (const [key, value] of Object.entries(values)) {
    if (value !== null && value !== undefined && value !== '') result[key] = value;
  }
  return result;
}

const yesNo = (value: boolean) => (value ? 'yes' : 'no');

const readSchemas: Reader = async (client) =>
  (
    await select<{ name: string }>(
      client,
      `SELECT quote_ident(n.nspname) AS name FROM pg_namespace n
       WHERE ${USER_SCHEMA('n')} AND ${NOT_IN_EXTENSION('pg_namespace', 'n.oid')}`,
    )
  ).map((row) => ({ kind: 'schema', name: row.name, attributes: {} }));

const readRelations: Reader = async (client) => {
  const rows = await select<{
    name: string;
    relkind: string;
    relpersistence: string;
    relrowsecurity: boolean;
    relforcerowsecurity: boolean;
    reloptions: string[] | null;
    partition_key: string | null;
    partition_of: string | null;
    inherits: string | null;
    definition: string | null;
  }>(
    client,
    `SELECT ${QUALIFIED('n', 'c.relname')} AS name, c.relkind, c.relpersistence,
            c.relrowsecurity, c.relforcerowsecurity, c.reloptions,
            CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partition_key,
            CASE WHEN c.relispartition THEN (
              SELECT ${QUALIFIED('pn', 'p.relname')} || ' ' || pg_get_expr(c.relpartbound, c.oid)
              FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
                   JOIN pg_namespace pn ON pn.oid = p.relnamespace
              WHERE i.inhrelid = c.oid) END AS partition_of,
            CASE WHEN NOT c.relispartition THEN (
              SELECT string_agg(${QUALIFIED('pn', 'p.relname')}, ', ' ORDER BY i.inhseqno)
              FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
                   JOIN pg_namespace pn ON pn.oid = p.relnamespace
              WHERE i.inhrelid = c.oid) END AS inherits,
            CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END AS definition
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'v', 'm') AND ${USER_SCHEMA('n')}
       AND ${NOT_IN_EXTENSION('pg_class', 'c.oid')}`,
  );
  return rows.map((row): SchemaObject => {
    const options = row.reloptions?.join(', ');
    if (row.relkind === 'v' || row.relkind === 'm') {
      return {
        kind: row.relkind === 'v' ? 'view' : 'materialized view',
        name: row.name,
        attributes: attributes({ definition: normaliseWhitespace(row.definition!), options }),
      };
    }
    return {
      kind: 'table',
      name: row.name,
      attributes: attributes({
        kind: row.relkind === 'p' ? 'partitioned table' : 'table',
        'partition key': row.partition_key,
        'partition of': row.partition_of,
        inherits: row.inherits,
        persistence: row.relpersistence === 'u' ? 'unlogged' : 'logged',
        'row security': !row.relrowsecurity
          ? 'disabled'
          : row.relforcerowsecurity
            ? 'enabled, forced'
            : 'enabled',
        options,
      }),
    };
  });
};

function normaliseWhitespace(sql: string): string {
  return sql.replace(/\s+/g, ' ').trim();
}

const readColumns: Reader = async (client) => {
  const rows = await select<{
    table: string;
    name: string;
    attnum: number;
    type: string;
    attnotnull: boolean;
    attidentity: string;
    attgenerated: string;
    expression: string | null;
    collation: string | null;
  }>(
    client,
    // Inherited columns (every column of a partition) are the parent's.
    `SELECT ${QUALIFIED('n', 'c.relname')} AS table, quote_ident(a.attname) AS name,
            a.attnum, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull, a.attidentity,
            a.attgenerated, pg_get_expr(d.adbin, d.adrelid) AS expression,
            ${COLLATION('a', 't')} AS collation
     FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND a.attinhcount = 0
       AND ${USER_SCHEMA('n')} AND ${NOT_IN_EXTENSION('pg_class', 'c.oid')}`,
  );
  return rows.map((row) => ({
    kind: 'column',
    name: `${row.table}.${row.name}`,
    table: row.table,
    position: row.attnum,
    attributes: attributes({
      type: row.type,
      nullability: row.attnotnull ? 'not null' : 'null',
      default: row.attgenerated === '' ? row.expression : null,
      identity: { a: 'always', d: 'by default' }[row.attidentity],
      generated:
        row.attgenerated === ''
          ? null
          : `${row.expression} ${row.attgenerated === 'v' ? 'virtual' : 'stored'}`,
      collation: row.collation,
    }),
  }));
};

const readIndexes: Reader = async (client) => {
  const rows = await select<{ name: string; ident: string; definition: string }>(
    client,
    // Index partitions belong to their partitioned index, and the indexes of primary key, unique
    // and exclusion constraints to their constraint.
    `SELECT ${QUALIFIED('n', 'ic.relname')} AS name, quote_ident(ic.relname) AS ident,
            pg_get_indexdef(i.indexrelid) AS definition
     FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
          JOIN pg_namespace n ON n.oid = ic.relnamespace
     WHERE NOT ic.relispartition AND ${USER_SCHEMA('n')}
       AND ${NOT_IN_EXTENSION('pg_class', 'i.indrelid')}
       AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = i.indexrelid
                       AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x'))`,
  );
  return rows.map((row) => ({
    kind: 'index',
    name: row.name,
    // Without its own name, so that the definition compares the index, not what it is called.
    attributes: { definition: row.definition.replace(`INDEX ${row.ident} ON `, 'INDEX ON ') },
  }));
};

const readConstraints: Reader = async (client) =>
  (
    await select<{ name: string; definition: string }>(
      client,
      // Constraints a partition or child table inherits are its parent's; NOT NULL constraints
      // (PostgreSQL 18 keeps them here) are the column's nullability.
      `SELECT ${QUALIFIED('n', 'c.relname')} || '.' || quote_ident(k.conname) AS name,
              pg_get_constraintdef(k.oid) AS definition
       FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE k.contype IN ('p', 'u', 'f', 'c', 'x') AND k.conparentid = 0 AND k.coninhcount = 0
         AND ${USER_SCHEMA('n')} AND ${NOT_IN_EXTENSION('pg_class', 'c.oid')}`,
    )
  ).map((row) => ({
    kind: 'constraint',
    name: row.name,
    attributes: { definition: row.definition },
  }));

const readTriggers: Reader = async (client) =>
  (
    await select<{ name: string; definition: string; tgenabled: string }>(
      client,
      `SELECT ${QUALIFIED('n', 'c.relname')} || '.' || quote_ident(t.tgname) AS name,
              pg_get_triggerdef(t.oid) AS definition, t.tgenabled
       FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE NOT t.tgisinternal AND t.tgparentid = 0
         AND ${USER_SCHEMA('n')} AND ${NOT_IN_EXTENSION('pg_class', 'c.oid')}`,
    )
  ).map((row) => ({
    kind: 'trigger',
    name: row.name,
    attributes: attributes({
      definition: row.definition,
      enabled:
        { O: 'enabled', D: 'disabled', R: 'enabled on replica', A: 'enabled always' }[
          row.tgenabled
        ] ?? row.tgenabled,
    }),
  }));

const readFunctions: Reader = async (client) => {
  const rows = await select<{
    name: string;
    prokind: string;
    arguments: string;
    returns: string | null;
    language: string;
    provolatile: string;
    proisstrict: boolean;
    prosecdef: boolean;
    proparallel: string;
    proleakproof: boolean;
    cost: string;
    rows: string;
    proretset: boolean;
    proconfig: string[] | null;
    body: string | null;
    definition: string;
  }>(
    client,
    // Aggregates are left out (pg_get_functiondef cannot show them), and so are the functions a
    // type makes for itself (a range type's constructors).
    `SELECT ${QUALIFIED('n', 'p.proname')}
              || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS name,
            p.prokind, pg_get_function_arguments(p.oid) AS arguments,
            pg_get_function_result(p.oid) AS returns, l.lanname AS language, p.provolatile,
            p.proisstrict, p.prosecdef, p.proparallel, p.proleakproof, p.procost::text AS cost,
            p.prorows::text AS rows, p.proretset, p.proconfig,
            CASE WHEN p.prosqlbody IS NOT NULL THEN pg_get_function_sqlbody(p.oid) ELSE p.prosrc END
              AS body,
            pg_get_functiondef(p.oid) AS definition
     FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
          JOIN pg_language l ON l.oid = p.prolang
     WHERE p.prokind <> 'a' AND ${USER_SCHEMA('n')} AND ${NOT_IN_EXTENSION('pg_proc', 'p.oid')}
       AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                       AND d.objid = p.oid AND d.deptype = 'i')`,
  );
  return rows.map((row) => ({
    kind: 'function',
    name: row.name,
    attributes: attributes({
      kind: { f: 'function', p: 'procedure', w: 'window function' }[row.prokind] ?? row.prokind,
      arguments: row.arguments,
      returns: row.returns,
      language: row.language,
      volatility: { i: 'immutable', s: 'stable', v: 'volatile' }[row.provolatile],
      strict: yesNo(row.proisstrict),
      security: row.prosecdef ? 'definer' : 'invoker',
      parallel: { s: 'safe', r: 'restricted', u: 'unsafe' }[row.proparallel],
      leakproof: yesNo(row.proleakproof),
      cost: row.cost,
      rows: row.proretset ? row.rows : null,
      config: row.proconfig?.join(', '),
      body: row.body,
      definition: row.definition,
    }),
  }));
};

const readSequences: Reader = async (client) => {
  const rows = await select<{
    name: string;
    type: string;
    start: string;
    increment: string;
    minimum: string;
    maximum: string;
    cache: string;
    seqcycle: boolean;
    owned_by: string | null;
  }>(
    client,
    // Identity sequences are part of their column.
    `SELECT ${QUALIFIED('n', 'c.relname')} AS name, format_type(s.seqtypid, NULL) AS type,
            s.seqstart::text AS start, s.seqincrement::text AS increment,
            s.seqmin::text AS minimum, s.seqmax::text AS maximum, s.seqcache::text AS cache,
            s.seqcycle,
            (SELECT ${QUALIFIED('tn', 'tc.relname')} || '.' || quote_ident(a.attname)
             FROM pg_depend d JOIN pg_class tc ON tc.oid = d.refobjid
                  JOIN pg_namespace tn ON tn.oid = tc.relnamespace
                  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
               AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a') AS owned_by
     FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE ${USER_SCHEMA('n')} AND ${NOT_IN_EXTENSION('pg_class', 'c.oid')}
       AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                       AND d.objid = c.oid AND d.deptype = 'i')`,
  );
  return rows.map((row) => ({
    kind: 'sequence',
    name: row.name,
    attributes: attributes({
      type: row.type,
      start: row.start,
      increment: row.increment,
      minimum: row.minimum,
      maximum: row.maximum,
      cache: row.cache,
      cycle: yesNo(row.seqcycle),
      'owned by': row.owned_by,
    }),
  }));
};

const readTypes: Reader = async (client) => {
  const rows = await select<{
    name: string;
    typtype: string;
    labels: string | null;
    attributes: string | null;
    base_type: string | null;
    typnotnull: boolean;
    typdefault: string | null;
    constraints: string | null;
    subtype: string | null;
  }>(
    client,
    // Enums, composite types (not the row types of tables), domains and ranges; base types,
    // arrays and multiranges come with one of these or from C code.
    `SELECT ${QUALIFIED('n', 't.typname')} AS name, t.typtype,
            (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
             FROM pg_enum e WHERE e.enumtypid = t.oid) AS labels,
            (SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
                               || coalesce(' COLLATE ' || ${COLLATION('a', 'at')}, ''),
                               ', ' ORDER BY a.attnum)
             FROM pg_attribute a JOIN pg_type at ON at.oid = a.atttypid
             WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0
               AND NOT a.attisdropped) AS attributes,
            CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END AS base_type,
            t.typnotnull, t.typdefault,
            (SELECT string_agg('CONSTRAINT ' || quote_ident(k.conname) || ' '
                               || pg_get_constraintdef(k.oid), ' ' ORDER BY k.conname)
             FROM pg_constraint k WHERE k.contypid = t.oid AND k.contype = 'c') AS constraints,
            (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r WHERE r.rngtypid = t.oid)
              AS subtype
     FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.typtype IN ('e', 'c', 'd', 'r')
       AND (t.typtype <> 'c' OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
       AND ${USER_SCHEMA('n')} AND ${NOT_IN_EXTENSION('pg_type', 't.oid')}`,
  );
  return rows.map((row) => ({
    kind: 'type',
    name: row.name,
    attributes: attributes({
      kind: { e: 'enum', c: 'composite', d: 'domain', r: 'range' }[row.typtype],
      labels: row.labels,
      attributes: row.attributes,
      'base type': row.base_type,
      'not null': row.typtype === 'd' ? yesNo(row.typnotnull) : null,
      default: row.typdefault,
      constraints: row.constraints,
      subtype: row.subtype,
    }),
  }));
};

const readExtensions: Reader = async (client) =>
  (
    await select<{ name: string; version: string; schema: string }>(
      client,
      `SELECT quote_ident(e.extname) AS name, e.extversion AS version,
              quote_ident(n.nspname) AS schema
       FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace`,
    )
  ).map((row) => ({
    kind: 'extension',
    name: row.name,
    attributes: { version: row.version, schema: row.schema },
  }));

const READERS: readonly Reader[] = [
  readSchemas,
  readRelations,
  readColumns,
  readIndexes,
  readConstraints,
  readFunctions,
  readSequences,
  readTypes,
  readExtensions,
  readTriggers,
];
