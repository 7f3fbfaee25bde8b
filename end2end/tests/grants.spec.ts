import { test, expect, type APIRequestContext, type BrowserContext, type Page } from '@playwright/test';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { PORTAL_ENV, STINT_BINARY, STINT_CONFIG } from '../playwright.config';
import {
  approveRequest,
  hasClientRoleMapping,
  openRequestForm,
  openSignedIn,
  removeClientRoleMapping,
  requestCard,
  submitShownRequestForm,
  type ClientRole,
} from './support';

// The catalog entry `refunds` maps the client role refund-approver of billing-app. No other
// spec requests it, so alice gets that role only through the grants made here.
const ROLE_KEY = 'refunds';
const KEYCLOAK_ROLE: ClientRole = { clientId: 'billing-app', role: 'refund-approver' };

// The scheduler polls every second and is woken by an approval and by End now, so a step
// normally lands within a second or two. The bound leaves room for a slow Keycloak.
const SCHEDULER_TIMEOUT = 20_000;

/** Returns whether Keycloak maps refund-approver to alice directly now. */
function aliceHoldsRole(request: APIRequestContext): Promise<boolean> {
  return hasClientRoleMapping(request, 'alice', KEYCLOAK_ROLE);
}

/** Reloads My requests and returns the status of the grant made from request `id`. */
async function grantStatus(page: Page, id: string): Promise<string | null> {
  await page.goto('/requests');
  return requestCard(page, id).getByTestId('grant').getAttribute('data-grant-status', { timeout: 5_000 });
}

/** Asks for `duration` of the test role as alice and returns the request id. */
async function askForRole(alice: Page, duration: string, justification: string): Promise<string> {
  await openRequestForm(alice, ROLE_KEY);
  return submitShownRequestForm(alice, ROLE_KEY, { duration, justification });
}

/** Waits until the grant of request `id` is active and returns its grant id. */
async function waitUntilActive(alice: Page, id: string): Promise<string> {
  await expect.poll(() => grantStatus(alice, id), { timeout: SCHEDULER_TIMEOUT }).toBe('active');
  const grant = requestCard(alice, id).getByTestId('grant');
  await expect(grant.getByTestId('grant-status')).toHaveText('active');
  const grantId = await grant.getAttribute('data-grant-id');
  expect(grantId, 'data-grant-id of the grant block').toBeTruthy();
  return grantId!;
}

/** Ends alice's open grants of the test role and cancels her pending requests for it, one
 * button per page load, until My requests shows neither button. */
async function endOpenAccess(alice: Page): Promise<void> {
  const cards = alice.locator(`[data-testid="request"][data-role="${ROLE_KEY}"]`);
  for (let round = 0; round < 10; round++) {
    await alice.goto('/requests');
    const button = cards.getByTestId('end-grant').or(cards.getByTestId('cancel-request')).first();
    if ((await button.count()) === 0) return;
    await button.click();
    await expect(alice).toHaveURL(/\/requests$/);
  }
  throw new Error(`My requests still offers to end or cancel a ${ROLE_KEY} request after 10 rounds`);
}

