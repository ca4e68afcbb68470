// Limits that keep a client from abusing pgbranch: failed logins per client address
// (auth_max_failures), the time to log in (auth_timeout) and the size of what a client may send
// while logging in. Real pgbranch processes, real clients: node-postgres (from other loopback
// addresses, 127.0.0.2 and up, to count as other clients), psql through the Unix socket, and a
// raw wire client for what no driver sends.
import fs from 'node:fs';
import net from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect, connectEndedAfterEachTest, connectError, psql } from './support/clients.js';
import { startPgbranch, tempDir, type PgbranchProcess } from './support/pgbranch.js';
import { fieldsOf, PROTOCOL_3_0, startupPacket, WireClient } from './support/wire-client.js';

const MAX_FAILURES = 3;
/** Clients a test holds open are ended after it, whatever happened. */
const hold = connectEndedAfterEachTest();
/** Logins and their bounds. */
let proxy: PgbranchProcess;
let socketDir: string;
/** Branch creations and client connections, database provider. */
let quotas: PgbranchProcess;
/** Branch creations (instance provider), and client connections per branch and role. */
let instances: PgbranchProcess;

beforeAll(async () => {
  socketDir = tempDir('abuse-socket');
  // Most of a start is the embedded server's initdb: start them side by side.
  const starts = [
    startPgbranch({
      args: [
        '--auth-max-failures',
        String(MAX_FAILURES),
        '--auth-timeout',
        '1s',
        '--socket-dir',
        socketDir,
      ],
    }).then((started) => (proxy = started)),
    startPgbranch({
      args: ['--branch-max-creations-per-minute', '3', '--branch-max-per-role', '2'],
    }).then(async (started) => {
      quotas = started;
      await makeRoles(started, 'create database app');
    }),
    startPgbranch({
      args: [
        '--branch-provider',
        'instance',
        '--branch-max-creations-per-minute',
        '1',
        '--pool-max-client-connections-per-branch',
        '2',
        '--pool-max-client-connections-per-role',
        '3',
      ],
    }).then(async (started) => {
      instances = started;
      await makeRoles(
        started,
        'create database app',
        "create role carol login password 'carol-pw'",
        "create role dave login password 'dave-pw'",
      );
    }),
  ];
  const results = await Promise.allSettled(starts);
  for (const result of results) if (result.status === 'rejected') throw result.reason;
});

afterAll(async () => {
  await Promise.all([proxy?.stop(), quotas?.stop(), instances?.stop()]);
  fs.rmSync(socketDir, { recursive: true, force: true });
});

/** alice and bob, who may create databases (and so branches), and what else `sql` makes. */
async function makeRoles(target: PgbranchProcess, ...sql: string[]): Promise<void> {
  // One session for all, so that no connection limit counts a session that is still leaving.
  const admin = await connect(target.url('postgres'));
  try {
    await admin.query("create role alice login createdb password 'alice-pw'");
    await admin.query("create role bob login createdb password 'bob-pw'");
    for (const statement of sql) await admin.query(statement);
  } finally {
    await admin.end();
  }
}

/** Connects as `role` (its password is `<role>-pw`) and leaves at once: undefined, or the error. */
const visit = (target: PgbranchProcess, database: string, role: string) =>
  connectError(target.config(database, role, `${role}-pw`));

/** node-postgres settings for a client whose connection comes from `from` (a loopback address). */
function from(address: string, password: string): pg.ClientConfig {
  return {
    ...proxy.config('postgres', 'postgres', password),
    // pg connects with stream.connect(port, host); bind the socket to `address` first.
    stream: () => {
      const socket = new net.Socket();
      const connect = socket.connect.bind(socket) as (options: net.TcpNetConnectOpts) => net.Socket;
      socket.connect = ((port: number, host: string) =>
        connect({ port, host, localAddress: address })) as unknown as typeof socket.connect;
      return socket;
    },
  };
}

/** psql through pgbranch's Unix socket, with this password. */
const overSocket = (password: string) =>
  psql(
    `postgres://postgres@/postgres?host=${encodeURIComponent(socketDir)}&port=${proxy.port}`,
    'select 1',
    { args: ['-w'], env: { PGPASSWORD: password, PGPASSFILE: '/dev/null' } },
  );

