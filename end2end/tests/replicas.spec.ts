import {
  test,
  expect,
  type APIRequestContext,
  type APIResponse,
  type Browser,
  type BrowserContext,
  type Page,
  type Response,
} from '@playwright/test';
import { KEYCLOAK_URL, PORTAL_URL, REPLICA_CONTROL_URL, REPLICA_COUNT } from '../playwright.config';
import {
  PERSONAS,
  approveRequest,
  endOpenAccess,
  grantStatusOf,
  hasClientRoleMapping,
  openRequestForm,
  removeClientRoleMapping,
  signIn,
  submitKeycloakLogin,
  submitShownRequestForm,
  type ClientRole,
} from './support';

// These tests need the two replicas behind the proxy of replicas.mjs, which
// playwright.config.ts starts when STINT_E2E_REPLICAS=2. The proxy sends a request with
// `x-stint-replica: a|b` to that replica and the others in turn, and names the replica that
// sent each response in the same response header.
const REPLICA_HEADER = 'x-stint-replica';

// The catalog entry `refunds` maps the client role refund-approver of billing-app, which bob
// approves. grants.spec.ts grants it to alice too. Both specs remove the mapping before a
// test and end alice's grants after it, and the specs run one at a time.
const ROLE_KEY = 'refunds';
const KEYCLOAK_ROLE: ClientRole = { clientId: 'billing-app', role: 'refund-approver' };

// Long enough to kill replica A after the grant is applied and before it ends.
const GRANT_SECONDS = 45;

// The scheduler polls every second and is woken by an approval, so a step normally lands
// within a second or two of being due. The bounds leave room for a slow Keycloak.
const SCHEDULER_TIMEOUT = 20_000;
const MAX_LATENESS_SECONDS = 15;

type ReplicaName = 'a' | 'b';

interface ReplicaStatus {
  name: string;
  port: number;
  pid: number | null;
  serving: boolean;
}

interface AuditRow {
  event_id: number;
  occurred_at: string;
  action: string;
  request_id: string | null;
  grant_id: string | null;
}

/** One portal response that a page received: its path and the replica that sent it. */
interface Answer {
  path: string;
  replica: string | undefined;
}

function replicaOf(response: Response | APIResponse | null): string | undefined {
  return response?.headers()[REPLICA_HEADER];
}

// Resource types of the requests that carry the session: pages, form posts and server
// function calls. Static assets are left out because Chromium serves repeats from its cache
// with the headers of the first response, whichever replica sent it.
const SESSION_RESOURCE_TYPES = new Set(['document', 'fetch', 'xhr']);

/** Records the path of every portal response to a page, form or server function request of
 * `page`, redirects included, with the replica that sent it. */
function recordAnswers(page: Page): Answer[] {
  const answers: Answer[] = [];
  page.on('response', (response) => {
    if (!response.url().startsWith(`${PORTAL_URL}/`)) return;
    if (!SESSION_RESOURCE_TYPES.has(response.request().resourceType())) return;
    answers.push({ path: new URL(response.url()).pathname, replica: replicaOf(response) });
  });
  return answers;
}

/** Takes the entries of `answers` and checks that there is at least one and that `replica`
 * sent each of them. */
function expectAllFrom(answers: Answer[], replica: ReplicaName, description: string): void {
  const recorded = answers.splice(0);
  expect(recorded.length, `number of ${description}`).toBeGreaterThan(0);
  expect(
    recorded.filter((answer) => answer.replica !== replica),
    `${description} from a replica other than ${replica}`,
  ).toEqual([]);
}

async function replicaStatuses(request: APIRequestContext): Promise<ReplicaStatus[]> {
  const response = await request.get(`${REPLICA_CONTROL_URL}/replicas`);
  expect(response.status(), 'GET /replicas of the proxy control listener').toBe(200);
  return response.json();
}

async function isServing(request: APIRequestContext, name: ReplicaName): Promise<boolean> {
  return (await replicaStatuses(request)).find((replica) => replica.name === name)?.serving ?? false;
}

/** Sends SIGKILL to replica `name` through the proxy's control listener. */
async function killReplica(request: APIRequestContext, name: ReplicaName): Promise<void> {
  const response = await request.post(`${REPLICA_CONTROL_URL}/kill?replica=${name}`);
  expect(response.status(), `kill replica ${name}: ${await response.text()}`).toBe(200);
}

/** Starts replica `name` again unless it is serving, and waits until it serves. */
async function ensureServing(request: APIRequestContext, name: ReplicaName): Promise<void> {
  if (await isServing(request, name)) return;
  const response = await request.post(`${REPLICA_CONTROL_URL}/start?replica=${name}`, { timeout: 70_000 });
  expect(response.status(), `start replica ${name}: ${await response.text()}`).toBe(200);
}

/** Opens a page in a new context whose requests all carry `x-stint-replica: replica`, or no
 * such header when `replica` is null, and adds the context to `contexts`. */
