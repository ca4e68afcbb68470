// `pgbranch url [DATABASE] [--branch NAME] [--env]`: the connection string of the current git
// branch's database branch, for DATABASE_URL in CI and preview deploys. It asks nobody: the branch
// comes from the CI's variables or git, the address and credentials from the settings pgbranch
// itself reads, and the branch is made on the first connect.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { branchName, ROOT_BRANCH, validateBranchName } from '../branch/names.js';
import { hostInUrl, reachableHost } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { PgError } from '../errors.js';
import { UsageError, type Options } from './args.js';

/**
 * CI variables that name the branch being built, first match wins. A pull request's own branch
 * comes before the ref being built, which for a pull request is a merge ref (GitHub's 12/merge).
 */
export const BRANCH_VARIABLES: readonly {
  name: string;
  when?: (env: NodeJS.ProcessEnv) => boolean;
}[] = [
  { name: 'GITHUB_HEAD_REF' },
  { name: 'GITHUB_REF_NAME', when: (env) => env.GITHUB_REF_TYPE === 'branch' },
  { name: 'CI_MERGE_REQUEST_SOURCE_BRANCH_NAME' },
  { name: 'CI_COMMIT_REF_NAME' },
  { name: 'VERCEL_GIT_COMMIT_REF' },
  { name: 'CIRCLE_BRANCH' },
  { name: 'BITBUCKET_BRANCH' },
];

export interface CurrentBranch {
  branch: string;
  /** Where it came from: --branch, a variable's name, or git. */
  from: string;
}

/** The branch: --branch, else a CI variable that is set (and not empty), else git's HEAD. */
export function currentBranch(
  given: string | undefined,
  env: NodeJS.ProcessEnv,
  cwd: string,
): CurrentBranch {
  if (given !== undefined) return { branch: given, from: '--branch' };
  for (const { name, when } of BRANCH_VARIABLES) {
    const value = env[name];
    if (value && (when === undefined || when(env))) return { branch: value, from: name };
  }
  let head: string;
  try {
    head = execFileSync('git', ['rev-parse', '--abbrev-ref', 'HEAD'], {
      cwd,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    }).trim();
  } catch (error) {
    const said = String((error as { stderr?: string }).stderr ?? (error as Error).message).trim();
    throw new UsageError(
      `cannot tell the git branch: git rev-parse --abbrev-ref HEAD failed (${said.split('\n')[0]}).\n` +
        `Run it in a git checkout, or name the branch: --branch NAME (CI: ${BRANCH_VARIABLES.map((v) => v.name).join(', ')} are read when set).`,
    );
  }
  if (head === 'HEAD') {
    throw new UsageError(
      'HEAD is detached (a commit is checked out, not a branch, as CI checkouts do), and no CI variable names the branch.\n' +
        `Name it: --branch NAME, or set one of ${BRANCH_VARIABLES.map((v) => v.name).join(', ')}.`,
    );
  }
  return { branch: head, from: 'git' };
}

