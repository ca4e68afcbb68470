// Wires the layers together: upstream (embedded or external), branch provider and manager, pools,
// and the listeners. The only file that knows all of them.
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import type { Logger } from 'pino';
import { passwordCensus, PasswordlessHint, passwordWarning } from './auth/passwordless.js';
import { LoginFailures } from './auth/failures.js';
import { CatalogRoleSource, type RoleSecret, type RoleSource } from './auth/roles.js';
import { DatabaseProvider } from './branch/database-provider.js';
import { Cloner } from './branch/cloner.js';
import { BranchManager, type BranchResolver } from './branch/manager.js';
import { diskUsage, type InstanceBranches } from './branch/instance/instances.js';
import { instanceSettings, localUpstream, openInstanceBranches } from './branch/instance/setup.js';
import { socketConninfo } from './branch/instance/spares.js';
import { InstanceLifecycle } from './lifecycle/instance-lifecycle.js';
import type { Lifecycle } from './lifecycle/model.js';
import type { CopyMethod } from './branch/provider.js';
import { hostInUrl, isLoopback, reachableHost, servesHttps } from './config/load.js';
import { commaList, type Config } from './config/schema.js';
import { serveAdminApi, type AdminApi } from './admin/http.js';
import { readinessCheck } from './admin/readiness.js';
import { CreationQuota } from './lifecycle/creation-quota.js';
import { anyOf, Policy } from './lifecycle/policy.js';
import { LifecycleService, type LifecycleSettings } from './lifecycle/service.js';
import { errors, PgError } from './errors.js';
import { Metrics, serveMetrics, type MetricsServer } from './metrics.js';
import {
  configuredInstanceBudget,
  instanceBudget,
  serverBudget,
  type ServerBudget,
} from './pool/budget.js';
import { PoolManager } from './pool/pool.js';
import { CannotStart, checkBeforeStart } from './preflight.js';
import { CancelRegistry } from './proxy/cancel.js';
import { ClientQuotas, type ClientLimits } from './proxy/client-quotas.js';
import { ClientRegistry } from './proxy/clients.js';
import { SharedCancelKeys } from './coordination/cancel-keys.js';
import { Peers } from './coordination/peers.js';
import { SharedDrain } from './coordination/shared-drain.js';
import { refuseClient, serveClient, type ProxyContext } from './proxy/client-session.js';
import {
  describeCertificate,
  loadServerTls,
  TlsFileError,
  type ServerTls,
  type TlsMode,
} from './proxy/tls.js';
import type { SourceHistory } from './source/history.js';
import { SourceHealth } from './source/health.js';
import { openHistory, openSource, standbyRoot } from './source/root.js';
import { StandbyMaking } from './source/making.js';
import { describeSource, parseSourceUrl } from './source/source-url.js';
import { serveAdminWhileMaking, type MakingAdmin } from './admin/making.js';
import { ClientListeners } from './proxy/listeners.js';
import type { Standby } from './source/standby.js';
import { startEmbedded, type EmbeddedServer } from './upstream/embedded.js';
import { describeEndpoint, pgClientConfig, type Endpoint } from './upstream/endpoint.js';
import { openServerSession } from './upstream/server-connection.js';
import {
  checkServerTls,
  loadUpstreamTls,
  parseUpstreamTls,
  pgSsl,
  settleFallback,
  UpstreamTlsError,
  type UpstreamTls,
} from './upstream/server-tls.js';

export interface ReloadResult {
  applied: string[];
  /** Changed keys that take effect only after a restart. */
  needRestart: string[];
}

/** Keys whose new value is used at once after a reload. */
const RELOADABLE =
  /^(tls\.|auth_max_failures$|shutdown_timeout$|branch\.(?!copy_method)|pool\.(mode|transaction_mode_for|idle_in_transaction_timeout|max_prepared_statements|max_client_connections(_per_branch|_per_role)?)$|log\.level$|admin\.users$)/;

export interface Running {
  /** Where clients connect. */
  host: string;
  port: number;
  /** The Unix socket clients may connect through too (listen.socket_dir); undefined without one. */
  socketPath?: string;
  /** TLS on the proxy port: its mode and the certificate in use now; undefined without one. */
  tls(): (ReturnType<typeof describeCertificate> & { mode: TlsMode }) | undefined;
  /** A connection string for the superuser (embedded) or a template without password (upstream). */
  connectionString: string;
  copyMethod: CopyMethod;
  /** How branches are made: databases in one cluster, or instances of their own. */
  provider: 'database' | 'instance';
  /** Instance branches are warm standbys of their parent, promoted (branch.warm_spare). */
  warmSpare: boolean;
  serverVersion: string;
  embedded?: EmbeddedServer;
  upstream: string;
  /** Where Prometheus metrics are served; undefined when metrics.enabled is false. */
  metricsUrl?: string;
  /** Where the HTTP admin API is served; undefined when admin.enabled is false. */
  adminUrl?: string;
  /**
   * Why the role of the connection string can't log in through pgbranch (it has no password on
   * the server, and pgbranch checks passwords), and what to do; undefined when it can.
   */
  loginWarning?: { problem: string; remedy: string } | undefined;
  /** The branch lifecycle operations (CLI, admin API and console use these). */
  lifecycle: LifecycleService;
  /** With a source: its restore points, and the window of moments branches can be made at. */
  sourceHistory?: SourceHistory | undefined;
  /**
   * Applies a new configuration where it can be applied while running (branch policies, pool
   * modes, timeouts that are read per client, log level, console users); says what needs a restart.
   */
  reload(next: Config): ReloadResult;
  /** Roles besides superusers that may use the SQL console. */
  consoleUsers(): ReadonlySet<string>;
  /**
   * Stops pgbranch and its embedded server. `graceful` (SIGTERM) first lets clients finish their
   * transactions within shutdown_timeout; otherwise (SIGINT) clients are cut at once.
   */
  stop(graceful?: boolean): Promise<void>;
}

