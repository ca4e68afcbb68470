// The HTTP admin API: JSON over fastify, each route a call on the Lifecycle, requests checked and
// responses shaped by the JSON schemas that /openapi.json publishes. The CLI is its main client.
import swagger from '@fastify/swagger';
import Fastify, {
  LogController,
  type FastifyReply,
  type FastifyRequest,
  type FastifyServerOptions,
} from 'fastify';
import type { Logger } from 'pino';
import { hostInUrl, isLoopback, reachableHost } from '../config/load.js';
import { createServer, renewCertificate, type HttpsCertificate } from '../https.js';
import { errors as pgErrors } from '../errors.js';
import type { ExpiryChange, Lifecycle } from '../lifecycle/model.js';
import type { SourceControl } from '../source/health.js';
import { version } from '../version.js';
import { bearerCheck } from './auth.js';
import type { Readiness } from './readiness.js';
import { errorBody, errorReply } from './error-status.js';
import { serveEvents } from './events.js';
import { servePage } from './page.js';
import { sharedSchemas, ttlValue } from './schemas.js';
import { ttlMs } from './ttl.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Served without the token: liveness, readiness and the API's description hold nothing to protect. */
    public?: boolean;
  }
}

export interface AdminApiOptions {
  lifecycle: Lifecycle;
  host: string;
  port: number;
  /** Required on every route but /healthz, /readyz and /openapi.json when set. */
  token?: string;
  log: Logger;
  /** For /readyz: whether pgbranch takes clients and its server answers. */
  ready?: () => Promise<Readiness>;
  /** Where clients connect, for the connection strings the branch page shows. */
  proxy?: ProxyAddress;
  /** Serve HTTPS with this certificate (the proxy's); plain HTTP without. */
  https?: HttpsCertificate;
  /** The source followed (source.url): /v1/source answers 404 without one. */
  source?: SourceControl | undefined;
}

/** The proxy's address and the role its connection strings name (no password). */
export interface ProxyAddress {
  /** As configured (listen.host): 0.0.0.0 or :: for every interface. */
  host: string;
  port: number;
  user: string;
}

export interface AdminApi {
  /** `http://127.0.0.1:9931` or `https://...`, without a trailing slash. */
  url: string;
  /** Over HTTPS: the certificate for new connections (after SIGHUP or RELOAD). */
  renewCertificate(pem: HttpsCertificate): void;
  close(): Promise<void>;
}

/**
 * Branch names can be 255 characters of any Unicode, and `db@` is prepended; percent-encoded,
 * a character takes up to 12 bytes. find-my-way refuses longer parameters than this with a 404.
 */
const MAX_PARAM_LENGTH = 4096;

/** Fastify logs every request at info by default; here that would drown the proxy's own log. */
class QuietRequests extends LogController {
  override incomingRequest(request: FastifyRequest) {
    request.log.debug({ method: request.method, url: request.url }, 'admin request');
  }
  override requestCompleted(_error: Error | null, request: FastifyRequest, reply: FastifyReply) {
    request.log.debug(
      { status: reply.statusCode, ms: Math.round(reply.elapsedTime) },
      'admin request done',
    );
  }
  override routeNotFound(request: FastifyRequest) {
    request.log.debug({ method: request.method, url: request.url }, 'admin route not found');
  }
}

const ref = (id: string) => ({ $ref: `${id}#` });
const nullableString = { type: ['string', 'null'] };
const errors = (...statuses: number[]) =>
  Object.fromEntries(statuses.map((status) => [status, ref('Error')]));

const nameParams = {
  type: 'object',
  required: ['name'],
  properties: {
    name: {
      type: 'string',
      minLength: 1,
      description: 'database@branch (app for a root), URL-encoded: app%40feature%2Flogin.',
    },
  },
} as const;

const body = (properties: Record<string, unknown>, required: string[] = []) => ({
  type: 'object',
  additionalProperties: false,
  required,
  properties,
});

