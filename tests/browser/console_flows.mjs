// An admin's day in the console, in one browser: first sign-in with the forced password change,
// a new user, binding it and watching it become bound, changing the attribute export and finding
// the event, API keys, and sign-out. Run by tests/it/browser.rs, which connects the server to the
// Graph fake (and slows the first Graph requests down, so the binding is seen while pending) and
// checks the server's state afterwards.

import { atPath, firstSignIn, run, settings } from './lib.mjs';

const s = settings();

await run('console_flows', async (page, step, dialogs) => {
  await firstSignIn(page, step, s);

  await step('create a user: lands on its detail page, unbound', async () => {
    await page.getByRole('link', { name: 'Users', exact: true }).click();
    await atPath(page, '/admin/users');
    await page.getByRole('link', { name: 'New user' }).click();
    await atPath(page, '/admin/users/new');
    // Labels read "Username (username) *"; "Manager (username)" also contains "username".
    await page.getByLabel(/^Username/).fill('dana');
    await page.getByLabel(/^Company email/i).fill('dana@contoso.com');
    await page.getByLabel(/^First name/i).fill('Dana');
    await page.getByLabel(/^Last name/i).fill('Scully');
    await page.getByRole('button', { name: 'Create user' }).click();
    await page.getByRole('status').filter({ hasText: 'User dana was created' }).waitFor();
    const heading = page.getByRole('heading', { level: 1 });
    await heading.getByText('Dana Scully').waitFor();
    await heading.getByText('unbound', { exact: true }).waitFor();
    await page.getByText('dana@contoso.com').first().waitFor();
  });

  await step('the users list finds it', async () => {
    await page.getByRole('link', { name: 'Users', exact: true }).click();
    await page.getByRole('searchbox', { name: 'Search' }).fill('dana');
    await page.getByRole('button', { name: 'Search' }).click();
    await page.waitForURL((url) => url.searchParams.get('q') === 'dana');
    await page.getByRole('row').filter({ hasText: 'dana@contoso.com' }).getByText('unbound').waitFor();
  });

  await step('bind it: pending, then bound without reloading the page', async () => {
    await page.getByRole('link', { name: 'Binding', exact: true }).click();
    await atPath(page, '/admin/binding');
    await page.getByRole('checkbox', { name: 'Select dana' }).check();
    await page.getByRole('button', { name: 'Bind selected', exact: true }).click();
    await page.getByRole('status').filter({ hasText: 'Binding 1 user(s): dana' }).waitFor();
    const row = page.getByRole('row').filter({ hasText: 'dana@contoso.com' });
    await row.getByText('pending', { exact: true }).waitFor();
    let navigations = 0;
    const count = (frame) => {
      if (frame === page.mainFrame()) navigations += 1;
    };
    page.on('framenavigated', count);
    // The page asks for its rows every 2 s while something is on its way to Microsoft 365.
    await row.getByText('bound', { exact: true }).waitFor({ timeout: 20_000 });
    page.off('framenavigated', count);
    if (navigations) {
      throw new Error(`the page was reloaded ${navigations} time(s) instead of refreshing its rows`);
    }
    await row.getByRole('button', { name: 'Unbind' }).waitFor();
  });

  await step('export the department to Microsoft 365', async () => {
    await page.getByRole('link', { name: 'Microsoft 365', exact: true }).click();
    await atPath(page, '/admin/m365');
    await page.getByRole('heading', { name: 'Attribute export' }).waitFor();
    await page.getByText('Selecting Export immediately overwrites').waitFor();
    const department = page.getByRole('combobox', { name: 'Direction of Department' });
    await department.selectOption('export');
    await page.getByRole('button', { name: 'Save the export table' }).click();
    await page.getByRole('status').filter({ hasText: 'department: exclude → export' }).waitFor();
    await department.waitFor();
    if ((await department.inputValue()) !== 'export') {
      throw new Error('after saving, the department row does not show export');
    }
  });

  await step('find the change among the events, by admin:root', async () => {
    await page.getByRole('link', { name: 'Events', exact: true }).click();
    await atPath(page, '/admin/events');
    await page.getByLabel('Type', { exact: true }).selectOption('integrationattribute_include');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.waitForURL((url) => url.searchParams.get('type') === 'integrationattribute_include');
    const rows = page.getByRole('row').filter({ hasText: 'integrationattribute_include' });
    await rows.filter({ hasText: 'admin:root' }).filter({ hasText: 'department' }).first().waitFor();
    const others = await page.getByRole('row').filter({ hasNotText: 'integrationattribute_include' }).count();
    if (others !== 1) {
      throw new Error(`the filter let ${others - 1} other event(s) through`);
    }
  });

  await step('create an API key: shown once, listed as active', async () => {
    await page.getByRole('link', { name: 'Admins & API keys' }).click();
    await atPath(page, '/admin/settings');
    const form = page.locator('form').filter({ has: page.getByLabel('New key name') });
    await form.getByLabel('New key name').fill('browser test');
    await form.getByLabel('Role').selectOption('read_only');
    await form.getByRole('button', { name: 'Create API key' }).click();
    await page.getByText('New API key “browser test”').waitFor();
    const key = await page.locator('#new-api-key').innerText();
    if (!key.startsWith('idb_')) {
      throw new Error(`the new key does not look like a key: ${key}`);
    }
    const row = page.getByRole('row').filter({ hasText: 'browser test' });
    await row.getByText('read_only').waitFor();
    await row.getByText('active').waitFor();
  });

  await step('revoke it after confirming', async () => {
    const row = page.getByRole('row').filter({ hasText: 'browser test' });
    const asked = dialogs.length;
    await row.getByRole('button', { name: 'Revoke' }).click();
    await page.getByRole('row').filter({ hasText: 'browser test' }).getByText('revoked').waitFor();
    const question = dialogs.slice(asked).join(' | ');
    if (!question.includes('browser test')) {
      throw new Error(`the confirmation did not name the key: ${question || '(none asked)'}`);
    }
  });

  await step('sign out: the console is closed again', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await atPath(page, '/admin/login');
    await page.goto(`${s.base}/admin`);
    await atPath(page, '/admin/login');
    await page.getByRole('heading', { name: 'Admin console' }).waitFor();
  });
});
