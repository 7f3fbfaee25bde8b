import { test, expect, type BrowserContext, type Page } from '@playwright/test';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import {
  endOpenAccess,
  grantStatusOf,
  openRequestForm,
  openSignedIn,
  removeRealmRoleMapping,
  requestCard,
  submitShownRequestForm,
} from './support';

// alice may request support-viewer and bob approves it. No other spec requests it as
// alice, so her requests for it come from this file only.
const ROLE = 'support-viewer';

// The columns of an export, in order, as app/src/server/audit/export.rs writes them.
const COLUMNS = [
  'event_id',
  'occurred_at',
  'action',
  'actor_username',
  'actor_subject',
  'request_id',
  'grant_id',
  'requester_username',
  'requester_subject',
  'role_key',
  'ticket',
  'from_status',
  'to_status',
  'comment',
  'prev_hash',
  'hash',
] as const;

// The `prev_hash` of the first event of the chain.
const GENESIS = '0'.repeat(64);

// The scheduler polls every second and is woken by an approval and by End now.
const SCHEDULER_TIMEOUT = 20_000;

type ExportedEvent = { event_id: number; occurred_at: string; action: string; comment: string } & Record<
  (typeof COLUMNS)[number],
  string | number | null
>;

interface ChainHead {
  event_id: number | null;
  hash: string | null;
}

/** Splits RFC 4180 CSV text (CRLF line ends, `"` quoting with `""` for a quote) into rows
 * of cells. */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let cell = '';
  let quoted = false;
  for (let index = 0; index < text.length; index++) {
    const char = text[index];
    if (quoted) {
      if (char === '"' && text[index + 1] === '"') {
        cell += '"';
        index++;
      } else if (char === '"') {
        quoted = false;
      } else {
        cell += char;
      }
    } else if (char === '"') {
      quoted = true;
    } else if (char === ',') {
      row.push(cell);
      cell = '';
    } else if (char === '\r' && text[index + 1] === '\n') {
      row.push(cell);
      rows.push(row);
      row = [];
      cell = '';
      index++;
    } else {
      cell += char;
    }
  }
  if (cell !== '' || row.length > 0) {
    row.push(cell);
    rows.push(row);
  }
  return rows;
}

/** Splits a JSON-lines export into its event rows and its trailer line. */
function parseJsonLines(text: string): { rows: ExportedEvent[]; trailer: { chain_head: ChainHead; rows: number } } {
  expect(text.endsWith('\n'), 'the JSON export ends with a line break').toBe(true);
  const lines = text.slice(0, -1).split('\n');
  const trailer = JSON.parse(lines.pop()!);
  return { rows: lines.map((line) => JSON.parse(line) as ExportedEvent), trailer };
}

/** Returns the CSV cell the export writes for `value`: empty for null, and with a `'` in
 * front of text that a spreadsheet would run as a formula. */
function expectedCsvCell(value: string | number | null): string {
  const text = value === null ? '' : String(value);
  return /^[=+\-@\t\r]/.test(text) ? `'${text}` : text;
}

/** Recomputes an event's chain hash from its exported fields: SHA-256 in hex over the link
 * and the stored fields, each written as `~|` when null, else `<bytes>:<text>|`. */
function eventHash(row: ExportedEvent): string {
  const occurredAt = Date.parse(row.occurred_at) / 1000;
  const fields = [
    row.prev_hash,
    String(occurredAt),
    row.actor_subject,
    row.actor_username,
    row.request_id,
    row.grant_id,
    row.action,
    row.from_status,
    row.to_status,
    row.comment,
  ];
  const encoded = fields
    .map((field) => (field === null ? '~|' : `${Buffer.byteLength(String(field), 'utf8')}:${field}|`))
    .join('');
  return createHash('sha256').update(encoded, 'utf8').digest('hex');
}

/** Clicks the export link `testId` and returns the downloaded file's name and text. */
async function downloadExport(page: Page, testId: string): Promise<{ name: string; text: string }> {
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId(testId).click()]);
  expect(await download.failure(), `failure of the ${testId} download`).toBeNull();
  const path = await download.path();
  return { name: download.suggestedFilename(), text: fs.readFileSync(path, 'utf8') };
}

