// The branch page at / of the admin port, in a real browser (Debian's chromium through
// playwright-core) against a real pgbranch: branches made by psql connects show in the tree and
// arrive live, and what the page does (create, reset, restore points, delete, diff) is what psql
// then sees.
import { execFile } from 'node:child_process';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BranchInfo } from '../src/lifecycle/model.js';
import { psql } from './support/clients.js';
import { startBrowser, type TestBrowser } from './support/browser.js';
import { PGBRANCH_BIN, startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

let proxy: PgbranchProcess;
let browser: TestBrowser;

beforeAll(async () => {
  [proxy, browser] = await Promise.all([startPgbranch(), startBrowser()]);
  expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
  const made = await psql(
    proxy.url('app'),
    'create table users (id int); insert into users values (1)',
  );
  expect(made.code, made.stderr).toBe(0);
});

afterAll(async () => {
  await browser?.close();
  await proxy?.stop();
});

const PASSWORD_ENV = () => ({ PGPASSWORD: proxy.password });

/** Connects with psql as a client would, which makes the branch on first connect. */
async function connect(database: string, sql = 'select current_database()') {
  const result = await psql(proxy.url(database), sql);
  expect(result.code, result.stderr).toBe(0);
  return result.stdout;
}

/** Makes `name` from `parent` by connecting, as a client does; an existing branch stays. */
async function branch(name: string, parent: string) {
  const made = await psql(proxy.url(name), 'select 1', {
    env: { PGOPTIONS: `-c pgbranch.parent=${parent}` },
  });
  expect(made.code, made.stderr).toBe(0);
}

/** The CLI's `branch show NAME` as a person reads it. */
function cliShow(name: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [PGBRANCH_BIN, 'branch', 'show', name],
      {
        env: { ...process.env, PGBRANCH_ADMIN_PORT: new URL(proxy.ready.adminUrl!).port },
        timeout: 60_000,
      },
      (error, stdout, stderr) => (error ? reject(new Error(stderr)) : resolve(stdout)),
    );
  });
}

async function apiBranch(name: string): Promise<BranchInfo> {
  const response = await fetch(`${proxy.ready.adminUrl}/v1/branches/${encodeURIComponent(name)}`);
  expect(response.status).toBe(200);
  return (await response.json()) as BranchInfo;
}

async function openPage(): Promise<Page> {
  const page = await browser.page();
  await page.goto(proxy.ready.adminUrl + '/');
  await page.locator('tr[data-branch="app"]').waitFor();
  return page;
}

const row = (page: Page, name: string) => page.locator(`tr[data-branch="${name}"]`);
const dialog = (page: Page) => page.locator('dialog[open]');
/** Waits for the page to say `text` after an action. */
const notice = (page: Page, text: string) => page.locator('.notice', { hasText: text }).waitFor();

async function openDetails(page: Page, name: string) {
  await row(page, name).locator('button.name').click();
  await page.locator('tr.details code.conn').waitFor();
}