const MAINTENANCE_DATABASE = 'postgres';
/** Budget keys apply on reload, which reads the server's budget again whether they changed or not. */
const BUDGET_KEYS = /^pool\.(max_server_connections|server_margin)$/;
/** The administrative pg.Pool's size (roles, catalogs, branch operations). */
const ADMIN_CONNECTIONS = 4;
/**
 * pgbranch's own server sessions besides its pools, taken from the budget: the administrative
 * pool, and one made for a branch script, a schema diff or a console session on an instance.
 */
const OWN_CONNECTIONS = ADMIN_CONNECTIONS + 1;

/** Cancel requests that arrive before pgbranch has sessions: nothing to cancel. */
const NO_SESSIONS = { cancel: async () => false };

export async function startPgbranch(
  config: Config,
  log: Logger,
  /** Reads the configuration again from where it came from, for RELOAD. */
  rereadConfig?: () => Config,
): Promise<Running> {
  await checkBeforeStart(config);
  let serverTls: ServerTls | undefined;
  try {
    serverTls = tlsOf(config);
  } catch (error) {
    if (error instanceof TlsFileError) throw new CannotStart(error.message, { cause: error });
    throw error;
  }
  let embedded: EmbeddedServer | undefined;
  /** With source.url: the standby of the source, the server behind the proxy. */
  let standby: Standby | undefined;
  /** With source.url: restore points of the standby, for branches at past moments. */
  let history: SourceHistory | undefined;
  /**
   * With source.url: the proxy's listeners and the admin API that told how far the standby was
   * while it was made; taken over by the proxy and the full admin API.
   */
  let making: { listeners: ClientListeners; admin: MakingAdmin | undefined } | undefined;
  let endpoint: Endpoint;
  let adminConfig: pg.PoolConfig;
  if (config.upstream) {
    const url = new URL(config.upstream);
    let upstreamTls: UpstreamTls | undefined;
    try {
      const request = parseUpstreamTls(url);
      upstreamTls = request && loadUpstreamTls(request);
    } catch (error) {
      if (error instanceof UpstreamTlsError) throw new CannotStart(error.message, { cause: error });
      throw error;
    }
    const at = { host: url.hostname || '127.0.0.1', port: Number(url.port || 5432) };
    endpoint = { ...at, tls: upstreamTls };
    const login: pg.ClientConfig = {
      ...pgClientConfig(endpoint),
      user: decodeURIComponent(url.username) || 'postgres',
      password: decodeURIComponent(url.password) || undefined,
      database: decodeURIComponent(url.pathname.slice(1)) || MAINTENANCE_DATABASE,
    };
    // Whether the server refuses a login without TLS: what sslmode=allow falls back on.
    const plainRefused = async () => {
      const client = new pg.Client({ ...login, ssl: false });
      client.on('error', () => undefined);
      try {
        await client.connect();
        return false;
      } catch (error) {
        return (error as { code?: string }).code === '28000';
      } finally {
        await client.end().catch(() => undefined);
      }
    };
    const adminTls = await settleFallback(upstreamTls, at, plainRefused);
    if (adminTls) {
      try {
        await checkServerTls(adminTls, at, config.pool.connect_timeout);
      } catch (error) {
        const { message, hint } = error as PgError;
        throw new CannotStart(hint ? `${message}\n${hint}` : message, { cause: error });
      }
    }
    adminConfig = { ...login, ssl: pgSsl(adminTls) };
  } else if (config.source.url) {
    // The standby may take hours to make (its base backup): meanwhile pgbranch listens and tells
    // every client, the CLI and the admin API how far it is.
    let tracker: StandbyMaking;
    try {
      tracker = new StandbyMaking(describeSource(parseSourceUrl(config.source.url)));
    } catch (error) {
      throw new CannotStart((error as Error).message, { cause: error });
    }
    const refusing = (socket: net.Socket, local: boolean) =>
      void refuseClient(
        socket,
        { tls: serverTls, loginTimeoutMs: config.auth_timeout, cancels: NO_SESSIONS, log },
        { local },
        () => tracker.refusal(),
      );
    const listeners = await ClientListeners.open(config.listen, refusing);
    log.info(
      { event: 'listening_while_making', host: config.listen.host, port: listeners.port },
      `listening on ${hostInUrl(reachableHost(config.listen.host))}:${listeners.port}: until the standby of ${tracker.source} runs, clients are told how far it is (57P03)`,
    );
    let makingAdmin: MakingAdmin | undefined;
    try {
      if (config.admin.enabled) {
        makingAdmin = await serveAdminWhileMaking({
          host: config.admin.host,
          port: config.admin.port,
          token: config.admin.token,
          https: servesHttps(config, 'admin') ? serverTls?.pem : undefined,
          making: tracker,
          log,
        }).catch((error: unknown) => {
          throw new CannotStart((error as Error).message, { cause: error });
        });
      }
      standby = await openSource(config, log, tracker);
    } catch (error) {
      await makingAdmin?.close();
      await listeners.close();
      throw error;
    }
    making = { listeners, admin: makingAdmin };
    endpoint = standby.endpoint;
    adminConfig = {
      ...pgClientConfig(endpoint),
      user: standby.superuser,
      database: standby.database,
      ssl: false,
    };
  } else {
    embedded = await startEmbedded({
      dataDir: config.data_dir,
      password: config.embedded.password,
      port: config.embedded.port,
      maxConnections: embeddedMaxConnections(config),
      log,
    });
    endpoint = embedded.endpoint;
    adminConfig = {
      ...pgClientConfig(endpoint),
      user: embedded.superuser,
      database: MAINTENANCE_DATABASE,
      // Set, so that node-postgres does not take it from PGSSLMODE: a private socket needs none.
      ssl: false,
    };
  }
  const admin = new pg.Pool({
    ...adminConfig,
    max: ADMIN_CONNECTIONS,
    idleTimeoutMillis: 10_000,
    application_name: 'pgbranch',
  });
  admin.on('error', (error) => log.warn({ err: error }, 'administrative connection failed'));

  const maintenanceDatabase = adminConfig.database ?? MAINTENANCE_DATABASE;
  const connectTo = (database: string) => {
    const client = new pg.Client({ ...adminConfig, database, application_name: 'pgbranch' });
    // A server that goes away fails the query in flight; unheard, the error event would end pgbranch.
    client.on('error', (error) =>
      log.warn(
        { event: 'admin_connection_lost', database, reason: error.message },
        `administrative connection to ${database} lost: ${error.message}`,
      ),
    );
    return client;
  };
  let provider: DatabaseProvider;
  let budget: ServerBudget;
  try {
    provider = await DatabaseProvider.open(
      admin,
      connectTo,
      maintenanceDatabase,
      embedded?.pgDataDir,
      config.branch.copy_method,
    );
    budget = await budgetOf(config, admin);
  } catch (error) {
    await admin.end().catch(() => undefined);
    await embedded?.stop();
    await standby?.stop();
    throw new Error(
      `cannot use the PostgreSQL server at ${describeEndpoint(endpoint)}: ${(error as Error).message}`,
      { cause: error },
    );
  }

  /**
   * The source's health, checked every 10 s; its resync replaces the root's warm spare, which
   * follows the old standby.
   */
  const sourceHealth =
    standby &&
    new SourceHealth({
      standby,
      log,
      window: async () => {
        const window = await history?.currentWindow();
        return window ? { from: window.from.toISOString(), to: window.to.toISOString() } : null;
      },
      swap: async (work) => {
        await instances?.spares?.discard('');
        try {
          return await work();
        } finally {
          await instances?.rootReplaced();
        }
      },
    });
  /**
   * While the embedded server is being started again after it died, or a source's standby is
   * swapped for a new one, logins and connects wait.
   */
  const upstreamRunning = () =>
    embedded
      ? embedded.running(config.pool.connect_timeout)
      : (sourceHealth?.running(config.pool.connect_timeout) ?? Promise.resolve());
  const openSession: typeof openServerSession = async (options) => {
    if (options.endpoint === endpoint) await upstreamRunning();
    return openServerSession(options);
  };
  const poolLimits = {
    size: config.pool.size,
    minIdle: config.pool.min_idle,
    reserveSize: config.pool.reserve_size,
    reserveTimeoutMs: config.pool.reserve_timeout,
    maxServerConnections: budget.max,
    idleTimeoutMs: config.pool.idle_timeout,
    serverLifetimeMs: config.pool.server_lifetime,
    waitTimeoutMs: config.pool.wait_timeout,
    connectRetries: config.pool.connect_retries,
    connectTimeoutMs: config.pool.connect_timeout,
  };
  const poolsAt = (at: Endpoint) => {
    const manager = new PoolManager(poolLimits, (request) =>
      openSession({
        endpoint: at,
        user: request.user,
        database: request.database,
        parameters: request.parameters,
        login: request.login,
        timeoutMs: config.pool.connect_timeout,
      }),
    );
    manager.setBudget(budget);
    return manager;
  };
  const pools = poolsAt(endpoint);
  log.info(
    { event: 'server_budget', max: budget.max, derivation: budget.derivation },
    `server connection budget: ${budget.derivation}`,
  );
  /**
   * Pools of branch instances, by endpoint, each under the budget of its own server (an instance is
   * a postmaster of its own); an instance's pools go when it stops.
   */
  const instancePools = new Map<string, { at: Endpoint; branch: string; pools: PoolManager }>();
  /** The settings the budgets were last read with: the start's, then each RELOAD's. */
  let budgetConfig = config;
  /** Reads the budget of an instance's server, on a session of pgbranch's own on its socket. */
  const readInstanceBudget = async (at: Endpoint, branch: string, manager: PoolManager) => {
    const { max_server_connections: setting, server_margin: margin } = budgetConfig.pool;
    try {
      const read = await instanceBudget(branch, setting, margin, async (sql) => {
        const client = new pg.Client({
          ...pgClientConfig(at),
          user: adminConfig.user,
          database: maintenanceDatabase,
          application_name: 'pgbranch',
        });
        client.on('error', () => undefined);
        await client.connect();
        try {
          return await client.query<{ name: string; setting: string }>(sql);
        } finally {
          await client.end().catch(() => undefined);
        }
      });
      log.info(
        { event: 'server_budget', branch, max: read.max, derivation: read.derivation },
        `server connection budget: ${read.derivation}`,
      );
      return read;
    } catch (error) {
      log.warn(
        { err: error, branch },
        `could not read the server connection budget of branch instance ${branch}; kept ${manager.serverBudget().max}`,
      );
      throw error;
    }
  };
  const poolsFor = (at: Endpoint | undefined, branch?: string): PoolManager => {
    if (!at) return pools;
    const key = describeEndpoint(at);
    let found = instancePools.get(key);
    if (!found) {
      const manager = poolsAt(at);
      const { max_server_connections: setting, server_margin: margin } = budgetConfig.pool;
      const started = Number(
        instanceSettings(budgetConfig.branch.instance_settings).max_connections,
      );
      const name = branch ?? key;
      const until = configuredInstanceBudget(name, started, setting, margin);
      manager.setBudgetFrom(readInstanceBudget(at, name, manager), until);
      instancePools.set(key, (found = { at, branch: name, pools: manager }));
    }
    return found.pools;
  };
  const closePoolsOf = (at: Endpoint): void => {
    const key = describeEndpoint(at);
    instancePools.get(key)?.pools.close();
    instancePools.delete(key);
  };
  /**
   * Reads every budget again on RELOAD: a server may have been restarted with other settings, and
   * the margin or the number may have changed.
   */
  let budgetRead: Promise<void> = Promise.resolve();
  const rereadBudget = async (next: Config) => {
    budgetConfig = next;
    const instancesRead = [...instancePools.values()].map(({ at, branch, pools: manager }) =>
      readInstanceBudget(at, branch, manager).then(
        (read) => manager.setBudget(read),
        () => undefined,
      ),
    );
    try {
      budget = await budgetOf(next, admin);
      pools.setBudget(budget);
      log.info(
        { event: 'server_budget', max: budget.max, derivation: budget.derivation },
        `server connection budget: ${budget.derivation}`,
      );
    } catch (error) {
      log.warn({ err: error }, `could not read the server connection budget; kept ${budget.max}`);
    }
    await Promise.all(instancesRead);
  };
  // Behind a server whose roles have no password (one that trusts its clients), the connection
  // string pgbranch prints can't log in: said at start, not only in the log of each refusal.
  const census =
    config.upstream && config.auth !== 'trust' ? await passwordCensus(admin) : undefined;
  const loginWarning = census && passwordWarning(census, describeEndpoint(endpoint), config.auth);
  const passwordlessHint = new PasswordlessHint(admin);
  if (loginWarning) {
    log.warn(
      {
        event: 'role_without_password',
        role: census.role,
        anyRoleHasPassword: census.anyRoleHasPassword,
      },
      `${loginWarning.problem}; ${loginWarning.remedy}`,
    );
  }
  const clients = new Set<net.Socket>();
  const sessions = { session: 0, transaction: 0, pinned: 0 };
  const metrics = config.metrics.enabled
    ? new Metrics(
        {
          clients: () => clients.size,
          pools: () => pools.stats(),
          instancePools: () =>
            [...instancePools.values()].map(({ branch, pools: manager }) => ({
              branch,
              stats: manager.stats(),
            })),
          sessions: () => sessions,
          census: (): ReturnType<LifecycleService['census']> => lifecycle.census(),
          source: sourceHealth && (() => sourceHealth.gauges()),
        },
        provider.copyMethod.mode,
      )
    : undefined;
  const registry = new ClientRegistry();
  let peers: Peers | undefined;
  const cancels = new CancelRegistry(endpoint);
  let sharedCancels: SharedCancelKeys | undefined;
  if (config.redis.url) {
    try {
      peers = await Peers.join(config.redis.url, await serverIdentity(admin, endpoint), log);
      // A cancel that reaches another proxy than the one running the query is sent on to it.
      sharedCancels = await SharedCancelKeys.open(
        peers,
        (processId, secret) => cancels.cancelHere(processId, secret),
        log,
      );
      cancels.share(sharedCancels);
    } catch (error) {
      sourceHealth?.close();
      pools.close();
      await admin.end().catch(() => undefined);
      await embedded?.stop();
      await standby?.stop();
      throw error;
    }
    log.info(
      { event: 'peers_joined', channel: peers.channel, proxy: peers.id },
      `coordinating with other pgbranch proxies of this server through Redis (${peers.channel})`,
    );
  }
  const drain: SharedDrain = new SharedDrain(
    pools,
    registry,
    peers,
    (): number => lifecycle.settings.drainTimeoutMs,
  );
  /** Undoes what start-up did so far, when a later step fails. */
  const abandon = async () => {
    await making?.admin?.close();
    await making?.listeners.close();
    sourceHealth?.close();
    await history?.close();
    pools.close();
    drain.close();
    await admin.end().catch(() => undefined);
    await embedded?.stop();
    await standby?.stop();
  };
  // Read when a branch is made, by when the lifecycle below exists.
  const creationQuota = new CreationQuota((): Policy => lifecycle.settings.policy);
  let instances: InstanceBranches | undefined;
  // A source's standby is read-only: its branches can only be instances.
  if (config.branch.provider === 'instance' || standby) {
    try {
      const connectRoot = async () => {
        const client = connectTo(MAINTENANCE_DATABASE);
        await client.connect();
        return client;
      };
      const root = embedded
        ? {
            pgDataDir: embedded.pgDataDir,
            connect: connectRoot,
            superuser: embedded.superuser,
            replicationConninfo:
              'socketDir' in embedded.endpoint
                ? socketConninfo(
                    embedded.endpoint.socketDir,
                    embedded.endpoint.port,
                    embedded.superuser,
                  )
                : undefined,
          }
        : standby
          ? standbyRoot(
              standby,
              config.source.max_wait,
              upstreamRunning,
              config.source.warm_standbys,
            )
          : await localUpstream(admin, String(adminConfig.user), connectRoot);
      instances = await openInstanceBranches({
        config,
        root,
        admin,
        onStopping: closePoolsOf,
        // Read when a branch is made, by when the lifecycle below exists.
        policy: () => lifecycle.settings.policy,
        creationQuota,
        history: standby && (() => history),
        log,
      });
      if (standby) {
        const clone = instances.copyMethod.mode === 'clone';
        history = openHistory(config, standby, root.connect, clone, log);
      }
    } catch (error) {
      await abandon();
      throw error;
    }
  }
  // eslint-disable-next-line prefer-const -- the manager and the service refer to each other
  let branches: BranchResolver;
  const lifecycle = new LifecycleService({
    provider,
    cloner: new Cloner(provider, drain, config.branch.drain_timeout),
    connections: drain,
    clients: registry,
    connectTo,
    maintenanceDatabase,
    forget: (database) => branches.forget(database),
    settings: lifecycleSettings(config),
    creationQuota,
    log,
    onCreated: metrics && ((mode, ms, ok) => metrics.branchCreated(mode, ms, ok)),
    onOperation: metrics && ((operation, ok) => metrics.branchOperation(operation, ok)),
  });
  /** What the CLI, the API and the console work on: instance branches, or the service's. */
  const instanceLifecycle =
    instances &&
    new InstanceLifecycle(
      instances,
      {
        createdAt: null,
        diskBytes: () => diskUsage(instances!.rootDataDir),
        clients: () => [...registry.all()].filter((c) => !c.requested.includes('@')).length,
        withSession: async (database, work) => {
          const client = connectTo(database);
          await client.connect();
          try {
            return await work(client);
          } finally {
            await client.end().catch(() => undefined);
          }
        },
      },
      () => lifecycle.settings.policy,
      log,
    );
  const branchLifecycle: Lifecycle = instanceLifecycle ?? lifecycle;
  branches =
    instances ??
    new BranchManager({
      exists: async (database) => {
        await upstreamRunning();
        return provider.exists(database);
      },
      create: lifecycle.createOnConnect,
      onConnect: (database) => lifecycle.touch(database),
    });
  let maxLoginFailures = config.auth_max_failures;
  let clientLimits = clientLimitsOf(config);
  const ctx: ProxyContext = {
    log,
    onRefused: metrics && ((code) => metrics.clientRefused(code)),
    auth: config.auth,
    tls: serverTls,
    loginTimeoutMs: config.auth_timeout,
    loginFailures: new LoginFailures(() => maxLoginFailures, log),
    roles: waitingFor(
      upstreamRunning,
      new CatalogRoleSource(admin),
      () => sourceHealth?.swapping ?? false,
    ),
    loginHint: config.auth === 'trust' ? undefined : () => passwordlessHint.hint(),
    branches,
    pools,
    poolsFor,
    cancels,
    maxClients: config.pool.max_client_connections,
    clientQuotas: new ClientQuotas(() => clientLimits),
    clients,
    registry,
    sessions,
    shuttingDown: false,
    poolModeFor: poolModeRule(config.pool.mode, config.pool.transaction_mode_for),
    idleInTransactionTimeoutMs: config.pool.idle_in_transaction_timeout,
    maxPreparedStatements: config.pool.max_prepared_statements,
    console: {
      lifecycle: branchLifecycle,
      pools,
      instancePools: () => instancePools.values(),
      clients: registry,
      log,
      adminUsers: () => consoleUsers,
      isSuperuser: async (user) =>
        (await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1 AND rolsuper', [user]))
          .rowCount === 1,
      reload: async () => {
        if (!rereadConfig) {
          throw new PgError(
            '55000',
            'this pgbranch was started without a configuration to read again',
          );
        }
        let next: Config;
        try {
          next = rereadConfig();
        } catch (error) {
          // A bad file or variable leaves the running configuration as it is.
          throw new PgError('F0000', `configuration not reloaded: ${(error as Error).message}`);
        }
        const result = reload(next);
        await budgetRead;
        return result;
      },
      serverVersion: provider.serverVersion,
      pauseTimeoutMs: () => lifecycle.settings.drainTimeoutMs,
      source: sourceHealth,
    },
  };

  // TCP and the Unix socket serve clients alike. Socket clients are local, so what pgbranch allows
  // only on loopback (auth trust, checked against listen.host at start; plain text under tls.mode
  // require) is as safe for them.
  const onClient = (socket: net.Socket, local: boolean) => {
    metrics?.clientConnected();
    ctx.clients.add(socket);
    socket.once('close', () => ctx.clients.delete(socket));
    void serveClient(socket, ctx, { local });
  };
  let listeners: ClientListeners;
  if (making) {
    // Listening since before the standby was made.
    listeners = making.listeners;
    listeners.serve(onClient);
  } else {
    try {
      listeners = await ClientListeners.open(config.listen, onClient);
    } catch (error) {
      await abandon();
      throw error;
    }
  }
  const { port, socketPath } = listeners;
  const closeListeners = () => listeners.close();
  let metricsServer: MetricsServer | undefined;
  if (metrics) {
    try {
      metricsServer = await serveMetrics(
        metrics.registry,
        config.metrics.host,
        config.metrics.port,
        servesHttps(config, 'metrics') ? serverTls?.pem : undefined,
      );
    } catch (error) {
      void closeListeners();
      await abandon();
      throw new CannotStart((error as Error).message, { cause: error });
    }
  }
  let adminApi: AdminApi | undefined;
  if (config.admin.enabled) {
    try {
      // The port the admin API listened on while the standby was made (admin.port 0 included).
      await making?.admin?.close();
      adminApi = await serveAdminApi({
        lifecycle: branchLifecycle,
        host: config.admin.host,
        port: making?.admin?.port ?? config.admin.port,
        token: config.admin.token,
        log,
        proxy: { host: config.listen.host, port, user: String(adminConfig.user) },
        ready: readinessCheck({
          stopping: () => ctx.shuttingDown,
          listening: () => listeners.listening,
          admin,
        }),
        https: servesHttps(config, 'admin') ? serverTls?.pem : undefined,
        source: sourceHealth,
      });
    } catch (error) {
      await metricsServer?.close();
      void closeListeners();
      await abandon();
      throw new CannotStart((error as Error).message, { cause: error });
    }
  }
  for (const [part, url, what] of [
    ['admin', adminApi?.url, 'its token'],
    ['metrics', metricsServer?.url, 'what they show'],
  ] as const) {
    if (url?.startsWith('http:') && !isLoopback(config[part].host)) {
      log.warn(
        { event: 'plain_http', part, url },
        `${part === 'admin' ? 'the admin API' : 'metrics'} on ${config[part].host} over plain HTTP: ${what} crosses the network in clear; set tls.cert and tls.key (${part}.tls) to serve HTTPS`,
      );
    }
  }
  const host = config.listen.host;
  const at = `${hostInUrl(reachableHost(host))}:${port}`;
  const connectionString = embedded
    ? `postgres://${embedded.superuser}:${encodeURIComponent(embedded.password)}@${at}/postgres`
    : `postgres://${encodeURIComponent(String(adminConfig.user))}@${at}/postgres`;

  let current = config;
  let consoleUsers = roleSet(config.admin.users);
  let sweeper = startSweeper(config.branch.sweep_interval);
  function startSweeper(intervalMs: number): NodeJS.Timeout {
    const timer = setInterval(() => {
      lifecycle.sweep().catch((error: unknown) => log.warn({ err: error }, 'branch sweep failed'));
      instanceLifecycle
        ?.sweep()
        .catch((error: unknown) => log.warn({ err: error }, 'instance branch sweep failed'));
    }, intervalMs);
    timer.unref();
    return timer;
  }
  const reload = (next: Config): ReloadResult => {
    // The certificate files are read again even when their names did not change (a renewed
    // certificate): new handshakes use them, sessions already on TLS keep theirs.
    let nextTls: ServerTls | undefined;
    try {
      nextTls = tlsOf(next);
    } catch (error) {
      if (error instanceof TlsFileError) {
        throw new PgError('F0000', `configuration not reloaded: ${error.message}`);
      }
      throw error;
    }
    ctx.tls = nextTls;
    if (nextTls) {
      adminApi?.renewCertificate(nextTls.pem);
      metricsServer?.renewCertificate(nextTls.pem);
      const certificate = describeCertificate(nextTls);
      log.info(
        { event: 'tls_loaded', mode: nextTls.mode, ...certificate },
        `TLS certificate ${certificate.certFile} loaded (${certificate.subject}, valid to ${certificate.validTo})`,
      );
    }
    const before = flatten(current);
    const changed = [...flatten(next)].filter(([key, value]) => before.get(key) !== value);
    const reloadable = (key: string) => RELOADABLE.test(key) || BUDGET_KEYS.test(key);
    const applied = changed.map(([key]) => key).filter(reloadable);
    const needRestart = changed.map(([key]) => key).filter((key) => !reloadable(key));
    lifecycle.settings = lifecycleSettings(next);
    budgetRead = rereadBudget(next);
    if (next.branch.sweep_interval !== current.branch.sweep_interval) {
      clearInterval(sweeper);
      sweeper = startSweeper(next.branch.sweep_interval);
    }
    ctx.poolModeFor = poolModeRule(next.pool.mode, next.pool.transaction_mode_for);
    ctx.idleInTransactionTimeoutMs = next.pool.idle_in_transaction_timeout;
    ctx.maxPreparedStatements = next.pool.max_prepared_statements;
    ctx.maxClients = next.pool.max_client_connections;
    maxLoginFailures = next.auth_max_failures;
    clientLimits = clientLimitsOf(next);
    log.level = next.log.level;
    consoleUsers = roleSet(next.admin.users);
    current = next;
    log.info(
      { event: 'reloaded', applied, needRestart },
      `configuration reloaded: ${applied.length} change${applied.length === 1 ? '' : 's'} applied${needRestart.length > 0 ? `; restart for ${needRestart.join(', ')}` : ''}`,
    );
    return { applied, needRestart };
  };

  /**
   * Refuses new clients (57P01) and closes each connected one, with 57P01, once its transaction
   * has ended; those still in one after `graceMs` are closed then. Resolves when all are gone.
   */
  const drainClients = async (graceMs: number) => {
    ctx.shuttingDown = true;
    const shuttingDown = errors.shuttingDown();
    log.info(
      { event: 'draining', clients: ctx.clients.size, timeoutMs: graceMs },
      `stopping: no new clients; ${ctx.clients.size} connected may finish their transactions within ${graceMs / 1000} s`,
    );
    const told = new Set<number>();
    const deadline = Date.now() + graceMs;
    // Clients still logging in join the registry later, and are told then.
    while (ctx.clients.size > 0 && Date.now() < deadline) {
      for (const client of registry.all()) {
        if (told.has(client.id)) continue;
        told.add(client.id);
        if (client.terminateWhenIdle) client.terminateWhenIdle(shuttingDown);
        else client.terminate(shuttingDown);
      }
      await sleep(Math.min(50, Math.max(1, deadline - Date.now())));
    }
    if (ctx.clients.size === 0) return;
    log.warn(
      { event: 'shutdown_timeout', clients: ctx.clients.size },
      `closing ${ctx.clients.size} client${ctx.clients.size === 1 ? '' : 's'} still busy after shutdown_timeout`,
    );
    for (const client of registry.all()) client.terminate(shuttingDown);
    // Long enough for the 57P01 to go out; stop() cuts whatever is left.
    const flushed = Date.now() + 1000;
    while (ctx.clients.size > 0 && Date.now() < flushed) await sleep(20);
  };

  let stopping: Promise<void> | undefined;
  const stop = (graceful = false) =>
    (stopping ??= (async () => {
      if (graceful) await drainClients(current.shutdown_timeout);
      ctx.shuttingDown = true;
      clearInterval(sweeper);
      const closed = closeListeners();
      pools.close();
      for (const instance of instancePools.values()) instance.pools.close();
      drain.close();
      sharedCancels?.close();
      for (const socket of ctx.clients) socket.destroy();
      await closed;
      await metricsServer?.close();
      await adminApi?.close();
      await lifecycle
        .flushTouched()
        .catch((error: unknown) => log.warn({ err: error }, 'could not record last connections'));
      sourceHealth?.close();
      await history?.close();
      await instances?.close();
      await admin.end().catch(() => undefined);
      await embedded?.stop();
      await standby?.stop();
    })());

  return {
    host,
    port,
    socketPath,
    tls: () => ctx.tls && { mode: ctx.tls.mode, ...describeCertificate(ctx.tls) },
    connectionString,
    copyMethod: instances ? instances.copyMethod : provider.copyMethod,
    provider: standby ? 'instance' : config.branch.provider,
    warmSpare: instances?.spares !== undefined,
    serverVersion: provider.serverVersion,
    embedded,
    upstream: embedded
      ? `embedded PostgreSQL ${provider.serverVersion}`
      : standby
        ? `standby of ${standby.source} (PostgreSQL ${standby.binaries.version})`
        : describeEndpoint(endpoint),
    metricsUrl: metricsServer?.url,
    adminUrl: adminApi?.url,
    loginWarning,
    lifecycle,
    sourceHistory: history,
    reload,
    consoleUsers: () => consoleUsers,
    stop,
  };
}

/** The server connection budget: pool.max_server_connections, or with auto read from the server. */
function budgetOf(config: Config, admin: pg.Pool): Promise<ServerBudget> {
  return serverBudget(
    config.pool.max_server_connections,
    config.pool.server_margin,
    OWN_CONNECTIONS,
    (sql) => admin.query<{ name: string; setting: string }>(sql),
  );
}

/**
 * The embedded server's max_connections: embedded.max_connections; else PostgreSQL's default with
 * an auto budget (which is then taken from it), or room for a fixed budget and pgbranch's own.
 */
function embeddedMaxConnections(config: Config): number {
  if (config.embedded.max_connections !== undefined) return config.embedded.max_connections;
  const fixed = config.pool.max_server_connections;
  return fixed === 'auto' ? 100 : fixed + 20;
}

/**
 * What names this PostgreSQL server to every proxy in front of it: its system identifier, or
 * where it is when the role may not read that.
 */
async function serverIdentity(admin: pg.Pool, endpoint: Endpoint): Promise<string> {
  try {
    const { rows } = await admin.query<{ id: string }>(
      'SELECT system_identifier::text AS id FROM pg_control_system()',
    );
    return rows[0]!.id;
  } catch {
    return describeEndpoint(endpoint);
  }
}

/** TLS as configured (its files read now), or undefined without a certificate. */
function tlsOf(config: Config): ServerTls | undefined {
  const { cert, key, mode } = config.tls;
  return cert && key ? loadServerTls({ cert, key, mode }) : undefined;
}

/**
 * Role lookups that wait for the server first (the embedded one may be restarting). While a
 * source's standby is swapped for a new one (`pgbranch source resync`), a role that logged in
 * before is answered from what the catalog said then, so logins to branches, which run on servers
 * of their own, go on; the swap may outlast pool.connect_timeout on a loaded host. A role first
 * seen meanwhile waits for the new standby as before.
 */
function waitingFor(
  running: () => Promise<void>,
  roles: RoleSource,
  swapping: () => boolean,
): RoleSource {
  const known = new Map<string, RoleSecret>();
  return {
    lookup: async (user) => {
      const before = swapping() ? known.get(user) : undefined;
      if (before) return before;
      await running();
      const secret = await roles.lookup(user);
      if (!secret) known.delete(user);
      else {
        if (known.size >= MAX_REMEMBERED_ROLES && !known.has(user)) known.clear();
        known.set(user, secret);
      }
      return secret;
    },
  };
}

/** Roles whose secrets are kept for logins during a standby's swap: beyond, forget and refill. */
const MAX_REMEMBERED_ROLES = 10_000;

function roleSet(list: string): Set<string> {
  return new Set(commaList(list));
}

/** A configuration as `path -> value` for its leaves, to see what a reload changes. */
function flatten(value: unknown, prefix = '', into = new Map<string, unknown>()) {
  if (value !== null && typeof value === 'object') {
    for (const [key, child] of Object.entries(value)) {
      flatten(child, prefix ? `${prefix}.${key}` : key, into);
    }
  } else into.set(prefix, value);
  return into;
}

function clientLimitsOf(config: Config): ClientLimits {
  return {
    perBranch: config.pool.max_client_connections_per_branch,
    perRole: config.pool.max_client_connections_per_role,
  };
}

function lifecycleSettings(config: Config): LifecycleSettings {
  return {
    policy: new Policy(config.branch),
    drainTimeoutMs: config.branch.drain_timeout,
    rootSnapshotIntervalMs: config.branch.root_snapshot_interval,
    rootSnapshotCopies: config.branch.root_snapshot_copies,
    useRootSnapshot: config.branch.use_root_snapshot,
  };
}

/** The configured pool mode for a database name: transaction where a pattern matches. */
function poolModeRule(
  mode: 'session' | 'transaction',
  patterns: string,
): (database: string) => 'session' | 'transaction' {
  const matches = anyOf(commaList(patterns));
  if (!matches) return () => mode;
  return (database) => (matches(database) ? 'transaction' : mode);
}
