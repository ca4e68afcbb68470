// Undo what the benchmark set up (processes, mounts, files, databases), last first, exactly once,
// whether it ends normally, fails, or is interrupted with Ctrl-C.
import { progress } from './report.js';

interface Task {
  label: string;
  run: () => Promise<unknown> | unknown;
}

export class Cleanup {
  private readonly tasks: Task[] = [];
  private running: Promise<void> | undefined;
  /** The signal that started the cleanup, if one did: errors after it are its echo. */
  interruptedBy: NodeJS.Signals | undefined;

  /**
   * Registers an undo step; the returned function runs it now (once) instead of at the end. Once
   * the whole cleanup has begun (Ctrl-C), it only waits for it, so steps still run in order.
   */
  add(label: string, run: Task['run']): () => Promise<void> {
    const task: Task = { label, run };
    this.tasks.push(task);
    return async () => {
      if (this.running) return this.running;
      const index = this.tasks.indexOf(task);
      if (index < 0) return;
      this.tasks.splice(index, 1);
      await runTask(task);
    };
  }

  run(): Promise<void> {
    return (this.running ??= (async () => {
      while (this.tasks.length > 0) await runTask(this.tasks.pop()!);
    })());
  }

  /** On SIGINT or SIGTERM: clean up, then exit. A second Ctrl-C kills at once. */
  runOnSignals(): void {
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      process.once(signal, () => {
        this.interruptedBy = signal;
        progress(`${signal}: cleaning up (press Ctrl-C again to abandon the cleanup)`);
        void this.run().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
      });
    }
  }
}

async function runTask(task: Task): Promise<void> {
  try {
    await task.run();
  } catch (error) {
    progress(`cleanup: could not ${task.label}: ${(error as Error).message}`);
  }
}