async function openPage(
  browser: Browser,
  replica: ReplicaName | null,
  contexts: BrowserContext[],
): Promise<{ context: BrowserContext; page: Page; answers: Answer[] }> {
  const context = await browser.newContext(replica ? { extraHTTPHeaders: { [REPLICA_HEADER]: replica } } : {});
  contexts.push(context);
  const page = await context.newPage();
  return { context, page, answers: recordAnswers(page) };
}

/** Sets the replica that every later request of `context` is sent to, or lets the proxy
 * choose when `replica` is null. */
async function pinContext(context: BrowserContext, replica: ReplicaName | null): Promise<void> {
  await context.setExtraHTTPHeaders(replica ? { [REPLICA_HEADER]: replica } : {});
}

/** Returns the audit events of request `requestId`, oldest first, from a JSON export of
 * alice's history of the test role made by the auditor signed in on `auditor`, and the
 * replica that sent the export. */
async function auditEventsOf(auditor: Page, requestId: string): Promise<{ events: AuditRow[]; replica?: string }> {
  const response = await auditor.request.get(`/audit/export?format=json&user=alice&role=${ROLE_KEY}`);
  expect(response.status(), 'status of the JSON export').toBe(200);
  const lines = (await response.text()).split('\n').filter((line) => line !== '');
  const trailer = JSON.parse(lines.pop()!);
  expect(trailer.chain_head, 'trailer line of the JSON export').toBeDefined();
  const events = lines.map((line) => JSON.parse(line) as AuditRow).filter((row) => row.request_id === requestId);
  return { events, replica: replicaOf(response) };
}

function actionsOf(events: AuditRow[]): string[] {
  return events.map((event) => event.action);
}

/** Returns the Unix seconds at which the only event `action` of `events` happened. */
function secondsOf(events: AuditRow[], action: string): number {
  const matching = events.filter((event) => event.action === action);
  expect(matching, `${action} events`).toHaveLength(1);
  return Date.parse(matching[0].occurred_at) / 1000;
}