/** Percent-encodes all but `@` and `/`, which every driver reads as they are (see the README). */
function encodeDatabase(name: string): string {
  return encodeURIComponent(name)
    .replace(/[!'()*]/g, (ch) => `%${ch.charCodeAt(0).toString(16).toUpperCase()}`)
    .replace(/%40/g, '@')
    .replace(/%2F/g, '/');
}

const userinfo = (text: string) =>
  encodeURIComponent(text).replace(
    /[!'()*]/g,
    (ch) => `%${ch.charCodeAt(0).toString(16).toUpperCase()}`,
  );

/**
 * Who connects: --user, else PGUSER, else the role pgbranch's own connection string names (the
 * upstream URL's, or the embedded superuser). The password: PGPASSWORD, else pgbranch's own for
 * that role (PGBRANCH_PASSWORD, the embedded server's password file, the upstream URL's).
 */
function credentials(
  config: Config,
  env: NodeJS.ProcessEnv,
  given: string | undefined,
): { user: string; password: string | undefined } {
  const upstream = config.upstream === undefined ? undefined : new URL(config.upstream);
  const ownUser = upstream ? decodeURIComponent(upstream.username) || 'postgres' : 'postgres';
  const user = given ?? (env.PGUSER || ownUser);
  if (env.PGPASSWORD) return { user, password: env.PGPASSWORD };
  if (user !== ownUser) return { user, password: undefined };
  if (upstream) return { user, password: decodeURIComponent(upstream.password) || undefined };
  return { user, password: config.embedded.password ?? embeddedPassword(config.data_dir) };
}

/** The embedded server's generated password, where this user may read it. */
function embeddedPassword(dataDir: string): string | undefined {
  try {
    return fs.readFileSync(path.join(dataDir, 'superuser-password'), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

export interface UrlAnswer {
  url: string;
  database: string;
  branch: string;
  from: string;
}

export function branchUrl(
  config: Config,
  env: NodeJS.ProcessEnv,
  cwd: string,
  words: string[],
  options: Options,
): UrlAnswer {
  const database = words[0] ?? env.PGDATABASE;
  if (!database) {
    throw new UsageError('url needs the database: npx pgbranch url app (or set PGDATABASE)');
  }
  if (database.includes('@')) {
    throw new UsageError(
      `url takes the database alone ("${database.slice(0, database.indexOf('@'))}"); the branch comes from git, or --branch`,
    );
  }
  const { branch, from } = currentBranch(options.get('--branch')?.[0], env, cwd);
  try {
    validateBranchName(branch);
  } catch (error) {
    if (error instanceof PgError) throw new UsageError(`${error.message} (${from})`);
    throw error;
  }
  const { user, password } = credentials(config, env, options.get('--user')?.[0]);
  const host = hostInUrl(reachableHost(config.listen.host));
  const auth = userinfo(user) + (password === undefined ? '' : `:${userinfo(password)}`);
  // app@main is the root, app itself.
  const name = branchName(database, branch);
  return {
    url: `postgres://${auth}@${host}:${config.listen.port}/${encodeDatabase(name)}`,
    database,
    branch,
    from,
  };
}

export function urlHelp(): string {
  return `Usage: npx pgbranch url [DATABASE] [--branch NAME] [--env] [--user ROLE] [--json]

Prints the connection string of DATABASE's branch for the current git branch, for DATABASE_URL:
postgres://postgres:PASSWORD@127.0.0.1:6432/app@feature/login. The branch is made on the first
connect (or with npx pgbranch branch create). On the branch ${ROOT_BRANCH} it is the root, app itself.

The branch is --branch NAME; else the first of these CI variables that is set:
  ${BRANCH_VARIABLES.map((v) => v.name + (v.name === 'GITHUB_REF_NAME' ? ' (when GITHUB_REF_TYPE is branch)' : '')).join('\n  ')}
else git rev-parse --abbrev-ref HEAD in the current directory. Names are used as git writes them:
slashes stay (app@feature/login), as every PostgreSQL driver reads them.

DATABASE defaults to PGDATABASE. Where pgbranch is and who connects come from the settings the
server reads (config file, PGBRANCH_* variables, flags): listen.host and listen.port (--host,
--port; 0.0.0.0 is written 127.0.0.1). The role is --user, else PGUSER, else pgbranch's own
(postgres, or the upstream URL's); the password PGPASSWORD, else pgbranch's own for that role
(PGBRANCH_PASSWORD, the embedded server's generated one in data_dir, the upstream URL's), else
none (psql then asks, or reads ~/.pgpass).

Options:
  --branch NAME  the branch, instead of CI variables and git
  --env          print DATABASE_URL=... (for $GITHUB_ENV, .env files, eval)
  --user ROLE    the role to connect as
  --json         print { url, database, branch, from }
  -h, --help     this text

Exit codes: 0 printed, 2 usage (no database, no branch to be found, a bad branch name).

Examples:
  psql "$(npx pgbranch url app)"
  npx pgbranch url app --env >> "$GITHUB_ENV"
  DATABASE_URL=$(npx pgbranch url app --branch "pr-$PR_NUMBER") npm run migrate
`;
}
