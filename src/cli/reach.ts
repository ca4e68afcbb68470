// Finding the running pgbranch's admin API from the settings, and, when it can't be asked, telling
// a person what to do: start pgbranch, point at it, turn its admin API on, give the token, or
// trust its HTTPS certificate.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { hostInUrl, isLoopback, reachableHost as reachable, servesHttps } from '../config/load.js';
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
  if (!servesHttps(config, 'admin')) {
    return new AdminClient(`http://${hostPort(reachable(host), port)}`, token);
  }
  const ca = caOf(config);
  if (typeof ca === 'string') return ca;
  return new AdminClient(`https://${hostPort(reachable(host), port)}`, token, ca);
}

const CACERT =
  'PGBRANCH_ADMIN_CACERT (admin.cacert, --admin-cacert): the CA that signed the certificate in tls.cert';

/**
 * The CA to check the admin API's certificate with: admin.cacert, else the ca.crt that
 * `pgbranch tls init` writes beside the certificate, else none (the system's CAs, and
 * NODE_EXTRA_CA_CERTS). A message instead when admin.cacert can't be read.
 */
function caOf(config: Config): Buffer | undefined | string {
  const given = config.admin.cacert;
  const file = given ?? path.join(path.dirname(config.tls.cert!), 'ca.crt');
  try {
    return fs.readFileSync(file);
  } catch (error) {
    if (given === undefined) return undefined;
    const code = (error as NodeJS.ErrnoException).code;
    return `cannot read admin.cacert ${given}: ${code === 'ENOENT' ? 'no such file' : (error as Error).message}.\nGive ${CACERT}.`;
  }
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
    case 'untrusted':
      return `${cannot}.\nGive ${CACERT}; npx pgbranch tls init keeps its CA in .pgbranch/tls/ca.crt.`;
    case 'wrong-name':
      return (
        `${cannot}.\nAsk it by a name its certificate holds: admin.host (--admin-host, PGBRANCH_ADMIN_HOST) ` +
        `set to that name, or a certificate for ${new URL(error.url).hostname} (npx pgbranch tls init --host).`
      );
    case 'not-https':
      return (
        `${cannot}: the settings this command read say HTTPS (tls.cert is set), but pgbranch serves ` +
        `plain HTTP there.\nRead the settings pgbranch runs with, or set admin.tls false (PGBRANCH_ADMIN_TLS).`
      );
    case 'dropped': {
      const at = new URL(error.url);
      // An HTTPS server closes on a plain HTTP request: the settings read here lack tls.cert.
      if (at.protocol === 'http:' && (await speaksTls(at.hostname, Number(at.port)))) {
        return (
          `cannot reach pgbranch's admin API at ${error.url}: it serves HTTPS, and the settings this command read say HTTP.\n` +
          `Give the settings pgbranch runs with (tls.cert, or admin.tls true: PGBRANCH_TLS_CERT, PGBRANCH_ADMIN_TLS).`
        );
      }
      // PostgreSQL (and pgbranch's proxy, as it does) closes on an HTTP request without a word.
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

/** Whether host:port completes a TLS handshake (its certificate unchecked: only the protocol counts). */
function speaksTls(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    // ALPN http/1.1: a PostgreSQL port that takes direct TLS (pgbranch's proxy) refuses it.
    const socket = tls.connect({
      host,
      port,
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
      timeout: PROBE_MS,
    });
    const answer = (yes: boolean) => {
      socket.destroy();
      resolve(yes);
    };
    socket.once('secureConnect', () => answer(true));
    socket.once('timeout', () => answer(false));
    socket.once('error', () => answer(false));
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
