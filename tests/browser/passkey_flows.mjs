// Passkeys in Chromium with its virtual authenticator (DevTools WebAuthn domain): register a
// passkey, sign in with it as the second factor and without a password through Microsoft 365's
// SAML flow, and the refusals (a replayed ceremony, a wrong origin, another user's credential,
// a cloned authenticator). tests/it/passkeys.rs starts the server, prepares the users and the
// AuthnRequests, and checks the captured SAML Responses and the events afterwards.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectedRefusals, run, setting, shootWidths } from './lib.mjs';

const base = setting('IDBRIDGE_URL').replace(/\/$/, '');
const shots = setting('IDBRIDGE_SCREENSHOT_DIR');
const out = setting('IDBRIDGE_OUT');
const part = process.env.IDBRIDGE_PASSKEY_PART || 'all';
/** Microsoft's AuthnRequests (base64, HTTP-POST binding), each used once. */
const samlRequests = JSON.parse(setting('IDBRIDGE_SAML_REQUESTS'));
const password = setting('IDBRIDGE_PASSWORD');
const alice = setting('IDBRIDGE_USER');
const bob = setting('IDBRIDGE_OTHER_USER');

/** Where Microsoft 365's ACS would receive the Response; the test answers it itself. */
const ACS = 'https://login.microsoftonline.com/login.srf';

const captured = [];
const refusals = {};

function save() {
  writeFileSync(out, JSON.stringify({ captured, refusals }, null, 2));
}

/** Screens wider than the window at 1280 or 390 px. */
const overflowing = [];

/** Saves the screen at 1280 and 390 px (`passkey-<name>.png`, `…-390.png`). */
async function shoot(page, name) {
  overflowing.push(...(await shootWidths(page, join(shots, `passkey-${name}`))));
}

/** A virtual platform authenticator with user verification (a laptop's fingerprint reader). */
async function newAuthenticator(cdp) {
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return authenticatorId;
}

