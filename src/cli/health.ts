// `pgbranch health`: the container health check. Asks the admin API's /readyz on this machine, over
// HTTPS when the settings say the admin API serves it (as the server decides, from the same file,
// PGBRANCH_* variables and flags), and exits 0 when pgbranch is ready, 1 otherwise, with one line
// saying which for `docker inspect`.
import http from 'node:http';
import https from 'node:https';
import { ConfigError, hostInUrl, loadConfig, reachableHost, servesHttps } from '../config/load.js';

/** Within Docker's default health check timeout (the Dockerfile gives 5 s). */
const TIMEOUT_MS = 4000;

export async function runHealthCheck(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  let config;
  try {
    const loaded = loadConfig(argv, env);
    if (loaded.help) {
      process.stdout.write(
        "usage: npx pgbranch health [settings flags]\n\nAsks the running pgbranch's /readyz on this machine, over HTTPS when its admin API\nserves HTTPS; exit 0 when it is ready, 1 when not. The Docker image's HEALTHCHECK.\n",
      );
      return 0;
    }
    if (loaded.command.join(' ') !== 'health') {
      process.stderr.write(`pgbranch health takes no arguments but settings flags\n`);
      return 2;
    }
    config = loaded.config;
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`pgbranch: invalid configuration\n${error.message}\n`);
    return 2;
  }
  const { enabled, host, port } = config.admin;
  if (!enabled) {
    process.stderr.write(
      'unhealthy: the admin API is turned off (admin.enabled false), so /readyz cannot be asked\n',
    );
    return 1;
  }
  if (port === 0) {
    process.stderr.write('unhealthy: admin.port is 0; give the port the server uses\n');
    return 1;
  }
  const scheme = servesHttps(config, 'admin') ? 'https' : 'http';
  const url = `${scheme}://${hostInUrl(reachableHost(host))}:${port}/readyz`;
  const answer = await ask(url);
  if (answer.status === 200) {
    process.stdout.write(`healthy: ${url} answered 200\n`);
    return 0;
  }
  process.stdout.write(
    answer.status === 0
      ? `unhealthy: ${url}: ${answer.text}\n`
      : `unhealthy: ${url} answered ${answer.status} ${answer.text}\n`,
  );
  return 1;
}

/** One GET; status 0 with the error's words when nothing answered. */
function ask(url: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve) => {
    const get = url.startsWith('https:') ? https.get : http.get;
    // The certificate is not checked: it names the hosts clients use, not loopback, and this
    // request carries no token and reads only whether pgbranch is ready.
    const request = get(
      url,
      { agent: false, rejectUnauthorized: false, timeout: TIMEOUT_MS },
      (response) => {
        let text = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => (text += chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, text: text.trim() }));
        response.on('error', (error) => resolve({ status: 0, text: error.message }));
      },
    );
    request.on('timeout', () => request.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)));
    request.on('error', (error) => resolve({ status: 0, text: error.message }));
  });
}
