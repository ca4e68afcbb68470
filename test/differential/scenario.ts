// The differential test's script of client work, written once as data and run by every driver
// (node-postgres, postgres.js, psycopg 3) against every target (the server directly, and pgbranch in
// session mode, in transaction mode and on a branch). Steps name their client: several sections need
// two or three clients in sequence or interleaved, and that is where a transaction pooler can give
// one client's session to another. Comments on a section say which fault it is there to catch.
//
// Nothing here may differ legitimately between targets: no backend pids, no current_database(), no
// clock. SQL may name the run's own objects with placeholders, filled in per run: {scratch} and
// {scratch2} (the scratch database and its new name), {copy} (a database made from it), {gid} (a
// two-phase transaction id unique in the cluster).

export type DriverName = 'pg' | 'postgres.js' | 'psycopg';
export const DRIVERS: readonly DriverName[] = ['pg', 'postgres.js', 'psycopg'];

/** Each run has a main database and a scratch one that a section copies, renames and drops. */
export type Database = 'main' | 'scratch';

export type Params = (string | null)[];

export interface QueryAction {
  do: 'query';
  sql: string;
  params?: Params;
  /** Simple Query, or Parse/Bind/Execute. Default: extended with params or a name, else simple. */
  protocol?: 'simple' | 'extended';
  /**
   * A named statement, prepared once and executed by name after: pg's `name`, postgres.js's
   * `prepare: true` and psycopg's `prepare=True` (both of which name statements themselves).
   */
  name?: string;
  /** Large results are compared by row count and a hash of the rows. */
  digest?: boolean;
}

/** What a driver does for a client; connect and disconnect are the driver's too. */
export type ClientAction =
  | QueryAction
  /** Several queries sent without waiting for each answer (as far as the driver pipelines). */
  | { do: 'pipeline'; queries: { sql: string; params?: Params }[] }
  | { do: 'copy-in'; sql: string; data: string }
  | { do: 'copy-out'; sql: string; digest?: boolean }
  /** The driver's own way to read a result in batches (a portal read `batch` rows at a time). */
  | { do: 'cursor'; sql: string; batch: number; digest?: boolean }
  | { do: 'listen'; channel: string }
  | { do: 'unlisten'; channel: string }
  /** Waits (up to 5 s) for the next notification this client gets on `channel`. */
  | { do: 'notification'; channel: string };

export type Action =
  | ClientAction
  | {
      do: 'connect';
      database: Database;
      /** psycopg's prepared_max: it DEALLOCATEs the oldest of its statements past it. */
      preparedMax?: number;
    }
  | { do: 'disconnect' }
  /** The query again and again (up to 5 s) until its rows are `until`: waiting for a state. */
  | { do: 'poll'; query: QueryAction; until: unknown[][] }
  /** Waits until no session on the database is busy (the harness does this, not the client). */
  | { do: 'settle'; database: Database };

/** An expected SQLSTATE, or per driver (null: that driver succeeds, by preparing again, say). */
export type ExpectedError = string | Partial<Record<DriverName, string | null>>;

export interface Step {
  /** `section.label`, unique: the key that results are compared and limits are listed by. */
  id: string;
  client: string;
  action: Action;
  /** What the step does directly against the server; a step without it succeeds. */
  error?: ExpectedError;
  /** Drivers that run the step (default all): some things only one driver can be made to do. */
  only?: DriverName[];
}

type StepOptions = Partial<Omit<QueryAction, 'do' | 'sql'>> & Pick<Step, 'error' | 'only'>;

function q(client: string, label: string, sql: string, options: StepOptions = {}): Step {
  const { error, only, ...query } = options;
  return {
    id: label,
    client,
    action: { do: 'query', sql, ...query },
    ...(error === undefined ? {} : { error }),
    ...(only === undefined ? {} : { only }),
  };
}

function connect(client: string, database: Database = 'main', extra: Partial<Step> = {}): Step {
  return { id: `${client}-connects`, client, action: { do: 'connect', database }, ...extra };
}

function disconnect(client: string, extra: Partial<Step> = {}): Step {
  return { id: `${client}-disconnects`, client, action: { do: 'disconnect' }, ...extra };
}

function act(client: string, label: string, action: Action, extra: Partial<Step> = {}): Step {
  return { id: label, client, action, ...extra };
}

function section(name: string, steps: Step[]): Step[] {
  return steps.map((step) => ({ ...step, id: `${name}.${step.id}` }));
}