describe('auth_max_failures', () => {
  it('refuses every login from an address that failed too often in a minute, the right password too, with 28000 and when to try again', async () => {
    for (let i = 0; i < MAX_FAILURES; i++) {
      expect(await connectError(from('127.0.0.2', 'wrong'))).toMatchObject({ code: '28P01' });
    }
    const blocked = await connectError(from('127.0.0.2', proxy.password));
    expect(blocked?.code).toBe('28000');
    expect(blocked?.message).toMatch(
      /^too many failed logins from 127\.0\.0\.2; try again in ([1-9]|[1-5]\d|60) s$/,
    );
  });

  it('lets other addresses in meanwhile, and lets them fail without being blocked below the limit', async () => {
    expect(await connectError(from('127.0.0.3', 'wrong'))).toMatchObject({ code: '28P01' });
    expect(await connectError(from('127.0.0.3', proxy.password))).toBeUndefined();
    expect(await connectError(from('127.0.0.1', proxy.password))).toBeUndefined();
  });

  it('logs a blocked address once a minute, not once per refused attempt', async () => {
    for (let i = 0; i < MAX_FAILURES; i++) {
      expect(await connectError(from('127.0.0.4', 'wrong'))).toMatchObject({ code: '28P01' });
    }
    for (let i = 0; i < 5; i++) {
      expect(await connectError(from('127.0.0.4', proxy.password))).toMatchObject({
        code: '28000',
      });
    }
    const lines = proxy.events('logins_blocked').filter((line) => line.address === '127.0.0.4');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 40, failures: MAX_FAILURES });
    const refusedLines = proxy
      .events('client_refused')
      .filter((line) => String(line.reason).includes('too many failed logins'));
    expect(refusedLines).toEqual([]);
  });

  it('counts every Unix socket client as one address, apart from TCP clients', async () => {
    for (let i = 0; i < MAX_FAILURES; i++) {
      const failed = await overSocket('wrong');
      expect(failed.code).not.toBe(0);
      expect(failed.stderr).toContain('password authentication failed');
    }
    const blocked = await overSocket(proxy.password);
    expect(blocked.stderr).toMatch(/too many failed logins from \[local\]; try again in \d+ s/);
    expect(await connectError(from('127.0.0.5', proxy.password))).toBeUndefined();
  });
});

describe('the login is bounded', () => {
  /** A raw client that has sent its startup packet and got the SASL challenge. */
  async function challenged(): Promise<WireClient> {
    const wire = await WireClient.open(proxy.port);
    wire.write(startupPacket(PROTOCOL_3_0, { user: 'postgres', database: 'postgres' }));
    const challenge = await wire.next();
    expect(challenge?.type).toBe('R');
    expect(challenge!.body.readInt32BE(0)).toBe(10);
    return wire;
  }

  it('refuses an oversized SASLInitialResponse with 08P01 before reading it, and closes', async () => {
    const wire = await challenged();
    const header = Buffer.alloc(5);
    header.write('p', 0, 'latin1');
    header.writeInt32BE(20_004, 1);
    wire.write(Buffer.concat([header, Buffer.from('SCRAM-SHA-256\0'), Buffer.alloc(1000)]));
    const error = await wire.next();
    expect(error?.type).toBe('E');
    expect(fieldsOf(error!)).toMatchObject({ C: '08P01', M: 'invalid message length 20004' });
    await wire.closed;
  });

  it('cuts off, without a word, a client that never sends its SASL response, at auth_timeout', async () => {
    const wire = await challenged();
    await wire.closed;
    expect(await wire.rest()).toHaveLength(0);
  }, 20_000);

  it('cuts off a client that stops halfway through SCRAM, at auth_timeout', async () => {
    const wire = await challenged();
    const response = Buffer.from('n,,n=,r=abcdefghijklmnopqrstuvwx');
    const mechanism = Buffer.from('SCRAM-SHA-256\0');
    const message = Buffer.alloc(5 + mechanism.length + 4 + response.length);
    message.write('p', 0, 'latin1');
    message.writeInt32BE(message.length - 1, 1);
    mechanism.copy(message, 5);
    message.writeInt32BE(response.length, 5 + mechanism.length);
    response.copy(message, 9 + mechanism.length);
    wire.write(message);
    const serverFirst = await wire.next();
    expect(serverFirst?.type).toBe('R');
    expect(serverFirst!.body.readInt32BE(0)).toBe(11);
    await wire.closed;
    expect(await wire.rest()).toHaveLength(0);
  }, 20_000);

  it('still serves a client that logs in promptly', async () => {
    expect(await connectError(proxy.config('postgres'))).toBeUndefined();
  });
});

