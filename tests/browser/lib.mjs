// Shared helpers of the browser scripts: launching Debian's Chromium, reading the settings the
// Rust harness (tests/it/browser.rs) passes in the environment, named steps, and signing in.
// The scripts are not run by hand: `cargo test --test it browser::` starts a server and runs them.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** A setting from the environment; missing ones are a harness bug, said plainly. */
export function setting(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run this through tests/it/browser.rs`);
  }
  return value;
}

/** Settings every script needs. */
export function settings() {
  return {
    base: setting('IDBRIDGE_URL').replace(/\/$/, ''),
    admin: setting('IDBRIDGE_ADMIN'),
    oneTimePassword: setting('IDBRIDGE_ADMIN_ONE_TIME_PASSWORD'),
    newPassword: setting('IDBRIDGE_ADMIN_NEW_PASSWORD'),
    screenshots: setting('IDBRIDGE_SCREENSHOT_DIR'),
  };
}

// Debian's Chromium (playwright's own browser download cannot work offline). The background
// networking flags matter: without them Chromium keeps opening connections the closed network
// refuses.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * Paths whose 4xx answers to scripts are the point of the current step (a refusal under test),
 * not a broken page; a script adds them for the steps that provoke them and removes them after.
 */
export const expectedRefusals = new Set();

/**
 * Runs `body(page, step, dialogs)` in a fresh browser (a temporary, empty profile) and exits: 0
 * when every step passed, 1 otherwise, after saving a screenshot of the page as it was when the
 * step failed.
 * Any script error or Content-Security-Policy violation on a page fails the run too. Every
 * confirmation dialog is accepted, its question appended to `dialogs`.
 */
export async function run(name, body) {
  const screenshots = setting('IDBRIDGE_SCREENSHOT_DIR');
  const started = Date.now();
  const browser = await chromium.launch({
    executablePath: process.env.IDBRIDGE_CHROMIUM || '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000); // generous: CI runs the whole suite on two cores
  page.setDefaultNavigationTimeout(15_000);
  const problems = [];
  page.on('pageerror', (err) => problems.push(`script error on ${page.url()}: ${err.message}`));
  page.on('console', (msg) => {
    // Failed loads are reported below with their URL; the console's line has none.
    if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) {
      problems.push(`console error on ${page.url()}: ${msg.text()}`);
    }
  });
  // A page's own status may be a deliberate 4xx (a refused form); a stylesheet, script or
  // fragment that fails to load is a broken page. Browsers ask for /favicon.ico on their own.
  page.on('response', (response) => {
    const request = response.request();
    const url = new URL(response.url());
    if (response.status() >= 400 && !request.isNavigationRequest() && url.pathname !== '/favicon.ico'
        && !expectedRefusals.has(url.pathname)) {
      problems.push(`${response.status()} for ${request.resourceType()} ${url.pathname} on ${page.url()}`);
    }
  });
  // Confirmations (forms with data-confirm) are accepted; steps read what they asked.
  const dialogs = [];
  page.on('dialog', (dialog) => {
    dialogs.push(dialog.message());
    dialog.accept();
  });
  let current = '(start)';
  const step = async (title, fn) => {
    current = title;
    const t0 = Date.now();
    await fn();
    if (problems.length) {
      throw new Error(`the page reported errors:\n  ${problems.join('\n  ')}`);
    }
    console.log(`ok  ${title} (${Date.now() - t0} ms)`);
  };
  let status = 0;
  try {
    console.log(`${name}: Chromium ${browser.version()} started in ${Date.now() - started} ms`);
    await body(page, step, dialogs);
    console.log(`${name}: passed in ${Date.now() - started} ms`);
  } catch (err) {
    status = 1;
    console.log(`FAIL ${current}: ${err.stack || err}`);
    console.log(`     at ${page.url()}`);
    try {
      const dir = join(screenshots, 'failures');
      mkdirSync(dir, { recursive: true });
      const file = join(dir, `${name}.png`);
      await page.screenshot({ path: file, fullPage: true });
      console.log(`     screenshot of the page: ${file}`);
    } catch (shotErr) {
      console.log(`     (no screenshot: ${shotErr.message})`);
    }
  } finally {
    await browser.close();
  }
  process.exit(status);
}

/** The path of the page's URL (without query). */
export function pathOf(page) {
  return new URL(page.url()).pathname;
}

/** Waits until the page's path is `path`. */
/** The widths every page is saved at: a laptop, and a phone (an iPhone 12-15 is 390 px). */
export const WIDTHS = [1280, 390];

/**
 * Saves the page as `<file>.png` at 1280 px and `<file>-390.png` at 390 px (full page), and
 * returns a description of each width at which the page is wider than the window (a long
 * unbroken value pushing the layout sideways), naming the outermost elements that stick out.
 */
export async function shootWidths(page, file) {
  await page.waitForLoadState('load');
  const before = page.viewportSize();
  const problems = [];
  for (const width of WIDTHS) {
    await page.setViewportSize({ width, height: 800 });
    const name = width === WIDTHS[0] ? file : `${file}-${width}`;
    await page.screenshot({ path: `${name}.png`, fullPage: true });
    const { scrolled, culprits } = await page.evaluate((limit) => {
      const out = [];
      for (const el of document.body.querySelectorAll('*')) {
        if (el.getBoundingClientRect().right > limit + 1 && !out.some((o) => o.contains(el))) {
          out.push(el);
        }
      }
      const tag = (el) =>
        el.tagName.toLowerCase() + (el.id ? `#${el.id}` : '') +
        (el.className && typeof el.className === 'string' ? `.${el.className.split(' ').join('.')}` : '');
      const describe = (el) =>
        `${tag(el.parentElement)} > ${tag(el)} "${(el.textContent || '').replace(/\s+/g, ' ').trim().slice(0, 40)}…"`;
      return { scrolled: document.documentElement.scrollWidth, culprits: out.slice(0, 3).map(describe) };
    }, width);
    if (scrolled > width) {
      problems.push(`${name.split('/').pop()} is ${scrolled} px wide in a ${width} px window (${culprits.join(', ')})`);
    }
  }
  await page.setViewportSize(before);
  return problems;
}

