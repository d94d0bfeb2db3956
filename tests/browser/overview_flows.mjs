// The overview of an install that is not set up yet, in one browser: the first-run checklist
// says what is done, what is next and why the rest waits; the sign-in chart is drawn (inline
// SVG, coloured by the stylesheet, its numbers in a table); following the checklist's link to
// connect Microsoft 365 and coming back shows the checklist one step further. Run by
// tests/it/browser.rs, which configures the app registration (not connected) and fails two
// sign-ins before the script starts.

import { atPath, firstSignIn, run, settings } from './lib.mjs';

const s = settings();

/** Fails unless the checklist item of `step` is in `state`. */
async function expectStep(page, step, state) {
  const item = page.locator(`#step-${step}`);
  await item.waitFor();
  const got = await item.getAttribute('data-state');
  if (got !== state) {
    throw new Error(`step ${step} is ${got}, expected ${state}: ${await item.innerText()}`);
  }
  return item;
}

await run('overview_flows', async (page, step) => {
  await firstSignIn(page, step, s);

  await step('the checklist is open: registration done, connecting next, the rest waiting', async () => {
    const checklist = page.locator('#setup-checklist');
    if ((await checklist.getAttribute('open')) === null) {
      throw new Error('the checklist of an install not set up is folded');
    }
    await checklist.getByText('Set up idbridge: 1 of 6 steps done').waitFor();
    await expectStep(page, 'app-registration', 'done');
    const connect = await expectStep(page, 'connect', 'to-do');
    await connect.getByText('next', { exact: true }).waitFor();
    const importUsers = await expectStep(page, 'import-users', 'blocked');
    await importUsers.getByText('Waiting for “Connect Microsoft 365”.').waitFor();
    await expectStep(page, 'test-sign-in', 'blocked');
  });

  await step('the sign-in chart draws the two failed sign-ins, with its numbers', async () => {
    const figure = page.locator('#chart-sign-ins-24h');
    await figure.getByText('Sign-ins, last 24 hours').waitFor();
    await figure.getByText('0 sign-ins, 0 refused, 2 failed in the last 24 hours (UTC).').waitFor();
    const chart = figure.getByRole('img', { name: /Sign-ins, last 24 hours/ });
    await chart.waitFor();
    const bars = figure.locator('svg rect.failed');
    if ((await bars.count()) < 1) {
      throw new Error('no bar for the failed sign-ins');
    }
    const box = await bars.first().boundingBox();
    if (!box || box.height < 5 || box.width < 2) {
      throw new Error(`the failed sign-ins' bar is not drawn: ${JSON.stringify(box)}`);
    }
    const fill = await bars.first().evaluate((el) => getComputedStyle(el).fill);
    if (fill !== 'rgb(179, 38, 30)') {
      throw new Error(`the bar is not coloured by the stylesheet: ${fill}`);
    }
    const tooltip = await bars.first().evaluate((el) => el.parentElement.querySelector('title').textContent);
    if (!tooltip.endsWith('0 signed in, 0 refused, 2 failed')) {
      throw new Error(`the bar's title does not give its numbers: ${tooltip}`);
    }
    await figure.getByText('Numbers').click();
    const total = figure.getByRole('row', { name: /^Total/ });
    const cells = await total.getByRole('cell').allInnerTexts();
    if (cells.join(' ') !== '0 0 2') {
      throw new Error(`the table's totals are ${cells.join(' ')}`);
    }
  });

  await step('follow the step to connect Microsoft 365 with the app\'s own credentials', async () => {
    await page.getByRole('link', { name: 'Connect Microsoft 365', exact: true }).click();
    await atPath(page, '/admin/m365');
    await page.getByRole('button', { name: "Connect with the app's own credentials" }).click();
    await page.getByRole('status').filter({ hasText: 'Connected to tenant' }).waitFor();
  });

  await step('back on the overview, the checklist moved on to importing users', async () => {
    await page.getByRole('link', { name: 'idbridge', exact: true }).click();
    await atPath(page, '/admin');
    await page.locator('#setup-checklist').getByText('Set up idbridge: 2 of 6 steps done').waitFor();
    await expectStep(page, 'connect', 'done');
    const importUsers = await expectStep(page, 'import-users', 'to-do');
    await importUsers.getByText('next', { exact: true }).waitFor();
    await expectStep(page, 'bind-users', 'blocked');
  });
});