/** Made in each run's databases before the run, directly, identically for every target. */
export const SCHEMA = `
create type mood as enum ('sad', 'ok', 'happy');
create type pair as (a int, b text);
create table items (id int primary key, name text not null, qty int not null default 0);
insert into items select g, 'item ' || g, g % 7 from generate_series(1, 100) g;
create table shape (a int, b text, c bool);
insert into shape values (1, 'one', true), (2, 'two', false);
create table ledger (id serial primary key, note text);
create sequence counter;
create schema other;
create table other.items (id int, label text);
insert into other.items values (1, 'other');
create table copy_target (id int, name text, amount numeric);
create table big as select g as id, md5(g::text) as hash from generate_series(1, 20000) g;
create function make_temp() returns void language plpgsql as $$
begin
  create temp table made_by_function (x int);
  insert into made_by_function values (42);
end $$;
create function temp_behind_view() returns int language plpgsql as $$
begin
  create temp table if not exists behind_view (x int);
  return 1;
end $$;
create view makes_temp as select temp_behind_view() as v;
create function quiet_setting() returns int language plpgsql as $$
begin
  perform set_config('work_mem', '9MB', false);
  return 1;
end $$;
`;

const ALL_TYPES = `select
  1::int2 as int2, 2::int4 as int4, 3000000000::int8 as int8, 1.5::float4 as float4,
  2.25::float8 as float8, 'NaN'::float8 as nan, 12345.6789::numeric as numeric,
  true as bool, 'text'::text as text, 'var'::varchar(10) as varchar, 'c'::char(3) as bpchar,
  'üñí €😀'::text as unicode, '\\xdeadbeef'::bytea as bytea, '2024-02-29'::date as date,
  '13:14:15.5'::time as time, '13:14:15+02'::timetz as timetz,
  '2024-02-29 13:14:15.123456'::timestamp as timestamp,
  '2024-02-29 13:14:15.123456+00'::timestamptz as timestamptz,
  '1 year 2 mons 3 days 04:05:06'::interval as interval,
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as uuid,
  '{"a": [1, 2, {"b": null}]}'::json as json, '{"b": 2, "a": 1}'::jsonb as jsonb,
  array[1, 2, null]::int4[] as int4_array, array['a', 'b c', '"q"']::text[] as text_array,
  array[[1, 2], [3, 4]] as int_matrix, '192.168.0.1/24'::inet as inet, '10.0.0.0/8'::cidr as cidr,
  '08:00:2b:01:02:03'::macaddr as macaddr, point(1.5, 2) as point, '12.34'::money as money,
  'happy'::mood as enum, row(1, 'x')::pair as composite, int4range(1, 10) as int4range,
  '[2024-01-01,2024-02-01)'::daterange as daterange, 'a fat cat'::tsvector as tsvector,
  B'1010'::bit(4) as bit, B'101'::varbit as varbit, 'pg_class'::regclass as regclass,
  26::oid as oid, null::text as null_text`;

const ROUND_TRIP = `select $1::int2 as int2, $2::int8 as int8, $3::numeric as numeric,
  $4::float8 as float8, $5::bool as bool, $6::date as date, $7::timestamptz as timestamptz,
  $8::interval as interval, $9::uuid as uuid, $10::jsonb as jsonb, $11::int4[] as int4_array,
  $12::text[] as text_array, $13::mood as mood, $14::inet as inet, $15::text as unicode`;

const ROUND_TRIP_PARAMS = [
  '-32768',
  '9007199254740993',
  '-0.000123',
  '1e-300',
  'true',
  '1999-12-31',
  '2000-01-01 00:00:00.000001+05:30',
  'P1Y2M3DT4H5M6S',
  'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
  '{"z": [true, null, 1.5]}',
  '{1,NULL,3}',
  '{a,"b c",""}',
  'ok',
  '::1',
  'żółć 🐘',
];

const LARGE_COPY = Array.from({ length: 5000 }, (_, i) => `${1000 + i}\trow ${i}\t${i}.5\n`).join(
  '',
);

/** Temporary objects of the temp-tables section, wherever they are in the database. */
const TEMP_OBJECTS = `select count(*)::int as n from pg_class where relpersistence = 't'
  and relname in ('scratchpad', 'session_notes', 'picked', 'tseq', 'tview', 'made_by_function')`;

