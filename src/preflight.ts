// What pgbranch checks before it does any work: every address it is configured to listen on is
// free, and its data directory is not another running pgbranch's. A start that can't succeed then
// fails at once, naming every conflict in one line, instead of after initialising a server and
// one conflict per attempt.
import fs from 'node:fs';
import net from 'node:net';
import type { Config } from './config/schema.js';
import { listenOnSocket } from './proxy/unix-socket.js';
import { dataDirInUse, serverOn } from './upstream/embedded.js';

/** A refusal to start, for a person: its message is one line that says what to do, no stack. */
export class CannotStart extends Error {
  override name = 'CannotStart';
}

/** A TCP address pgbranch listens on, by the key that sets its port. */
export interface Address {
  key: 'listen.port' | 'metrics.port' | 'admin.port' | 'embedded.port';
  host: string;
  port: number;
}

/** What to do when an address is taken, by key. */
const REMEDY: Record<Address['key'], string> = {
  'listen.port': 'stop what uses it or pick another with --port',
  'metrics.port':
    'pick another with --metrics-port (0 picks a free one) or turn metrics off with --metrics-enabled false',
  'admin.port':
    'pick another with --admin-port (0 picks a free one) or turn the admin API off with --admin-enabled false',
  'embedded.port': 'pick another with --embedded-port (0, the default, picks a free one)',
};

const NAME: Record<Address['key'], string> = {
  'listen.port': 'port',
  'metrics.port': 'metrics port',
  'admin.port': 'admin port',
  'embedded.port': 'embedded server port',
};

/** Why listening on `address` failed, in words for a person. */
export function listenProblem(address: Address, error: unknown): string {
  const { key, host, port } = address;
  const e = error as NodeJS.ErrnoException;
  return e.code === 'EADDRINUSE'
    ? `${NAME[key]} ${port} on ${host} is already in use: ${REMEDY[key]}`
    : `cannot listen on ${host}:${port} (${key}): ${e.message}`;
}

/**
 * Throws CannotStart naming every address that is taken (or can't be listened on) and a data
 * directory in use, all at once. Each address is tried by listening on it, and all are held until
 * every one was tried, so that two settings with the same port are found too. Ports set to 0 are
 * picked when pgbranch listens and can't conflict; neither can the Unix socket then, named after
 * the port. Changes nothing, except that a socket file left by a killed pgbranch is removed.
 */
export async function checkBeforeStart(config: Config): Promise<void> {
  const problems: string[] = [];
  const server = config.upstream ? undefined : serverOn(config.data_dir);
  if (server?.owner !== undefined) problems.push(dataDirInUse(server.owner, config.data_dir));
  const addresses: Address[] = [
    { key: 'listen.port' as const, host: config.listen.host, port: config.listen.port },
    ...(config.metrics.enabled
      ? [{ key: 'metrics.port' as const, host: config.metrics.host, port: config.metrics.port }]
      : []),
    ...(config.admin.enabled
      ? [{ key: 'admin.port' as const, host: config.admin.host, port: config.admin.port }]
      : []),
    // A server still running on the data directory holds this port; start-up stops it first.
    ...(config.upstream || server
      ? []
      : [{ key: 'embedded.port' as const, host: '127.0.0.1', port: config.embedded.port }]),
  ].filter((address) => address.port !== 0);

  const held: { address?: Address; probe: net.Server; file?: string }[] = [];
  try {
    for (const address of addresses) {
      const probe = net.createServer();
      try {
        await listen(probe, address);
        held.push({ address, probe });
      } catch (error) {
        const mine = held.find((h) => h.address?.port === address.port)?.address;
        problems.push(
          mine && (error as NodeJS.ErrnoException).code === 'EADDRINUSE'
            ? `${address.key} ${address.port} is ${mine.key} too: give each its own port`
            : listenProblem(address, error),
        );
      }
    }
    if (config.listen.socket_dir !== undefined && config.listen.port !== 0) {
      const probe = net.createServer();
      try {
        const file = await listenOnSocket(probe, config.listen.socket_dir, config.listen.port);
        held.push({ probe, file });
      } catch (error) {
        problems.push((error as Error).message);
      }
    }
  } finally {
    await Promise.all(
      held.map(
        ({ probe, file }) =>
          new Promise<void>((resolve) =>
            probe.close(() => {
              if (file) fs.rmSync(file, { force: true });
              resolve();
            }),
          ),
      ),
    );
  }
  if (problems.length > 0) throw new CannotStart(problems.join('; '));
}

function listen(server: net.Server, { host, port }: Address): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
}