describe('the branch page', () => {
  it('draws the branches that psql connects made as a tree, children under their parents', async () => {
    await connect('app@develop');
    await branch('app@feature/login', 'develop');
    await connect('app@pr-7');
    const page = await openPage();
    await row(page, 'app@feature/login').waitFor();
    const names = await page.locator('tr.branch button.name').allTextContents();
    expect(names).toEqual(['app', 'app@develop', 'app@feature/login', 'app@pr-7']);
    const guides = await page.locator('tr.branch .guide').allTextContents();
    // app@feature/login is drawn one level below app@develop, which is drawn below app.
    expect(guides).toEqual(['', '├── ', '│   └── ', '└── ']);
    const cells = await row(page, 'app@develop').locator('td').allTextContents();
    expect(cells).toContain('copy');
    expect(await row(page, 'app').textContent()).toContain('protected');
    expect(browser.errors).toEqual([]);
  });

  it('shows a branch made by a connect, and a change made in the console, while it is open, without a reload', async () => {
    const page = await openPage();
    await page.evaluate(() => Object.assign(window, { notReloaded: true }));
    await page.locator('.live.on').waitFor();
    await connect('app@live-1');
    const made = Date.now();
    await row(page, 'app@live-1').waitFor();
    const ms = Date.now() - made;
    expect(await page.evaluate(() => (window as { notReloaded?: boolean }).notReloaded)).toBe(true);
    console.log(`live update: the branch a psql connect made showed ${ms} ms after psql ended`);
    // A change through the SQL console, which makes no branch, shows too.
    const protectedRow = row(page, 'app@live-1').filter({ hasText: 'protected' });
    expect(await protectedRow.count()).toBe(0);
    expect(await psql(proxy.url('pgbranch'), 'PROTECT BRANCH app@live-1')).toMatchObject({
      code: 0,
    });
    await protectedRow.waitFor();
    expect(await page.evaluate(() => (window as { notReloaded?: boolean }).notReloaded)).toBe(true);
  });

  it('creates a branch with an expiry that psql then connects to with the connection string it shows', async () => {
    await connect('app@develop');
    const page = await openPage();
    await page.getByRole('button', { name: 'New branch' }).first().click();
    const form = dialog(page);
    await form.locator('select[name=parent]').selectOption('app@develop');
    await form.locator('input[name=name]').fill('from-page');
    await form.locator('input[name=ttl]').fill('2h');
    await form.getByRole('button', { name: 'Create branch' }).click();
    await notice(page, 'Created app@from-page from app@develop');
    await openDetails(page, 'app@from-page');
    const url = (await page.locator('tr.details code.conn').textContent())!;
    expect(url).toBe(`postgres://postgres@127.0.0.1:${proxy.port}/app@from-page`);
    // The copy button puts the same string on the clipboard.
    await page.context().grantPermissions(['clipboard-read', 'clipboard-write']);
    await page.locator('tr.details').getByRole('button', { name: 'Copy' }).click();
    await page.locator('tr.details').getByRole('button', { name: 'Copied' }).waitFor();
    expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(url);
    const result = await psql(url, 'select current_database(), count(*) from users', {
      env: PASSWORD_ENV(),
    });
    expect(result).toMatchObject({ code: 0, stdout: 'app@from-page|1' });
    // 2 h after psql's connect: "in 1 h" once a moment has passed, "in 2 h" while the page's
    // clock reads a moment before the connect.
    expect(await row(page, 'app@from-page').textContent()).toMatch(/in [12] h \(2 h idle\)/);
  });

  it('resets a branch after a confirmation, and psql sees its parent’s data again', async () => {
    await connect('app@to-reset', 'insert into users values (2)');
    const page = await openPage();
    await openDetails(page, 'app@to-reset');
    await page.locator('tr.details').getByRole('button', { name: 'Reset' }).click();
    await dialog(page).filter({ hasText: 'app@to-reset becomes a fresh copy of app' }).waitFor();
    await dialog(page).getByRole('button', { name: 'Reset' }).click();
    await notice(page, 'app@to-reset is a fresh copy of app');
    expect(await connect('app@to-reset', 'select count(*) from users')).toBe('1');
  });

  it('saves a restore point under its branch, restores the branch to it, and branches from it', async () => {
    await connect('app@points');
    const page = await openPage();
    await openDetails(page, 'app@points');
    await page.getByRole('button', { name: 'Save restore point' }).click();
    await dialog(page).locator('input[name=point]').fill('before');
    await dialog(page).getByRole('button', { name: 'Save restore point' }).click();
    const point = page.locator('tr[data-point="app@points:before"]');
    await point.waitFor();
    // Drawn right under its branch.
    const rows = await page
      .locator('tbody tr:not(.details)')
      .evaluateAll((trs) =>
        trs.map((tr) => tr.getAttribute('data-branch') ?? tr.getAttribute('data-point')),
      );
    expect(rows[rows.indexOf('app@points') + 1]).toBe('app@points:before');
    await connect('app@points', 'insert into users values (3)');
    await point.getByRole('button', { name: 'Restore' }).click();
    await dialog(page).getByRole('button', { name: 'Restore' }).click();
    await notice(page, 'app@points is as it was at before');
    expect(await connect('app@points', 'select count(*) from users')).toBe('1');

    // A new branch from the restore point, by its row's button.
    await connect('app@points', 'insert into users values (4)');
    await point.getByRole('button', { name: 'New branch' }).click();
    expect(await dialog(page).locator('select[name=snapshot]').inputValue()).toBe('before');
    await dialog(page).locator('input[name=name]').fill('from-point');
    await dialog(page).getByRole('button', { name: 'Create branch' }).click();
    await notice(page, 'Created app@from-point from app@points at before');
    expect(await connect('app@from-point', 'select count(*) from users')).toBe('1');
  });

  it('deletes a branch and the branches made from it, after a confirmation that names them', async () => {
    await connect('app@doomed');
    await branch('app@doomed-child', 'doomed');
    const page = await openPage();
    await row(page, 'app@doomed-child').waitFor();
    await openDetails(page, 'app@doomed');
    await page.locator('tr.details').getByRole('button', { name: 'Delete' }).click();
    const confirm = dialog(page);
    await confirm.locator('ul.doomed li').first().waitFor();
    expect(await confirm.locator('ul.doomed li').allTextContents()).toEqual([
      'app@doomed',
      'app@doomed-child (made from it: cascade)',
    ]);
    await confirm.getByRole('button', { name: 'Delete 2 branches' }).click();
    await notice(page, 'Deleted app@doomed-child, app@doomed');
    await row(page, 'app@doomed').waitFor({ state: 'detached' });
    for (const name of ['app@doomed', 'app@doomed-child']) {
      const asked = await fetch(`${proxy.ready.adminUrl}/v1/branches/${encodeURIComponent(name)}`);
      expect(asked.status, name).toBe(404);
    }
  });

  it('protects a branch, which then can be neither reset nor deleted, and unprotects it', async () => {
    await connect('app@guarded');
    const page = await openPage();
    await openDetails(page, 'app@guarded');
    const details = page.locator('tr.details');
    await details.getByRole('button', { name: 'Protect' }).click();
    await notice(page, 'app@guarded is protected');
    await row(page, 'app@guarded').filter({ hasText: 'protected' }).waitFor();
    // The details re-render from the next list: waited for, not read at once.
    await expect
      .poll(() => details.getByRole('button', { name: 'Delete' }).isDisabled())
      .toBe(true);
    await expect.poll(() => details.getByRole('button', { name: 'Reset' }).isDisabled()).toBe(true);
    const refused = await fetch(
      `${proxy.ready.adminUrl}/v1/branches/${encodeURIComponent('app@guarded')}`,
      { method: 'DELETE' },
    );
    expect(refused.status).toBe(403);
    await details.getByRole('button', { name: 'Unprotect' }).click();
    await notice(page, 'app@guarded is no longer protected');
    await expect
      .poll(() => details.getByRole('button', { name: 'Delete' }).isDisabled())
      .toBe(false);
  });

  it('shows a refusal with its message and SQLSTATE', async () => {
    const page = await openPage();
    await page.getByRole('button', { name: 'New branch' }).first().click();
    await dialog(page).locator('input[name=name]').fill('bad:name');
    await dialog(page).getByRole('button', { name: 'Create branch' }).click();
    const error = dialog(page).locator('.error');
    await error.waitFor();
    expect(await error.locator('.sqlstate').textContent()).toBe('42602');
    expect(await error.textContent()).toContain('bad:name');
  });

  it('compares the schemas of two branches side by side', async () => {
    await connect('app@migrated', 'alter table users add column email text');
    const page = await openPage();
    await openDetails(page, 'app@migrated');
    await page.getByRole('button', { name: 'Schema diff with app' }).click();
    await dialog(page).getByRole('button', { name: 'Compare' }).click();
    const added = dialog(page).locator('table.diff tr.added');
    await added.first().waitFor();
    expect(await added.count()).toBe(1);
    expect(await added.locator('td').allTextContents()).toEqual([
      '',
      expect.stringContaining('column public.users.email'),
    ]);
    expect(await dialog(page).locator('table.diff th').allTextContents()).toEqual([
      'app',
      'app@migrated',
    ]);
  });

  it('folds a subtree away and filters by a name pattern', async () => {
    await connect('app@develop');
    await branch('app@feature/login', 'develop');
    await connect('app@pr-7');
    const page = await openPage();
    await row(page, 'app@feature/login').waitFor();
    await page.getByRole('button', { name: 'collapse app@develop' }).click();
    await row(page, 'app@feature/login').waitFor({ state: 'detached' });
    await page.getByRole('button', { name: 'expand app@develop' }).click();
    await row(page, 'app@feature/login').waitFor();
    await page.getByLabel('filter branches by name').fill('feature/*');
    await row(page, 'app@pr-7').waitFor({ state: 'detached' });
    // The match, and the way to it.
    expect(await page.locator('tr.branch button.name').allTextContents()).toEqual([
      'app',
      'app@develop',
      'app@feature/login',
    ]);
    expect(await page.locator('tr.branch:not(.context) button.name').allTextContents()).toEqual([
      'app@feature/login',
    ]);
  });

  it('sets, changes and removes the expiry of a branch in its Expiry dialog, as the API and the CLI then show it', async () => {
    await connect('app@expiring');
    const page = await openPage();
    await openDetails(page, 'app@expiring');
    // Branch, clients, last connection, created, size, made by, protection, expires.
    const expires = row(page, 'app@expiring').locator('td').nth(7);
    expect(await expires.textContent()).toBe('');

    // After an idle time.
    await page.locator('tr.details').getByRole('button', { name: 'Expiry' }).click();
    const form = dialog(page).filter({ hasText: 'Expiry of app@expiring' });
    expect(await form.getByLabel('never').isChecked()).toBe(true);
    await form.locator('input[name=ttl]').fill('3h');
    expect(await form.locator('input[value=ttl]').isChecked()).toBe(true);
    await form.getByRole('button', { name: 'Save' }).click();
    await notice(page, 'Changed the expiry of app@expiring');
    expect(await apiBranch('app@expiring')).toMatchObject({ ttlMs: 3 * 3600_000, expiresAt: null });
    expect(await cliShow('app@expiring')).toMatch(/idle expiry: +3h\n/);
    await expect.poll(() => expires.textContent()).toMatch(/^in [23] h \(3 h idle\)$/);

    // On a date: the dialog opens on what the branch has now.
    await page.locator('tr.details').getByRole('button', { name: 'Expiry' }).click();
    expect(await form.locator('input[value=ttl]').isChecked()).toBe(true);
    expect(await form.locator('input[name=ttl]').inputValue()).toBe('10800s');
    await form.locator('input[name=expiresAt]').fill('2099-03-01');
    expect(await form.locator('input[value=at]').isChecked()).toBe(true);
    await form.getByRole('button', { name: 'Save' }).click();
    await notice(page, 'Changed the expiry of app@expiring');
    const dated = await apiBranch('app@expiring');
    expect(dated.ttlMs).toBeNull();
    expect(dated.expiresAt).toMatch(/^2099-03-01/);
    const shown = await cliShow('app@expiring');
    expect(shown).toMatch(/expires at: +2099-03-01/);
    expect(shown).toMatch(/idle expiry: +none\n/);
    await expect.poll(() => expires.textContent()).toMatch(/^in \d+ d$/);

    // Never.
    await page.locator('tr.details').getByRole('button', { name: 'Expiry' }).click();
    expect(await form.locator('input[name=expiresAt]').inputValue()).toBe('2099-03-01');
    await form.getByLabel('never').check();
    await form.getByRole('button', { name: 'Save' }).click();
    await notice(page, 'Changed the expiry of app@expiring');
    expect(await apiBranch('app@expiring')).toMatchObject({
      ttlMs: null,
      expiresAt: null,
      expiresBy: null,
    });
    expect(await cliShow('app@expiring')).toMatch(/expires at: +never\n/);
    await expect.poll(() => expires.textContent()).toBe('');
  });

  it('refuses an expiry the API refuses, with its message and SQLSTATE, and changes nothing', async () => {
    await connect('app@badly-expiring');
    const page = await openPage();
    await openDetails(page, 'app@badly-expiring');
    await page.locator('tr.details').getByRole('button', { name: 'Expiry' }).click();
    await dialog(page).locator('input[name=ttl]').fill('soon');
    await dialog(page).getByRole('button', { name: 'Save' }).click();
    const error = dialog(page).locator('.error');
    await error.waitFor();
    expect(await error.locator('.sqlstate').textContent()).toBe('22023');
    expect(await error.textContent()).toContain('soon');
    expect(await apiBranch('app@badly-expiring')).toMatchObject({ ttlMs: null, expiresAt: null });
  });

  it('collapses every subtree with Collapse all and opens them again with Expand all; a filter still finds what is folded', async () => {
    await connect('app@develop');
    await branch('app@feature/login', 'develop');
    await branch('app@feature/login-2fa', 'feature/login');
    await connect('app@pr-7');
    const page = await openPage();
    await row(page, 'app@feature/login-2fa').waitFor();
    const drawn = () => page.locator('tr.branch button.name').allTextContents();
    const everything = await drawn();
    expect(everything).toEqual(expect.arrayContaining(['app@develop', 'app@feature/login-2fa']));

    // A fold inside a fold: each level folds on its own.
    await page.getByRole('button', { name: 'collapse app@feature/login' }).click();
    await row(page, 'app@feature/login-2fa').waitFor({ state: 'detached' });
    await row(page, 'app@develop').waitFor();

    await page.getByRole('button', { name: 'Collapse all' }).click();
    await row(page, 'app@develop').waitFor({ state: 'detached' });
    expect(await drawn()).toEqual(['app']);
    expect(
      await row(page, 'app')
        .getByRole('button', { name: 'expand app' })
        .getAttribute('aria-expanded'),
    ).toBe('false');

    // The filter shows a match and the way to it, folds or not; cleared, the folds are back.
    await page.getByLabel('filter branches by name').fill('2fa');
    await row(page, 'app@feature/login-2fa').waitFor();
    expect(await drawn()).toEqual([
      'app',
      'app@develop',
      'app@feature/login',
      'app@feature/login-2fa',
    ]);
    expect(await page.locator('p.summary').textContent()).toContain('; 1 match');
    await page.getByLabel('filter branches by name').fill('');
    await row(page, 'app@develop').waitFor({ state: 'detached' });
    expect(await drawn()).toEqual(['app']);

    await page.getByRole('button', { name: 'Expand all' }).click();
    await row(page, 'app@feature/login-2fa').waitFor();
    expect(await drawn()).toEqual(everything);
  });
});
