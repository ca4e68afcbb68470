#!/usr/bin/env node
// Runs the compiled build (dist/, from `npm run build`) when there is one at least as new as every
// source file: it starts faster and needs less memory (no TypeScript loader thread). Otherwise it
// runs the TypeScript entry point through tsx, so `npx pgbranch` needs no build step.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const root = path.resolve(import.meta.dirname, '..');
const built = path.join(root, 'dist', 'main.js');

/** The newest modification time of a .ts file under `dir` that the build compiles (not tests). */
function newestSource(dir) {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestSource(file));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts')) {
      newest = Math.max(newest, fs.statSync(file).mtimeMs);
    }
  }
  return newest;
}

function builtIsCurrent() {
  let builtAt;
  try {
    builtAt = fs.statSync(built).mtimeMs;
  } catch {
    return false;
  }
  const sources = path.join(root, 'src');
  return !fs.existsSync(sources) || builtAt >= newestSource(sources);
}

if (builtIsCurrent()) {
  await import(pathToFileURL(built).href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/main.ts');
}
