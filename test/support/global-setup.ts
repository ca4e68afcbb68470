// Runs once before any test file (vitest's globalSetup): gets from the system what the suite needs
// and a fresh machine may lack, where it can, so that `npm test` runs every test there.
import { installXfsprogs } from './xfs.js';

export default async function setup(): Promise<void> {
  const done = await installXfsprogs();
  if (done) console.info(`test setup: ${done}`);
}