describe('branch.max_creations_per_minute and branch.max_per_role (database provider)', () => {
  it('refuses a role a branch beyond branch.max_per_role with 53400 naming it, and lets it make one once it deleted one', async () => {
    expect(await visit(quotas, 'app@alice-1', 'alice')).toBeUndefined();
    expect(await visit(quotas, 'app@alice-2', 'alice')).toBeUndefined();
    const refused = await visit(quotas, 'app@alice-3', 'alice');
    expect(refused).toEqual({
      code: '53400',
      message:
        'role "alice" may not create another branch: it has made 2, the most branch.max_per_role allows',
    });
    // Connecting to a branch it made is no creation.
    expect(await visit(quotas, 'app@alice-1', 'alice')).toBeUndefined();
    // Nor does a refused one exist.
    const exists = await psql(
      quotas.url('postgres'),
      `select count(*) from pg_database where datname = 'app@alice-3'`,
    );
    expect(exists.stdout).toBe('0');
    expect(
      await psql(quotas.url('postgres'), 'drop database "app@alice-1" with (force)'),
    ).toMatchObject({ code: 0 });
    expect(await visit(quotas, 'app@alice-3', 'alice')).toBeUndefined();
  });

  it('refuses a role its creations beyond branch.max_creations_per_minute with 53400 naming it, deleted branches counted', async () => {
    // alice made three in this minute (one of them deleted since).
    expect(
      await psql(quotas.url('postgres'), 'drop database "app@alice-2" with (force)'),
    ).toMatchObject({ code: 0 });
    const refused = await visit(quotas, 'app@alice-4', 'alice');
    expect(refused?.code).toBe('53400');
    expect(refused?.message).toMatch(
      /^role "alice" may not create another branch for \d+ s: it created 3 in the last minute, the most branch.max_creations_per_minute allows$/,
    );
  });

  it('leaves other roles alone', async () => {
    expect(await visit(quotas, 'app@bob-1', 'bob')).toBeUndefined();
    expect(await visit(quotas, 'app@bob-2', 'bob')).toBeUndefined();
  });
});

describe('branch.max_creations_per_minute (instance provider)', () => {
  it('refuses a role a second instance branch in a minute with 53400 naming the limit, and makes no instance', async () => {
    expect(await visit(instances, 'app@alice-1', 'alice')).toBeUndefined();
    const refused = await visit(instances, 'app@alice-2', 'alice');
    expect(refused?.code).toBe('53400');
    expect(refused?.message).toMatch(/the most branch\.max_creations_per_minute allows$/);
    const created = instances.events('branch_created').map((line) => line.branch);
    expect(created).not.toContain('alice-2');
    expect(await visit(instances, 'app@bob-1', 'bob')).toBeUndefined();
  });
});

describe('pool.max_client_connections_per_branch and pool.max_client_connections_per_role', () => {
  const as = (database: string, role: string) =>
    instances.config(database, role, `${role}-pw`) as pg.ClientConfig;

  it('refuse a client beyond either limit with 53300 naming it, and admit again once a client left', async () => {
    const first = await hold(as('app', 'carol'));
    await hold(as('app', 'carol'));
    expect(await connectError(as('app', 'dave'))).toEqual({
      code: '53300',
      message: 'too many connections to branch "app": pool.max_client_connections_per_branch is 2',
    });
    await hold(as('postgres', 'carol'));
    expect(await connectError(as('postgres', 'carol'))).toEqual({
      code: '53300',
      message: 'too many connections for role "carol": pool.max_client_connections_per_role is 3',
    });
    // Another role on another branch is let in.
    expect(await connectError(as('postgres', 'dave'))).toBeUndefined();
    await first.end();
    // Wait until pgbranch is done with carol's client, not any other.
    await vi.waitFor(
      () =>
        expect(
          instances
            .events('client_disconnected')
            .filter((line) => line.user === 'carol' && line.database === 'app'),
        ).toHaveLength(1),
      { timeout: 10_000, interval: 20 },
    );
    const dave = await hold(as('app', 'dave'));
    expect((await dave.query('select current_user as who')).rows).toEqual([{ who: 'dave' }]);
  });
});