test.describe('two replicas behind one URL', () => {
  test.skip(
    REPLICA_COUNT !== 2,
    'needs two replicas behind the proxy: run with STINT_E2E_REPLICAS=2 and a postgres:// STINT_E2E_DATABASE_URL',
  );

  const contexts: BrowserContext[] = [];

  test.beforeEach(async ({ request }) => {
    // A test that failed after killing replica A leaves it stopped.
    await ensureServing(request, 'a');
    const statuses = await replicaStatuses(request);
    expect(statuses.map((replica) => [replica.name, replica.serving])).toEqual([
      ['a', true],
      ['b', true],
    ]);
  });

  test.afterEach(async ({ request }) => {
    for (const context of contexts.splice(0)) await context.close();
    await ensureServing(request, 'a');
  });

  test('proxy alternates between replicas', async ({ request }) => {
    const answered: (string | undefined)[] = [];
    for (let round = 0; round < 4; round++) {
      const response = await request.get('/healthz');
      expect(response.status()).toBe(200);
      answered.push(replicaOf(response));
    }
    expect([...new Set(answered)].sort(), `replicas that answered /healthz: ${answered}`).toEqual(['a', 'b']);

    for (const replica of ['a', 'b'] as const) {
      const pinned = await request.get('/healthz', { headers: { [REPLICA_HEADER]: replica } });
      expect(replicaOf(pinned), `replica of a request pinned to ${replica}`).toBe(replica);
    }
  });

  test('sign-in started on A finishes on B', async ({ browser }) => {
    const { context, page, answers } = await openPage(browser, 'a', contexts);
    const home = await page.goto('/');
    expect(replicaOf(home)).toBe('a');
    await page.getByTestId('sign-in').click();
    await expect(page).toHaveURL(new RegExp(`^${KEYCLOAK_URL}/realms/stint/`));
    const login = answers.find((answer) => answer.path === '/auth/login');
    expect(login?.replica, 'replica that started the sign-in at /auth/login').toBe('a');

    // Keycloak redirects to /auth/callback, which replica B now serves with the login state
    // that replica A stored.
    await pinContext(context, 'b');
    const callback = page.waitForResponse((response) => response.url().startsWith(`${PORTAL_URL}/auth/callback`));
    await submitKeycloakLogin(page, 'carol');
    expect(replicaOf(await callback), 'replica that served /auth/callback').toBe('b');
    await expect(page).toHaveURL(`${PORTAL_URL}/`);
    await expect(page.getByTestId('signed-in-as')).toContainText(PERSONAS.carol.name);

    // The session that replica B created is valid on replica A.
    await pinContext(context, 'a');
    const me = await page.goto('/me');
    expect(replicaOf(me)).toBe('a');
    await expect(page.getByTestId('username')).toHaveText('carol');
    const approvals = await page.goto('/approvals');
    expect(approvals?.status()).toBe(200);
    expect(replicaOf(approvals)).toBe('a');
  });

  test.describe('grant across replicas', () => {
    test.beforeEach(async ({ request }) => {
      // A mapping left by an interrupted run would make the grant one held before.
      await removeClientRoleMapping(request, 'alice', KEYCLOAK_ROLE);
    });

    test.afterEach(async ({ browser, request }) => {
      // Both replicas serve the clean-up, so the next spec starts with two again.
      await ensureServing(request, 'a');
      const alice = await openPage(browser, null, contexts);
      await signIn(alice.page, 'alice');
      await endOpenAccess(alice.page, ROLE_KEY);
      await expect
        .poll(() => hasClientRoleMapping(request, 'alice', KEYCLOAK_ROLE), {
          message: 'refund-approver is removed from alice after the clean-up',
          timeout: SCHEDULER_TIMEOUT,
        })
        .toBe(false);
    });

    test('request on A, approval on B, end after A dies', async ({ browser, request }) => {
      test.setTimeout(180_000);
      const alice = await openPage(browser, 'a', contexts);
      const bob = await openPage(browser, 'b', contexts);
      // The auditor's context has no pin, so the proxy spreads its requests, sign-in
      // included, over both replicas.
      const dave = await openPage(browser, null, contexts);
      await signIn(dave.page, 'dave');
      expect(await hasClientRoleMapping(request, 'alice', KEYCLOAK_ROLE)).toBe(false);

      // alice signs in and submits the request on replica A. bob signs in and approves it on
      // replica B.
      await signIn(alice.page, 'alice');
      await openRequestForm(alice.page, ROLE_KEY);
      const requestId = await submitShownRequestForm(alice.page, ROLE_KEY, {
        duration: `${GRANT_SECONDS}s`,
        justification: 'refund order 2001, asked on replica a',
      });
      await signIn(bob.page, 'bob');
      await approveRequest(bob.page, requestId);
      expectAllFrom(alice.answers, 'a', 'answers to alice');
      expectAllFrom(bob.answers, 'b', 'answers to bob');

      // alice's session, made on replica A, shows the grant on replica B.
      await pinContext(alice.context, 'b');
      await expect
        .poll(() => grantStatusOf(alice.page, requestId), { timeout: SCHEDULER_TIMEOUT })
        .toBe('active');
      await expect(alice.page.getByTestId('signed-in-as')).toContainText(PERSONAS.alice.name);
      expectAllFrom(alice.answers, 'b', 'answers to alice on replica b');
      expect(await hasClientRoleMapping(request, 'alice', KEYCLOAK_ROLE)).toBe(true);

      // Both replicas run the scheduler, and exactly one of them applied the grant.
      const { events: applied } = await auditEventsOf(dave.page, requestId);
      expect(actionsOf(applied)).toEqual(['request_created', 'request_approved', 'grant_scheduled', 'grant_applied']);
      const grantIds = new Set(applied.filter((event) => event.grant_id !== null).map((event) => event.grant_id));
      expect(grantIds.size, `grants of request ${requestId}`).toBe(1);

      // The grant starts at the approval, so it ends GRANT_SECONDS after grant_scheduled.
      const endsAt = secondsOf(applied, 'grant_scheduled') + GRANT_SECONDS;
      await killReplica(request, 'a');
      const killedAt = Date.now() / 1000;
      expect(killedAt, 'time of the kill against the grant end').toBeLessThan(endsAt);
      expect(await isServing(request, 'a')).toBe(false);

      // Without a pin the proxy sends every request to replica B, which serves alice's
      // session and ends the grant on its own.
      await pinContext(alice.context, null);
      await expect
        .poll(() => grantStatusOf(alice.page, requestId), {
          timeout: (endsAt - killedAt + MAX_LATENESS_SECONDS) * 1000,
          intervals: [1_000, 2_000],
        })
        .toBe('ended');
      await expect(alice.page.getByTestId('signed-in-as')).toContainText(PERSONAS.alice.name);
      expectAllFrom(alice.answers, 'b', 'answers to alice after the kill');
      expect(await hasClientRoleMapping(request, 'alice', KEYCLOAK_ROLE)).toBe(false);

      const { events: ended, replica: exportedBy } = await auditEventsOf(dave.page, requestId);
      expect(exportedBy, 'replica that sent the export after the kill').toBe('b');
      expect(actionsOf(ended)).toEqual([
        'request_created',
        'request_approved',
        'grant_scheduled',
        'grant_applied',
        'grant_revoked',
      ]);
      const lateness = secondsOf(ended, 'grant_revoked') - endsAt;
      expect(lateness, 'seconds between the grant end and grant_revoked').toBeGreaterThanOrEqual(-1);
      expect(lateness, 'seconds between the grant end and grant_revoked').toBeLessThanOrEqual(MAX_LATENESS_SECONDS);
    });
  });
});