test.describe('grant lifecycle in Keycloak', () => {
  const contexts: BrowserContext[] = [];

  test.beforeEach(async ({ request }) => {
    // A portal stopped during an earlier run can leave the mapping behind. The scheduler
    // would then count it as held before the grant and keep it after the grant's end.
    await removeClientRoleMapping(request, 'alice', KEYCLOAK_ROLE);
  });

  test.afterEach(async ({ browser, request }) => {
    try {
      const alice = await openSignedIn(browser, 'alice', contexts);
      await endOpenAccess(alice);
      await expect
        .poll(() => aliceHoldsRole(request), {
          message: 'refund-approver is removed from alice after the clean-up',
          timeout: SCHEDULER_TIMEOUT,
        })
        .toBe(false);
    } finally {
      for (const context of contexts.splice(0)) await context.close();
    }
  });

  test('approved grant maps the role until its end', async ({ browser, request }) => {
    test.setTimeout(150_000);
    const alice = await openSignedIn(browser, 'alice', contexts);
    const bob = await openSignedIn(browser, 'bob', contexts);
    expect(await aliceHoldsRole(request)).toBe(false);

    const id = await askForRole(alice, '30s', 'refund order 1001');
    await approveRequest(bob, id);
    await waitUntilActive(alice, id);
    expect(await aliceHoldsRole(request)).toBe(true);
    const grant = requestCard(alice, id).getByTestId('grant');
    await expect(grant.getByTestId('end-grant')).toBeVisible();
    await expect(grant.getByTestId('extend-grant')).toBeVisible();

    await expect
      .poll(() => grantStatus(alice, id), { timeout: 90_000, intervals: [1_000, 2_000] })
      .toBe('ended');
    expect(await aliceHoldsRole(request)).toBe(false);
    await expect(grant.getByTestId('grant-status')).toHaveText('ended');
    await expect(grant.getByTestId('grant-outcome')).toHaveText('ended; the mapping was removed');
    await expect(grant.getByTestId('end-grant')).toHaveCount(0);
    await expect(grant.getByTestId('extend-grant')).toHaveCount(0);
  });

  test('End now removes the role at once', async ({ browser, request }) => {
    test.setTimeout(90_000);
    const alice = await openSignedIn(browser, 'alice', contexts);
    const bob = await openSignedIn(browser, 'bob', contexts);

    const id = await askForRole(alice, '1h', 'refund order 1002');
    await approveRequest(bob, id);
    await waitUntilActive(alice, id);
    expect(await aliceHoldsRole(request)).toBe(true);

    const grant = requestCard(alice, id).getByTestId('grant');
    await grant.getByTestId('end-grant').click();
    await expect(alice).toHaveURL(/\/requests$/);
    await expect(alice.getByTestId('flash-success')).toContainText('The grant ends now');
    await expect.poll(() => grantStatus(alice, id), { timeout: SCHEDULER_TIMEOUT }).toBe('ended');
    expect(await aliceHoldsRole(request)).toBe(false);
    await expect(grant.getByTestId('grant-outcome')).toHaveText('ended; the mapping was removed');
    await expect(grant.getByTestId('end-grant')).toHaveCount(0);
  });

  test('extension keeps the role past the first end', async ({ browser, request }) => {
    test.setTimeout(180_000);
    const alice = await openSignedIn(browser, 'alice', contexts);
    const bob = await openSignedIn(browser, 'bob', contexts);

    // The first grant lasts long enough for the extension to be asked for and approved
    // before it ends, and short enough that the test can wait for its end.
    const firstId = await askForRole(alice, '45s', 'refund order 1003');
    await approveRequest(bob, firstId);
    const firstGrantId = await waitUntilActive(alice, firstId);
    await expect(requestCard(alice, firstId).getByTestId('extend-grant')).toHaveAttribute(
      'href',
      `/requests/new?role=${ROLE_KEY}`,
    );

    // Asking for the role again from the catalog offers to extend the active grant.
    await openRequestForm(alice, ROLE_KEY);
    await expect(alice.getByTestId('extension-notice')).toBeVisible();
    await expect(alice.locator('input[name="extends"]')).toHaveValue(firstGrantId);
    await expect(alice.getByTestId('submit-request')).toHaveText('Ask to extend');
    const extensionId = await submitShownRequestForm(alice, ROLE_KEY, {
      duration: '2m',
      justification: 'refund order 1003 needs a second look',
    });
    expect(extensionId).not.toBe(firstId);
    const extension = requestCard(alice, extensionId);
    await expect(extension.getByTestId('request-status')).toHaveText('pending');
    await expect(extension.getByTestId('extends')).toHaveText(`Extends grant ${firstGrantId}`);

    // The extension needs an approval like any request.
    expect(await grantStatus(alice, firstId)).toBe('active');
    await approveRequest(bob, extensionId);
    const extensionGrantId = await waitUntilActive(alice, extensionId);

    // Sample the mapping on every poll until the first grant has ended: it must never be
    // missing while one of the two grants covers it.
    const missingAt: string[] = [];
    await expect
      .poll(
        async () => {
          if (!(await aliceHoldsRole(request))) missingAt.push(new Date().toISOString());
          return grantStatus(alice, firstId);
        },
        { timeout: 90_000, intervals: [1_000, 2_000] },
      )
      .toBe('ended');
    expect(missingAt, 'times at which Keycloak lacked the mapping').toEqual([]);
    expect(await aliceHoldsRole(request)).toBe(true);
    await expect(requestCard(alice, firstId).getByTestId('grant-outcome')).toContainText(
      `the mapping stays for grant ${extensionGrantId}`,
    );
    await expect(extension.getByTestId('grant-status')).toHaveText('active');

    await extension.getByTestId('end-grant').click();
    await expect.poll(() => grantStatus(alice, extensionId), { timeout: SCHEDULER_TIMEOUT }).toBe('ended');
    expect(await aliceHoldsRole(request)).toBe(false);
  });

  test('admin page lists an active grant under upcoming ends', async ({ browser, request }) => {
    test.setTimeout(90_000);
    const alice = await openSignedIn(browser, 'alice', contexts);
    const bob = await openSignedIn(browser, 'bob', contexts);
    const erin = await openSignedIn(browser, 'erin', contexts);

    const id = await askForRole(alice, '1h', 'refund order 1004');
    await approveRequest(bob, id);
    const grantId = await waitUntilActive(alice, id);
    expect(await aliceHoldsRole(request)).toBe(true);

    await erin.goto('/admin');
    const row = (section: string) =>
      erin.getByTestId(section).locator(`[data-testid="grant-row"][data-grant-id="${grantId}"]`);
    await expect(row('grants-ending')).toBeVisible();
    await expect(row('grants-ending')).toHaveAttribute('data-role', ROLE_KEY);
    await expect(row('grants-ending').locator('td').nth(0)).toHaveText('alice');
    await expect(row('grants-ending').locator('td').nth(2)).toHaveText('active');
    await expect(row('grants-starting')).toHaveCount(0);
    await expect(row('grants-attention')).toHaveCount(0);

    await requestCard(alice, id).getByTestId('end-grant').click();
    await expect.poll(() => grantStatus(alice, id), { timeout: SCHEDULER_TIMEOUT }).toBe('ended');
    await erin.goto('/admin');
    await expect(row('grants-ending')).toHaveCount(0);
  });

  test('reconciliation restores a mapping removed by hand', async ({ browser, request }) => {
    test.setTimeout(90_000);
    const alice = await openSignedIn(browser, 'alice', contexts);
    const bob = await openSignedIn(browser, 'bob', contexts);
    const erin = await openSignedIn(browser, 'erin', contexts);

    const id = await askForRole(alice, '1h', 'refund order 1005');
    await approveRequest(bob, id);
    const grantId = await waitUntilActive(alice, id);
    await removeClientRoleMapping(request, 'alice', KEYCLOAK_ROLE);
    expect(await aliceHoldsRole(request)).toBe(false);

    // `stint reconcile` runs the periodic comparison once, on the portal's database.
    const { stdout } = await promisify(execFile)(STINT_BINARY, ['--config', STINT_CONFIG, 'reconcile'], {
      env: { ...process.env, ...PORTAL_ENV, RUST_LOG: 'warn' },
    });
    const restored = /(\d+) mappings restored/.exec(stdout);
    expect(restored, `output of stint reconcile: ${stdout}`).not.toBeNull();
    expect(Number(restored![1]), 'mappings restored').toBeGreaterThanOrEqual(1);
    expect(await aliceHoldsRole(request)).toBe(true);

    await erin.goto('/admin');
    const finding = erin
      .getByTestId('findings')
      .locator(`[data-testid="finding"][data-kind="restored"][data-role="${ROLE_KEY}"]`);
    await expect(finding).toHaveCount(1);
    await expect(finding.locator('td').nth(1)).toHaveText('alice');
    await expect(finding.locator('td').nth(3)).toContainText(`grant ${grantId}`);
    await expect(grantStatus(alice, id)).resolves.toBe('active');
  });
});