run('passkey_flows', async (page, step) => {
  mkdirSync(shots, { recursive: true });
  let lastResponse = null;
  await page.route(ACS, async (route) => {
    lastResponse = new URLSearchParams(route.request().postData() || '').get('SAMLResponse');
    await route.fulfill({
      status: 200,
      contentType: 'text/html',
      body: '<!doctype html><title>Microsoft 365</title><h1>Signed in to Microsoft 365</h1>',
    });
  });
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  let authenticator = await newAuthenticator(cdp);
  let nextRequest = 0;

  /** The browser arrives from Microsoft with a fresh AuthnRequest: idbridge's sign-in page. */
  async function arriveFromMicrosoft() {
    const saml = samlRequests[nextRequest];
    nextRequest += 1;
    await page.setContent(
      `<form method="post" action="${base}/saml/sso"><input type="hidden" name="SAMLRequest" value="${saml}"></form>`,
    );
    await Promise.all([
      page.waitForURL(`${base}/saml/sso`),
      page.locator('form').evaluate((form) => form.submit()),
    ]);
    await page.getByRole('heading', { name: /Sign in to continue/ }).waitFor();
    return nextRequest - 1;
  }

  async function typePassword(user) {
    await page.getByLabel('Username or company email').fill(user);
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  }

  async function landedAtMicrosoft(label, requestIndex) {
    await page.waitForURL(ACS);
    await page.getByRole('heading', { name: 'Signed in to Microsoft 365' }).waitFor();
    captured.push({ label, requestIndex, samlResponse: lastResponse });
    save();
  }

  async function register(label, shot) {
    await page.goto(`${base}/mfa/passkeys/manage`);
    await page.getByRole('heading', { name: 'Your passkeys' }).waitFor();
    if (shot) await shoot(page, `${shot}-before`);
    await page.getByLabel('Name of the new passkey').fill(label);
    await Promise.all([
      page.waitForEvent('load'),
      page.getByRole('button', { name: 'Add a passkey' }).click(),
    ]);
    await page.locator('.passkey-label', { hasText: label }).waitFor();
    if (shot) await shoot(page, shot);
  }

  /**
   * Runs a sign-in ceremony from the current idbridge page by hand, as a script on the page
   * would; `tamper` may change the assertion before it is sent. Returns both answers to the
   * finish (the second is the same body posted again) with their status and JSON.
   */
  async function ceremonyByHand(pending, options = {}) {
    return page.evaluate(async ({ pending, allow, tamper, replay }) => {
      const toBuffer = (t) => {
        const b = t.replace(/-/g, '+').replace(/_/g, '/');
        return Uint8Array.from(atob(b + '='.repeat((4 - (b.length % 4)) % 4)), (c) => c.charCodeAt(0)).buffer;
      };
      const toText = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)))
        .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
      const post = async (path, body) => {
        const r = await fetch(path, {
          method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
        });
        return { status: r.status, body: await r.json().catch(() => null) };
      };
      const start = await post('/mfa/passkeys/authenticate/start', { pending });
      if (start.status !== 200) return { start };
      const key = start.body.options.publicKey;
      key.challenge = toBuffer(key.challenge);
      key.allowCredentials = (allow ? allow.map((id) => ({ type: 'public-key', id })) : key.allowCredentials || [])
        .map((c) => ({ ...c, id: toBuffer(c.id) }));
      const credential = await navigator.credentials.get({ publicKey: key });
      const r = credential.response;
      const assertion = {
        id: credential.id,
        rawId: toText(credential.rawId),
        type: credential.type,
        response: {
          authenticatorData: toText(r.authenticatorData),
          clientDataJSON: toText(r.clientDataJSON),
          signature: toText(r.signature),
          userHandle: r.userHandle ? toText(r.userHandle) : null,
        },
        extensions: {},
      };
      if (tamper === 'origin') {
        const client = JSON.parse(new TextDecoder().decode(toBuffer(assertion.response.clientDataJSON)));
        client.origin = 'https://idbridge.attacker.example';
        assertion.response.clientDataJSON = toText(new TextEncoder().encode(JSON.stringify(client)));
      }
      if (tamper && tamper.userHandle) {
        assertion.response.userHandle = tamper.userHandle;
      }
      const body = { pending, ceremony: start.body.ceremony, credential: assertion };
      const first = await post('/mfa/passkeys/authenticate/finish', body);
      const second = replay ? await post('/mfa/passkeys/authenticate/finish', body) : null;
      return { start, first, second, userHandle: assertion.response.userHandle };
    }, { pending, ...options });
  }

  /** The parked sign-in's token, as the passkey button on the page carries it. */
  const pendingOnPage = () => page.locator('[data-passkey-sign-in]').first().getAttribute('data-pending');

  if (part === 'enrol') {
    await step('a user who must enrol adds a passkey instead of an app, and the sign-in goes on', async () => {
      const index = await arriveFromMicrosoft();
      await typePassword(alice);
      await page.getByRole('button', { name: 'Use a passkey instead' }).waitFor();
      await shoot(page, 'enrol');
      await page.getByLabel('Name of the new passkey').fill('Work laptop');
      await page.getByRole('button', { name: 'Use a passkey instead' }).click();
      await landedAtMicrosoft('enrolled', index);
    });
    await step('her next sign-in asks for the passkey', async () => {
      await page.context().clearCookies({ name: 'idbridge_session' });
      const index = await arriveFromMicrosoft();
      await typePassword(alice);
      await page.getByRole('button', { name: 'Sign in with a passkey' }).click();
      await landedAtMicrosoft('second_factor', index);
    });
    save();
    return;
  }

  await step('alice signs in with her password through Microsoft 365 (no factor yet)', async () => {
    const index = await arriveFromMicrosoft();
    await typePassword(alice);
    await landedAtMicrosoft('password', index);
  });

  await step('alice adds a passkey on her passkeys page: it is listed with its name', async () => {
    await register('Work laptop', 'registered');
    await page.getByText('last used never').waitFor();
  });

  await step('a passkey request from another site is refused', async () => {
    expectedRefusals.add('/mfa/passkeys/register/start');
    const answer = await page.evaluate(async () => {
      const r = await fetch('/mfa/passkeys/register/start', {
        method: 'POST', headers: { 'Content-Type': 'text/plain' }, body: '{}',
      });
      return r.status;
    });
    if (answer !== 403) throw new Error(`a text/plain request answered ${answer}, not 403`);
    expectedRefusals.delete('/mfa/passkeys/register/start');
  });

  if (part === 'register') {
    save();
    return;
  }

  await step('second factor: after her password, alice uses her passkey', async () => {
    await page.context().clearCookies({ name: 'idbridge_session' });
    const index = await arriveFromMicrosoft();
    await typePassword(alice);
    await page.getByRole('button', { name: 'Sign in with a passkey' }).waitFor();
    await shoot(page, 'second-factor');
    await page.getByRole('button', { name: 'Sign in with a passkey' }).click();
    await landedAtMicrosoft('second_factor', index);
  });

  await step('passwordless: alice signs in with her passkey alone', async () => {
    await page.context().clearCookies({ name: 'idbridge_session' });
    const index = await arriveFromMicrosoft();
    await shoot(page, 'login-passwordless');
    await page.getByRole('button', { name: 'Sign in with a passkey' }).click();
    await landedAtMicrosoft('passwordless', index);
  });

  await step('her passkeys page shows when the passkey was last used', async () => {
    await page.goto(`${base}/mfa/passkeys/manage`);
    await page.locator('.passkey-label', { hasText: 'Work laptop' }).waitFor();
    if (await page.getByText('last used never').count()) throw new Error('last use not shown');
    await shoot(page, 'used');
  });

  // From here on the steps provoke refusals of sign-in ceremonies.
  expectedRefusals.add('/mfa/passkeys/authenticate/finish');

  await step('a finished ceremony posted again is refused; so is an answer for another origin', async () => {
    await page.context().clearCookies({ name: 'idbridge_session' });
    await arriveFromMicrosoft();
    const pending = await pendingOnPage();
    const replayed = await ceremonyByHand(pending, { replay: true });
    if (replayed.first.status !== 200) throw new Error(`the first answer failed: ${JSON.stringify(replayed)}`);
    refusals.replayed = replayed.second;
    const origin = await ceremonyByHand(pending, { tamper: 'origin' });
    refusals.wrong_origin = origin.first;
    save();
  });

  const aliceCredential = (await cdp.send('WebAuthn.getCredentials', { authenticatorId: authenticator })).credentials;

  await step('bob adds a passkey of his own (another authenticator)', async () => {
    await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: authenticator });
    authenticator = await newAuthenticator(cdp);
    await page.context().clearCookies({ name: 'idbridge_session' });
    const index = await arriveFromMicrosoft();
    await typePassword(bob);
    await landedAtMicrosoft('bob_password', index);
    await register("Bob's key");
  });

  await step("bob's credential answering alice's sign-in is refused", async () => {
    const bobs = (await cdp.send('WebAuthn.getCredentials', { authenticatorId: authenticator })).credentials;
    // Second factor: alice typed her password; bob's authenticator answers her challenge.
    await page.context().clearCookies({ name: 'idbridge_session' });
    await arriveFromMicrosoft();
    await typePassword(alice);
    await page.getByRole('button', { name: 'Sign in with a passkey' }).waitFor();
    const pending = await pendingOnPage();
    const other = await ceremonyByHand(pending, { allow: bobs.map((c) => c.credentialId) });
    refusals.another_user = other.first;
    // Passwordless: bob's assertion claiming to be alice's (the user handle is not signed).
    await page.context().clearCookies({ name: 'idbridge_session' });
    await arriveFromMicrosoft();
    const aliceHandle = aliceCredential[0].userHandle.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    const claimed = await ceremonyByHand(await pendingOnPage(), { tamper: { userHandle: aliceHandle } });
    refusals.claimed_handle = claimed.first;
    save();
  });

  await step("a copy of alice's passkey with an older signature counter is refused", async () => {
    await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: authenticator });
    authenticator = await newAuthenticator(cdp);
    // The copy starts from counter 0, behind the counter idbridge stored at her last use.
    await cdp.send('WebAuthn.addCredential', {
      authenticatorId: authenticator,
      credential: { ...aliceCredential[0], signCount: 0 },
    });
    await page.context().clearCookies({ name: 'idbridge_session' });
    await arriveFromMicrosoft();
    await page.getByRole('button', { name: 'Sign in with a passkey' }).click();
    await page.getByText('its signature counter went back').waitFor();
    await shoot(page, 'refused-clone');
  });

  expectedRefusals.delete('/mfa/passkeys/authenticate/finish');

  await step('alice adds a second passkey from a new device and removes the first', async () => {
    // Signed in with her passkey as the second factor: a session that passed one may add more.
    await page.context().clearCookies({ name: 'idbridge_session' });
    await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: authenticator });
    authenticator = await newAuthenticator(cdp);
    await cdp.send('WebAuthn.addCredential', { authenticatorId: authenticator, credential: aliceCredential[0] });
    const index = await arriveFromMicrosoft();
    await typePassword(alice);
    await page.getByRole('button', { name: 'Sign in with a passkey' }).click();
    await landedAtMicrosoft('second_factor_again', index);
    // The new device: another authenticator.
    await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: authenticator });
    authenticator = await newAuthenticator(cdp);
    await register('Phone');
    await page.locator('.passkey-label', { hasText: 'Work laptop' }).waitFor();
    await shoot(page, 'two-passkeys');
    await Promise.all([
      page.waitForEvent('load'),
      page.getByRole('button', { name: 'Remove the passkey Work laptop' }).click(),
    ]);
    await page.locator('.passkey-label', { hasText: 'Phone' }).waitFor();
    if (await page.locator('.passkey-label', { hasText: 'Work laptop' }).count()) {
      throw new Error('the removed passkey is still listed');
    }
    await shoot(page, 'removed');
  });

  await step("the portal's sign-in methods list her passkey", async () => {
    await page.goto(`${base}/`);
    await page.locator('.passkey-label', { hasText: 'Phone' }).waitFor();
    await page.getByRole('button', { name: 'Add a passkey' }).waitFor();
    await shoot(page, 'portal');
  });
  save();

  await step('every screen fits the window at 1280 and 390 px', async () => {
    if (overflowing.length) {
      throw new Error(overflowing.join('; '));
    }
  });
});
