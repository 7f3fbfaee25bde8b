import { expect, type APIRequestContext, type Page } from '@playwright/test';
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

/** Signs a user out of every Keycloak session through the admin API, as the admin
 * console's "Sign out" does. */
export async function adminSignOut(request: APIRequestContext, username: Username): Promise<void> {
  const token = await request.post(`${KEYCLOAK_URL}/realms/master/protocol/openid-connect/token`, {
    form: { grant_type: 'password', client_id: 'admin-cli', username: 'admin', password: 'admin' },
  });
  expect(token.status()).toBe(200);
  const accessToken = (await token.json()).access_token as string;
  const headers = { authorization: `Bearer ${accessToken}` };
  const users = await request.get(
    `${KEYCLOAK_URL}/admin/realms/stint/users?username=${username}&exact=true`,
    { headers },
  );
  expect(users.status()).toBe(200);
  const [user] = await users.json();
  const logout = await request.post(`${KEYCLOAK_URL}/admin/realms/stint/users/${user.id}/logout`, {
    headers,
  });
  expect(logout.status()).toBe(204);
}
