// An employee's visit to the user portal, in one browser: the sign-in form at /, the overview
// (profile, Microsoft 365 tile, sign-in methods), a refused and then an accepted password
// change, sign-out, signing in with the new password; then a reset link mailed to another
// user (requested by tests/it/browser.rs through the SMTP sink) used to choose a new password.
// Each screen is saved as a screenshot (portal-*.png).

import { join } from 'node:path';
import { atPath, run, setting, shootWidths } from './lib.mjs';

const base = setting('IDBRIDGE_URL').replace(/\/$/, '');
const user = setting('IDBRIDGE_USER');
const password = setting('IDBRIDGE_USER_PASSWORD');
const newPassword = setting('IDBRIDGE_USER_NEW_PASSWORD');
const resetUrl = setting('IDBRIDGE_RESET_URL');
const shots = setting('IDBRIDGE_SCREENSHOT_DIR');

/** Screens wider than the window at 1280 or 390 px. */
const overflowing = [];
const shot = async (page, name) => {
  overflowing.push(...(await shootWidths(page, join(shots, `portal-${name}`))));
};

async function signIn(page, step, secret, title) {
  await step(title, async () => {
    await page.getByLabel('Username or company email').fill(user);
    await page.getByLabel('Password', { exact: true }).fill(secret);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await atPath(page, '/');
    await page.getByRole('heading', { name: /^Hello, / }).waitFor();
  });
}

await run('portal_flows', async (page, step) => {
  await step('a signed-out visit to / shows the sign-in form', async () => {
    await page.goto(`${base}/`);
    await page.getByRole('heading', { name: 'Sign in to your account' }).waitFor();
    await page.getByRole('link', { name: 'admin console' }).waitFor();
    await shot(page, 'login');
  });

  await step('a wrong password is refused on the same form', async () => {
    await page.getByLabel('Username or company email').fill(user);
    await page.getByLabel('Password', { exact: true }).fill('Not-The-Passw0rd');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'incorrect' }).waitFor();
    await shot(page, 'login-refused');
  });

  await signIn(page, step, password, 'sign in: the overview with profile, Microsoft 365 tile and sign-in methods');
  await step('the overview shows the profile and the Microsoft 365 tile', async () => {
    await page.getByRole('heading', { name: 'Your profile' }).waitFor();
    await page.getByRole('heading', { name: 'Sign-in methods' }).waitFor();
    const tile = page.getByRole('link', { name: /Microsoft 365/ });
    const href = await tile.getAttribute('href');
    if (href !== 'https://www.office.com/login?whr=contoso.com') {
      throw new Error(`the Microsoft 365 tile points at ${href}`);
    }
    await page.getByRole('row').filter({ hasText: 'Department' }).getByText('sent to Microsoft 365').waitFor();
    await shot(page, 'overview');
  });

  await step('the password page shows the policy', async () => {
    await page.getByRole('link', { name: 'Password', exact: true }).click();
    await atPath(page, '/password');
    await page.getByRole('heading', { name: 'Change your password' }).waitFor();
    await page.getByText('Between 8 and 256 characters long.').waitFor();
    await shot(page, 'password');
  });

  await step('a password against the policy is refused', async () => {
    await page.getByLabel('Current password').fill(password);
    await page.getByLabel('New password', { exact: true }).fill('lowercase only');
    await page.getByLabel('New password again').fill('lowercase only');
    await page.getByRole('button', { name: 'Change password' }).click();
    await page.getByRole('alert').filter({ hasText: 'cannot be used' }).waitFor();
    await shot(page, 'password-refused');
  });

  await step('a good password is accepted: back on the overview with a notice', async () => {
    await page.getByLabel('Current password').fill(password);
    await page.getByLabel('New password', { exact: true }).fill(newPassword);
    await page.getByLabel('New password again').fill(newPassword);
    await page.getByRole('button', { name: 'Change password' }).click();
    await atPath(page, '/');
    await page.getByRole('status').filter({ hasText: 'Your password was changed' }).waitFor();
    await shot(page, 'password-changed');
  });

  await step('sign out: the sign-in form says so', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await atPath(page, '/login');
    await page.getByText('You are signed out of idbridge.').waitFor();
    await shot(page, 'signed-out');
  });

  await step('the old password no longer signs in', async () => {
    await page.getByLabel('Username or company email').fill(user);
    await page.getByLabel('Password', { exact: true }).fill(password);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'incorrect' }).waitFor();
  });
  await signIn(page, step, newPassword, 'the new password signs in');
  await step('sign out again', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await atPath(page, '/login');
  });

  await step('forgot password: the request form and its answer', async () => {
    await page.getByRole('link', { name: 'Forgot your password?' }).click();
    await atPath(page, '/password/forgot');
    await shot(page, 'forgot');
    await page.getByLabel('Username or company email').fill('nobody@contoso.com');
    await page.getByRole('button', { name: 'Send me a link' }).click();
    await page.getByRole('heading', { name: 'Check your email' }).waitFor();
    await shot(page, 'forgot-sent');
  });

  await step('the mailed link: choose a new password', async () => {
    await page.goto(resetUrl);
    await page.getByRole('heading', { name: 'Choose a new password' }).waitFor();
    await shot(page, 'reset');
    await page.getByLabel('New password', { exact: true }).fill(newPassword);
    await page.getByLabel('New password again').fill(newPassword);
    await page.getByRole('button', { name: 'Change password' }).click();
    await page.getByRole('heading', { name: 'Password changed' }).waitFor();
    await shot(page, 'reset-done');
  });

  await step('the link works once', async () => {
    await page.goto(resetUrl);
    await page.getByRole('heading', { name: 'This link cannot be used' }).waitFor();
    await page.getByText('already used').waitFor();
    await shot(page, 'reset-used');
  });

  await step('every screen fits the window at 1280 and 390 px', async () => {
    if (overflowing.length) {
      throw new Error(overflowing.join('; '));
    }
  });
});
