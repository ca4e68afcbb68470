import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { descriptions, helpText } from './help.js';
import { ConfigError, configKeys, loadConfig } from './load.js';
import { configSchema } from './schema.js';

const defaults = configSchema.parse({});
const exampleFile = fileURLToPath(new URL('../../config/pgbranch.example.yaml', import.meta.url));

/** A fresh directory holding the given files, to run loadConfig in. */
const made: string[] = [];
afterAll(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

function directory(files: Record<string, string> = {}): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'pgbranch-config-'));
  made.push(dir);
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    writeFileSync(path.join(dir, name), text);
  }
  return dir;
}

const load = (argv: string[], env: NodeJS.ProcessEnv = {}, cwd = directory()) =>
  loadConfig(argv, env, cwd);

function errorOf(run: () => unknown): ConfigError {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('loadConfig', () => {
  it('gives the schema defaults when nothing is set', () => {
    expect(load([])).toEqual({
      config: defaults,
      sources: [],
      help: false,
      version: false,
      command: [],
    });
  });

  it('reads pgbranch.yaml from the working directory, else config/pgbranch.yaml', () => {
    const both = directory({
      'pgbranch.yaml': 'listen: { port: 7001 }\n',
      'config/pgbranch.yaml': 'listen: { port: 7002 }\n',
    });
    expect(load([], {}, both)).toMatchObject({
      config: { listen: { port: 7001 } },
      sources: ['pgbranch.yaml'],
    });
    const nested = directory({ 'config/pgbranch.yaml': 'listen: { port: 7002 }\n' });
    expect(load([], {}, nested)).toMatchObject({
      config: { listen: { port: 7002 } },
      sources: [path.join('config', 'pgbranch.yaml')],
    });
  });

  it('lets the environment override the file, and flags override both', () => {
    const cwd = directory({
      'pgbranch.yaml': 'pool: { size: 1, max_server_connections: 2, max_client_connections: 3 }\n',
    });
    const env = {
      PGBRANCH_POOL_MAX_SERVER_CONNECTIONS: '20',
      PGBRANCH_POOL_MAX_CLIENT_CONNECTIONS: '30',
    };
    const loaded = load(['--pool-max-client-connections', '300'], env, cwd);
    expect(loaded.config.pool).toMatchObject({
      size: 1,
      max_server_connections: 20,
      max_client_connections: 300,
    });
    expect(loaded.sources).toEqual(['pgbranch.yaml', 'environment', 'flags']);
  });

  it('reads the file named by --config, or else by PGBRANCH_CONFIG', () => {
    const cwd = directory({
      'a.yaml': 'data_dir: /from/flag\n',
      'b.yaml': 'data_dir: /from/env\n',
      'pgbranch.yaml': 'data_dir: /from/cwd\n',
    });
    expect(load(['--config', 'a.yaml'], { PGBRANCH_CONFIG: 'b.yaml' }, cwd).config.data_dir).toBe(
      '/from/flag',
    );
    expect(load([], { PGBRANCH_CONFIG: 'b.yaml' }, cwd).config.data_dir).toBe('/from/env');
  });

  it('refuses a named config file that does not exist, but not a missing default one', () => {
    expect(errorOf(() => load(['--config=nope.yaml'])).message).toBe(
      'config file nope.yaml (from --config) does not exist',
    );
    expect(errorOf(() => load([], { PGBRANCH_CONFIG: 'nope.yaml' })).message).toContain(
      '(from PGBRANCH_CONFIG)',
    );
    expect(load([]).sources).toEqual([]);
  });

  it('accepts --key=value as well as --key value', () => {
    const loaded = load([
      '--data-dir=/tmp/x',
      '--log-format',
      'json',
      '--upstream=postgres://h/db',
    ]);
    expect(loaded.config).toMatchObject({
      data_dir: '/tmp/x',
      log: { format: 'json' },
      upstream: 'postgres://h/db',
    });
  });

  it('has a flag and a variable for every schema key, derived from its path', () => {
    const loaded = load(['--pool-max-server-connections', '7', '--embedded-port', '5500'], {
      PGBRANCH_BRANCH_DRAIN_TIMEOUT: '9',
      PGBRANCH_AUTH: 'md5',
    });
    expect(loaded.config).toMatchObject({
      pool: { max_server_connections: 7 },
      embedded: { port: 5500 },
      branch: { drain_timeout: 9000 },
      auth: 'md5',
    });
    expect(configKeys.map((key) => key.path)).toEqual([
      'listen.host',
      'listen.port',
      'listen.socket_dir',
      'tls.cert',
      'tls.key',
      'tls.mode',
      'data_dir',
      'upstream',
      'source.url',
      'source.bin_dir',
      'source.max_rate',
      'source.max_wait',
      'source.warm_standbys',
      'source.retention',
      'source.snapshot_interval',
      'auth',
      'auth_max_failures',
      'auth_timeout',
      'shutdown_timeout',
      'embedded.password',
      'embedded.port',
      'embedded.max_connections',
      'pool.mode',
      'pool.transaction_mode_for',
      'pool.size',
      'pool.min_idle',
      'pool.reserve_size',
      'pool.reserve_timeout',
      'pool.max_server_connections',
      'pool.server_margin',
      'pool.max_client_connections',
      'pool.max_client_connections_per_branch',
      'pool.max_client_connections_per_role',
      'pool.idle_timeout',
      'pool.server_lifetime',
      'pool.wait_timeout',
      'pool.connect_timeout',
      'pool.connect_retries',
      'pool.idle_in_transaction_timeout',
      'pool.max_prepared_statements',
      'branch.drain_timeout',
      'branch.copy_method',
      'branch.create_on_connect',
      'branch.max_per_database',
      'branch.max_per_role',
      'branch.max_creations_per_minute',
      'branch.ttl',
      'branch.scripts',
      'branch.sweep_interval',
      'branch.root_snapshot_interval',
      'branch.root_snapshot_copies',
      'branch.use_root_snapshot',
      'branch.provider',
      'branch.suspend_after',
      'branch.max_running',
      'branch.instance_settings',
      'branch.warm_spare',
      'admin.enabled',
      'admin.host',
      'admin.port',
      'admin.token',
      'admin.users',
      'admin.tls',
      'admin.cacert',
      'redis.url',
      'metrics.enabled',
      'metrics.host',
      'metrics.port',
      'metrics.tls',
      'log.level',
      'log.format',
    ]);
  });

  it('reads tls.cert and tls.key from --tls-cert/--tls-key or PGBRANCH_TLS_CERT/KEY, and wants both', () => {
    expect(load(['--tls-cert', 'a.crt', '--tls-key', 'a.key']).config.tls).toEqual({
      cert: 'a.crt',
      key: 'a.key',
      mode: 'allow',
    });
    const env = {
      PGBRANCH_TLS_CERT: 'b.crt',
      PGBRANCH_TLS_KEY: 'b.key',
      PGBRANCH_TLS_MODE: 'require',
    };
    expect(load([], env).config.tls).toEqual({ cert: 'b.crt', key: 'b.key', mode: 'require' });
    expect(errorOf(() => load(['--tls-cert', 'a.crt'])).message).toMatch(
      /^tls\.cert \(from --tls-cert\) needs tls\.key too/,
    );
    expect(errorOf(() => load(['--tls-mode', 'require'])).message).toMatch(
      /^tls\.mode \(from --tls-mode\) needs tls\.cert too/,
    );
  });

  it('keeps the short names scripts use: --port, --host, --password, --log-level', () => {
    const flags = [
      '--port',
      '7432',
      '--host',
      '::1',
      '--password',
      's3cret',
      '--log-level',
      'debug',
    ];
    const expected = {
      listen: { host: '::1', port: 7432 },
      embedded: { password: 's3cret' },
      log: { level: 'debug' },
    };
    expect(load(flags).config).toMatchObject(expected);
    const env = {
      PGBRANCH_PORT: '7432',
      PGBRANCH_HOST: '::1',
      PGBRANCH_PASSWORD: 's3cret',
      PGBRANCH_LOG_LEVEL: 'debug',
    };
    expect(load([], env).config).toMatchObject(expected);
  });

  it('leaves the Unix socket off unless listen.socket_dir is set, by --socket-dir or PGBRANCH_SOCKET_DIR too', () => {
    expect(load([]).config.listen.socket_dir).toBeUndefined();
    for (const argv of [
      ['--socket-dir', '/run/pgbranch'],
      ['--listen-socket-dir', '/run/pgbranch'],
    ]) {
      expect(load(argv).config.listen.socket_dir).toBe('/run/pgbranch');
    }
    for (const name of ['PGBRANCH_SOCKET_DIR', 'PGBRANCH_LISTEN_SOCKET_DIR']) {
      expect(load([], { [name]: '/run/pgbranch' }).config.listen.socket_dir).toBe('/run/pgbranch');
    }
    const file = directory({ 'pgbranch.yaml': 'listen: { socket_dir: /run/pgbranch }\n' });
    expect(load([], {}, file).config.listen).toEqual({
      host: '127.0.0.1',
      port: 6432,
      socket_dir: '/run/pgbranch',
    });
  });

  it('refuses two variables that set one key to different values', () => {
    const env = { PGBRANCH_PORT: '7000', PGBRANCH_LISTEN_PORT: '7001' };
    expect(errorOf(() => load([], env)).message).toMatch(
      /listen\.port is set by both PGBRANCH_\w+ \("700\d"\) and PGBRANCH_\w+ \("700\d"\)/,
    );
    expect(
      load([], { PGBRANCH_PORT: '7000', PGBRANCH_LISTEN_PORT: '7000' }).config.listen.port,
    ).toBe(7000);
  });

  it.each([
    ['500ms', 500],
    ['30s', 30_000],
    ['5m', 300_000],
    ['2h', 7_200_000],
    ['1.5s', 1500],
    ['45', 45_000],
  ])('reads the duration %s as %i milliseconds', (written, ms) => {
    expect(load(['--pool-idle-timeout', written]).config.pool.idle_timeout).toBe(ms);
    expect(load([], { PGBRANCH_POOL_IDLE_TIMEOUT: written }).config.pool.idle_timeout).toBe(ms);
  });

  it('reads a yes-or-no key from a YAML boolean, or from a word in a flag or variable', () => {
    const cwd = directory({ 'pgbranch.yaml': 'metrics: { enabled: false }\n' });
    expect(load([], {}, cwd).config.metrics.enabled).toBe(false);
    expect(load(['--metrics-enabled', 'false']).config.metrics.enabled).toBe(false);
    expect(load([], { PGBRANCH_METRICS_ENABLED: 'off' }).config.metrics.enabled).toBe(false);
    expect(load(['--metrics-enabled=yes']).config.metrics.enabled).toBe(true);
    expect(errorOf(() => load(['--metrics-enabled', 'maybe'])).message).toBe(
      'metrics.enabled (from --metrics-enabled): "maybe" is not a yes or no: write true or false',
    );
  });

  it('reads a bare number in the file as seconds', () => {
    const cwd = directory({
      'pgbranch.yaml': 'pool: { wait_timeout: 12 }\nbranch: { drain_timeout: 1m }\n',
    });
    expect(load([], {}, cwd).config).toMatchObject({
      pool: { wait_timeout: 12_000 },
      branch: { drain_timeout: 60_000 },
    });
  });

  it('keeps unset durations at their defaults when another key of their section is set', () => {
    const cwd = directory({ 'pgbranch.yaml': 'pool: { size: 5 }\n' });
    expect(load([], {}, cwd).config.pool).toEqual({ ...defaults.pool, size: 5 });
    expect(load(['--pool-size', '5']).config.pool).toEqual({ ...defaults.pool, size: 5 });
  });

  it('names the key and the source of a bad value', () => {
    expect(errorOf(() => load([], { PGBRANCH_POOL_SIZE: 'abc' })).message).toBe(
      'pool.size (from PGBRANCH_POOL_SIZE): expected a positive integer, got "abc"',
    );
    expect(errorOf(() => load(['--port', '70000'])).message).toBe(
      'listen.port (from --port): expected an integer from 0 to 65535, got "70000"',
    );
    expect(errorOf(() => load(['--auth=none'])).message).toBe(
      'auth (from --auth): expected one of scram-sha-256, md5, trust, got "none"',
    );
    expect(errorOf(() => load(['--upstream', 'mysql://h/db'])).message).toBe(
      'upstream (from --upstream): must be a postgres:// URL, got "mysql://h/db"',
    );
    expect(errorOf(() => load(['--pool-wait-timeout', 'soon'])).message).toBe(
      'pool.wait_timeout (from --pool-wait-timeout): "soon" is not a duration: write e.g. 500ms, 30s, 5m, 2h or 7d',
    );
    const cwd = directory({ 'pgbranch.yaml': 'pool:\n  size: 0\nlisten:\n  host: ""\n' });
    expect(errorOf(() => load([], {}, cwd)).message).toBe(
      [
        'listen.host (from pgbranch.yaml): expected a non-empty string, got ""',
        'pool.size (from pgbranch.yaml): expected a positive integer, got 0',
      ].join('\n'),
    );
  });

  it('does not quote passwords in error messages', () => {
    const cwd = directory({ 'pgbranch.yaml': 'embedded: { password: 123456 }\n' });
    expect(errorOf(() => load([], {}, cwd)).message).toBe(
      'embedded.password (from pgbranch.yaml): expected a non-empty string, got a number',
    );
    expect(errorOf(() => load(['--upstream', 'mysql://me:hunter2@h/db'])).message).toBe(
      'upstream (from --upstream): must be a postgres:// URL, got "mysql://me:***@h/db"',
    );
  });

  it('reports a flag without a value, and how to pass one that starts with a dash', () => {
    expect(errorOf(() => load(['--port'])).message).toBe('--port needs a value');
    expect(errorOf(() => load(['--password', '-x-'])).message).toBe(
      '--password needs a value; to give one that starts with "-", write --password=-x-',
    );
    expect(load(['--password=-x-']).config.embedded.password).toBe('-x-');
    expect(errorOf(() => load(['--port='])).message).toBe(
      '--port was given an empty value; give a value or leave the flag out',
    );
  });

  it('treats an empty environment variable as unset', () => {
    expect(load([], { PGBRANCH_PORT: '' }).config.listen.port).toBe(6432);
  });

  it('refuses an unknown flag and suggests the closest one', () => {
    expect(errorOf(() => load(['--pool-max-server-conections', '5'])).message).toBe(
      'unknown flag --pool-max-server-conections; did you mean --pool-max-server-connections?',
    );
    expect(errorOf(() => load(['--max-client-connections', '5'])).message).toBe(
      'unknown flag --max-client-connections; did you mean --pool-max-client-connections?',
    );
    expect(errorOf(() => load(['--prot=5'])).message).toBe(
      'unknown flag --prot; did you mean --port?',
    );
    expect(errorOf(() => load(['--frobnicate'])).message).toBe(
      'unknown flag --frobnicate; npx pgbranch --help lists every option',
    );
  });

  it('refuses an unknown PGBRANCH_ variable and suggests the closest one', () => {
    expect(errorOf(() => load([], { PGBRANCH_POOLSIZE: '5' })).message).toBe(
      'unknown environment variable PGBRANCH_POOLSIZE; did you mean PGBRANCH_POOL_SIZE?',
    );
    expect(errorOf(() => load([], { PGBRANCH_CONFG: 'x.yaml' })).message).toBe(
      'unknown environment variable PGBRANCH_CONFG; did you mean PGBRANCH_CONFIG?',
    );
  });

  it('reads the admin token and port from PGBRANCH_ADMIN_TOKEN and PGBRANCH_ADMIN_PORT', () => {
    const env = { PGBRANCH_ADMIN_TOKEN: 't', PGBRANCH_ADMIN_PORT: '9000', PATH: '/bin' };
    expect(load([], env).config.admin).toEqual({ ...defaults.admin, token: 't', port: 9000 });
    expect(load(['--admin-port', '0']).config.admin.port).toBe(0);
  });

  it('refuses an admin API off loopback without a token', () => {
    expect(errorOf(() => load(['--admin-host', '0.0.0.0'])).message).toContain(
      'admin.host (from --admin-host): the admin API may only listen on 0.0.0.0 with a token',
    );
    expect(load(['--admin-host', '0.0.0.0', '--admin-token', 't']).config.admin.host).toBe(
      '0.0.0.0',
    );
    expect(load(['--admin-host', '0.0.0.0', '--admin-enabled', 'false']).config.admin.enabled).toBe(
      false,
    );
  });

  it('refuses a pattern list entry that is not pattern=value', () => {
    expect(errorOf(() => load(['--branch-ttl', 'ci-*=2h, pr-*'])).message).toContain(
      '"pr-*" is not pattern=duration',
    );
    expect(errorOf(() => load(['--branch-ttl', 'ci-*=soon'])).message).toContain(
      '"soon" in "ci-*=soon" is not a duration',
    );
    expect(load(['--branch-scripts', 'pr-*=mask.sql']).config.branch.scripts).toBe('pr-*=mask.sql');
  });

  it('refuses an unknown key in the file and suggests the closest one', () => {
    const typo = directory({ 'pgbranch.yaml': 'pool:\n  idle_timout: 5m\n' });
    expect(errorOf(() => load([], {}, typo)).message).toBe(
      'unknown key pool.idle_timout in pgbranch.yaml; did you mean pool.idle_timeout?',
    );
    const flat = directory({ 'pgbranch.yaml': 'port: 7432\n' });
    expect(errorOf(() => load([], {}, flat)).message).toBe(
      'unknown key port in pgbranch.yaml; did you mean listen.port?',
    );
  });

  it('reports a section that is not a mapping, and YAML syntax errors, with the file name', () => {
    const scalar = directory({ 'pgbranch.yaml': 'pool: 5\n' });
    expect(errorOf(() => load([], {}, scalar)).message).toBe(
      'pool (from pgbranch.yaml): expected a mapping of keys, got 5',
    );
    const broken = directory({ 'pgbranch.yaml': 'listen: [\n' });
    expect(errorOf(() => load([], {}, broken)).message).toMatch(/^pgbranch\.yaml: .*line 2/);
  });

  it('treats an empty key or section in the file as unset', () => {
    const cwd = directory({ 'pgbranch.yaml': 'upstream:\npool:\nlisten:\n  port:\n' });
    expect(load([], {}, cwd).config).toEqual(defaults);
  });

  it('refuses auth trust on 0.0.0.0, saying why and what to do', () => {
    const message = errorOf(() => load(['--auth', 'trust', '--host', '0.0.0.0'])).message;
    expect(message).toContain('auth (from --auth): trust lets anyone who can reach 0.0.0.0');
    expect(message).toContain('listen.host (from --host) is a loopback address');
    expect(message).toContain('Listen on 127.0.0.1, or use auth scram-sha-256');
  });

  it.each(['127.0.0.1', '127.8.0.1', '::1', 'localhost'])('allows auth trust on %s', (host) => {
    expect(load(['--auth=trust', `--host=${host}`]).config).toMatchObject({
      auth: 'trust',
      listen: { host },
    });
  });

  it('sets help and version from --help, -h, --version, -V without reading the rest', () => {
    const broken = { PGBRANCH_POOL_SIZE: 'abc' };
    expect(load(['--help'], broken)).toMatchObject({
      help: true,
      version: false,
      config: defaults,
    });
    expect(load(['-h'], broken).help).toBe(true);
    expect(load(['--version'], broken)).toMatchObject({ help: false, version: true });
    expect(load(['-V', '--bogus']).version).toBe(true);
  });

  it('leaves positional words in command, wherever the flags are', () => {
    expect(load(['branch', '--port', '7000', 'list']).command).toEqual(['branch', 'list']);
    expect(load(['--', '--not-a-flag']).command).toEqual(['--not-a-flag']);
  });
});

describe('config/pgbranch.example.yaml', () => {
  const text = readFileSync(exampleFile, 'utf8');
  // A commented-out setting is `# key: value`; explanatory comments never start that way.
  const uncommented = text.replaceAll(/^(\s*)# ([a-z_]+: \S.*)$/gm, '$1$2');

  it('loads to the defaults', () => {
    expect(load(['--config', exampleFile])).toMatchObject({
      config: defaults,
      sources: [exampleFile],
    });
  });

  it('shows every key, and its commented-out examples are valid too', () => {
    const document: unknown = parseYaml(uncommented);
    for (const key of configKeys) {
      const value = key.path
        .split('.')
        .reduce<unknown>((node, segment) => (node as Record<string, unknown>)[segment], document);
      expect(value, key.path).toBeDefined();
    }
    // upstream and source.url exclude each other: loaded without the source's URL.
    const withoutSource = uncommented.replace(/^ {2}url: postgres:\/\/replicator.*\n/m, '');
    const config = load([], {}, directory({ 'pgbranch.yaml': withoutSource })).config;
    expect(config).toEqual({
      ...defaults,
      source: {
        bin_dir: '/usr/lib/postgresql/16/bin',
        max_rate: 0,
        max_wait: 5_000,
        warm_standbys: 1,
        retention: 86_400_000,
        snapshot_interval: 900_000,
      },
      listen: { ...defaults.listen, socket_dir: '/var/run/postgresql' },
      tls: { ...defaults.tls, cert: '/etc/pgbranch/server.crt', key: '/etc/pgbranch/server.key' },
      upstream:
        'postgres://pgbranch:secret@db.internal:5432/postgres?sslmode=verify-full&sslrootcert=/etc/pgbranch/db-ca.crt',
      embedded: { ...defaults.embedded, password: 'change-me', max_connections: 100 },
      admin: { ...defaults.admin, token: 'change-me', tls: true, cacert: '/etc/pgbranch/ca.crt' },
      metrics: { ...defaults.metrics, tls: true },
      redis: { url: 'redis://127.0.0.1:6379' },
      branch: {
        ...defaults.branch,
        instance_settings: 'shared_buffers=32MB, max_connections=50',
      },
    });
  });
});

describe('helpText', () => {
  const help = helpText();

  it('shows the usage, including how to pass flags through npm start', () => {
    expect(help).toMatch(/^Usage: npx pgbranch \[options\]/);
    expect(help).toContain('npm start -- --port 7432');
  });

  it('lists every key with its flags, variables, default and description', () => {
    for (const key of configKeys) {
      for (const name of [...key.flags, ...key.envVars, `file: ${key.path} `]) {
        expect(help).toContain(name);
      }
      expect(help).toContain(descriptions[key.path]);
    }
    expect(help).toContain('--pool-idle-timeout DURATION');
    expect(help).toContain('default: 10m');
    expect(help).toContain('--auth scram-sha-256|md5|trust');
  });

  it('has a description for exactly the keys of the schema', () => {
    expect(Object.keys(descriptions).sort()).toEqual(configKeys.map((key) => key.path).sort());
  });
});
