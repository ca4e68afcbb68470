// pino, JSON by default and pretty on a terminal. Connections and branch creations are logged;
// queries never are. Secrets never are either: every line is scrubbed of URL passwords and of the
// secrets pgbranch was given or made, whoever wrote it (an error from a library included).
import pino, { type Logger } from 'pino';
import type { Config } from './config/schema.js';

/** What stands in for a secret in a log line. */
export const ELIDED = '***';
/**
 * Shorter secrets are not looked for as text (a password "pg" would blank out every "pg" in the
 * log); in URLs they are elided all the same.
 */
const MIN_SECRET_LENGTH = 6;
/** The password of a URL's userinfo: `scheme://user:password@`, up to the last `@` of the host. */
const URL_PASSWORD = /\b([a-z][a-z0-9+.-]*:\/\/[^\s:/@"'`]*):[^\s/"'`]*@/gi;

const SECRETS = Symbol('pgbranch.secrets');
type Scrubbed = Logger & { [SECRETS]?: Set<string> };

export function createLogger(
  config: Config['log'],
  /** Secrets known at start (passwords, tokens); hideInLogs() adds ones made later. */
  secrets: Iterable<string | undefined> = [],
): Logger {
  const hidden = new Set<string>();
  const hooks = { streamWrite: (line: string) => elideSecrets(line, hidden) };
  const pretty = config.format === 'pretty' || (config.format === 'auto' && process.stdout.isTTY);
  const log: Scrubbed = pretty
    ? pino({
        level: config.level,
        hooks,
        transport: {
          target: 'pino-pretty',
          options: { translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' },
        },
      })
    : pino({ level: config.level, hooks, base: { pid: process.pid } });
  log[SECRETS] = hidden;
  for (const secret of secrets) hideInLogs(log, secret);
  return log;
}

/**
 * Keeps `secret` out of every later line of `log` (and of its children): as written, URL-encoded,
 * and as either appears inside a JSON string. A logger not made by createLogger is left as it is.
 */
export function hideInLogs(log: Logger, secret: string | undefined): void {
  const hidden = (log as Scrubbed)[SECRETS];
  if (!hidden || secret === undefined || secret.length < MIN_SECRET_LENGTH) return;
  for (const form of [secret, encodeURIComponent(secret)]) {
    hidden.add(form);
    hidden.add(JSON.stringify(form).slice(1, -1));
  }
}

/** `text` with URL passwords and the `hidden` secrets replaced by ELIDED. */
export function elideSecrets(text: string, hidden: Iterable<string> = []): string {
  let scrubbed = text.replace(URL_PASSWORD, `$1:${ELIDED}@`);
  for (const secret of hidden) {
    if (scrubbed.includes(secret)) scrubbed = scrubbed.replaceAll(secret, ELIDED);
  }
  return scrubbed;
}

/** A URL without the password of its userinfo, for a person or a log line. */
export function withoutPassword(url: string): string {
  return url.replace(URL_PASSWORD, '$1@');
}

/** The password in a URL's userinfo, decoded; undefined when it has none or is no URL. */
export function passwordIn(url: string | undefined): string | undefined {
  if (url === undefined || !URL.canParse(url)) return undefined;
  const { password } = new URL(url);
  if (!password) return undefined;
  try {
    return decodeURIComponent(password);
  } catch {
    return password;
  }
}
