// Where the branch page's files come from: the build in dist/web while it is current, else a bundle
// of web/ made in memory, and a message that says to build where there is neither.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { buildPage, pageFiles } from './page.js';

const CHECKOUT = path.resolve(import.meta.dirname, '../..');
const roots: string[] = [];

afterEach(() => {
  for (const root of roots.splice(0)) fs.rmSync(root, { recursive: true, force: true });
});

/** A root with a copy of web/ (and this checkout's node_modules, for preact and esbuild). */
function checkout(withSources = true): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbranch-page-'));
  roots.push(root);
  if (withSources)
    fs.cpSync(path.join(CHECKOUT, 'web'), path.join(root, 'web'), { recursive: true });
  fs.symlinkSync(path.join(CHECKOUT, 'node_modules'), path.join(root, 'node_modules'));
  return root;
}

const touch = (file: string, at: Date) => fs.utimesSync(file, at, at);

describe('the branch page’s files', () => {
  it('are bundled from web/ when nothing is built', async () => {
    const files = await pageFiles(checkout())();
    expect([...files.keys()].sort()).toEqual(['app.css', 'app.js', 'favicon.svg', 'index.html']);
    expect(files.get('app.js')!.toString()).toContain('pgbranch.adminToken');
    expect(files.get('index.html')!.toString()).toContain('src="/app.js"');
  });

  it('are the build while it is current, and a fresh bundle once web/ is newer', async () => {
    const root = checkout();
    const written = await buildPage(root);
    expect(written.map((file) => path.relative(root, file)).sort()).toEqual([
      'dist/web/app.css',
      'dist/web/app.js',
      'dist/web/favicon.svg',
      'dist/web/index.html',
    ]);
    const script = path.join(root, 'dist/web/app.js');
    fs.appendFileSync(script, '\n// the build\n');
    const later = new Date(Date.now() + 60_000);
    for (const file of written) touch(file, later);
    expect((await pageFiles(root)()).get('app.js')!.toString()).toContain('// the build');

    touch(path.join(root, 'web', 'table.tsx'), new Date(Date.now() + 120_000));
    const fresh = (await pageFiles(root)()).get('app.js')!.toString();
    expect(fresh).not.toContain('// the build');
    expect(fresh).toContain('pgbranch.adminToken');
  });

  it('are the build alone where there are no sources, as in the Docker image', async () => {
    const root = checkout();
    await buildPage(root);
    fs.rmSync(path.join(root, 'web'), { recursive: true });
    // Older than anything: without sources there is nothing for it to be stale against.
    for (const name of fs.readdirSync(path.join(root, 'dist/web'))) {
      touch(path.join(root, 'dist/web', name), new Date(0));
    }
    expect((await pageFiles(root)()).has('app.js')).toBe(true);
  });

  it('say to build where there is neither a build nor the sources', async () => {
    const files = pageFiles(checkout(false));
    await expect(files()).rejects.toThrow(
      /the page is not built: .*dist\/web is missing; run npm run build/,
    );
  });
});
