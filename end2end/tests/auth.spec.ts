import { test, expect } from '@playwright/test';
import { KEYCLOAK_URL, PORTAL_URL } from '../playwright.config';
import { PERSONAS, adminSignOut, signIn, submitKeycloakLogin, type Username } from './support';

test.describe('sign-in', () => {
  for (const username of Object.keys(PERSONAS) as Username[]) {
    test(`${username} sees the navigation of their personas`, async ({ page }) => {
      await signIn(page, username);
      const links = page.getByTestId('main-nav').getByRole('link');
      await expect(links).toHaveText([...PERSONAS[username].nav]);
    });
  }

  test('session cookie is opaque, HttpOnly and SameSite=Lax', async ({ page, context }) => {
    await page.goto('/');
    await page.getByTestId('sign-in').click();
    await expect(page).toHaveURL(new RegExp(`^${KEYCLOAK_URL}/`));
    const before = (await context.cookies(PORTAL_URL)).find((c) => c.name === 'stint_session');
    expect(before).toBeDefined();
    await submitKeycloakLogin(page, 'alice');
    await expect(page.getByTestId('signed-in-as')).toBeVisible();

    const after = (await context.cookies(PORTAL_URL)).find((c) => c.name === 'stint_session');
    expect(after?.httpOnly).toBe(true);
    expect(after?.sameSite).toBe('Lax');
    expect(after?.value.length).toBeLessThan(40);
    // A new id at sign-in: the id from before sign-in never becomes a signed-in session.
    expect(after?.value).not.toBe(before?.value);
  });

  test('protected page returns there after sign-in', async ({ page }) => {
    await page.goto('/me');
    await submitKeycloakLogin(page, 'alice');
    await expect(page).toHaveURL(`${PORTAL_URL}/me`);
    await expect(page.getByTestId('username')).toHaveText('alice');
    await expect(page.getByTestId('groups')).toContainText('/engineering');
  });

  test('returnTo to another origin is ignored', async ({ page }) => {
    await page.goto('/auth/login?returnTo=https://evil.example');
    await submitKeycloakLogin(page, 'alice');
    await expect(page).toHaveURL(`${PORTAL_URL}/`);
  });

  test('protocol-relative returnTo is ignored', async ({ page }) => {
    await page.goto('/auth/login?returnTo=//evil.example/path');
    await submitKeycloakLogin(page, 'alice');
    await expect(page).toHaveURL(`${PORTAL_URL}/`);
  });
});

test.describe('access control', () => {
  test('requester gets 403 on the approvals page', async ({ page }) => {
    await signIn(page, 'alice');
    const response = await page.goto('/approvals');
    expect(response?.status()).toBe(403);
    await expect(page.getByTestId('forbidden')).toContainText('approver');
    await expect(page.getByTestId('approvals-page')).toHaveCount(0);
  });

  test('approver opens the approvals page', async ({ page }) => {
    await signIn(page, 'bob');
    const response = await page.goto('/approvals');
    expect(response?.status()).toBe(200);
    await expect(page.getByTestId('approvals-page')).toBeVisible();
  });

  test('auditor cannot open the admin page', async ({ page }) => {
    await signIn(page, 'dave');
    const response = await page.goto('/admin');
    expect(response?.status()).toBe(403);
  });

  test('signed-out user is sent to Keycloak', async ({ page }) => {
    await page.goto('/audit');
    await expect(page).toHaveURL(new RegExp(`^${KEYCLOAK_URL}/realms/stint/`));
  });

  test('current-user server function answers per caller', async ({ page }) => {
    const anonymous = await page.request.post('/api/current_user', {
      headers: { origin: PORTAL_URL },
    });
    expect(anonymous.status()).toBe(200);
    expect(await anonymous.json()).toBeNull();

    await signIn(page, 'erin');
    const signedIn = await page.request.post('/api/current_user', {
      headers: { origin: PORTAL_URL },
    });
    expect(signedIn.status()).toBe(200);
    const user = await signedIn.json();
    expect(user.username).toBe('erin');
    expect(user.personas).toContain('Admin');
  });
});

test.describe('sign-out', () => {
  test('logout ends the portal and Keycloak sessions', async ({ page }) => {
    await signIn(page, 'alice');
    await page.getByTestId('sign-out').click();
    await expect(page).toHaveURL(`${PORTAL_URL}/`);
    await expect(page.getByTestId('sign-in')).toBeVisible();

    // Keycloak shows the password field again, so its SSO session is gone too.
    await page.getByTestId('sign-in').click();
    await expect(page.locator('#password')).toBeVisible();
  });

  test('admin sign-out in Keycloak ends the portal session', async ({ page, request }) => {
    await signIn(page, 'frank');
    await adminSignOut(request, 'frank');
    await expect(async () => {
      await page.goto('/me');
      await expect(page).toHaveURL(new RegExp(`^${KEYCLOAK_URL}/`));
    }).toPass({ timeout: 15_000 });
  });
});