export async function atPath(page, path) {
  await page.waitForURL((url) => url.pathname === path);
}

/**
 * Signs in with the one-time password, is sent to the password page, chooses the new password,
 * and lands on the overview. `onPasswordPage` runs while the password page is shown.
 */
export async function firstSignIn(page, step, s, onPasswordPage = async () => {}) {
  await step('an unauthenticated visit to /admin goes to the sign-in page', async () => {
    await page.goto(`${s.base}/admin`);
    await atPath(page, '/admin/login');
    await page.getByRole('heading', { name: 'Admin console' }).waitFor();
  });
  await step('sign in with the one-time password: forced to change it', async () => {
    await page.getByLabel('Admin username').fill(s.admin);
    await page.getByLabel('Password').fill(s.oneTimePassword);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await atPath(page, '/admin/password');
    await page.getByText('You signed in with a one-time password').waitFor();
    await onPasswordPage();
  });
  await step('other pages stay closed until the password is changed', async () => {
    await page.goto(`${s.base}/admin/settings`);
    await atPath(page, '/admin/password');
  });
  await step('choose a new password: lands on the overview', async () => {
    await page.getByLabel('Current password').fill(s.oneTimePassword);
    await page.getByLabel('New password', { exact: true }).fill(s.newPassword);
    await page.getByLabel('New password again').fill(s.newPassword);
    await page.getByRole('button', { name: 'Change password' }).click();
    await atPath(page, '/admin');
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    await page.getByRole('status').filter({ hasText: 'Your password was changed' }).waitFor();
  });
}
