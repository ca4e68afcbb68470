// The configured rules for branches by name: which may be created by connecting, how long an idle
// one lives, which SQL scripts prepare a new one, how many a database may have. Patterns are branch
// names with `*` for anything; a pattern with `@` in it is matched against `database@branch`.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { commaList, duration } from '../config/schema.js';
import { PgError } from '../errors.js';

export interface PolicySettings {
  create_on_connect: string;
  max_per_database: number;
  max_per_role: number;
  max_creations_per_minute: number;
  ttl: string;
  scripts: string;
}

type Matcher = (root: string, branch: string) => boolean;

/** `*` matches anything; everything else is literal. */
function globRegExp(pattern: string): RegExp {
  return new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
}

/** Whether a name matches any of the patterns; undefined when there are none. */
export function anyOf(patterns: string[]): ((name: string) => boolean) | undefined {
  if (patterns.length === 0) return undefined;
  const rules = patterns.map(globRegExp);
  return (name) => rules.some((r) => r.test(name));
}

/** A comma-separated list of patterns, one matcher for all; matches nothing when empty. */
export function patternsMatcher(patterns: string | string[]): Matcher {
  const matchers = (typeof patterns === 'string' ? commaList(patterns) : patterns).map(matcherFor);
  return (root, branch) => matchers.some((m) => m(root, branch));
}

function matcherFor(pattern: string): Matcher {
  const re = globRegExp(pattern);
  return pattern.includes('@')
    ? (root, branch) => re.test(`${root}@${branch}`)
    : (_, b) => re.test(b);
}

function pairs(text: string): { match: Matcher; pattern: string; value: string }[] {
  return commaList(text).map((item) => {
    const eq = item.indexOf('=');
    const pattern = item.slice(0, eq).trim();
    return { match: matcherFor(pattern), pattern, value: item.slice(eq + 1).trim() };
  });
}

export class Policy {
  readonly mayCreateOnConnect: Matcher;
  readonly maxPerDatabase: number;
  readonly maxPerRole: number;
  readonly maxCreationsPerMinute: number;
  private readonly ttls: { match: Matcher; ms: number }[];
  private readonly scripts: { match: Matcher; file: string; branchPattern: RegExp }[];

  constructor(
    settings: PolicySettings,
    /** Script paths are relative to where pgbranch was started. */
    private readonly baseDir: string = process.cwd(),
  ) {
    this.mayCreateOnConnect = patternsMatcher(settings.create_on_connect);
    this.maxPerDatabase = settings.max_per_database;
    this.maxPerRole = settings.max_per_role;
    this.maxCreationsPerMinute = settings.max_creations_per_minute;
    this.ttls = pairs(settings.ttl).map((p) => ({ match: p.match, ms: duration.parse(p.value) }));
    this.scripts = pairs(settings.scripts).map((p) => ({
      match: p.match,
      file: p.value,
      branchPattern: globRegExp(p.pattern.slice(p.pattern.indexOf('@') + 1)),
    }));
  }

  /** The idle expiry a branch gets when nobody set one for it: the first matching pattern's. */
  defaultTtl(root: string, branch: string): number | undefined {
    return this.ttls.find((t) => t.match(root, branch))?.ms;
  }

  /**
   * Whether a script may apply to branch `branch` of some database: an instance branch holds every
   * database, and is started to run them only when one may.
   */
  mayHaveScripts(branch: string): boolean {
    return this.scripts.some((s) => s.branchPattern.test(branch));
  }

  /** The scripts that prepare a new branch, read now so that an edited file takes effect at once. */
  scriptsFor(root: string, branch: string): { name: string; sql: string }[] {
    return this.scripts
      .filter((s) => s.match(root, branch))
      .map((s) => {
        const file = path.resolve(this.baseDir, s.file);
        try {
          return { name: s.file, sql: readFileSync(file, 'utf8') };
        } catch (error) {
          throw new PgError(
            '58P01',
            `cannot read branch script ${file}: ${(error as Error).message}`,
            undefined,
            'Fix branch.scripts in the configuration, then RELOAD.',
          );
        }
      });
  }
}