test.describe('forgery and failures', () => {
  test('cross-site form post is rejected', async ({ page }) => {
    await signIn(page, 'alice');
    // A page on another origin, served by the browser's router, posts the sign-out form.
    await page.route('http://evil.test/**', (route) =>
      route.fulfill({
        contentType: 'text/html',
        body: `<form id="f" method="post" action="${PORTAL_URL}/auth/logout"></form>
               <button id="go" onclick="document.getElementById('f').submit()">go</button>`,
      }),
    );
    await page.goto('http://evil.test/attack');
    const [response] = await Promise.all([
      page.waitForResponse(`${PORTAL_URL}/auth/logout`),
      page.evaluate(() => (document.getElementById('f') as HTMLFormElement).submit()).catch(() => {}),
    ]);
    expect(response.status()).toBe(403);
    expect(await response.text()).toContain('Cross-site request rejected');

    await page.goto('/');
    await expect(page.getByTestId('signed-in-as')).toBeVisible();
  });

  test('cross-origin server function call is rejected', async ({ page }) => {
    const response = await page.request.post('/api/current_user', {
      headers: { origin: 'http://evil.test' },
    });
    expect(response.status()).toBe(403);
  });

  test('server function checks the persona', async ({ page }) => {
    const signedOut = await page.request.post('/api/grant_status', { headers: { origin: PORTAL_URL } });
    expect(signedOut.status()).toBe(401);
    expect(await signedOut.json()).toBe('SignedOut');

    await signIn(page, 'alice');
    const forbidden = await page.request.post('/api/grant_status', { headers: { origin: PORTAL_URL } });
    expect(forbidden.status()).toBe(403);
    expect(await forbidden.json()).toEqual({ Forbidden: 'Admin' });
  });

  test('mismatched state shows a readable error', async ({ page }) => {
    const response = await page.goto('/auth/callback?code=abc&state=forged');
    expect(response?.status()).toBe(200);
    await expect(page).toHaveURL(/\/signin-error\?reason=state_mismatch/);
    await expect(page.getByTestId('signin-error')).toContainText('could not be matched');
    await expect(page.getByTestId('retry-sign-in')).toBeVisible();
  });

  test('denied consent shows a readable error', async ({ page }) => {
    await page.goto('/auth/login');
    const state = new URL(page.url()).searchParams.get('state');
    expect(state).toBeTruthy();
    await page.goto(`/auth/callback?error=access_denied&state=${state}`);
    await expect(page).toHaveURL(/\/signin-error\?reason=access_denied/);
    await expect(page.getByTestId('signin-error')).toContainText('cancelled');
  });

  test('replayed code shows a readable error', async ({ page }) => {
    let callback = '';
    page.on('request', (request) => {
      if (request.url().startsWith(`${PORTAL_URL}/auth/callback`)) callback = request.url();
    });
    await signIn(page, 'alice');
    const code = new URL(callback).searchParams.get('code');
    expect(code).toBeTruthy();

    // Start a second sign-in so a state is pending, then present the used code with it.
    await page.context().clearCookies();
    await page.goto('/auth/login');
    const state = new URL(page.url()).searchParams.get('state');
    await page.goto(`/auth/callback?code=${code}&state=${state}`);
    await expect(page).toHaveURL(/\/signin-error\?reason=expired/);
    await expect(page.getByTestId('signin-error')).toContainText('expired');
  });
});

test.describe('security headers', () => {
  test('pages carry a nonce-based CSP and frame denial', async ({ page }) => {
    const response = await page.goto('/');
    const headers = response!.headers();
    const csp = headers['content-security-policy'];
    expect(csp).toMatch(/script-src 'self' 'nonce-[A-Za-z0-9+/=_-]+' 'wasm-unsafe-eval'/);
    expect(csp).toContain("frame-ancestors 'none'");
    expect(headers['x-content-type-options']).toBe('nosniff');
    expect(headers['x-frame-options']).toBe('DENY');
    expect(headers['referrer-policy']).toBe('same-origin');
    expect(headers['cache-control']).toBe('no-store');

    const nonce = /'nonce-([^']+)'/.exec(csp)![1];
    const html = await response!.text();
    expect(html).toContain(`nonce="${nonce}"`);
  });
});