export const SCENARIO: Step[] = [
  ...section('basics', [
    connect('a'),
    q('a', 'one-row', "select 1 as one, 'two' as two"),
    q(
      'a',
      'multi-statement',
      'select 1 as a; select 2 as b, 3 as c; update items set qty = qty where id < 0',
    ),
    q('a', 'empty-query', ''),
    q(
      'a',
      'unnamed-params',
      'select id, name, qty from items where id between $1 and $2 order by id',
      {
        params: ['3', '5'],
      },
    ),
    q('a', 'unnamed-no-params', 'select count(*) as n from items', { protocol: 'extended' }),
    q('a', 'null-params', 'select $1::text is null as is_null, coalesce($2::int, -1) as fallback', {
      params: [null, null],
    }),
    q('a', 'named-first', 'select id, name from items where id between $1 and $2 order by id', {
      name: 'items_between',
      params: ['6', '8'],
    }),
    q('a', 'named-again', 'select id, name from items where id between $1 and $2 order by id', {
      name: 'items_between',
      params: ['9', '10'],
    }),
    q('a', 'named-second', 'select name from items where id = $1', {
      name: 'item_name',
      params: ['42'],
    }),
    q('a', 'insert-returning', 'insert into ledger (note) values ($1) returning id, note', {
      params: ['basics'],
    }),
    q('a', 'update', 'update items set qty = qty + 1 where id <= 10'),
    q('a', 'delete', 'delete from ledger where note = $1', { params: ['basics'] }),
    q('a', 'syntax-error', 'selec 1', { error: '42601' }),
    q('a', 'undefined-table', 'select * from no_such_table where id = $1', {
      params: ['1'],
      error: '42P01',
    }),
    q('a', 'division-by-zero', 'select 10 / $1::int as quotient', {
      name: 'divide',
      params: ['0'],
      error: '22012',
    }),
    q('a', 'named-after-its-error', 'select 10 / $1::int as quotient', {
      name: 'divide',
      params: ['5'],
    }),
    q('a', 'unique-violation', "insert into items (id, name) values (1, 'again')", {
      error: '23505',
    }),
    q('a', 'not-null-violation', 'insert into items (id, name) values ($1, $2)', {
      params: ['1000', null],
      error: '23502',
    }),
    q('a', 'still-usable', "select 'fine' as state"),
    q('a', 'notices', "do $$ begin raise notice 'hello'; raise warning 'careful'; end $$"),
    disconnect('a'),
  ]),

  ...section('types', [
    connect('ty'),
    q('ty', 'simple', ALL_TYPES),
    q('ty', 'extended', ALL_TYPES, { protocol: 'extended' }),
    q('ty', 'named', ALL_TYPES, { name: 'all_types' }),
    q('ty', 'parameters', ROUND_TRIP, { params: ROUND_TRIP_PARAMS }),
    q('ty', 'parameters-named', ROUND_TRIP, { name: 'round_trip', params: ROUND_TRIP_PARAMS }),
    q('ty', 'bad-parameter', 'select $1::int as n', { params: ['x'], error: '22P02' }),
    disconnect('ty'),
  ]),

  ...section('transactions', [
    connect('tx'),
    q('tx', 'begin', 'begin'),
    q('tx', 'insert', "insert into ledger (note) values ('committed') returning id"),
    q('tx', 'savepoint', 'savepoint before_duplicate'),
    q('tx', 'duplicate', "insert into items (id, name) values (2, 'dup')", { error: '23505' }),
    q('tx', 'rollback-to-savepoint', 'rollback to savepoint before_duplicate'),
    q('tx', 'insert-after-savepoint', 'insert into ledger (note) values ($1) returning id', {
      params: ['after savepoint'],
    }),
    q('tx', 'release', 'release savepoint before_duplicate'),
    q('tx', 'commit', 'commit'),
    q('tx', 'committed-rows', 'select id, note from ledger order by id'),
    q('tx', 'begin-failing', 'begin'),
    q('tx', 'error', 'select 1 / 0', { error: '22012' }),
    q('tx', 'aborted', 'select 1 as one', { protocol: 'extended', error: '25P02' }),
    q('tx', 'commit-of-aborted', 'commit'),
    q('tx', 'begin-rolled-back', 'begin'),
    q('tx', 'insert-rolled-back', "insert into ledger (note) values ('rolled back')"),
    q('tx', 'rollback', 'rollback'),
    q('tx', 'rolled-back-rows', "select count(*) as n from ledger where note = 'rolled back'"),
    q('tx', 'begin-repeatable-read', 'begin isolation level repeatable read'),
    q('tx', 'isolation', 'show transaction_isolation'),
    q('tx', 'commit-repeatable-read', 'commit'),
    q('tx', 'begin-read-only', 'begin read only'),
    q('tx', 'write-in-read-only', "insert into ledger (note) values ('no')", { error: '25006' }),
    q('tx', 'rollback-read-only', 'rollback'),
    q('tx', 'begin-extended-error', 'begin'),
    q('tx', 'extended-error', 'select $1::int as n', { params: ['x'], error: '22P02' }),
    q('tx', 'rollback-extended-error', 'rollback'),
    q('tx', 'begin-set-local', 'begin'),
    q('tx', 'set-local', "set local statement_timeout = '5s'"),
    q('tx', 'show-local', 'show statement_timeout'),
    q('tx', 'commit-set-local', 'commit'),
    q('tx', 'local-is-gone', 'show statement_timeout'),
    disconnect('tx'),
  ]),

  // Settings must follow a client to whichever server connection it gets: h holds the one g used.
  ...section('settings', [
    connect('g'),
    connect('h'),
    q('g', 'set-timezone', "set timezone to 'America/New_York'"),
    q('g', 'set-search-path', 'set search_path to other, public'),
    q('g', 'set-application-name', "set application_name to 'differential'"),
    q('g', 'set-config', "select set_config('work_mem', '8MB', false) as work_mem"),
    q('h', 'begin', 'begin'),
    q('h', 'holds-a-connection', 'select count(*) as n from items'),
    q('g', 'timestamptz-text', "select '2024-06-01 12:00:00+00'::timestamptz::text as local_time"),
    q('g', 'show-timezone', 'show timezone'),
    q('g', 'search-path-used', 'select label from items'),
    q('g', 'show-application-name', 'show application_name', { protocol: 'extended' }),
    q('g', 'show-work-mem', 'show work_mem'),
    q('h', 'commit', 'commit'),
    q('g', 'reset-all', 'reset all'),
    q('g', 'search-path-reset', 'select count(*) as n from items'),
    q(
      'g',
      'session-characteristics',
      'set session characteristics as transaction isolation level serializable',
    ),
    q('g', 'begin-serializable-by-default', 'begin'),
    q('g', 'default-isolation', 'show transaction_isolation'),
    q('g', 'commit-serializable', 'commit'),
    disconnect('g'),
    disconnect('h'),
  ]),

  ...section('copy', [
    connect('c'),
    act('c', 'in-text', {
      do: 'copy-in',
      sql: 'copy copy_target (id, name, amount) from stdin',
      data: '1\tone\t1.50\n2\ttwo\t\\N\n3\tthree, with comma\t-7\n',
    }),
    act('c', 'in-csv', {
      do: 'copy-in',
      sql: 'copy copy_target (id, name, amount) from stdin with (format csv, header true)',
      data: 'id,name,amount\n4,"quoted ""name""",4.25\n5,,0\n',
    }),
    act('c', 'out-text', {
      do: 'copy-out',
      sql: 'copy (select id, name, amount from copy_target order by id) to stdout',
    }),
    act('c', 'out-csv', {
      do: 'copy-out',
      sql: 'copy (select * from copy_target order by id) to stdout with (format csv, header true)',
    }),
    act('c', 'out-large', {
      do: 'copy-out',
      sql: 'copy (select id, hash from big order by id) to stdout',
      digest: true,
    }),
    // postgres.js never settles a COPY FROM STDIN that the server refuses (its stream waits for a
    // CommandComplete that does not come), and the connection stays in COPY: not with postgres.js.
    act(
      'c',
      'in-bad-data',
      {
        do: 'copy-in',
        sql: 'copy copy_target (id, name, amount) from stdin',
        data: '6\tsix\tnot-a-number\n',
      },
      { error: '22P02', only: ['pg', 'psycopg'] },
    ),
    q('c', 'count-after-bad-data', 'select count(*) as n from copy_target'),
    q('c', 'begin', 'begin'),
    act('c', 'in-transaction', {
      do: 'copy-in',
      sql: 'copy copy_target (id, name, amount) from stdin',
      data: '7\tseven\t7\n',
    }),
    q('c', 'rollback', 'rollback'),
    q('c', 'count-after-rollback', 'select count(*) as n from copy_target'),
    act('c', 'in-large', {
      do: 'copy-in',
      sql: 'copy copy_target (id, name, amount) from stdin',
      data: LARGE_COPY,
    }),
    q('c', 'count-after-large', 'select count(*) as n, sum(amount) as total from copy_target'),
    disconnect('c'),
  ]),

  ...section('cursors', [
    connect('k'),
    q('k', 'begin', 'begin'),
    q('k', 'declare', 'declare c cursor for select id, hash from big order by id'),
    q('k', 'fetch', 'fetch 5 from c'),
    q('k', 'move', 'move 100 in c'),
    q('k', 'fetch-after-move', 'fetch 2 from c', { protocol: 'extended' }),
    q('k', 'close', 'close c'),
    q('k', 'commit', 'commit'),
    q('k', 'declare-with-hold', 'declare h cursor with hold for select id from items order by id'),
    q('k', 'fetch-held', 'fetch 3 from h'),
    q('k', 'fetch-held-again', 'fetch 2 from h'),
    q('k', 'close-held', 'close h'),
    q('k', 'begin-driver-cursor', 'begin'),
    act('k', 'driver-cursor', {
      do: 'cursor',
      sql: 'select id, hash from big where id <= 1000 order by id',
      batch: 100,
      digest: true,
    }),
    q('k', 'commit-driver-cursor', 'commit'),
    disconnect('k'),
  ]),

  ...section('large', [
    connect('l'),
    q('l', 'rows-extended', 'select id, hash from big order by id', {
      protocol: 'extended',
      digest: true,
    }),
    q('l', 'rows-simple', 'select id, hash from big order by id', { digest: true }),
    q('l', 'rows-named', 'select id, hash from big order by id', {
      name: 'big_rows',
      digest: true,
    }),
    q('l', 'wide-value', "select repeat('x', 1048576) as wide", {
      protocol: 'extended',
      digest: true,
    }),
    q('l', 'large-parameter', 'select length($1::text) as n, md5($1::text) as hash', {
      params: ['p'.repeat(2_000_000)],
    }),
    act('l', 'pipeline', {
      do: 'pipeline',
      queries: [
        { sql: 'select 1 as a' },
        { sql: 'select $1::int as b', params: ['2'] },
        { sql: 'select count(*) as n from big' },
      ],
    }),
    // psycopg raises the error for the whole pipeline (where, depends on when results arrive).
    act(
      'l',
      'pipeline-with-error',
      {
        do: 'pipeline',
        queries: [
          { sql: 'select 1 as a' },
          { sql: 'select 1 / $1::int as b', params: ['0'] },
          { sql: 'select 3 as c' },
        ],
      },
      { error: { psycopg: '22012' } },
    ),
    disconnect('l'),
  ]),

  // LISTEN pins a transaction-mode client to its server connection; notifications must reach it.
  ...section('notify', [
    connect('listener'),
    connect('notifier'),
    act('listener', 'listen', { do: 'listen', channel: 'diff_events' }),
    q('notifier', 'notify', "notify diff_events, 'first'"),
    act('listener', 'receives-first', { do: 'notification', channel: 'diff_events' }),
    q('notifier', 'begin', 'begin'),
    q('notifier', 'pg-notify', 'select pg_notify($1, $2) as sent', {
      params: ['diff_events', 'second'],
    }),
    q('notifier', 'commit', 'commit'),
    act('listener', 'receives-second', { do: 'notification', channel: 'diff_events' }),
    q('notifier', 'begin-rolled-back', 'begin'),
    q('notifier', 'notify-rolled-back', "notify diff_events, 'never'"),
    q('notifier', 'rollback', 'rollback'),
    q('notifier', 'notify-third', "notify diff_events, 'third'"),
    act('listener', 'receives-third-not-rolled-back', {
      do: 'notification',
      channel: 'diff_events',
    }),
    q('listener', 'notify-self', "notify diff_events, 'to myself'"),
    act('listener', 'receives-own', { do: 'notification', channel: 'diff_events' }),
    act('listener', 'unlisten', { do: 'unlisten', channel: 'diff_events' }),
    disconnect('listener'),
    disconnect('notifier'),
  ]),

  ...section('two-phase', [
    connect('tp'),
    connect('tp2'),
    q('tp', 'begin', 'begin'),
    q('tp', 'insert', "insert into ledger (note) values ('two-phase')"),
    q('tp', 'prepare', "prepare transaction '{gid}'"),
    q('tp', 'not-visible-yet', "select count(*) as n from ledger where note = 'two-phase'"),
    q('tp', 'listed', "select count(*) as n from pg_prepared_xacts where gid = '{gid}'"),
    q('tp2', 'commit-prepared-by-another-client', "commit prepared '{gid}'"),
    q('tp', 'visible', "select count(*) as n from ledger where note = 'two-phase'"),
    q('tp', 'begin-rolled-back', 'begin'),
    q('tp', 'insert-rolled-back', "insert into ledger (note) values ('two-phase rolled back')"),
    q('tp', 'prepare-rolled-back', "prepare transaction '{gid}-r'"),
    q('tp', 'rollback-prepared', "rollback prepared '{gid}-r'"),
    q('tp', 'gone', "select count(*) as n from ledger where note = 'two-phase rolled back'"),
    q('tp', 'commit-unknown', "commit prepared '{gid}-none'", { error: '42704' }),
    disconnect('tp'),
    disconnect('tp2'),
  ]),

  // Issue 8, fault 1: temporary objects are session state. Another client must never see them,
  // their owner must keep them across its transactions, and they end with their owner's session.
  // t2 holds a connection open while t1 works, so that t1's next transaction can't simply go back
  // to the connection it used before.
  ...section('temp-tables', [
    connect('t1'),
    connect('t2'),
    q('t1', 'create', 'create temp table scratchpad (id int, note text)'),
    q('t1', 'insert', "insert into scratchpad values (1, 'mine'), (2, 'also mine')"),
    q('t1', 'read-own', 'select * from scratchpad order by id'),
    q('t2', 'begin', 'begin'),
    q('t2', 'holds-a-connection', 'select count(*) as n from items'),
    q('t2', 'read-other-clients', 'select * from scratchpad order by id', { error: '42P01' }),
    q('t1', 'read-own-while-other-busy', 'select * from scratchpad order by id'),
    q('t2', 'rollback', 'rollback'),
    q(
      't1',
      'create-on-commit-delete-rows',
      'create temp table session_notes (n int) on commit delete rows',
    ),
    q('t1', 'insert-on-commit-delete-rows', 'insert into session_notes values (1)'),
    q('t1', 'emptied-by-commit', 'select count(*) as n from session_notes'),
    q('t1', 'select-into-temp', 'select id, name into temp table picked from items where id <= 3'),
    q('t1', 'read-select-into', 'select * from picked order by id', { protocol: 'extended' }),
    q('t1', 'create-temp-sequence', 'create temp sequence tseq'),
    q('t1', 'nextval-temp-sequence', "select nextval('tseq') as v"),
    q('t1', 'nextval-temp-sequence-again', "select nextval('tseq') as v"),
    q('t1', 'create-temp-view', 'create temp view tview as select 7 as seven'),
    q('t1', 'read-temp-view', 'select * from tview'),
    q('t1', 'function-creates-temp', 'select make_temp()'),
    q('t1', 'read-function-temp', 'select x from made_by_function', { name: 'made_by_function' }),
    q('t1', 'begin-two-phase', 'begin'),
    q('t1', 'insert-two-phase', "insert into scratchpad values (3, 'two-phase')"),
    q('t1', 'prepare-transaction-on-temp', "prepare transaction '{gid}-temp'", { error: '0A000' }),
    q('t1', 'read-after-failed-prepare', 'select count(*) as n from scratchpad'),
    disconnect('t1'),
    connect('t3'),
    q('t3', 'read-after-owner-left', 'select * from scratchpad order by id', { error: '42P01' }),
    q('t3', 'read-select-into-after-owner-left', 'select * from picked', { error: '42P01' }),
    act('t3', 'gone-with-owner', {
      do: 'poll',
      query: { do: 'query', sql: TEMP_OBJECTS },
      until: [[0]],
    }),
    disconnect('t2'),
    disconnect('t3'),
  ]),

  // Issue 8, fault 2: a statement prepared when `shape` had three columns, executed after the table
  // was made again with two, on another server connection than the one it was prepared on (s2
  // holds that one). The server answers 0A000 "cached plan must not change result type"; the
  // client must get the same, never rows it decodes with the old row description.
  ...section('schema-change', [
    connect('s1'),
    connect('s2'),
    connect('s3'),
    q('s1', 'prepare', 'select * from shape order by a', { name: 'shape_rows' }),
    q('s1', 'execute-again', 'select * from shape order by a', { name: 'shape_rows' }),
    q('s2', 'begin', 'begin'),
    q('s2', 'holds-a-connection', 'select 1 as holding'),
    q(
      's3',
      'recreate-with-fewer-columns',
      "drop table shape; create table shape (a int, b text); insert into shape values (1, 'one'), (3, 'three')",
    ),
    q('s1', 'execute-after-change', 'select * from shape order by a', {
      name: 'shape_rows',
      error: { pg: '0A000', psycopg: '0A000', 'postgres.js': null },
    }),
    q('s1', 'execute-after-change-again', 'select * from shape order by a', {
      name: 'shape_rows',
      error: { pg: '0A000', psycopg: '0A000', 'postgres.js': null },
    }),
    q('s2', 'rollback', 'rollback'),
    q('s1', 'unnamed-after-change', 'select * from shape order by a', { protocol: 'extended' }),
    q('s1', 'prepare-column', 'select b from shape where a = $1', {
      name: 'shape_b',
      params: ['1'],
    }),
    q('s2', 'begin-again', 'begin'),
    q('s2', 'holds-a-connection-again', 'select 1 as holding'),
    q('s3', 'change-column-type', 'alter table shape alter column b type varchar(20)'),
    q('s1', 'execute-after-type-change', 'select b from shape where a = $1', {
      name: 'shape_b',
      params: ['3'],
      error: { pg: '0A000', psycopg: '0A000', 'postgres.js': null },
    }),
    q('s2', 'rollback-again', 'rollback'),
    disconnect('s1'),
    disconnect('s2'),
    disconnect('s3'),
  ]),

  // Issue 8, fault 5: DEALLOCATE ALL and DISCARD ALL sent with the extended protocol (as psycopg
  // does after a DROP or a ROLLBACK) remove every statement of the server session; the next client
  // that prepares the same text must have it prepared again.
  ...section('deallocate-all', [
    connect('d1'),
    q('d1', 'prepare', 'select count(*) as n from items where qty > $1', {
      name: 'qty_over',
      params: ['2'],
    }),
    q('d1', 'deallocate-all-extended', 'deallocate all', { protocol: 'extended' }),
    q('d1', 'execute-after-deallocate-all', 'select count(*) as n from items where qty > $1', {
      name: 'qty_over',
      params: ['3'],
      error: { pg: '26000', psycopg: '26000', 'postgres.js': null },
    }),
    disconnect('d1'),
    connect('d2'),
    q(
      'd2',
      'same-statement-after-deallocate-all',
      'select count(*) as n from items where qty > $1',
      {
        name: 'qty_over',
        params: ['4'],
      },
    ),
    q('d2', 'discard-all-extended', 'discard all', { protocol: 'extended' }),
    disconnect('d2'),
    connect('d3'),
    q('d3', 'same-statement-after-discard-all', 'select count(*) as n from items where qty > $1', {
      name: 'qty_over',
      params: ['5'],
    }),
    q('d3', 'deallocate-all-simple', 'deallocate all'),
    disconnect('d3'),
    connect('d4'),
    q('d4', 'same-statement-after-simple', 'select count(*) as n from items where qty > $1', {
      name: 'qty_over',
      params: ['6'],
    }),
    // psycopg deallocates everything itself, with the extended protocol, after a DROP.
    q('d4', 'drop', 'drop table if exists not_there'),
    disconnect('d4'),
    connect('d5'),
    q('d5', 'same-statement-after-drop', 'select count(*) as n from items where qty > $1', {
      name: 'qty_over',
      params: ['1'],
    }),
    disconnect('d5'),
  ]),

  // Issue 8, fault 6: DEALLOCATE of one protocol-level statement. node-postgres's is by the name
  // it gave; psycopg's comes from psycopg itself, evicting the oldest past prepared_max.
  ...section('deallocate-name', [
    connect('e1', 'main', { only: ['pg'] }),
    q('e1', 'prepare', "select 'kept' as v", { name: 'evict_me', only: ['pg'] }),
    q('e1', 'deallocate', 'deallocate evict_me', { only: ['pg'] }),
    q('e1', 'execute-deallocated', "select 'kept' as v", {
      name: 'evict_me',
      only: ['pg'],
      error: '26000',
    }),
    disconnect('e1', { only: ['pg'] }),
    connect('e2', 'main', { only: ['pg'] }),
    q('e2', 'same-name-other-client', "select 'kept' as v", { name: 'evict_me', only: ['pg'] }),
    disconnect('e2', { only: ['pg'] }),
    act(
      'e3',
      'e3-connects',
      { do: 'connect', database: 'main', preparedMax: 2 },
      { only: ['psycopg'] },
    ),
    q('e3', 'first', 'select 1 as one', { name: 'first', only: ['psycopg'] }),
    q('e3', 'second', 'select 2 as two', { name: 'second', only: ['psycopg'] }),
    q('e3', 'third-evicts-first', 'select 3 as three', { name: 'third', only: ['psycopg'] }),
    q('e3', 'first-again-evicts-second', 'select 1 as one', { name: 'first', only: ['psycopg'] }),
    q('e3', 'third-again', 'select 3 as three', { name: 'third', only: ['psycopg'] }),
    disconnect('e3', { only: ['psycopg'] }),
  ]),

  // Issue 8, fault 7: what one client PREPAREs with SQL is its own, and ends with its session.
  ...section('sql-prepare', [
    connect('p1'),
    q('p1', 'begin', 'begin'),
    q('p1', 'prepare', 'prepare double_it (int) as select $1 * 2 as doubled'),
    q('p1', 'execute', 'execute double_it(21)'),
    q('p1', 'commit', 'commit'),
    disconnect('p1'),
    connect('p2'),
    q('p2', 'prepare-same-name', 'prepare double_it (int) as select $1 + 1 as incremented'),
    q('p2', 'execute-own', 'execute double_it(5)'),
    connect('p3'),
    q('p3', 'execute-other-clients', 'execute double_it(5)', { error: '26000' }),
    q('p3', 'prepare-own', 'prepare double_it (int) as select $1 - 1 as decremented'),
    q('p3', 'execute-its-own', 'execute double_it(5)'),
    q('p2', 'execute-own-again', 'execute double_it(5)'),
    q('p2', 'deallocate', 'deallocate double_it'),
    disconnect('p2'),
    disconnect('p3'),
    connect('p4'),
    q('p4', 'execute-after-all-left', 'execute double_it(1)', { error: '26000' }),
    disconnect('p4'),
  ]),

  // Issue 8, fault 3: the scratch database has had a client, so pgbranch pools a connection to it;
  // directly, nobody is connected to it any more, and these succeed.
  ...section('databases', [
    connect('y', 'scratch'),
    q('y', 'use-scratch', 'select count(*) as n from items'),
    disconnect('y'),
    act('x', 'scratch-settles', { do: 'settle', database: 'scratch' }),
    connect('x'),
    q('x', 'create-from-template', 'create database {copy} template {scratch}'),
    q('x', 'rename', 'alter database {scratch} rename to {scratch2}'),
    q('x', 'drop-copy', 'drop database {copy}'),
    q('x', 'drop-renamed', 'drop database {scratch2}'),
    disconnect('x'),
  ]),

  ...section('pinning', [
    connect('k1'),
    connect('k2'),
    q('k1', 'advisory-lock', 'select pg_advisory_lock(4242)'),
    q('k2', 'try-held-lock', 'select pg_try_advisory_lock(4242) as got'),
    q('k1', 'advisory-unlock', 'select pg_advisory_unlock(4242) as released'),
    q('k2', 'try-free-lock', 'select pg_try_advisory_lock(4242) as got'),
    q('k2', 'unlock', 'select pg_advisory_unlock(4242) as released'),
    disconnect('k1'),
    disconnect('k2'),
  ]),

  // currval() and lastval() are the session's memory of its last nextval(); n2 holds the server
  // connection n1 called nextval() on (see limits.ts).
  ...section('sequences', [
    connect('n1'),
    connect('n2'),
    q('n1', 'nextval', "select nextval('counter') as v"),
    q('n2', 'begin', 'begin'),
    q('n2', 'holds-a-connection', 'select 1 as holding'),
    q('n1', 'currval-next-transaction', "select currval('counter') as v"),
    q('n1', 'lastval-next-transaction', 'select lastval() as v'),
    q('n2', 'commit', 'commit'),
    q('n1', 'begin-nextval', 'begin'),
    q('n1', 'nextval-in-transaction', "select nextval('counter') as v"),
    q('n1', 'currval-same-transaction', "select currval('counter') as v"),
    q('n1', 'commit-nextval', 'commit'),
    q('n1', 'insert-returning-serial', "insert into ledger (note) values ('serial') returning id"),
    disconnect('n1'),
    disconnect('n2'),
  ]),

  // Session state made where the SQL text shows nothing of it: a function behind a view that makes
  // a temporary table, a function that changes a setting. f2 holds the connection f1 used.
  ...section('hidden-session-state', [
    connect('f1'),
    connect('f2'),
    q('f1', 'view-makes-temp', 'select * from makes_temp'),
    q('f1', 'function-sets-work-mem', 'select quiet_setting()'),
    q('f2', 'begin', 'begin'),
    q('f2', 'holds-a-connection', 'select 1 as holding'),
    q('f1', 'temp-made-behind-view', 'select count(*) as n from behind_view'),
    q('f1', 'setting-made-in-function', 'show work_mem'),
    q('f2', 'commit', 'commit'),
    disconnect('f1'),
    connect('f3'),
    act('f3', 'temp-made-behind-view-gone-with-owner', {
      do: 'poll',
      query: {
        do: 'query',
        sql: "select count(*)::int as n from pg_class where relname = 'behind_view'",
      },
      until: [[0]],
    }),
    disconnect('f2'),
    disconnect('f3'),
  ]),

  // Protocol-level statements follow their client: m2 holds the connection m1 prepared on.
  ...section('prepared-moves', [
    connect('m1'),
    connect('m2'),
    q('m1', 'prepare', 'select name from items where id = $1', { name: 'by_id', params: ['7'] }),
    q('m2', 'begin', 'begin'),
    q('m2', 'holds-a-connection', 'select 1 as holding'),
    q('m1', 'execute-elsewhere', 'select name from items where id = $1', {
      name: 'by_id',
      params: ['8'],
    }),
    q('m2', 'same-text-other-client', 'select name from items where id = $1', {
      name: 'by_id',
      params: ['9'],
    }),
    q('m2', 'commit', 'commit'),
    q('m1', 'execute-back-home', 'select name from items where id = $1', {
      name: 'by_id',
      params: ['10'],
    }),
    disconnect('m1'),
    disconnect('m2'),
  ]),
];

const seen = new Set<string>();
for (const step of SCENARIO) {
  if (seen.has(step.id)) throw new Error(`two steps are called ${step.id}`);
  seen.add(step.id);
}

/** The SQLSTATE a step gives directly with this driver (undefined: it succeeds). */
export function expectedError(step: Step, driver: DriverName): string | undefined {
  if (typeof step.error === 'string') return step.error;
  return step.error?.[driver] ?? undefined;
}
