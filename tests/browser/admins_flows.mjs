// A full admin manages another admin in the console: disables them (after confirming), enables
// them again and resets their password (shown once). Run by tests/it/browser.rs, which signs the
// other admin (bob) in beforehand and checks afterwards that his session ended and the events.

import { atPath, firstSignIn, run, settings } from './lib.mjs';

const s = settings();

await run('admins_flows', async (page, step, dialogs) => {
  await firstSignIn(page, step, s);

  const bobRow = () => page.locator('tr[data-admin="bob"]');

  await step('the admins list has buttons for bob, none on one’s own row', async () => {
    await page.getByRole('link', { name: 'Admins & API keys' }).click();
    await atPath(page, '/admin/settings');
    await bobRow().getByRole('button', { name: 'Disable' }).waitFor();
    const own = page.locator(`tr[data-admin="${s.admin}"]`);
    await own.getByText('(you)').waitFor();
    if ((await own.getByRole('button').count()) !== 0) {
      throw new Error('one’s own row has buttons');
    }
  });

  await step('disable bob after confirming: shown as disabled', async () => {
    const asked = dialogs.length;
    await bobRow().getByRole('button', { name: 'Disable' }).click();
    await page.getByRole('status').filter({ hasText: 'Admin bob was disabled' }).waitFor();
    await bobRow().getByText('disabled', { exact: true }).waitFor();
    const question = dialogs.slice(asked).join(' | ');
    if (!question.includes('bob')) {
      throw new Error(`the confirmation did not name the admin: ${question || '(none asked)'}`);
    }
  });

  await step('enable bob again', async () => {
    await bobRow().getByRole('button', { name: 'Enable' }).click();
    await page.getByRole('status').filter({ hasText: 'Admin bob was enabled' }).waitFor();
    await bobRow().getByText('active', { exact: true }).waitFor();
  });

  await step('reset bob’s password: a one-time password shown once', async () => {
    const asked = dialogs.length;
    await bobRow().getByRole('button', { name: 'Reset password' }).click();
    await page.getByText('Password of admin “bob” reset.').waitFor();
    const password = await page.locator('#reset-admin-password').innerText();
    if (password.length < 12) {
      throw new Error(`the one-time password looks too short: ${password}`);
    }
    if (!dialogs.slice(asked).join(' | ').includes('bob')) {
      throw new Error('the reset was not confirmed first');
    }
    await bobRow().getByText('one-time (not yet changed)').waitFor();
  });
});
