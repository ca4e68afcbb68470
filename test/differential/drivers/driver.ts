// What the harness asks of a client library: connect a named client, run one action for it,
// disconnect it. Each driver answers with what it got, as JSON-safe values; the harness normalises.
import type { ClientAction, DriverName } from '../scenario.js';
import type { Outcome, RawResult } from '../outcome.js';

export interface ConnectionInfo {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
}

/** An outcome before normalising: results as the driver decoded them. */
export type DriverOutcome = Omit<Outcome, 'results' | 'pipeline'> & {
  results?: RawResult[];
  pipeline?: DriverOutcome[];
};

export interface DriverSession {
  connect(
    client: string,
    connection: ConnectionInfo,
    options: { preparedMax?: number },
  ): Promise<DriverOutcome>;
  run(client: string, action: ClientAction): Promise<DriverOutcome>;
  disconnect(client: string): Promise<DriverOutcome>;
  /** Gives up on a client whose step did not end in time: its connection is cut. */
  abandon(client: string): void;
  /** Ends every client still connected. */
  close(): Promise<void>;
}

export interface Driver {
  name: DriverName;
  open(options: { stepTimeoutMs: number }): Promise<DriverSession>;
}

export const NOTIFICATION_WAIT_MS = 5_000;

export function notConnected(client: string): DriverOutcome {
  return { error: 'client:not-connected', message: `${client} is not connected` };
}

/** Notifications a client received and has not yet looked at, and a wait for the next. */
export class Notifications {
  private readonly queue: { channel: string; payload: string }[] = [];
  private wake: (() => void) | undefined;

  push(notification: { channel: string; payload: string }): void {
    this.queue.push(notification);
    this.wake?.();
  }

  async next(channel: string): Promise<DriverOutcome> {
    const deadline = Date.now() + NOTIFICATION_WAIT_MS;
    for (;;) {
      const i = this.queue.findIndex((n) => n.channel === channel);
      if (i >= 0) return { notification: this.queue.splice(i, 1)[0]! };
      const left = deadline - Date.now();
      if (left <= 0) {
        return {
          error: 'client:no-notification',
          message: `nothing on ${channel} within ${NOTIFICATION_WAIT_MS} ms`,
        };
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }
}

/** Runs one step for a client, with the notices that arrive meanwhile, and any error caught. */
export async function observed(
  state: { notices: string[] },
  work: () => Promise<DriverOutcome>,
  onError: (error: unknown) => DriverOutcome,
): Promise<DriverOutcome> {
  state.notices = [];
  let outcome: DriverOutcome;
  try {
    outcome = await work();
  } catch (error) {
    outcome = onError(error);
  }
  return state.notices.length > 0 ? { ...outcome, notices: state.notices } : outcome;
}

export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
