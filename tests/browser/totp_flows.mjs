// An employee sets up an authenticator app in the user portal: the QR code page, a code typed
// from the app (computed here with RFC 6238, independently of idbridge), the recovery codes
// shown once; then the next sign-in asks for the second factor, refuses a wrong code and lets
// a recovery code in. Each screen is saved as a screenshot (totp-*.png).

import { createHmac } from 'node:crypto';
import { join } from 'node:path';
import { atPath, run, setting, shootWidths } from './lib.mjs';

const base = setting('IDBRIDGE_URL').replace(/\/$/, '');
const user = setting('IDBRIDGE_USER');
const password = setting('IDBRIDGE_USER_PASSWORD');
const shots = setting('IDBRIDGE_SCREENSHOT_DIR');

/** Screens wider than the window at 1280 or 390 px. */
const overflowing = [];

/** Saves the screen at 1280 and 390 px (`totp-<name>.png`, `…-390.png`). */
async function shot(page, name) {
  overflowing.push(...(await shootWidths(page, join(shots, `totp-${name}`))));
}

/** RFC 6238 (SHA-1, six digits, 30-second steps) from a base32 secret. */
function totp(secretBase32, unixSeconds = Date.now() / 1000) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secretBase32.replace(/=+$/, '')) {
    bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  }
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(unixSeconds / 30)));
  const digest = createHmac('sha1', key).update(counter).digest();
  const offset = digest[digest.length - 1] & 0x0f;
  const value = (digest.readUInt32BE(offset) & 0x7fffffff) % 1_000_000;
  return String(value).padStart(6, '0');
}

async function signInWithPassword(page) {
  await page.goto(`${base}/login`);
  await page.getByLabel('Username or company email').fill(user);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

await run('totp_flows', async (page, step) => {
  let recoveryCode;
  await step('sign in: the overview offers an authenticator app', async () => {
    await signInWithPassword(page);
    await atPath(page, '/');
    await page.getByRole('heading', { name: 'Sign-in methods' }).waitFor();
    await page.getByText('Not set up.').waitFor();
  });

  await step('set up: a QR code and the key for typing', async () => {
    await page.locator('#set-up-authenticator').click();
    await atPath(page, '/security/authenticator');
    await page.getByRole('img', { name: 'QR code for your authenticator app' }).waitFor();
    await shot(page, 'setup');
  });

  await step('a wrong code is refused on the same page', async () => {
    await page.getByLabel('Code from the app').fill('000000');
    await page.getByRole('button', { name: 'Confirm' }).click();
    await page.getByRole('alert').filter({ hasText: 'does not match' }).waitFor();
    await shot(page, 'setup-refused');
  });

  await step('the code from the app confirms it; the recovery codes are shown once', async () => {
    const secret = (await page.locator('#totp-secret').textContent()).trim();
    await page.getByLabel('Code from the app').fill(totp(secret));
    await page.getByRole('button', { name: 'Confirm' }).click();
    await page.getByRole('heading', { name: 'Save your recovery codes' }).waitFor();
    const codes = await page.locator('#recovery-codes code').allTextContents();
    if (codes.length !== 10) {
      throw new Error(`expected 10 recovery codes, got ${codes.length}`);
    }
    recoveryCode = codes[0];
    await shot(page, 'recovery-codes');
    await page.getByRole('link', { name: 'I saved them' }).click();
    await atPath(page, '/');
    await page.getByText('Set up: idbridge asks for its six-digit code').waitFor();
    await page.getByText('10 unused').waitFor();
    await shot(page, 'overview');
  });

  await step('sign out; the next sign-in asks for the second factor', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await atPath(page, '/login');
    await signInWithPassword(page);
    await page.getByRole('heading', { name: "Verify it's you" }).waitFor();
    await shot(page, 'verify');
  });

  await step('a wrong code is refused', async () => {
    await page.getByLabel('Code from your authenticator app').fill('000000');
    await page.getByRole('button', { name: 'Verify' }).click();
    await page.getByRole('alert').filter({ hasText: 'not right' }).waitFor();
    await shot(page, 'verify-refused');
  });

  await step('a recovery code signs in once', async () => {
    await page.getByLabel('Code from your authenticator app').fill(recoveryCode);
    await page.getByRole('button', { name: 'Verify' }).click();
    await atPath(page, '/');
    await page.getByText('9 unused').waitFor();
  });

  await step('every screen fits the window at 1280 and 390 px', async () => {
    if (overflowing.length) {
      throw new Error(overflowing.join('; '));
    }
  });
});
