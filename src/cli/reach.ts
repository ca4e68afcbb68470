// Finding the running pgbranch's admin API from the settings, and, when it can't be asked, telling
// a person what to do: start pgbranch, point at it, turn its admin API on, or give the token.
import net from 'node:net';
import { hostInUrl, isLoopback, reachableHost as reachable } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { AdminClient, type Unreachable } from './client.js';

/** How long the check of the proxy port may take, on a path that has failed already. */
const PROBE_MS = 1000;

const WHERE =
  'admin.host and admin.port (--admin-host, --admin-port, PGBRANCH_ADMIN_HOST, PGBRANCH_ADMIN_PORT), ' +
  "as the admin: line of pgbranch's banner shows";

const TOKEN =
  'Give the token pgbranch was started with: PGBRANCH_ADMIN_TOKEN (admin.token, --admin-token).';

/** loadConfig's names for where settings came from, besides the file's name. */
const SOURCE_NAMES: Record<string, string> = {
  environment: 'PGBRANCH_* variables',
  flags: 'flags',
};

const hostPort = (host: string, port: number) => `${hostInUrl(host)}:${port}`;

/**
 * The client for the configured admin API, or what to tell a person when the settings say there
 * is none to ask. `sources` are where the settings came from (a file, environment, flags).
 */
export function clientFor(config: Config, sources: string[]): AdminClient | string {
  const { enabled, host, port, token } = config.admin;
  if (!enabled) {
    const read = sources.map((source) => SOURCE_NAMES[source] ?? source).join(' and ');
    return (
      `the admin API is turned off (admin.enabled is false in the settings read from ${read}), ` +
      `and npx pgbranch branch and gc work through it.\n` +
      `Take admin.enabled: false out of those settings (the API is on by default) and restart ` +
      `pgbranch with them.`
    );
  }
  if (port === 0) {
    return (
      'admin.port is 0, so the server picked a free port at start: give the port its banner ' +
      'shows (admin: line) with --admin-port or PGBRANCH_ADMIN_PORT.'
    );
  }
  return new AdminClient(`http://${hostPort(reachable(host), port)}`, token);
}

/** What went wrong and what to do about it, for stderr after `pgbranch: `. */
export async function explainUnreachable(error: Unreachable, config: Config): Promise<string> {
  const cannot = `cannot reach pgbranch's admin API at ${error.url}: ${error.message}`;
  switch (error.kind) {
    case 'no-token':
    case 'wrong-token':
      return `cannot use pgbranch's admin API at ${error.url}: ${error.message}.\n${TOKEN}`;
    case 'foreign':
      return `${cannot}, so it is not pgbranch's admin API.\nSay where pgbranch's admin API is: ${WHERE}.`;
    case 'dropped': {
      // PostgreSQL (and pgbranch's proxy, as it does) closes on an HTTP request without a word.
      const at = new URL(error.url);
      if (await speaksPostgres(at.hostname, Number(at.port))) {
        return (
          `cannot reach pgbranch's admin API at ${error.url}: it speaks PostgreSQL's protocol ` +
          `(a PostgreSQL server, or pgbranch's proxy port), so it is not pgbranch's admin API.\n` +
          `Say where pgbranch's admin API is: ${WHERE}.`
        );
      }
      return (
        `${cannot} (pgbranch stopped, or something between cut it off).\n` +
        `What it was asked may have happened or still be under way: look with npx pgbranch branch list once it runs.`
      );
    }
    case 'network':
      return `${cannot}.\nSay where pgbranch runs: ${WHERE}.`;
    case 'refused': {
      // pgbranch may be running with its admin API turned off or elsewhere: its proxy port says,
      // when it is on this machine, as the admin API was looked for here.
      const { host, port } = config.listen;
      if (port === 0 || !isLoopback(reachable(config.admin.host))) {
        return `${cannot}.\nStart pgbranch (npm start, or npx pgbranch), or say where it runs: ${WHERE}.`;
      }
      const proxy = hostPort(reachable(host), port);
      if (!(await listening(reachable(host), port))) {
        return (
          `${cannot}, nor on the proxy port ${proxy}.\n` +
          `Start pgbranch (npm start, or npx pgbranch), or say where it runs: ${WHERE}.`
        );
      }
      return (
        `${cannot}, though something is on the proxy port ${proxy}.\n` +
        `If that is pgbranch, it serves no admin API (admin.enabled is false) or serves it ` +
        `elsewhere: restart it with admin.enabled true, or say where the API is: ${WHERE}.`
      );
    }
  }
}

/** Whether host:port answers an SSLRequest as a PostgreSQL server does, with one byte N or S. */
function speaksPostgres(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port, timeout: PROBE_MS });
    const answer = (postgres: boolean) => {
      socket.destroy();
      resolve(postgres);
    };
    socket.once('connect', () => {
      const request = Buffer.alloc(8);
      request.writeInt32BE(8, 0);
      request.writeInt32BE(80877103, 4);
      socket.write(request);
    });
    socket.once('data', (chunk: Buffer) =>
      answer(chunk.length === 1 && (chunk[0] === 0x4e || chunk[0] === 0x53)),
    );
    socket.once('timeout', () => answer(false));
    socket.once('error', () => answer(false));
    socket.once('close', () => answer(false));
  });
}

/** Whether anything accepts a TCP connection at host:port. */
function listening(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port, timeout: PROBE_MS });
    const answer = (open: boolean) => {
      socket.destroy();
      resolve(open);
    };
    socket.once('connect', () => answer(true));
    socket.once('timeout', () => answer(false));
    socket.once('error', () => answer(false));
  });
}
