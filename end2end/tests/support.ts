import { expect, type APIRequestContext, type Browser, type BrowserContext, type Page } from '@playwright/test';
import { KEYCLOAK_URL, PORTAL_URL } from '../playwright.config';

export const PERSONAS = {
  alice: { password: 'alice-pw', name: 'Alice', nav: ['Home', 'Catalog', 'My requests', 'My access'] },
  frank: { password: 'frank-pw', name: 'Frank', nav: ['Home', 'Catalog', 'My requests', 'My access'] },
  bob: { password: 'bob-pw', name: 'Bob', nav: ['Home', 'Catalog', 'My requests', 'My access', 'Approvals'] },
  carol: { password: 'carol-pw', name: 'Carol', nav: ['Home', 'Catalog', 'My requests', 'My access', 'Approvals'] },
  dave: { password: 'dave-pw', name: 'Dave', nav: ['Home', 'Catalog', 'My requests', 'My access', 'Audit'] },
  erin: { password: 'erin-pw', name: 'Erin', nav: ['Home', 'Catalog', 'My requests', 'My access', 'Admin'] },
} as const;

export type Username = keyof typeof PERSONAS;

/** Fills in and submits Keycloak's login form, which the page must be showing. */
export async function submitKeycloakLogin(page: Page, username: Username): Promise<void> {
  await expect(page).toHaveURL(new RegExp(`^${KEYCLOAK_URL}/realms/stint/`));
  await page.locator('#username').fill(username);
  await page.locator('#password').fill(PERSONAS[username].password);
  await page.locator('#kc-login').click();
}

/** Signs in from the portal's home page through Keycloak and waits for the portal again. */
export async function signIn(page: Page, username: Username): Promise<void> {
  await page.goto('/');
  await page.getByTestId('sign-in').click();
  await submitKeycloakLogin(page, username);
  await expect(page).toHaveURL(`${PORTAL_URL}/`);
  await expect(page.getByTestId('signed-in-as')).toContainText(PERSONAS[username].name);
}

/** Returns the headers of Keycloak Admin API calls, with a fresh token of the master realm's
 * `admin` user (the admin that dev/keycloak.sh creates). */
export async function keycloakAdminHeaders(request: APIRequestContext): Promise<Record<string, string>> {
  const token = await request.post(`${KEYCLOAK_URL}/realms/master/protocol/openid-connect/token`, {
    form: { grant_type: 'password', client_id: 'admin-cli', username: 'admin', password: 'admin' },
  });
  expect(token.status()).toBe(200);
  const accessToken = (await token.json()).access_token as string;
  return { authorization: `Bearer ${accessToken}` };
}

/** Returns the Keycloak id of `username` in the realm `stint`. */
export async function keycloakUserId(
  request: APIRequestContext,
  headers: Record<string, string>,
  username: Username,
): Promise<string> {
  const users = await request.get(
    `${KEYCLOAK_URL}/admin/realms/stint/users?username=${username}&exact=true`,
    { headers },
  );
  expect(users.status()).toBe(200);
  const [user] = await users.json();
  expect(user?.id, `user ${username} in realm stint`).toBeTruthy();
  return user.id as string;
}

/** Signs a user out of every Keycloak session through the admin API, as the admin
 * console's "Sign out" does. */
export async function adminSignOut(request: APIRequestContext, username: Username): Promise<void> {
  const headers = await keycloakAdminHeaders(request);
  const userId = await keycloakUserId(request, headers, username);
  const logout = await request.post(`${KEYCLOAK_URL}/admin/realms/stint/users/${userId}/logout`, {
    headers,
  });
  expect(logout.status()).toBe(204);
}

/** A role of a Keycloak client, as the Admin API's role-mapping endpoints take it. */
export interface ClientRole {
  clientId: string;
  role: string;
}

/** Returns the URL of `username`'s direct role mappings of `role`'s client, and the role's
 * representation for a DELETE on that URL. */
async function clientRoleMappingUrl(
  request: APIRequestContext,
  headers: Record<string, string>,
  username: Username,
  role: ClientRole,
): Promise<{ url: string; representation: { id: string; name: string } }> {
  const clients = await request.get(
    `${KEYCLOAK_URL}/admin/realms/stint/clients?clientId=${encodeURIComponent(role.clientId)}`,
    { headers },
  );
  expect(clients.status()).toBe(200);
  const [client] = await clients.json();
  expect(client?.id, `client ${role.clientId} in realm stint`).toBeTruthy();
  const found = await request.get(
    `${KEYCLOAK_URL}/admin/realms/stint/clients/${client.id}/roles/${encodeURIComponent(role.role)}`,
    { headers },
  );
  expect(found.status()).toBe(200);
  const { id, name } = await found.json();
  const userId = await keycloakUserId(request, headers, username);
  return {
    url: `${KEYCLOAK_URL}/admin/realms/stint/users/${userId}/role-mappings/clients/${client.id}`,
    representation: { id, name },
  };
}

/** Returns whether Keycloak maps `role` to `username` directly (not through a group or a
 * composite role), as read through the Admin API. */
export async function hasClientRoleMapping(
  request: APIRequestContext,
  username: Username,
  role: ClientRole,
): Promise<boolean> {
  const headers = await keycloakAdminHeaders(request);
  const { url } = await clientRoleMappingUrl(request, headers, username, role);
  const mappings = await request.get(url, { headers });
  expect(mappings.status()).toBe(200);
  const names = ((await mappings.json()) as { name: string }[]).map((mapping) => mapping.name);
  return names.includes(role.role);
}

