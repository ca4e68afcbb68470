// Branch names arrive from git and CI as they are; the user never sees how they are stored.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, connectError, psql, queryOnce } from './support/clients.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

let proxy: PgbranchProcess;

beforeAll(async () => {
  proxy = await startPgbranch();
  expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
  await queryOnce(proxy.url('app'), "create table t as select 'root' as origin");
});

afterAll(async () => {
  await proxy?.stop();
});

/** node-postgres with the database given as is (no URL encoding games). */
function clientFor(database: string, options?: string) {
  return connect(proxy.config(database), options ? { options } : {});
}

async function originIn(database: string, options?: string): Promise<string> {
  const client = await clientFor(database, options);
  try {
    return (await client.query<{ origin: string }>('select origin from t')).rows[0]!.origin;
  } finally {
    await client.end();
  }
}

describe('branch names', () => {
  it.each([
    'feature/login-v2',
    'dependabot/npm_and_yarn/pg-8.13.1',
    'PR-1234',
    'ünïcødé ブランチ',
    'release/2026.11?hotfix#1',
  ])('accepts %s as it comes from git', async (branch) => {
    expect(await originIn(`app@${branch}`)).toBe('root');
    const rows = await queryOnce(
      proxy.url('postgres'),
      `select datname from pg_database where datname = $1`,
      [`app@${branch}`],
    );
    expect(rows).toHaveLength(1);
  });

  it('stores a 200-character name under a deterministic short name, invisibly', async () => {
    const branch = `ci/${'very-long-branch-name-'.repeat(9)}`.slice(0, 200);
    const first = await clientFor(`app@${branch}`);
    await first.query("update t set origin = 'written in long branch'");
    const physical = (await first.query<{ db: string }>('select current_database() as db')).rows[0]!
      .db;
    await first.end();
    expect(Buffer.byteLength(physical)).toBeLessThanOrEqual(63);
    expect(physical.startsWith('app@ci/very-long')).toBe(true);
    // The same long name reaches the same branch; a name differing only at the end does not.
    expect(await originIn(`app@${branch}`)).toBe('written in long branch');
    expect(await originIn(`app@${branch.slice(0, -1)}X`)).toBe('root');
  });

  it.each([
    ['an empty name', 'app@', /it is empty/],
    ['a control character', 'app@bad\tname', /control character/],
    ['a name over 255 characters', `app@${'x'.repeat(256)}`, /limit is 255/],
  ])('refuses %s with 42602 and the rule', async (_what, database, rule) => {
    const error = await connectError(proxy.config(database));
    expect(error?.code).toBe('42602');
    expect(error?.message).toMatch(rule);
  });

  it('refuses a branch named two ways with a hint about that, not about the length rule', async () => {
    const result = await psql(proxy.url('app@pr-201'), 'select 1', {
      env: { PGOPTIONS: '-c pgbranch.branch=pr-200' },
    });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain(
      'conflicting branch names: the database name asks for branch "pr-201" but options ask for "pr-200"',
    );
    expect(result.stderr).toContain(
      'HINT:  Name the branch in one place: app@pr-201, or app with -c pgbranch.branch=pr-200.',
    );
    expect(result.stderr).not.toContain('255');
  });

  it('says which rule was broken, in psql too', async () => {
    const result = await psql(proxy.url('postgres'), 'select 1', {
      env: { PGOPTIONS: '-c pgbranch.branch=' },
    });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/invalid branch name "": it is empty/);
  });
});

describe('naming the branch and its parent through options', () => {
  it('takes the branch from options=-c pgbranch.branch=... (PGOPTIONS)', async () => {
    const result = await psql(proxy.url('app'), 'select current_database(), origin from t', {
      env: { PGOPTIONS: '-c pgbranch.branch=from-options' },
    });
    expect(result).toMatchObject({ code: 0, stdout: 'app@from-options|root' });
  });

  it('does not pass pgbranch settings on to the server, but keeps the others', async () => {
    const result = await psql(
      proxy.url('app'),
      "select current_setting('pgbranch.branch', true) is null, current_setting('statement_timeout')",
      { env: { PGOPTIONS: '-c pgbranch.branch=opts-2 -c statement_timeout=7s' } },
    );
    expect(result).toMatchObject({ code: 0, stdout: 't|7s' });
  });

  it('makes a branch of a branch with pgbranch.parent', async () => {
    const parent = await clientFor('app@develop');
    await parent.query("update t set origin = 'develop'");
    await parent.end();
    expect(await originIn('app@feature-on-develop', '-c pgbranch.parent=develop')).toBe('develop');
    // The parent written in full, as pgbranch names it everywhere, is the same branch.
    expect(await originIn('app@also-on-develop', '-c pgbranch.parent=app@develop')).toBe('develop');
    // Default parent: the root.
    expect(await originIn('app@feature-on-main')).toBe('root');
    expect(proxy.events('branch_created')).toContainEqual(
      expect.objectContaining({ branch: 'feature-on-develop', parent: 'app@develop' }),
    );
  });

  it('refuses a missing parent with 3D000 naming it, and tries again on the next connect', async () => {
    const error = await connectError(proxy.config('app@child'), {
      options: '-c pgbranch.parent=not-yet',
    });
    expect(error?.code).toBe('3D000');
    expect(error?.message).toBe(
      'cannot create branch "app@child": its parent "app@not-yet" does not exist',
    );
    // The database missing too: that is what is named.
    expect(
      await connectError(proxy.config('nosuchdb@child'), { options: '-c pgbranch.parent=not-yet' }),
    ).toEqual({ code: '3D000', message: 'database "nosuchdb" does not exist' });
    const absent = await queryOnce(
      proxy.url('postgres'),
      "select 1 from pg_database where datname = 'app@child'",
    );
    expect(absent).toHaveLength(0);
    await originIn('app@not-yet');
    expect(await originIn('app@child', '-c pgbranch.parent=not-yet')).toBe('root');
  });

  it('refuses a branch named twice, differently', async () => {
    const error = await connectError(proxy.config('app@one'), {
      options: '-c pgbranch.branch=two',
    });
    expect(error?.code).toBe('42602');
  });
});