interface NameParams {
  name: string;
}

/** The WWW-Authenticate header of a 401. */
export const BEARER_CHALLENGE = 'Bearer realm="pgbranch"';

/** The 401's body: no token, or the wrong one. */
export function unauthorized(authorization: string | undefined) {
  return errorBody(
    '28000',
    authorization ? 'the admin token is wrong' : 'an admin token is required',
    undefined,
    'Send Authorization: Bearer <admin.token>; the CLI reads it from PGBRANCH_ADMIN_TOKEN.',
  );
}

/** The admin API can reset and delete every branch: off loopback, only with a token. */
export function checkAdminExposure(host: string, token: string | undefined): void {
  if (token === undefined && !isLoopback(host)) {
    throw new Error(
      `the admin API may only listen on ${host} with a token, since it can reset and delete every branch: ` +
        `set admin.token (PGBRANCH_ADMIN_TOKEN, --admin-token), or serve it on 127.0.0.1 (admin.host)`,
    );
  }
}

/** Why the admin API could not listen, in words for a person. */
export function adminListenProblem(host: string, port: number, error: unknown): Error {
  const e = error as NodeJS.ErrnoException;
  return new Error(
    e.code === 'EADDRINUSE'
      ? `admin port ${port} on ${host} is already in use: pick another with --admin-port (0 picks a free one) or turn the admin API off with --admin-enabled false`
      : `cannot serve the admin API on ${host}:${port}: ${e.message}`,
    { cause: error },
  );
}

