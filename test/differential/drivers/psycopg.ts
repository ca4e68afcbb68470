// psycopg 3 as a differential driver: a Python process (psycopg_runner.py) per run, asked one step
// at a time over its stdin and stdout. The Python is Debian's (python3-psycopg): another python3 on
// the PATH (pyenv, say) may not see Debian's packages, so the first that can import psycopg is used.
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import type { ClientAction } from '../scenario.js';
import type { ConnectionInfo, Driver, DriverOutcome, DriverSession } from './driver.js';

const RUNNER = path.join(import.meta.dirname, 'psycopg_runner.py');

let python: string | undefined;

/** The first Python that imports psycopg 3; throws, saying what to install, when none does. */
export function psycopgPython(): string {
  if (python) return python;
  const candidates = [process.env.PGBRANCH_TEST_PYTHON, '/usr/bin/python3', 'python3'];
  for (const candidate of candidates) {
    if (!candidate) continue;
    try {
      execFileSync(candidate, ['-c', 'import psycopg'], { stdio: 'ignore' });
      return (python = candidate);
    } catch {
      // not this one
    }
  }
  throw new Error(
    'no Python here imports psycopg 3: apt-get install -y python3-psycopg (or set PGBRANCH_TEST_PYTHON)',
  );
}

export const psycopg: Driver = {
  name: 'psycopg',
  open: ({ stepTimeoutMs }) => Promise.resolve(new PsycopgSession(stepTimeoutMs)),
};

class PsycopgSession implements DriverSession {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly answers: ((line: string) => void)[] = [];
  private stderr = '';
  private exited = false;
  /** One request at a time: the runner answers in order, one line each. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(stepTimeoutMs: number) {
    // The runner times out a step itself a little before the harness would give up on it.
    const own = Math.max(1, Math.floor(stepTimeoutMs / 1000) - 2);
    this.child = spawn(psycopgPython(), ['-u', RUNNER, String(own)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stderr.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    this.child.once('exit', () => {
      this.exited = true;
      for (const answer of this.answers.splice(0)) answer('');
    });
    readline.createInterface({ input: this.child.stdout }).on('line', (line) => {
      this.answers.shift()?.(line);
    });
  }

  private ask(request: object): Promise<DriverOutcome> {
    const asked = this.queue.then(
      () =>
        new Promise<DriverOutcome>((resolve) => {
          if (this.exited) {
            resolve({ error: 'client:runner-gone', message: this.stderr.slice(-2000) });
            return;
          }
          this.answers.push((line) =>
            resolve(
              line
                ? (JSON.parse(line) as DriverOutcome)
                : { error: 'client:runner-gone', message: this.stderr.slice(-2000) },
            ),
          );
          this.child.stdin.write(`${JSON.stringify(request)}\n`);
        }),
    );
    this.queue = asked;
    return asked;
  }

  connect(
    client: string,
    connection: ConnectionInfo,
    options: { preparedMax?: number },
  ): Promise<DriverOutcome> {
    return this.ask({ op: 'connect', client, connection, preparedMax: options.preparedMax });
  }

  run(client: string, action: ClientAction): Promise<DriverOutcome> {
    return this.ask({ op: 'run', client, action });
  }

  disconnect(client: string): Promise<DriverOutcome> {
    return this.ask({ op: 'disconnect', client });
  }

  /** The runner gives up on a step itself; past that, it is stuck, and is stopped. */
  abandon(): void {
    this.child.kill('SIGKILL');
  }

  async close(): Promise<void> {
    if (this.exited) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  }
}
