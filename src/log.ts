// pino, JSON by default and pretty on a terminal. Connections and branch creations are logged;
// queries never are.
import pino, { type Logger } from 'pino';
import type { Config } from './config/schema.js';

export function createLogger(config: Config['log']): Logger {
  const pretty = config.format === 'pretty' || (config.format === 'auto' && process.stdout.isTTY);
  if (pretty) {
    return pino({
      level: config.level,
      transport: {
        target: 'pino-pretty',
        options: { translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' },
      },
    });
  }
  return pino({ level: config.level, base: { pid: process.pid } });
}
