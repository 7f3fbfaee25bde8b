import { test, expect, type ConsoleMessage } from '@playwright/test';
import { KEYCLOAK_URL } from '../playwright.config';

test.describe('home page', () => {
  test('renders and hydrates', async ({ page, javaScriptEnabled }) => {
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(error.message));
    page.on('console', (message: ConsoleMessage) => {
      if (message.type() === 'error') errors.push(message.text());
    });

    const response = await page.goto('/');
    expect(response?.status()).toBe(200);
    await expect(
      page.getByRole('heading', { name: 'Temporary access, granted on request' }),
    ).toBeVisible();

    const badge = page.getByTestId('hydration-badge');
    const steps = page.locator('#grant-steps');
    await expect(steps).toBeVisible();

    if (javaScriptEnabled) {
      await expect(badge).toHaveAttribute('data-hydrated', 'true');
      await expect(badge).toHaveText('Interactive');
      const toggle = page.getByTestId('toggle-steps');
      await toggle.click();
      await expect(steps).toBeHidden();
      await expect(toggle).toHaveAttribute('aria-expanded', 'false');
      await toggle.click();
      await expect(steps).toBeVisible();
    } else {
      await expect(badge).toHaveAttribute('data-hydrated', 'false');
      await expect(badge).toHaveText('Server-rendered');
      await expect(page.getByTestId('toggle-steps')).toHaveCount(0);
    }
    expect(errors).toEqual([]);
  });

  test('unknown path shows the not-found page with status 404', async ({ page }) => {
    const response = await page.goto('/no-such-page');
    expect(response?.status()).toBe(404);
    await expect(page.getByRole('heading', { name: 'Page not found' })).toBeVisible();
  });
});

test.describe('probes', () => {
  test('readiness reaches Keycloak discovery', async ({ request }) => {
    const discovery = await request.get(
      `${KEYCLOAK_URL}/realms/stint/.well-known/openid-configuration`,
    );
    expect(discovery.status()).toBe(200);
    const issuer = (await discovery.json()).issuer;
    expect(issuer).toBe(`${KEYCLOAK_URL}/realms/stint`);

    const ready = await request.get('/readyz');
    expect(ready.status()).toBe(200);
    const body = await ready.json();
    expect(body.status).toBe('ready');
    expect(body.checks.database.ok).toBe(true);
    expect(body.checks.keycloak.ok).toBe(true);
    expect(body.checks.keycloak.detail).toBe(issuer);
  });

  test('liveness answers', async ({ request }) => {
    const health = await request.get('/healthz');
    expect(health.status()).toBe(200);
    expect((await health.json()).status).toBe('ok');
  });
});

test.describe('assets', () => {
  for (const [file, type] of [
    ['stint_bg.wasm', 'application/wasm'],
    ['stint.js', 'text/javascript'],
    ['stint.css', 'text/css'],
  ]) {
    test(`${file} is served compressed`, async ({ request }) => {
      const response = await request.get(`/pkg/${file}`, {
        headers: { 'accept-encoding': 'br, gzip' },
      });
      expect(response.status()).toBe(200);
      expect(['br', 'gzip']).toContain(response.headers()['content-encoding']);
      expect(response.headers()['content-type']).toContain(type);
    });
  }
});
