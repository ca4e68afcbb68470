// The JSON schemas of the admin API's bodies. Fastify validates requests and serializes responses
// with them, and @fastify/swagger publishes them as the OpenAPI document's components, so what the
// document says is what the server does. They mirror the types in lifecycle/model.ts.

import type { BranchInfo, SnapshotInfo } from '../lifecycle/model.js';
import type { SourceStatus } from '../source/health.js';

const nullable = (type: string) => ({ type: [type, 'null'] });

const snapshotInfo = {
  $id: 'SnapshotInfo',
  type: 'object',
  description: 'A restore point: a read-only clone of a branch at one moment.',
  required: ['name', 'of', 'physical', 'createdAt', 'sizeBytes', 'auto'],
  properties: {
    name: { type: 'string', description: 'The restore point’s own name, e.g. before-migration.' },
    of: { type: 'string', description: 'The branch it belongs to, app@feature-x.' },
    physical: { type: 'string', description: 'The database that holds it on the server.' },
    createdAt: { type: 'string', format: 'date-time' },
    sizeBytes: { type: 'integer' },
    auto: { type: 'boolean', description: 'Taken automatically (roots, when quiet).' },
  },
} as const;

const branchInfo = {
  $id: 'BranchInfo',
  type: 'object',
  required: [
    'name',
    'database',
    'branch',
    'physical',
    'parent',
    'fromSnapshot',
    'restoredFrom',
    'dataAsOf',
    'createdAt',
    'lastConnectedAt',
    'sizeBytes',
    'clone',
    'clients',
    'protected',
    'expiresAt',
    'ttlMs',
    'expiresBy',
    'origin',
    'state',
    'snapshots',
  ],
  properties: {
    name: { type: 'string', description: 'app@feature-x, or app for a root.' },
    database: { type: 'string', description: 'The root database.' },
    branch: { type: 'string', description: 'main for a root.' },
    physical: {
      type: 'string',
      description: 'The database that holds it on the server (differs from name for long names).',
    },
    parent: {
      ...nullable('string'),
      description:
        'The branch it was made from, in full (app for the root, app@develop); null for a root or a branch made outside pgbranch.',
    },
    fromSnapshot: {
      ...nullable('string'),
      description: 'The restore point of parent it was made from.',
    },
    restoredFrom: {
      ...nullable('string'),
      description: 'Its own restore point it was last restored to (until the next reset).',
    },
    dataAsOf: {
      ...nullable('string'),
      description:
        'The moment its data is of (an instance branch made from a warm standby); null elsewhere.',
    },
    createdAt: nullable('string'),
    lastConnectedAt: nullable('string'),
    sizeBytes: { type: 'integer', description: 'pg_database_size: shared blocks counted in full.' },
    clone: { type: 'boolean', description: 'Made by a copy-on-write clone.' },
    clients: { type: 'integer', description: 'Clients connected to it through pgbranch now.' },
    protected: { type: 'boolean', description: 'Roots are always protected.' },
    expiresAt: { ...nullable('string'), description: 'Absolute expiry.' },
    ttlMs: {
      ...nullable('integer'),
      description: 'Idle expiry: deleted this long after its last connection.',
    },
    expiresBy: {
      ...nullable('string'),
      description: 'When the sweeper will delete it, the earlier of both expiries.',
    },
    origin: { type: 'string', enum: ['pgbranch', 'external'] },
    state: {
      type: 'string',
      enum: ['running', 'suspended'],
      description: 'An instance branch is suspended while its instance is shut down.',
    },
    snapshots: { type: 'array', items: { $ref: 'SnapshotInfo#' } },
  },
} as const;

const sourceStatus = {
  $id: 'SourceStatus',
  type: 'object',
  description: 'The source pgbranch follows (source.url) and its local standby.',
  required: [
    'source',
    'version',
    'systemId',
    'connected',
    'receiveLsn',
    'replayLsn',
    'sourceLsn',
    'lagBytes',
    'lagSeconds',
    'problem',
    'dataDir',
    'diskBytes',
    'window',
    'resync',
  ],
  properties: {
    source: { type: 'string', description: 'user@host:port, never the password.' },
    version: { type: 'string', description: 'The source’s server_version.' },
    systemId: { type: 'string', description: 'The system identifier the standby follows.' },
    connected: { type: 'boolean', description: 'The standby streams from the source now.' },
    receiveLsn: { ...nullable('string'), description: 'WAL received by the standby.' },
    replayLsn: { ...nullable('string'), description: 'WAL replayed by the standby.' },
    sourceLsn: {
      ...nullable('string'),
      description: 'The source’s current WAL position; null when it can’t be reached.',
    },
    lagBytes: {
      ...nullable('integer'),
      description: 'sourceLsn less replayLsn; null when the source can’t be reached.',
    },
    lagSeconds: {
      ...nullable('number'),
      description:
        '0 when caught up; else the age of the newest transaction replayed; with the source unreachable, the time since the standby last heard from it.',
    },
    problem: {
      ...nullable('string'),
      description:
        'Why the standby can’t follow the source (failed over, re-initialised, WAL or slot gone) and what to run; null when nothing is wrong.',
    },
    dataDir: { type: 'string', description: 'The standby’s data directory.' },
    diskBytes: { type: 'integer', description: 'Disk its files take.' },
    window: {
      type: ['object', 'null'],
      description:
        'The oldest and newest moment a branch of the source can be made at; null where no restore points are kept.',
      required: ['from', 'to'],
      properties: {
        from: { type: 'string', format: 'date-time' },
        to: { type: 'string', format: 'date-time' },
      },
    },
    resync: {
      type: ['object', 'null'],
      description: 'A resync under way (POST /v1/source/resync); null when none runs.',
      required: ['phase', 'startedAt', 'bytes', 'totalBytes', 'rate', 'secondsLeft'],
      properties: {
        phase: { type: 'string', enum: ['backup', 'swap'] },
        startedAt: { type: 'string', format: 'date-time' },
        bytes: { type: 'integer' },
        totalBytes: nullable('integer'),
        rate: { type: 'number', description: 'Bytes per second.' },
        secondsLeft: nullable('number'),
      },
    },
  },
} as const;

