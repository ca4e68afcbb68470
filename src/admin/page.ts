// The branch page: the files of web/, bundled by esbuild into dist/web by `npm run build`, served
// on the admin port at /. A checkout run from its sources (tsx, no build, or a build older than
// web/) bundles web/ in memory on the first request instead, so the page never needs a build step
// in development and never goes stale; the Docker image has dist/web and no web/ at all.
import fs from 'node:fs';
import path from 'node:path';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { errorBody } from './error-status.js';

/** The checkout or installation: web/ holds the sources, dist/web the build. */
const ROOT = path.resolve(import.meta.dirname, '../..');
const sources = (root: string) => path.join(root, 'web');
const built = (root: string) => path.join(root, 'dist', 'web');

/** Files of web/ served as they are; the rest is bundled from the entry point. */
const STATIC_FILES = ['index.html', 'favicon.svg'];
const ENTRY = 'app.tsx';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

/**
 * The page loads only its own files and talks only to this server: no inline script or style, so
 * nothing injected into a branch name or an error message can run, and no CDN.
 */
const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

export type PageFiles = Map<string, Buffer>;

/** esbuild's options for the page, one place for the build and the in-memory bundle. */
async function bundle(root: string): Promise<PageFiles> {
  const esbuild = await import('esbuild');
  const result = await esbuild.build({
    entryPoints: [path.join(sources(root), ENTRY)],
    bundle: true,
    minify: true,
    format: 'esm',
    target: 'es2022',
    jsx: 'automatic',
    jsxImportSource: 'preact',
    outdir: built(root),
    write: false,
    logLevel: 'silent',
  });
  const files: PageFiles = new Map();
  for (const out of result.outputFiles)
    files.set(path.basename(out.path), Buffer.from(out.contents));
  for (const name of STATIC_FILES) {
    files.set(name, fs.readFileSync(path.join(sources(root), name)));
  }
  return files;
}

/** Writes the bundled page into dist/web (npm run build). */
export async function buildPage(root = ROOT): Promise<string[]> {
  const files = await bundle(root);
  const dir = built(root);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, contents] of files) fs.writeFileSync(path.join(dir, name), contents);
  return [...files.keys()].map((name) => path.join(dir, name));
}

function newestUnder(dir: string): number {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestUnder(file) : fs.statSync(file).mtimeMs);
  }
  return newest;
}

/** dist/web when it is there and no older than web/ (or there is no web/), else undefined. */
function builtFiles(root: string): PageFiles | undefined {
  const dir = built(root);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return undefined;
  }
  if (!names.includes('index.html') || !names.includes('app.js')) return undefined;
  if (fs.existsSync(sources(root))) {
    const builtAt = Math.min(...names.map((name) => fs.statSync(path.join(dir, name)).mtimeMs));
    if (builtAt < newestUnder(sources(root))) return undefined;
  }
  return new Map(names.map((name) => [name, fs.readFileSync(path.join(dir, name))]));
}

/** Where the page's files come from, read or bundled once per process. */
export function pageFiles(root = ROOT): () => Promise<PageFiles> {
  let files: Promise<PageFiles> | undefined;
  return () => {
    if (files === undefined) {
      files = (async () => {
        const ready = builtFiles(root);
        if (ready) return ready;
        if (!fs.existsSync(sources(root))) {
          throw new Error(`the page is not built: ${built(root)} is missing; run npm run build`);
        }
        return bundle(root);
      })();
      // A failed bundle (a syntax error being fixed) is tried again on the next request.
      files.catch(() => (files = undefined));
    }
    return files;
  };
}

/** Serves the page's files, without the token: they hold nothing but code. */
export function servePage(app: FastifyInstance): void {
  const files = pageFiles();
  const send = (name: string) => async (_request: unknown, reply: FastifyReply) => {
    let all: PageFiles;
    try {
      all = await files();
    } catch (error) {
      return reply
        .code(503)
        .send(errorBody('XX000', `cannot serve the branch page: ${(error as Error).message}`));
    }
    const contents = all.get(name);
    if (contents === undefined) {
      return reply.code(404).send(errorBody('0A000', `no file ${name} in the branch page`));
    }
    return reply
      .headers({
        ...SECURITY_HEADERS,
        'content-type': TYPES[path.extname(name)] ?? 'application/octet-stream',
        // Small files, and a build may change them under the same name: always ask again.
        'cache-control': 'no-cache',
      })
      .send(contents);
  };
  const route = { config: { public: true }, schema: { hide: true } };
  app.get('/', route, send('index.html'));
  for (const name of ['app.js', 'app.css', 'favicon.svg']) app.get(`/${name}`, route, send(name));
}