export async function serveAdminApi(options: AdminApiOptions): Promise<AdminApi> {
  const { lifecycle, host, port, token } = options;
  checkAdminExposure(host, token);
  const app = Fastify({
    loggerInstance: options.log.child({
      component: 'admin-api',
    }) as FastifyServerOptions['loggerInstance'],
    logController: new QuietRequests(),
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    serverFactory: (handler) => createServer(options.https, handler),
    // Fastify's default drops unknown properties silently; a misspelt `expiresAt` must be an error.
    ajv: { customOptions: { removeAdditional: false, allowUnionTypes: true } },
  });
  for (const schema of sharedSchemas) app.addSchema(schema);
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'pgbranch admin API',
        version,
        description:
          'Branches of the databases behind one pgbranch: list, create, reset, restore points, expiry, protection, cleanup and schema diffs. Names are database@branch, URL-encoded in paths. Failures answer { error: { code, message, detail?, hint? } } with the SQLSTATE the SQL console would report.',
      },
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      },
      ...(token === undefined ? {} : { security: [{ bearer: [] }] }),
    },
    refResolver: {
      buildLocalReference: (json, _base, _fragment, i) => String(json.$id ?? `def-${i}`),
    },
  });

  const authorized = token === undefined ? () => true : bearerCheck(token);
  app.addHook('onRequest', async (request, reply) => {
    if (request.routeOptions.config.public || authorized(request.headers.authorization)) return;
    await reply
      .code(401)
      .header('www-authenticate', BEARER_CHALLENGE)
      .send(unauthorized(request.headers.authorization));
  });
  app.setErrorHandler(async (error, request, reply) => {
    const { status, body } = errorReply(error);
    if (status >= 500) request.log.error({ err: error }, `admin API: ${body.error.message}`);
    await reply.code(status).send(body);
  });
  app.setNotFoundHandler(async (request, reply) => {
    await reply
      .code(404)
      .send(
        errorBody(
          '0A000',
          `no route ${request.method} ${request.url.split('?')[0]}`,
          undefined,
          'GET /openapi.json lists every route.',
        ),
      );
  });

  app.get(
    '/healthz',
    {
      config: { public: true },
      schema: {
        summary: 'Liveness: answers without a token',
        response: { 200: { type: 'object', properties: { status: { type: 'string' } } } },
      },
    },
    async () => ({ status: 'ok' }),
  );
  const ready = options.ready;
  if (ready) {
    app.get(
      '/readyz',
      {
        config: { public: true },
        schema: {
          summary: 'Readiness: 200 when pgbranch takes clients and its server answers',
          description: '503 with the reason otherwise. Answers without a token.',
          response: {
            200: { type: 'object', properties: { status: { type: 'string' } } },
            503: {
              type: 'object',
              properties: { status: { type: 'string' }, reason: { type: 'string' } },
            },
          },
        },
      },
      async (_request, reply) => {
        const readiness = await ready();
        if (readiness.ready) return { status: 'ready' };
        return reply.code(503).send({ status: 'not ready', reason: readiness.reason });
      },
    );
  }
  app.get('/openapi.json', { config: { public: true }, schema: { hide: true } }, async () =>
    app.swagger(),
  );

  servePage(app);
  serveEvents(app, lifecycle);
  const proxy = options.proxy;
  if (proxy) {
    app.get(
      '/v1/connection',
      {
        schema: {
          summary: 'Where clients connect',
          description:
            'The proxy’s address and the role of the connection strings the branch page shows; host is null when the proxy listens on every interface (connect at the name this API was reached at).',
          response: {
            200: {
              type: 'object',
              required: ['host', 'port', 'user'],
              properties: {
                host: nullableString,
                port: { type: 'integer' },
                user: { type: 'string' },
              },
            },
            ...errors(401),
          },
        },
      },
      async () => ({
        host: proxy.host === '0.0.0.0' || proxy.host === '::' ? null : proxy.host,
        port: proxy.port,
        user: proxy.user,
      }),
    );
  }

  app.get<{ Querystring: { database?: string } }>(
    '/v1/branches',
    {
      schema: {
        summary: 'List branches',
        description: 'Every branch of every database, or of one, with its restore points.',
        querystring: {
          type: 'object',
          properties: { database: { type: 'string', minLength: 1, description: 'A root: app.' } },
        },
        response: { 200: ref('BranchList'), ...errors(401, 404) },
      },
    },
    async (request) => ({ branches: await lifecycle.list(request.query.database) }),
  );

  app.get<{ Params: NameParams }>(
    '/v1/branches/:name',
    {
      schema: {
        summary: 'One branch',
        params: nameParams,
        response: { 200: ref('BranchInfo'), ...errors(401, 404) },
      },
    },
    async (request) => lifecycle.get(request.params.name),
  );

  app.post<{
    Body: {
      name: string;
      parent?: string;
      snapshot?: string;
      at?: string;
      expiresAt?: string;
      ttl?: string | number;
    };
  }>(
    '/v1/branches',
    {
      schema: {
        summary: 'Create a branch',
        description:
          'Idempotent: 201 when it was made, 200 when it existed with the same parent, 409 (42P04) when it exists with another.',
        body: body(
          {
            name: { type: 'string', minLength: 1, description: 'app@feature-x' },
            parent: {
              type: 'string',
              minLength: 1,
              description:
                'A branch of the same database, as app@develop or develop (app for the root); default the root.',
            },
            snapshot: {
              type: 'string',
              minLength: 1,
              description: 'A restore point of the parent to start from.',
            },
            at: {
              type: 'string',
              minLength: 1,
              description:
                'With a source: the source as it was at this moment (2026-12-06T09:30:00Z, or -1h), within source.retention.',
            },
            expiresAt: {
              type: 'string',
              minLength: 1,
              description: 'Absolute expiry: 2026-12-01 or a date-time.',
            },
            ttl: ttlValue,
          },
          ['name'],
        ),
        response: {
          200: ref('CreateResult'),
          201: ref('CreateResult'),
          ...errors(400, 401, 403, 404, 409),
        },
      },
    },
    async (request, reply) => {
      const { ttl, ...rest } = request.body;
      const result = await lifecycle.create({
        ...rest,
        ...(ttl === undefined ? {} : { ttlMs: ttlMs(ttl) }),
      });
      return reply.code(result.created ? 201 : 200).send(result);
    },
  );

  app.patch<{
    Params: NameParams;
    Body: { expiresAt?: string | null; ttl?: string | number | null };
  }>(
    '/v1/branches/:name',
    {
      schema: {
        summary: 'Change when a branch expires',
        description: 'null clears an expiry; a property left out stays as it is.',
        params: nameParams,
        body: {
          ...body({
            expiresAt: { type: ['string', 'null'], minLength: 1 },
            ttl: { ...ttlValue, type: [...ttlValue.type, 'null'] },
          }),
          minProperties: 1,
        },
        response: { 200: ref('BranchInfo'), ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const { expiresAt, ttl } = request.body;
      const change: ExpiryChange = {
        ...(expiresAt === undefined ? {} : { expiresAt }),
        ...(ttl === undefined ? {} : { ttlMs: ttl === null ? null : ttlMs(ttl) }),
      };
      return lifecycle.expire(request.params.name, change);
    },
  );

  app.delete<{ Params: NameParams; Querystring: { cascade?: boolean } }>(
    '/v1/branches/:name',
    {
      schema: {
        summary: 'Delete a branch',
        description:
          'Drains its clients and drops it with its restore points. A branch with children needs cascade=true (else 409, 2BP01).',
        params: nameParams,
        querystring: {
          type: 'object',
          properties: { cascade: { type: 'boolean', default: false } },
        },
        response: { 200: ref('DeleteResult'), ...errors(401, 403, 404, 409) },
      },
    },
    async (request) => lifecycle.delete(request.params.name, { cascade: request.query.cascade }),
  );

  app.get<{ Params: NameParams }>(
    '/v1/branches/:name/copy',
    {
      schema: {
        summary: 'How far the copy that makes, resets or restores a branch is',
        description:
          'copying is null when no copy runs, or where copies do not report progress (database branches).',
        params: nameParams,
        response: {
          200: {
            type: 'object',
            required: ['copying'],
            properties: {
              copying: {
                type: ['object', 'null'],
                required: ['bytes', 'totalBytes'],
                properties: { bytes: { type: 'integer' }, totalBytes: { type: 'integer' } },
              },
            },
          },
          ...errors(401),
        },
      },
    },
    async (request) => ({ copying: lifecycle.copying?.(request.params.name) ?? null }),
  );

  app.post<{ Params: NameParams }>(
    '/v1/branches/:name/reset',
    {
      schema: {
        summary: 'Reset a branch to its parent’s current state',
        params: nameParams,
        response: { 200: ref('BranchInfo'), ...errors(401, 403, 404, 409) },
      },
    },
    async (request) => lifecycle.reset(request.params.name),
  );

  app.post<{ Params: NameParams; Body: { name: string } }>(
    '/v1/branches/:name/snapshots',
    {
      schema: {
        summary: 'Save a restore point',
        params: nameParams,
        body: body({ name: { type: 'string', minLength: 1, description: 'before-migration' } }, [
          'name',
        ]),
        response: { 201: ref('SnapshotInfo'), ...errors(400, 401, 404, 409) },
      },
    },
    async (request, reply) =>
      reply.code(201).send(await lifecycle.snapshot(request.params.name, request.body.name)),
  );

  app.delete<{ Params: NameParams & { snapshot: string } }>(
    '/v1/branches/:name/snapshots/:snapshot',
    {
      schema: {
        summary: 'Delete a restore point',
        params: {
          ...nameParams,
          required: ['name', 'snapshot'],
          properties: { ...nameParams.properties, snapshot: { type: 'string', minLength: 1 } },
        },
        response: { 200: ref('DeleteResult'), ...errors(401, 404, 409) },
      },
    },
    async (request) => lifecycle.deleteSnapshot(request.params.name, request.params.snapshot),
  );

  app.post<{ Params: NameParams; Body: { snapshot: string } }>(
    '/v1/branches/:name/restore',
    {
      schema: {
        summary: 'Reset a branch to one of its restore points',
        params: nameParams,
        body: body({ snapshot: { type: 'string', minLength: 1 } }, ['snapshot']),
        response: { 200: ref('BranchInfo'), ...errors(400, 401, 403, 404, 409) },
      },
    },
    async (request) => lifecycle.restore(request.params.name, request.body.snapshot),
  );

  for (const [method, on] of [
    ['PUT', true],
    ['DELETE', false],
  ] as const) {
    app.route<{ Params: NameParams }>({
      method,
      url: '/v1/branches/:name/protection',
      schema: {
        summary: on
          ? 'Protect a branch from reset, delete, expiry and gc'
          : 'Remove a branch’s protection',
        params: nameParams,
        response: { 200: ref('BranchInfo'), ...errors(401, 403, 404) },
      },
      handler: async (request) => lifecycle.protect(request.params.name, on),
    });
  }

  app.post<{ Body: { keep: string[]; patterns?: string[]; database?: string; apply?: boolean } }>(
    '/v1/gc',
    {
      schema: {
        summary: 'Delete branches whose git branch is gone',
        description:
          'Branches (matching patterns, never protected) whose names are not in keep. A dry run unless apply is true.',
        body: body(
          {
            keep: {
              type: 'array',
              items: { type: 'string' },
              description: 'Live git branch names, or lines of git ls-remote --heads.',
            },
            patterns: { type: 'array', items: { type: 'string', minLength: 1 } },
            database: { type: 'string', minLength: 1 },
            apply: { type: 'boolean', default: false },
          },
          ['keep'],
        ),
        response: { 200: ref('GcResult'), ...errors(400, 401, 404) },
      },
    },
    async (request) => lifecycle.gc(request.body),
  );

  app.get<{ Querystring: { from: string; to: string } }>(
    '/v1/diff',
    {
      schema: {
        summary: 'The schema difference between two branches',
        querystring: {
          type: 'object',
          required: ['from', 'to'],
          properties: {
            from: { type: 'string', minLength: 1 },
            to: { type: 'string', minLength: 1 },
          },
        },
        response: { 200: ref('DiffResult'), ...errors(400, 401, 404) },
      },
    },
    async (request) => lifecycle.diff(request.query.from, request.query.to),
  );

  const source = () => {
    if (!options.source) throw pgErrors.noSource();
    return options.source;
  };
  app.get(
    '/v1/source',
    {
      schema: {
        summary: 'The source and its standby',
        description:
          'Version, system identifier, streaming, positions, lag, disk, retention window, a resync under way, and a problem (failed over, re-initialised) with what to do. 404 (42704) when pgbranch follows no source.',
        response: { 200: ref('SourceStatus'), ...errors(401, 404) },
      },
    },
    async () => source().status(),
  );
  app.post(
    '/v1/source/resync',
    {
      schema: {
        summary: 'Rebuild the standby of the source',
        description:
          'A new base backup beside the standby (which serves meanwhile), then a swap of a few seconds during which connections to the read-only root get 57P03; branches keep running. Answers once the new standby runs; GET /v1/source shows how far it is meanwhile. 409 (55006) when one runs already.',
        response: { 200: ref('SourceStatus'), ...errors(401, 404, 409, 503) },
      },
    },
    async () => source().resync(),
  );

  try {
    await app.listen({ host, port, listenTextResolver: (url) => `admin API listening on ${url}` });
  } catch (error) {
    await app.close();
    throw adminListenProblem(host, port, error);
  }
  const address = app.server.address();
  const bound = typeof address === 'object' && address ? address.port : port;
  return {
    url: `${options.https ? 'https' : 'http'}://${hostInUrl(reachableHost(host))}:${bound}`,
    renewCertificate: (pem) => renewCertificate(app.server, pem),
    close: () => app.close(),
  };
}
