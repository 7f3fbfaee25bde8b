import { test, expect, type Page } from '@playwright/test';
import { signIn } from './support';

/** Opens the request form of `role` from the catalog and fills it in. */
async function fillRequest(
  page: Page,
  role: string,
  fields: { duration?: string; justification?: string; ticket?: string },
): Promise<void> {
  await page.goto('/catalog');
  await page.locator(`[data-testid="catalog-role"][data-role="${role}"]`).getByTestId('request-role').click();
  await expect(page.getByTestId('request-form')).toBeVisible();
  if (fields.duration !== undefined) await page.locator('#duration').fill(fields.duration);
  if (fields.justification !== undefined) await page.locator('#justification').fill(fields.justification);
  if (fields.ticket !== undefined) await page.locator('#ticket').fill(fields.ticket);
}

/** Submits a request and returns its id from My requests. */
async function submitRequest(
  page: Page,
  role: string,
  fields: { duration?: string; justification?: string; ticket?: string },
): Promise<string> {
  await fillRequest(page, role, fields);
  await page.getByTestId('submit-request').click();
  await expect(page).toHaveURL(/\/requests$/);
  await expect(page.getByTestId('flash-success')).toBeVisible();
  const card = page.locator(`[data-testid="request"][data-role="${role}"]`).first();
  const id = await card.getAttribute('data-request-id');
  expect(id).toBeTruthy();
  return id!;
}

async function decide(page: Page, id: string, decision: 'approve' | 'deny', comment = ''): Promise<void> {
  await page.goto('/approvals');
  const item = page.locator(`.queue-item[data-request-id="${id}"]`);
  await expect(item).toBeVisible();
  if (comment) await item.locator('input[name="comment"]').fill(comment);
  await item.getByTestId(decision).click();
  await expect(page).toHaveURL(/\/approvals$/);
}

function requestCard(page: Page, id: string) {
  return page.locator(`[data-testid="request"][data-request-id="${id}"]`);
}

/** Ends the grant of request `id` from My requests and waits until the scheduler has
 * removed the mapping, so later tests (and later runs) start without it. */
async function endGrant(page: Page, id: string): Promise<void> {
  await page.goto('/requests');
  await requestCard(page, id).getByTestId('end-grant').click();
  await expect(page.getByTestId('flash-success')).toContainText('The grant ends now');
  await expect
    .poll(
      async () => {
        await page.goto('/requests');
        return requestCard(page, id).getByTestId('grant').getAttribute('data-grant-status');
      },
      { timeout: 30_000 },
    )
    .toBe('ended');
}

