// Runs the scenario with one driver against one target, step by step, and keeps what each step
// gave. The harness itself does the waiting for a state (poll, settle), and gives up on a step that
// does not end: that step is a `timeout`, and its client is cut off for the rest of the run.
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import type { ConnectionInfo, Driver, DriverOutcome } from './drivers/driver.js';
import { digestOf, normaliseResult, type Outcome } from './outcome.js';
import { SCENARIO, type Action, type ClientAction, type Database, type Step } from './scenario.js';

/** One driver's databases on one target. */
export interface Place {
  connection(database: Database): ConnectionInfo;
  /** The database's name on the server, as pg_stat_activity shows it. */
  stored(database: Database): string;
  /** What the scenario's placeholders stand for in this run. */
  names: { scratch: string; scratch2: string; copy: string; gid: string };
}

const WAIT_FOR_STATE_MS = 5_000;

export async function runScenario(
  driver: Driver,
  place: Place,
  /** Superuser sessions on the server, bypassing pgbranch, for `settle`. */
  admin: pg.Pool,
  stepTimeoutMs: number,
): Promise<Map<string, Outcome>> {
  const session = await driver.open({ stepTimeoutMs });
  const outcomes = new Map<string, Outcome>();
  const cutOff = new Set<string>();

  const perform = async (step: Step, action: Action): Promise<Outcome> => {
    switch (action.do) {
      case 'connect': {
        const options = action.preparedMax === undefined ? {} : { preparedMax: action.preparedMax };
        return normalise(
          await session.connect(step.client, place.connection(action.database), options),
        );
      }
      case 'disconnect':
        return normalise(await session.disconnect(step.client));
      case 'poll': {
        const deadline = Date.now() + WAIT_FOR_STATE_MS;
        const until = JSON.stringify(action.until);
        for (;;) {
          const outcome = normalise(await session.run(step.client, fill(action.query, place)));
          const rows = outcome.results?.[0]?.rows;
          if (JSON.stringify(rows) === until || Date.now() > deadline) return outcome;
          await sleep(25);
        }
      }
      case 'settle':
        return settle(admin, place.stored(action.database));
      default: {
        const filled = fill(action, place);
        return normalise(await session.run(step.client, filled), digestWanted(filled));
      }
    }
  };

  try {
    for (const step of SCENARIO) {
      if (step.only && !step.only.includes(driver.name)) continue;
      if (cutOff.has(step.client)) {
        outcomes.set(step.id, {
          error: 'client:cut-off',
          message: 'an earlier step of this client did not end',
        });
        continue;
      }
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), stepTimeoutMs);
      });
      const outcome = await Promise.race([perform(step, step.action), timedOut]);
      clearTimeout(timer);
      if (outcome) {
        outcomes.set(step.id, outcome);
      } else {
        session.abandon(step.client);
        cutOff.add(step.client);
        outcomes.set(step.id, {
          error: 'timeout',
          message: `no answer within ${stepTimeoutMs} ms`,
        });
      }
    }
  } finally {
    await session.close();
  }
  return outcomes;
}

/** Waits until no client session of the database is busy (pgbranch's reset of one, say). */
async function settle(admin: pg.Pool, database: string): Promise<Outcome> {
  const deadline = Date.now() + WAIT_FOR_STATE_MS;
  for (;;) {
    const { rows } = await admin.query<{ busy: number }>(
      `select count(*)::int as busy from pg_stat_activity
        where datname = $1 and backend_type = 'client backend' and state is distinct from 'idle'`,
      [database],
    );
    if (rows[0]!.busy === 0) return {};
    if (Date.now() > deadline) {
      return { error: 'client:busy', message: `${rows[0]!.busy} sessions of ${database} busy` };
    }
    await sleep(25);
  }
}

function fill<T extends ClientAction>(action: T, place: Place): T {
  const replace = (text: string) =>
    text.replace(/\{(scratch2|scratch|copy|gid)\}/g, (_, key: keyof Place['names']) => {
      return place.names[key];
    });
  const filled = { ...action };
  if ('sql' in filled) filled.sql = replace(filled.sql);
  return filled;
}

function digestWanted(action: ClientAction): boolean {
  return 'digest' in action && action.digest === true;
}

function normalise(outcome: DriverOutcome, digest = false): Outcome {
  const { results, pipeline, copied, ...rest } = outcome;
  const normal: Outcome = rest;
  if (results) normal.results = results.map((r) => normaliseResult(r, digest));
  if (pipeline) normal.pipeline = pipeline.map((o) => normalise(o));
  if (copied !== undefined) {
    normal.copied = digest ? digestOf(copied.split('\n').length - 1, copied) : copied;
  }
  return normal;
}
