// The branch page of a pgbranch whose admin API has a token: the page asks for it once, keeps it
// for the browser session only, works with it and not without it, and never carries it itself.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { psql } from './support/clients.js';
import { startBrowser, type TestBrowser } from './support/browser.js';
import { startPgbranch, type PgbranchProcess } from './support/pgbranch.js';

const TOKEN = 'web-token-test-secret';
let proxy: PgbranchProcess;
let browser: TestBrowser;

beforeAll(async () => {
  [proxy, browser] = await Promise.all([
    startPgbranch({ env: { PGBRANCH_ADMIN_TOKEN: TOKEN } }),
    startBrowser(),
  ]);
  expect(await psql(proxy.url('postgres'), 'create database app')).toMatchObject({ code: 0 });
  expect(await psql(proxy.url('app@feature-x'), 'select 1')).toMatchObject({ code: 0 });
});

afterAll(async () => {
  await browser?.close();
  await proxy?.stop();
});

describe('the branch page behind an admin token', () => {
  it('asks for the token, refuses a wrong one, and shows the branches with the right one', async () => {
    const page = await browser.page();
    await page.goto(proxy.ready.adminUrl + '/');
    const prompt = page.locator('dialog[open]', { hasText: 'Admin token' });
    await prompt.filter({ hasText: 'This page needs the admin token' }).waitFor();
    expect(await page.locator('tr.branch').count()).toBe(0);

    await prompt.locator('input[name=token]').fill('not-the-token');
    await prompt.getByRole('button', { name: 'Use this token' }).click();
    await prompt.filter({ hasText: 'the admin token is wrong' }).waitFor();
    expect(await page.locator('tr.branch').count()).toBe(0);

    await prompt.locator('input[name=token]').fill(TOKEN);
    await prompt.getByRole('button', { name: 'Use this token' }).click();
    await page.locator('tr[data-branch="app@feature-x"]').waitFor();
    await prompt.waitFor({ state: 'detached' });

    // Kept for this tab's session: a reload does not ask again.
    expect(await page.evaluate(() => sessionStorage.getItem('pgbranch.adminToken'))).toBe(TOKEN);
    await page.reload();
    await page.locator('tr[data-branch="app@feature-x"]').waitFor();
    expect(await page.locator('dialog[open]').count()).toBe(0);

    // Another browser session (a new context) starts without it.
    const other = await browser.page();
    await other.goto(proxy.ready.adminUrl + '/');
    await other.locator('dialog[open]', { hasText: 'Admin token' }).waitFor();
    expect(browser.errors.filter((e) => !e.includes('401'))).toEqual([]);
  });

  it('serves no secret in its files, and the API behind it still needs the token', async () => {
    for (const file of ['/', '/app.js', '/app.css']) {
      const response = await fetch(proxy.ready.adminUrl + file);
      expect(response.status, file).toBe(200);
      const text = await response.text();
      expect(text).not.toContain(TOKEN);
      expect(text).not.toContain(proxy.password);
    }
    const html = await (await fetch(proxy.ready.adminUrl + '/')).text();
    // No inline script or style: the content security policy allows only the page's own files.
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(html).not.toMatch(/<style/);
    for (const route of ['/v1/branches', '/v1/events', '/v1/connection']) {
      const response = await fetch(proxy.ready.adminUrl + route);
      expect(response.status, route).toBe(401);
      await response.body?.cancel();
    }
  });
});