/** Removes the direct mapping of `role` from `username` through the Admin API. Keycloak
 * returns 204 whether or not the mapping existed. */
export async function removeClientRoleMapping(
  request: APIRequestContext,
  username: Username,
  role: ClientRole,
): Promise<void> {
  const headers = await keycloakAdminHeaders(request);
  const { url, representation } = await clientRoleMappingUrl(request, headers, username, role);
  const removed = await request.delete(url, { headers, data: [representation] });
  expect(removed.status()).toBe(204);
}

/** Opens a page in a new browser context of its own and signs `username` in there. The
 * context is added to `contexts`, so the caller can close it. */
export async function openSignedIn(
  browser: Browser,
  username: Username,
  contexts: BrowserContext[],
): Promise<Page> {
  const context = await browser.newContext();
  contexts.push(context);
  const page = await context.newPage();
  await signIn(page, username);
  return page;
}

/** Returns the card of request `id` on My requests. */
export function requestCard(page: Page, id: string) {
  return page.locator(`[data-testid="request"][data-request-id="${id}"]`);
}

/** Submits the request form that the page shows and returns the new request's id, read
 * from the newest card of `role` on My requests. */
export async function submitShownRequestForm(
  page: Page,
  role: string,
  fields: { duration?: string; justification?: string; ticket?: string },
): Promise<string> {
  await expect(page.getByTestId('request-form')).toBeVisible();
  if (fields.duration !== undefined) await page.locator('#duration').fill(fields.duration);
  if (fields.justification !== undefined) await page.locator('#justification').fill(fields.justification);
  if (fields.ticket !== undefined) await page.locator('#ticket').fill(fields.ticket);
  await page.getByTestId('submit-request').click();
  // The form posts to /requests/submit, which redirects to /requests on success and back to
  // the form on a field error. Any other response stays at /requests/submit with its message.
  await expect(page).not.toHaveURL(/\/requests\/new\?/);
  expect(new URL(page.url()).pathname, `page after the submit: ${await page.locator('body').innerText()}`).toBe(
    '/requests',
  );
  await expect(page.getByTestId('flash-success')).toBeVisible();
  const id = await page.locator(`[data-testid="request"][data-role="${role}"]`).first().getAttribute('data-request-id');
  expect(id, `id of the newest ${role} request`).toBeTruthy();
  return id!;
}

/** Opens the request form of `role` from the catalog. */
export async function openRequestForm(page: Page, role: string): Promise<void> {
  await page.goto('/catalog');
  await page.locator(`[data-testid="catalog-role"][data-role="${role}"]`).getByTestId('request-role').click();
  await expect(page.getByTestId('request-form')).toBeVisible();
}

/** Approves request `id` from the Approvals page, which must list it. */
export async function approveRequest(page: Page, id: string): Promise<void> {
  await page.goto('/approvals');
  const item = page.locator(`.queue-item[data-request-id="${id}"]`);
  await expect(item).toBeVisible();
  await item.getByTestId('approve').click();
  await expect(page).toHaveURL(/\/approvals$/);
  await expect(page.getByTestId('flash-success')).toContainText('now approved');
}

/** Removes the direct mapping of realm role `role` from `username` through the Admin API.
 * Keycloak returns 204 whether or not the mapping existed. */
export async function removeRealmRoleMapping(
  request: APIRequestContext,
  username: Username,
  role: string,
): Promise<void> {
  const headers = await keycloakAdminHeaders(request);
  const found = await request.get(`${KEYCLOAK_URL}/admin/realms/stint/roles/${encodeURIComponent(role)}`, {
    headers,
  });
  expect(found.status(), `realm role ${role} in realm stint`).toBe(200);
  const { id, name } = await found.json();
  const userId = await keycloakUserId(request, headers, username);
  const removed = await request.delete(`${KEYCLOAK_URL}/admin/realms/stint/users/${userId}/role-mappings/realm`, {
    headers,
    data: [{ id, name }],
  });
  expect(removed.status()).toBe(204);
}

/** Reloads My requests and returns the status of the grant made from request `id`, or null
 * while the request has no grant. */
export async function grantStatusOf(page: Page, id: string): Promise<string | null> {
  await page.goto('/requests');
  const grant = requestCard(page, id).getByTestId('grant');
  if ((await grant.count()) === 0) return null;
  return grant.getAttribute('data-grant-status');
}

/** Ends every open grant of `role` and cancels every pending request for it on the page's
 * My requests, one button per page load, until neither button is left. Then it waits until
 * the scheduler has ended each of those grants. */
export async function endOpenAccess(page: Page, role: string): Promise<void> {
  const cards = page.locator(`[data-testid="request"][data-role="${role}"]`);
  const button = cards.getByTestId('end-grant').or(cards.getByTestId('cancel-request')).first();
  for (let round = 0; round < 10; round++) {
    await page.goto('/requests');
    if ((await button.count()) === 0) break;
    await button.click();
    await expect(page).toHaveURL(/\/requests$/);
    await expect(page.getByTestId('flash-error')).toHaveCount(0);
  }
  await expect(button, `an end or cancel button of ${role} after 10 rounds`).toHaveCount(0);
  const final = ['ended', 'cancelled', 'refused', 'failed'].map((status) => `:not([data-grant-status="${status}"])`);
  const unfinished = cards.locator(`[data-testid="grant"]${final.join('')}`);
  await expect
    .poll(
      async () => {
        await page.goto('/requests');
        return unfinished.count();
      },
      { message: `grants of ${role} that have not reached a final status`, timeout: 30_000 },
    )
    .toBe(0);
}
