import { defineConfig } from '@playwright/test';
import * as path from 'node:path';
import * as os from 'node:os';
import * as fs from 'node:fs';

// Ports of the test instances, apart from the demo's 3000 and 8180 so both can run at once.
export const PORTAL_URL = process.env.STINT_E2E_PORTAL_URL ?? 'http://127.0.0.1:13000';
export const KEYCLOAK_URL = process.env.STINT_E2E_KEYCLOAK_URL ?? 'http://127.0.0.1:18180';

const repo = path.resolve(__dirname, '..');
const targetDir = process.env.CARGO_TARGET_DIR ?? path.join(repo, 'target');
export const STINT_BINARY = process.env.STINT_BIN ?? path.join(targetDir, 'debug', 'stint');
export const STINT_CONFIG = path.join(repo, 'dev', 'stint.toml');
// Workers load this file again and inherit the runner's environment, so the folder is
// created once and the tests see the portal's database.
process.env.STINT_E2E_DATA_DIR ??= fs.mkdtempSync(path.join(os.tmpdir(), 'stint-e2e-'));
const dataDir = process.env.STINT_E2E_DATA_DIR;
const portalCommand = `${STINT_BINARY} --config ${STINT_CONFIG}`;
const databaseUrl = process.env.STINT_E2E_DATABASE_URL ?? `sqlite://${dataDir}/stint.db`;

// STINT_E2E_REPLICAS=2 runs two portal processes on one PostgreSQL database behind a
// round-robin proxy at PORTAL_URL (replicas.mjs): replica `a` on the portal port + 1, `b` on
// + 2, and the proxy's control listener on 127.0.0.1 at + 9. Unset or 1 runs one portal.
export const REPLICA_COUNT = Number(process.env.STINT_E2E_REPLICAS ?? '1');
if (REPLICA_COUNT !== 1 && REPLICA_COUNT !== 2) {
  throw new Error(`STINT_E2E_REPLICAS must be 1 or 2, not \`${process.env.STINT_E2E_REPLICAS}\``);
}
if (REPLICA_COUNT === 2 && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
  throw new Error('STINT_E2E_REPLICAS=2 needs STINT_E2E_DATABASE_URL=postgres://… (replicas share one PostgreSQL database)');
}
const portalPort = Number(new URL(PORTAL_URL).port);
export const REPLICA_CONTROL_URL = `http://127.0.0.1:${portalPort + 9}`;
const replicasCommand = [
  `node ${path.join(__dirname, 'replicas.mjs')}`,
  `--listen ${new URL(PORTAL_URL).host}`,
  `--control ${portalPort + 9}`,
  `--replica a=${portalPort + 1}`,
  `--replica b=${portalPort + 2}`,
  `-- ${portalCommand}`,
].join(' ');

/** The environment of the portal processes, which `stint` commands run by the tests share. */
export const PORTAL_ENV: Record<string, string> = {
  STINT_LISTEN: new URL(PORTAL_URL).host,
  STINT_PUBLIC_URL: PORTAL_URL,
  STINT_DATABASE_URL: databaseUrl,
  STINT_CATALOG: path.join(__dirname, 'catalog.toml'),
  STINT_SITE_ROOT: process.env.STINT_SITE_ROOT ?? path.join(targetDir, 'site'),
  STINT_KEYCLOAK__URL: KEYCLOAK_URL,
  RUST_LOG: process.env.RUST_LOG ?? 'info,sqlx=warn',
};

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
    command: REPLICA_COUNT === 2 ? replicasCommand : portalCommand,
    cwd: repo,
    url: `${PORTAL_URL}/healthz`,
    reuseExistingServer: false,
    timeout: 60_000,
    stdout: 'pipe',
    stderr: 'pipe',
    env: PORTAL_ENV,
  },
});
