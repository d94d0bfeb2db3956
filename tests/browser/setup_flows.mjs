// From a fresh install to bound users without editing a file, in one browser: the Microsoft 365
// page names what is missing and keeps Connect disabled; the admin enters the app registration,
// connects with the app's own credentials (no restart), imports a tenant user, binds them, and
// registers another SAML application on the SAML page, copying the metadata URL. Run by
// tests/it/browser.rs against a server that knows only the Graph fake's URLs, which then checks
// the server's state.

import { atPath, firstSignIn, run, setting, settings } from './lib.mjs';

const s = settings();
const tenant = setting('IDBRIDGE_TENANT');
const clientId = setting('IDBRIDGE_CLIENT_ID');
const clientSecret = setting('IDBRIDGE_CLIENT_SECRET');

await run('setup_flows', async (page, step) => {
  await firstSignIn(page, step, s);

  await step('Microsoft 365 is not configured: Connect is disabled, with the reason beside it', async () => {
    await page.getByRole('link', { name: 'Microsoft 365', exact: true }).click();
    await atPath(page, '/admin/m365');
    await page.locator('#config-problem').getByText('application (client) ID is missing').waitFor();
    if (!(await page.locator('#connect').isDisabled())) {
      throw new Error('Connect is clickable although it cannot work');
    }
    const describedBy = await page.locator('#connect').getAttribute('aria-describedby');
    if (describedBy !== 'config-problem') {
      throw new Error(`Connect is described by ${describedBy}, not the problem`);
    }
  });

  await step('a client ID that is not a GUID is refused, and what was typed stays', async () => {
    await page.getByLabel('Directory (tenant) ID or domain').fill(tenant);
    await page.getByLabel('Application (client) ID').fill('my-app');
    await page.getByRole('button', { name: 'Save app registration' }).click();
    await page.getByRole('alert').filter({ hasText: 'is not a GUID' }).first().waitFor();
  });

  await step('enter the app registration with a client secret: saved, Connect enabled', async () => {
    await page.goto(`${s.base}/admin/m365`);
    await page.getByLabel('Directory (tenant) ID or domain').fill(tenant);
    await page.getByLabel('Application (client) ID').fill(clientId);
    await page.getByLabel('A client secret:').check();
    await page.getByLabel('Client secret value').fill(clientSecret);
    await page.getByRole('button', { name: 'Save app registration' }).click();
    await page.getByRole('status').filter({ hasText: 'App registration saved' }).waitFor();
    if ((await page.locator('#config-problem').count()) !== 0) {
      throw new Error('the page still says Microsoft 365 is not configured');
    }
    if (await page.locator('#connect-app').isDisabled()) {
      throw new Error('Connect stays disabled after the app registration was saved');
    }
    if ((await page.getByLabel('Client secret value').inputValue()) !== '') {
      throw new Error('the secret is shown again');
    }
  });

  await step('connect with the app\'s own credentials, without a restart', async () => {
    await page.locator('#connect-app').click();
    await page.locator('#connection-state').filter({ hasText: /connected/i }).waitFor();
    await page.locator('#default-domain').filter({ hasText: 'contoso.com' }).waitFor();
  });

  await step('import a tenant user', async () => {
    await page.getByRole('checkbox', { name: 'Select frank@contoso.com' }).check();
    await page.getByRole('button', { name: 'Import selected' }).click();
    await page.getByText(/1 imported, 0 failed/).waitFor({ timeout: 20_000 });
  });

  await step('bind them: bound without a file edited', async () => {
    await page.getByRole('link', { name: 'Binding', exact: true }).click();
    await atPath(page, '/admin/binding');
    await page.getByRole('checkbox', { name: 'Select frank' }).check();
    await page.getByRole('button', { name: 'Bind selected', exact: true }).click();
    const row = page.getByRole('row').filter({ hasText: 'frank@contoso.com' });
    await row.getByText('bound', { exact: true }).waitFor({ timeout: 20_000 });
  });

  await step('register another SAML application on the SAML page', async () => {
    await page.getByRole('link', { name: 'SAML', exact: true }).click();
    await atPath(page, '/admin/saml');
    await page.getByLabel('Entity ID').fill('https://wiki.example.com/saml');
    await page.getByLabel('Name shown on the sign-in page').fill('Team wiki');
    await page.getByLabel(/^Assertion consumer service URLs/).fill('http://wiki.example.com/saml/acs');
    await page.getByRole('button', { name: 'Register', exact: true }).click();
    // Plain http off this machine is refused; what was typed stays.
    await page.getByRole('alert').filter({ hasText: 'plain http' }).first().waitFor();
    const kept = await page.getByLabel('Name shown on the sign-in page').inputValue();
    if (kept !== 'Team wiki') {
      throw new Error(`the refused form lost the name (${kept})`);
    }
    await page.getByLabel(/^Assertion consumer service URLs/).fill('https://wiki.example.com/saml/acs');
    await page.getByLabel('NameID').selectOption('email');
    await page.getByLabel(/^Attributes/).fill('mail = email\ngivenName = firstname');
    await page.getByRole('button', { name: 'Register', exact: true }).click();
    await page.getByRole('status').filter({ hasText: 'Team wiki is registered' }).waitFor();
    const row = page.getByRole('row').filter({ hasText: 'https://wiki.example.com/saml/acs' });
    await row.getByText(/Console, .* by admin:/).waitFor();
    await row.getByRole('link', { name: 'Edit' }).waitFor();
  });

  await step('copy the metadata URL with its button', async () => {
    await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: s.base });
    const button = page.getByRole('button', { name: 'Copy the metadata URL' });
    await button.click();
    await button.filter({ hasText: /Copied|Selected/ }).waitFor();
    const url = await page.locator('#metadata-url').textContent();
    const copied = await page.evaluate(() => navigator.clipboard.readText().catch(() => null));
    if (copied !== null && copied !== url) {
      throw new Error(`the clipboard holds ${copied}, not ${url}`);
    }
  });
});
