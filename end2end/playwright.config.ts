import { defineConfig } from '@playwright/test';
import * as path from 'node:path';
import * as os from 'node:os';
import * as fs from 'node:fs';

// Ports of the test instances, apart from the demo's 3000 and 8180 so both can run at once.
export const PORTAL_URL = process.env.STINT_E2E_PORTAL_URL ?? 'http://127.0.0.1:13000';
export const KEYCLOAK_URL = process.env.STINT_E2E_KEYCLOAK_URL ?? 'http://127.0.0.1:18180';

const repo = path.resolve(__dirname, '..');
const targetDir = process.env.CARGO_TARGET_DIR ?? path.join(repo, 'target');
const binary = process.env.STINT_BIN ?? path.join(targetDir, 'debug', 'stint');
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'stint-e2e-'));

// Chromium from Debian's package. As root it needs --no-sandbox; the networking switches
// stop it from calling outside hosts, which this test network refuses.
const chromiumArgs = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export default defineConfig({
  testDir: './tests',
  fullyParallel: false,
  workers: 1,
  forbidOnly: !!process.env.CI,
  retries: 0,
  reporter: [['list']],
  timeout: 60_000,
  expect: { timeout: 10_000 },
  use: {
    baseURL: PORTAL_URL,
    browserName: 'chromium',
    headless: true,
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      args: chromiumArgs,
    },
    trace: 'retain-on-failure',
  },
  // Every spec runs twice: every page must work before, and without, the wasm bundle.
  projects: [
    { name: 'js-on', use: { javaScriptEnabled: true } },
    { name: 'js-off', use: { javaScriptEnabled: false } },
  ],
  webServer: {
    command: `${binary} --config ${path.join(repo, 'dev', 'stint.toml')}`,
    cwd: repo,
    url: `${PORTAL_URL}/healthz`,
    reuseExistingServer: false,
    timeout: 60_000,
    stdout: 'pipe',
    stderr: 'pipe',
    env: {
      STINT_LISTEN: new URL(PORTAL_URL).host,
      STINT_PUBLIC_URL: PORTAL_URL,
      STINT_DATABASE_URL: process.env.STINT_E2E_DATABASE_URL ?? `sqlite://${dataDir}/stint.db`,
      STINT_CATALOG: path.join(__dirname, 'catalog.toml'),
      STINT_SITE_ROOT: process.env.STINT_SITE_ROOT ?? path.join(targetDir, 'site'),
      STINT_KEYCLOAK__URL: KEYCLOAK_URL,
      RUST_LOG: process.env.RUST_LOG ?? 'info,sqlx=warn',
    },
  },
});