/**
 * Fastify drops what a response schema does not list: a field added to BranchInfo or SnapshotInfo
 * and not here would vanish from the API. These fail to compile until both agree.
 */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
export const schemasMatchModel: [
  Same<keyof typeof branchInfo.properties, keyof BranchInfo>,
  Same<(typeof branchInfo.required)[number], keyof BranchInfo>,
  Same<keyof typeof snapshotInfo.properties, keyof SnapshotInfo>,
  Same<(typeof snapshotInfo.required)[number], keyof SnapshotInfo>,
  Same<keyof typeof sourceStatus.properties, keyof SourceStatus>,
  Same<(typeof sourceStatus.required)[number], keyof SourceStatus>,
] = [true, true, true, true, true, true];

const branchList = {
  $id: 'BranchList',
  type: 'object',
  required: ['branches'],
  properties: { branches: { type: 'array', items: { $ref: 'BranchInfo#' } } },
} as const;

const createResult = {
  $id: 'CreateResult',
  type: 'object',
  required: ['branch', 'created', 'ms'],
  properties: {
    branch: { $ref: 'BranchInfo#' },
    created: {
      type: 'boolean',
      description: 'False when the branch existed already with the same parent.',
    },
    ms: { type: 'number' },
  },
} as const;

const deleteResult = {
  $id: 'DeleteResult',
  type: 'object',
  required: ['deleted'],
  properties: {
    deleted: {
      type: 'array',
      items: { type: 'string' },
      description: 'Branches and restore points dropped, children first.',
    },
  },
} as const;

const gcResult = {
  $id: 'GcResult',
  type: 'object',
  required: ['deleted', 'kept', 'applied'],
  properties: {
    deleted: {
      type: 'array',
      items: { type: 'string' },
      description: 'Deleted (applied) or to be deleted (dry run).',
    },
    kept: {
      type: 'array',
      description: 'Matched but kept: protected, or with children that are kept.',
      items: {
        type: 'object',
        required: ['name', 'reason'],
        properties: { name: { type: 'string' }, reason: { type: 'string' } },
      },
    },
    applied: { type: 'boolean' },
  },
} as const;

const diffItem = {
  type: 'object',
  required: ['kind', 'name'],
  properties: {
    kind: { type: 'string' },
    name: { type: 'string' },
    detail: { type: 'string' },
    before: { type: 'string' },
    after: { type: 'string' },
  },
} as const;

const diffResult = {
  $id: 'DiffResult',
  type: 'object',
  required: ['from', 'to', 'diff', 'text'],
  properties: {
    from: { type: 'string' },
    to: { type: 'string' },
    diff: {
      type: 'object',
      required: ['added', 'removed', 'changed'],
      properties: {
        added: { type: 'array', items: diffItem },
        removed: { type: 'array', items: diffItem },
        changed: { type: 'array', items: diffItem },
      },
    },
    text: { type: 'string', description: 'The diff as a person reads it.' },
  },
} as const;

const errorBody = {
  $id: 'Error',
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: {
        code: { type: 'string', description: 'SQLSTATE, as the SQL console would report it.' },
        message: { type: 'string' },
        detail: { type: 'string' },
        hint: { type: 'string' },
      },
    },
  },
} as const;

/** Every shared schema, to register with fastify.addSchema before the routes that refer to them. */
export const sharedSchemas = [
  snapshotInfo,
  branchInfo,
  branchList,
  createResult,
  deleteResult,
  gcResult,
  diffResult,
  sourceStatus,
  errorBody,
];

/**
 * An idle expiry as a request gives it: a duration such as 7d, or a number of milliseconds. One
 * `type` list rather than anyOf, so that validation leaves a number a number and a string a string.
 */
export const ttlValue = {
  type: ['string', 'integer'],
  minimum: 0,
  description:
    'A duration (500ms, 30s, 5m, 2h, 7d; a string of digits is seconds) or a number of milliseconds.',
} as const;
