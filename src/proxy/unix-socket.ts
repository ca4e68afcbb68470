// The Unix socket that local clients reach pgbranch through (`psql -h DIR`), named as PostgreSQL
// names its own, DIR/.s.PGSQL.PORT, and open to every local user as PostgreSQL's is by default.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

/** What fits in a Unix socket address (sun_path, less its terminating zero byte). */
const MAX_SOCKET_PATH = 107;
/** As PostgreSQL's default unix_socket_permissions: anyone local may connect. */
const SOCKET_MODE = 0o777;

/** Where a PostgreSQL client looks for the server on `port` given `dir` as its host. */
export function socketPath(dir: string, port: number): string {
  return path.join(path.resolve(dir), `.s.PGSQL.${port}`);
}

/**
 * Makes `server` listen on the socket for `port` in `dir`. A socket file that nothing listens on
 * (left by a pgbranch that was killed) is replaced; one that something listens on is not, and
 * neither is anything that is not a socket. Throws an Error whose message is one line for a person.
 */
export async function listenOnSocket(
  server: net.Server,
  dir: string,
  port: number,
): Promise<string> {
  const file = socketPath(dir, port);
  if (Buffer.byteLength(file) > MAX_SOCKET_PATH) {
    throw new Error(
      `cannot listen on ${file}: a Unix socket path may be at most ${MAX_SOCKET_PATH} bytes; pick a shorter listen.socket_dir`,
    );
  }
  const stat = fs.statSync(path.dirname(file), { throwIfNoEntry: false });
  if (!stat?.isDirectory()) {
    throw new Error(
      `cannot listen on ${file}: listen.socket_dir ${path.dirname(file)} ${stat ? 'is not a directory' : 'does not exist'}`,
    );
  }
  try {
    await listen(server, file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw cannotListen(file, error);
    if (!fs.lstatSync(file, { throwIfNoEntry: false })?.isSocket()) {
      throw new Error(`cannot listen on ${file}: it exists and is not a socket; remove it`, {
        cause: error,
      });
    }
    if (await answers(file)) {
      throw new Error(
        `another process listens on ${file}: stop it, or pick another listen.socket_dir or port`,
        { cause: error },
      );
    }
    fs.rmSync(file, { force: true });
    await listen(server, file).catch((again: unknown) => {
      throw cannotListen(file, again);
    });
  }
  fs.chmodSync(file, SOCKET_MODE);
  return file;
}

function listen(server: net.Server, file: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(file, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
}

function cannotListen(file: string, error: unknown): Error {
  return new Error(`cannot listen on ${file}: ${(error as Error).message}`, { cause: error });
}

/** Whether a process accepts connections on the socket file (a stale one refuses them). */
function answers(file: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const probe = net.connect(file);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', (error: NodeJS.ErrnoException) => {
      probe.destroy();
      if (error.code === 'ECONNREFUSED' || error.code === 'ENOENT') resolve(false);
      else reject(cannotListen(file, error));
    });
  });
}
