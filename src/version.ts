import { readFileSync } from 'node:fs';

// src/version.ts under tsx, dist/version.js when built: package.json is one level up either way.
export const version: string = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    version: string;
  }
).version;