/** Approves request `id` on the Approvals page with `comment`. */
async function approveWithComment(page: Page, id: string, comment: string): Promise<void> {
  await page.goto('/approvals');
  const item = page.locator(`.queue-item[data-request-id="${id}"]`);
  await expect(item).toBeVisible();
  await item.locator('input[name="comment"]').fill(comment);
  await item.getByTestId('approve').click();
  await expect(page).toHaveURL(/\/approvals$/);
  await expect(page.getByTestId('flash-success')).toContainText('now approved');
}

/** Returns today's UTC date as YYYY-MM-DD. */
function utcToday(): string {
  return new Date().toISOString().slice(0, 10);
}

test.describe('audit history of a grant', () => {
  const contexts: BrowserContext[] = [];

  test.afterEach(async ({ browser }) => {
    try {
      const alice = await openSignedIn(browser, 'alice', contexts);
      await endOpenAccess(alice, ROLE);
    } finally {
      for (const context of contexts.splice(0)) await context.close();
    }
  });

  test('auditor traces a grant through history, timeline and exports', async ({ browser, request }, testInfo) => {
    test.setTimeout(120_000);
    // A mapping left by an interrupted run would make the grant one held before.
    await removeRealmRoleMapping(request, 'alice', ROLE);
    const alice = await openSignedIn(browser, 'alice', contexts);
    const bob = await openSignedIn(browser, 'bob', contexts);
    const dave = await openSignedIn(browser, 'dave', contexts);

    // A formula with a comma and quotes: the CSV must both neutralise and quote it.
    const justification = `=HYPERLINK("http://127.0.0.1/","audit, ${testInfo.project.name}")`;
    const comment = '@checked the ticket';
    const ticket = `AUD-${Date.now()}`;
    await openRequestForm(alice, ROLE);
    const requestId = await submitShownRequestForm(alice, ROLE, { duration: '1h', justification, ticket });
    await approveWithComment(bob, requestId, comment);
    await expect.poll(() => grantStatusOf(alice, requestId), { timeout: SCHEDULER_TIMEOUT }).toBe('active');
    const grantId = await requestCard(alice, requestId).getByTestId('grant').getAttribute('data-grant-id');
    expect(grantId, 'data-grant-id of the grant block').toBeTruthy();

    // The history, filtered by user, role and today (UTC) as both first and last day.
    const today = utcToday();
    const from = today;
    await dave.goto('/audit');
    const filters = dave.getByTestId('audit-filters');
    await filters.locator('input[name="user"]').fill('alice');
    await filters.locator('input[name="role"]').fill(ROLE);
    await filters.locator('input[name="from"]').fill(from);
    await filters.locator('input[name="to"]').fill(today);
    await dave.getByTestId('apply-filters').click();
    await expect(dave).toHaveURL(/\/audit\?/);
    const filtered = new URL(dave.url());
    expect(filtered.searchParams.get('user')).toBe('alice');
    expect(filtered.searchParams.get('role')).toBe(ROLE);
    expect(filtered.searchParams.get('from')).toBe(from);
    expect(filtered.searchParams.get('to')).toBe(today);
    await expect(dave.getByTestId('filter-error')).toHaveCount(0);

    const rows = dave.getByTestId('history-row');
    const row = dave.locator(`[data-testid="history-row"][data-grant-id="${grantId}"]`);
    await expect(row).toHaveAttribute('data-user', 'alice');
    await expect(row).toHaveAttribute('data-role', ROLE);
    const cells = row.locator('td');
    await expect(cells.nth(0)).toHaveText('alice');
    await expect(cells.nth(1)).toHaveText(ROLE);
    await expect(cells.nth(2)).toHaveText('active');
    await expect(cells.nth(5)).toHaveText('bob approved');
    await expect(cells.nth(6)).toHaveText(ticket);
    await expect(cells.nth(7)).toHaveText(justification);
    const listedGrantIds = await rows.evaluateAll((elements) => elements.map((element) => element.getAttribute('data-grant-id')));
    for (const listed of await rows.all()) {
      await expect(listed).toHaveAttribute('data-user', 'alice');
      await expect(listed).toHaveAttribute('data-role', ROLE);
    }

    // Every listed grant overlaps today, so today's bar, the only one, counts each listed
    // grant that reached Keycloak.
    const statuses = await rows.locator('td:nth-child(3)').allInnerTexts();
    const applied = statuses.filter((status) => ['active', 'revoking', 'ended'].includes(status.trim())).length;
    const todayBar = dave.getByTestId('active-chart').locator(`rect[data-day="${today}"]`);
    await expect(todayBar).toHaveAttribute('data-count', String(applied));
    await expect(dave.getByTestId('active-chart').locator('rect')).toHaveCount(1);

    const exportQuery = `user=alice&role=${ROLE}&from=${from}&to=${today}`;
    await expect(dave.getByTestId('export-csv')).toHaveAttribute('href', `/audit/export?format=csv&${exportQuery}`);
    await expect(dave.getByTestId('export-json')).toHaveAttribute('href', `/audit/export?format=json&${exportQuery}`);

    // The timeline of the grant.
    await row.getByTestId('open-timeline').click();
    await expect(dave).toHaveURL(new RegExp(`/audit/grants/${grantId}$`));
    await expect(dave.getByTestId('timeline-page')).toHaveAttribute('data-grant-id', grantId!);
    await expect(dave.getByTestId('timeline-status')).toHaveText('active');
    const timeline = (await dave.getByTestId('timeline-event').allInnerTexts()).map((text) => text.trim());
    expect(timeline, 'timeline events').toHaveLength(4);
    expect(timeline[0]).toContain(`· alice · request created: ${justification}`);
    expect(timeline[1]).toContain(`· bob · request approved: ${comment}`);
    expect(timeline[2]).toContain('· Stint · grant scheduled');
    expect(timeline[3]).toContain('· Stint · grant applied');

    // Both exports of the filtered history.
    await dave.goto(`/audit?${exportQuery}`);
    const csvFile = await downloadExport(dave, 'export-csv');
    const jsonFile = await downloadExport(dave, 'export-json');
    expect(csvFile.name).toMatch(/^stint-audit-\d{8}\.csv$/);
    expect(jsonFile.name).toMatch(/^stint-audit-\d{8}\.jsonl$/);

    expect(csvFile.text.endsWith('\r\n'), 'the CSV export ends with CRLF').toBe(true);
    const csv = parseCsv(csvFile.text);
    const header = csv.shift()!;
    const csvTrailer = csv.pop()!;
    expect(header).toEqual([...COLUMNS]);
    const json = parseJsonLines(jsonFile.text);

    expect(json.trailer.rows, 'rows counted in the JSON trailer').toBe(json.rows.length);
    expect(csv.length, 'CSV rows against JSON rows').toBe(json.rows.length);
    for (const [index, event] of json.rows.entries()) {
      expect(Object.keys(event), `keys of JSON row ${index}`).toEqual([...COLUMNS]);
      expect(csv[index], `CSV row ${index} against JSON event ${event.event_id}`).toEqual(
        COLUMNS.map((column) => expectedCsvCell(event[column])),
      );
      expect(event.requester_username).toBe('alice');
      expect(event.role_key).toBe(ROLE);
      expect(event.occurred_at, `occurred_at of event ${event.event_id}`).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      expect(event.hash, `stored hash of event ${event.event_id}`).toBe(eventHash(event));
    }
    const eventIds = json.rows.map((event) => event.event_id);
    expect(eventIds, 'event ids in ascending order').toEqual([...eventIds].sort((a, b) => a - b));
    for (const listed of listedGrantIds) {
      expect(json.rows.some((event) => event.grant_id === listed), `events of listed grant ${listed}`).toBe(true);
    }

    // The events of this request, against the timeline.
    const events = json.rows.filter((event) => event.request_id === requestId);
    expect(events.map((event) => event.action)).toEqual([
      'request_created',
      'request_approved',
      'grant_scheduled',
      'grant_applied',
    ]);
    for (const [index, event] of events.entries()) {
      const actor = event.actor_username ?? 'Stint';
      expect(timeline[index]).toContain(`· ${actor} · ${event.action.replace(/_/g, ' ')}`);
      expect(event.ticket).toBe(ticket);
    }
    const [created, approved, scheduled, appliedEvent] = events;
    expect(created.actor_username).toBe('alice');
    expect(created.grant_id).toBeNull();
    expect(created.comment, 'justification in JSON').toBe(justification);
    expect(approved.actor_username).toBe('bob');
    expect(approved.comment, 'approval comment in JSON').toBe(comment);
    expect(scheduled.grant_id).toBe(grantId);
    expect(appliedEvent.grant_id).toBe(grantId);
    expect(appliedEvent.to_status).toBe('active');
    const commentColumn = COLUMNS.indexOf('comment');
    const csvOf = (id: number) => csv.find((cells) => cells[0] === String(id))!;
    expect(csvOf(created.event_id)[commentColumn], 'justification in CSV').toBe(`'${justification}`);
    expect(csvOf(approved.event_id)[commentColumn], 'approval comment in CSV').toBe(`'${comment}`);
    expect(csvFile.text).toContain(`"'=HYPERLINK(""http://127.0.0.1/"",""audit, ${testInfo.project.name}"")"`);

    // Each trailer names the chain head when its export started: the export's own
    // audit_exported event, which the filter leaves out of the rows.
    const csvHead = {
      event_id: Number(csvTrailer[0]),
      action: csvTrailer[2],
      hash: csvTrailer[COLUMNS.indexOf('hash')],
    };
    expect(csvHead.action).toBe('chain_head');
    expect(csvHead.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(csvTrailer.filter((cell, index) => ![0, 2, 15].includes(index) && cell !== '')).toEqual([]);
    expect(csvHead.event_id).toBeGreaterThan(Math.max(...eventIds));
    const jsonHead = json.trailer.chain_head;
    expect(jsonHead.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(jsonHead.event_id, 'the JSON export starts after the CSV one').toBeGreaterThan(csvHead.event_id);
    expect(json.rows.some((event) => event.action === 'audit_exported')).toBe(false);

    // The whole log names both heads with the same hashes, as exports of dave.
    const whole = await dave.request.get('/audit/export?format=json');
    expect(whole.status()).toBe(200);
    const log = parseJsonLines(await whole.text()).rows;
    for (const [format, head] of [
      ['csv', csvHead],
      ['json', jsonHead],
    ] as const) {
      const event = log.find((candidate) => candidate.event_id === head.event_id);
      expect(event, `event ${head.event_id} named by the ${format} trailer`).toBeTruthy();
      expect(event!.hash).toBe(head.hash);
      expect(event!.action).toBe('audit_exported');
      expect(event!.actor_username).toBe('dave');
      expect(event!.comment).toContain(`format ${format}, from ${from}T00:00:00Z`);
      expect(event!.comment).toContain(`user alice, role ${ROLE}`);
    }
  });

});

test.describe('audit chain and access', () => {
  const contexts: BrowserContext[] = [];

  test.afterEach(async () => {
    for (const context of contexts.splice(0)) await context.close();
  });

  test('verify button reports the chain intact', async ({ browser }) => {
    const dave = await openSignedIn(browser, 'dave', contexts);
    await dave.goto('/audit');
    await dave.getByTestId('verify-chain').click();
    await expect(dave).toHaveURL(/\/audit$/);
    const flash = dave.getByTestId('flash-success');
    await expect(flash).toContainText('the audit chain is intact');
    await expect(dave.getByTestId('flash-error')).toHaveCount(0);
    const match = /(\d+) events checked, head event (\d+) with hash ([0-9a-f]{64})/.exec(await flash.innerText());
    expect(match, `verification message: ${await flash.innerText()}`).toBeTruthy();
    const [, checked, headId, headHash] = match!;

    // An export of the whole log, read after the check, contains the verified head, and every
    // event in it links to the one before.
    const response = await dave.request.get('/audit/export?format=json');
    expect(response.status()).toBe(200);
    expect(response.headers()['content-type']).toBe('application/x-ndjson');
    expect(response.headers()['content-disposition']).toMatch(/^attachment; filename="stint-audit-\d{8}\.jsonl"$/);
    const { rows, trailer } = parseJsonLines(await response.text());
    const chained = rows.filter((event) => event.hash !== null);
    // Events written before the chain existed carry no hash, and the first event after
    // them may link to any value.
    let previous: string | null = chained.length < rows.length ? null : GENESIS;
    for (const event of chained) {
      if (previous !== null) expect(event.prev_hash, `link of event ${event.event_id}`).toBe(previous);
      expect(event.hash, `hash of event ${event.event_id}`).toBe(eventHash(event));
      previous = event.hash as string;
    }
    const head = chained.find((event) => event.event_id === Number(headId));
    expect(head, `verified head event ${headId} in the export`).toBeTruthy();
    expect(head!.hash).toBe(headHash);
    expect(chained.filter((event) => event.event_id <= Number(headId))).toHaveLength(Number(checked));
    const own = rows.filter((event) => event.action === 'audit_exported' && event.comment === 'format json, the whole log');
    expect(own.length, 'audit_exported events of whole-log JSON exports').toBeGreaterThan(0);
    expect(trailer.chain_head.event_id).toBeGreaterThanOrEqual(own[own.length - 1].event_id);
    expect(trailer.chain_head.hash).toBe(rows.find((event) => event.event_id === trailer.chain_head.event_id)?.hash);
    const lastRow = rows[rows.length - 1].event_id;
    expect(lastRow, 'last exported event against the trailer head').toBeLessThanOrEqual(trailer.chain_head.event_id!);
  });

  test('missing grant timeline returns 404', async ({ browser }) => {
    const dave = await openSignedIn(browser, 'dave', contexts);
    const response = await dave.goto('/audit/grants/00000000-0000-0000-0000-000000000000');
    await expect(dave.getByTestId('timeline-missing')).toBeVisible();
    expect(response?.status()).toBe(404);
  });

  test('non-auditor gets 403 on the audit pages', async ({ browser }) => {
    const frank = await openSignedIn(browser, 'frank', contexts);
    const page = await frank.goto('/audit');
    expect(page?.status()).toBe(403);
    await expect(frank.getByTestId('forbidden')).toBeVisible();
    await expect(frank.getByTestId('audit-page')).toHaveCount(0);
    await expect(frank.getByTestId('history-row')).toHaveCount(0);

    const timeline = await frank.goto('/audit/grants/00000000-0000-0000-0000-000000000000');
    expect(timeline?.status()).toBe(403);
    await expect(frank.getByTestId('forbidden')).toBeVisible();

    for (const format of ['csv', 'json']) {
      const download = await frank.request.get(`/audit/export?format=${format}`);
      expect(download.status(), `${format} export for frank`).toBe(403);
      expect(await download.text()).not.toContain('chain_head');
    }
    const verify = await frank.request.post('/audit/verify', {
      headers: { origin: new URL(frank.url()).origin },
      maxRedirects: 0,
    });
    expect(verify.status(), 'chain check for frank').toBe(403);
    expect(await verify.text()).toBe('the audit log needs the auditor or admin persona');
  });

  test('signed-out export is sent to sign in', async ({ request }) => {
    const response = await request.get('/audit/export?format=csv', { maxRedirects: 0 });
    expect(response.status()).toBeGreaterThanOrEqual(300);
    expect(response.status()).toBeLessThan(400);
    expect(response.headers()['location']).toContain('/auth/login');
  });

  test('admin opens the history and exports', async ({ browser }) => {
    const erin = await openSignedIn(browser, 'erin', contexts);
    const page = await erin.goto('/audit');
    expect(page?.status()).toBe(200);
    await expect(erin.getByTestId('audit-page')).toBeVisible();
    await expect(erin.getByTestId('active-chart')).toBeVisible();

    const csv = await erin.request.get('/audit/export?format=csv');
    expect(csv.status()).toBe(200);
    expect(csv.headers()['content-type']).toBe('text/csv; charset=utf-8');
    const rows = parseCsv(await csv.text());
    expect(rows[0]).toEqual([...COLUMNS]);
    expect(rows[rows.length - 1][2]).toBe('chain_head');

    const unknown = await erin.request.get('/audit/export?format=xml');
    expect(unknown.status()).toBe(400);
    expect(await unknown.text()).toContain('unknown export format `xml`');

    const badDay = await erin.goto('/audit?from=2026-13-01');
    expect(badDay?.status()).toBe(200);
    await expect(erin.getByTestId('filter-error')).toContainText('`2026-13-01` is not a date');

    const badStatus = await erin.request.get('/audit/export?format=csv&status=bogus');
    expect(badStatus.status()).toBe(400);
    expect(await badStatus.text()).toContain('status `bogus` is not a request or grant status: use one of');
    await erin.goto('/audit?status=bogus');
    await expect(erin.getByTestId('filter-error')).toContainText('status `bogus` is not a request or grant status');
  });
});