test.describe('requests and approvals', () => {
  test('request is approved by a second persona', async ({ browser }) => {
    const alice = await (await browser.newContext()).newPage();
    await signIn(alice, 'alice');
    const id = await submitRequest(alice, 'prod-deployer', {
      duration: '2h',
      justification: 'deploy release 4.2',
    });
    await expect(requestCard(alice, id).getByTestId('request-status')).toHaveText('pending');

    const bob = await (await browser.newContext()).newPage();
    await signIn(bob, 'bob');
    await bob.goto('/approvals');
    const item = bob.locator(`.queue-item[data-request-id="${id}"]`);
    await expect(item.getByTestId('requester-roles')).toContainText('employee');
    await expect(item.getByTestId('request-requester')).toHaveText('alice');
    await decide(bob, id, 'approve', 'looks right');
    await expect(bob.getByTestId('flash-success')).toContainText('now approved');

    await alice.goto('/requests');
    await expect(requestCard(alice, id).getByTestId('request-status')).toHaveText('approved');
    await expect(requestCard(alice, id)).toContainText('looks right');
    await endGrant(alice, id);
  });

  test('two-approval role needs two different approvers', async ({ browser }) => {
    const alice = await (await browser.newContext()).newPage();
    await signIn(alice, 'alice');
    const id = await submitRequest(alice, 'db-admin', {
      duration: '1h',
      justification: 'restore the orders table',
      ticket: 'OPS-7',
    });

    const bob = await (await browser.newContext()).newPage();
    await signIn(bob, 'bob');
    await decide(bob, id, 'approve');
    await expect(bob.getByTestId('flash-success')).toContainText('now pending');
    await decide(bob, id, 'approve');
    await expect(bob.getByTestId('flash-error')).toContainText('you already approved this request');

    const carol = await (await browser.newContext()).newPage();
    await signIn(carol, 'carol');
    await decide(carol, id, 'approve');
    await expect(carol.getByTestId('flash-success')).toContainText('now approved');

    await alice.goto('/requests');
    await expect(requestCard(alice, id).getByTestId('request-approvals')).toHaveText('2 of 2');
    await expect(requestCard(alice, id).getByTestId('request-status')).toHaveText('approved');
    await endGrant(alice, id);
  });

  test('self-approval is refused', async ({ page }) => {
    await signIn(page, 'bob');
    const id = await submitRequest(page, 'prod-deployer', { justification: 'hotfix' });
    await page.goto('/approvals');
    await expect(page.locator(`.queue-item[data-request-id="${id}"]`)).toHaveCount(0);

    // Post the decision form by hand, as a crafted request would.
    const response = await page.request.post(`/requests/${id}/decide`, {
      form: { decision: 'approve', comment: '' },
      headers: { origin: new URL(page.url()).origin },
      maxRedirects: 0,
    });
    expect(response.status()).toBe(303);
    await page.goto('/approvals');
    await expect(page.getByTestId('flash-error')).toContainText('you cannot decide your own request');

    await page.goto('/requests');
    await expect(requestCard(page, id).getByTestId('request-status')).toHaveText('pending');
    await requestCard(page, id).getByTestId('cancel-request').click();
    await expect(requestCard(page, id).getByTestId('request-status')).toHaveText('cancelled');
  });

  test('approval after expiry is refused', async ({ browser }) => {
    const alice = await (await browser.newContext()).newPage();
    await signIn(alice, 'alice');
    const id = await submitRequest(alice, 'invoice-admin', { justification: 'fix invoice 12' });

    const bob = await (await browser.newContext()).newPage();
    await signIn(bob, 'bob');
    await bob.goto('/approvals');
    const item = bob.locator(`.queue-item[data-request-id="${id}"]`);
    await expect(item).toBeVisible();
    // The role's approval_timeout is 3 s.
    await bob.waitForTimeout(4_000);
    await item.getByTestId('approve').click();
    await expect(bob.getByTestId('flash-error')).toContainText('expired');

    await alice.goto('/requests');
    await expect(requestCard(alice, id).getByTestId('request-status')).not.toHaveText('approved');
  });

  test('failed submit names the limit and keeps the values', async ({ page }) => {
    await signIn(page, 'alice');
    await fillRequest(page, 'prod-deployer', {
      duration: '9h',
      justification: '<b>keep me</b>',
    });
    await page.getByTestId('submit-request').click();
    await expect(page).toHaveURL(/\/requests\/new\?role=prod-deployer/);
    await expect(page.getByTestId('error-duration')).toHaveText(
      'prod-deployer allows at most 8h; you asked for 9h',
    );
    await expect(page.locator('#duration')).toHaveValue('9h');
    await expect(page.locator('#justification')).toHaveValue('<b>keep me</b>');
  });

  test('fractional duration is rejected', async ({ page }) => {
    await signIn(page, 'alice');
    await fillRequest(page, 'prod-deployer', { duration: '500ms', justification: 'deploy' });
    await page.getByTestId('submit-request').click();
    await expect(page).toHaveURL(/\/requests\/new\?role=prod-deployer/);
    await expect(page.getByTestId('error-duration')).toHaveText(
      '`500ms` is not a whole number of seconds: ask for at least 1s, in whole seconds, like 90s, 30m or 2h',
    );
    await expect(page.locator('#duration')).toHaveValue('500ms');
  });

  test('ticket must match the pattern', async ({ page }) => {
    await signIn(page, 'alice');
    await fillRequest(page, 'db-admin', { justification: 'x', ticket: 'ops 7' });
    await page.getByTestId('submit-request').click();
    await expect(page.getByTestId('error-ticket')).toContainText('does not match the pattern');
  });

  test('justification HTML is shown as text', async ({ browser }) => {
    const alice = await (await browser.newContext()).newPage();
    await signIn(alice, 'alice');
    const id = await submitRequest(alice, 'prod-deployer', {
      justification: '<img src=x onerror=alert(1)>',
    });
    await expect(requestCard(alice, id).getByTestId('request-justification')).toHaveText(
      '<img src=x onerror=alert(1)>',
    );
    await expect(requestCard(alice, id).locator('img')).toHaveCount(0);
    await requestCard(alice, id).getByTestId('cancel-request').click();
  });

  test('catalog hides roles the user may not request', async ({ page }) => {
    await signIn(page, 'frank');
    await page.goto('/catalog');
    await expect(page.locator('[data-role="support-viewer"]')).toBeVisible();
    await expect(page.locator('[data-role="prod-deployer"]')).toHaveCount(0);

    const response = await page.goto('/requests/new?role=prod-deployer');
    expect(response?.status()).toBe(200);
    await expect(page.getByTestId('unknown-role')).toBeVisible();
  });

  test('catalog search filters roles', async ({ page }) => {
    await signIn(page, 'alice');
    await page.goto('/catalog?q=database');
    await expect(page.getByTestId('catalog-role')).toHaveCount(1);
    await expect(page.locator('[data-role="db-admin"]')).toBeVisible();
  });

  test('auto-approve group skips review', async ({ page }) => {
    await signIn(page, 'frank');
    const id = await submitRequest(page, 'support-viewer', { duration: '1h' });
    await expect(page.getByTestId('flash-success')).toContainText('approved automatically');
    await expect(requestCard(page, id).getByTestId('request-status')).toHaveText('approved');
    await endGrant(page, id);
  });

  test('requester cannot decide through the form handler', async ({ page }) => {
    await signIn(page, 'alice');
    const response = await page.request.post('/requests/00000000-0000-0000-0000-000000000000/decide', {
      form: { decision: 'approve' },
      headers: { origin: new URL(page.url()).origin },
      maxRedirects: 0,
    });
    expect(response.status()).toBe(403);
    expect(await response.text()).toContain('deciding requests needs the approver persona');
    // No message is left waiting for the next page.
    await page.goto('/requests');
    await expect(page.getByTestId('flash-error')).toHaveCount(0);
  });

  test('request without any approver is flagged to admins', async ({ browser }) => {
    const dave = await (await browser.newContext()).newPage();
    await signIn(dave, 'dave');
    const id = await submitRequest(dave, 'ops-lead', { justification: 'incident review' });

    const erin = await (await browser.newContext()).newPage();
    await signIn(erin, 'erin');
    await erin.goto('/admin');
    const flagged = erin.locator('[data-testid="flagged-request"]', {
      has: erin.locator(`[data-request-id="${id}"]`),
    });
    await expect(flagged.getByTestId('flag-reason')).toContainText(
      'no approver other than the requester is left for ops-lead',
    );

    await dave.goto('/requests');
    await expect(requestCard(dave, id)).toContainText('request flagged for admin');
    await requestCard(dave, id).getByTestId('cancel-request').click();
  });
});
