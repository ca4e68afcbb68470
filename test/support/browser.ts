// A real browser for the branch page's tests: Debian's chromium (apt-get install chromium; .ci/run
// installs it) driven by playwright-core, headless. Never a browser downloaded by a test tool.
import fs from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

export interface TestBrowser {
  browser: Browser;
  /** A new page (its own context: its own sessionStorage) with its errors collected. */
  page(): Promise<Page>;
  /** Uncaught errors and console errors of every page so far. */
  errors: string[];
  close(): Promise<void>;
}

export async function startBrowser(): Promise<TestBrowser> {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (.ci/run does it)`);
  }
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // As root (CI) chromium needs --no-sandbox; the others keep it off the network it can't
    // reach here, where its background lookups would fail by the dozen. Playwright gives it a
    // fresh profile of its own and removes it on close.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  const errors: string[] = [];
  return {
    browser,
    errors,
    async page() {
      const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
      const page = await context.newPage();
      page.on('pageerror', (error) => errors.push(`page error: ${error.message}`));
      page.on('console', (message) => {
        if (message.type() === 'error') errors.push(`console: ${message.text()}`);
      });
      return page;
    },
    async close() {
      await browser.close();
    },
  };
}
