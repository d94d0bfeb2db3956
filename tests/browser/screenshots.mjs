// Full-page screenshots of every console page at 1280 and 390 px, for anyone to look at
// (target/screenshots/*.png); the run fails when a page is wider than the window.
// tests/it/browser.rs fills the directory first (bound, failed and unbound users, a tenant to
// import from) and checks the files afterwards.

import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { atPath, firstSignIn, run, settings, shootWidths } from './lib.mjs';

const s = settings();
mkdirSync(s.screenshots, { recursive: true });

/** Pages wider than the window at one of the widths. */
const overflowing = [];

/** Saves the page as `<name>.png` and `<name>-390.png`, noting whether it fits each width. */
async function shoot(page, name) {
  overflowing.push(...(await shootWidths(page, join(s.screenshots, name))));
}

/** Opens a console page; it must answer 200 and show its heading. */
async function open(page, path, heading) {
  const response = await page.goto(`${s.base}${path}`);
  if (response.status() !== 200) {
    throw new Error(`${path} answered ${response.status()}`);
  }
  await page.getByRole('heading', { level: 1, name: heading }).waitFor();
}

await run('screenshots', async (page, step) => {
  await step('login page', async () => {
    await page.goto(`${s.base}/admin/login`);
    await page.getByRole('heading', { name: 'Admin console' }).waitFor();
    await shoot(page, 'login');
  });
  await firstSignIn(page, step, s, () => shoot(page, 'password'));
  await step('overview', async () => {
    await atPath(page, '/admin');
    await shoot(page, 'overview');
  });
  await step('users list', async () => {
    await open(page, '/admin/users', 'Users');
    await shoot(page, 'users');
  });
  await step('user detail', async () => {
    await page.getByRole('link', { name: 'alice', exact: true }).first().click();
    await page.getByRole('heading', { level: 1 }).filter({ hasText: 'alice' }).waitFor();
    await shoot(page, 'user');
  });
  await step('binding page', async () => {
    await open(page, '/admin/binding', /Binding/);
    await shoot(page, 'binding');
  });
  await step('Microsoft 365 page', async () => {
    await open(page, '/admin/m365', 'Microsoft 365');
    await shoot(page, 'm365');
  });
  await step('SAML page', async () => {
    await open(page, '/admin/saml', /SAML/);
    await shoot(page, 'saml');
  });
  await step('events page', async () => {
    await open(page, '/admin/events', /Events|Directory Insights/);
    await shoot(page, 'events');
  });
  await step('settings page', async () => {
    await open(page, '/admin/settings', 'Admins & API keys');
    await shoot(page, 'settings');
  });
  await step('new user page', async () => {
    await open(page, '/admin/users/new', 'New user');
    await shoot(page, 'user-new');
  });
  await step('branding page', async () => {
    await open(page, '/admin/branding', 'Branding');
    await shoot(page, 'branding');
  });
  await step('the admin\'s own second factor page', async () => {
    await open(page, '/admin/mfa', 'Your second factor');
    await shoot(page, 'admin-mfa');
  });
  await step('every page fits the window\'s width', async () => {
    if (overflowing.length) {
      throw new Error(overflowing.join('; '));
    }
  });
});
