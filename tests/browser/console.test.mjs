// The console in a real browser: Debian's Chromium driven by playwright-core against
// `domicile dev`. Run by cli/tests/console_browser.rs (so by `cargo test --workspace`), which
// passes the binary and the browser:
//   DOMICILE_BIN=target/debug/domicile CHROMIUM=/usr/bin/chromium OUTPUT_DIR=target/console \
//     node --test tests/browser/console.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BIN = process.env.DOMICILE_BIN;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OUTPUT = process.env.OUTPUT_DIR || 'target/console';
assert.ok(BIN, 'DOMICILE_BIN must name the domicile binary');

let dev, out = '', token, consoleUrl, browser, dataDir;

/** Waits until `domicile dev`'s output matches `pattern`. */
async function waitFor(pattern, seconds) {
  for (let i = 0; i < seconds * 10; i++) {
    const m = out.match(pattern);
    if (m) return m;
    if (dev.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`domicile dev never printed ${pattern}:\n${out}`);
}

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'domicile-console-'));
  mkdirSync(OUTPUT, { recursive: true });
  dev = spawn(BIN, ['dev', '--listen', '127.0.0.1:0', '--metrics-listen', '127.0.0.1:0',
    '--console-listen', '127.0.0.1:0', '--data-dir', dataDir,
    '--subjects', '200', '--interactions', '2000'], { stdio: ['pipe', 'pipe', 'pipe'] });
  dev.stdout.on('data', (b) => { out += b; });
  dev.stderr.on('data', (b) => { out += b; });
  await waitFor(/Serving; Ctrl-C to stop/, 180);
  token = (await waitFor(/^token: (\S+)$/m, 1))[1];
  consoleUrl = (await waitFor(/^Console: (http:\/\/\S+\/)/m, 1))[1];
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (dev && dev.exitCode === null) {
    dev.kill('SIGTERM');
    await new Promise((r) => dev.once('exit', r));
  }
  rmSync(dataDir, { recursive: true, force: true });
});

/** A page that fails the test on any script error or CSP violation. */
async function newPage(context) {
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  return { page, problems };
}

/** Waits until every panel has drawn the latest answer. */
async function ready(page) {
  await page.waitForFunction(() => {
    const panels = [...document.querySelectorAll('[data-panel]')];
    return panels.length === 7 && panels.every((p) => p.dataset.state === 'ready');
  }, null, { timeout: 30000 });
}

/** Signs in through the form; `problems` then starts empty (the 401 before it is expected). */
async function signIn(page, problems = []) {
  const answer = await page.goto(consoleUrl);
  assert.equal(answer.status(), 401, 'the console is behind a sign-in');
  problems.length = 0;
  await page.fill('#token', token);
  await Promise.all([page.waitForURL(consoleUrl), page.click('button[type=submit]')]);
  await ready(page);
}

test('a request without a token is refused', async () => {
  const context = await browser.newContext();
  for (const path of ['', 'api/overview', 'api/requests', 'console.js', 'vendor/chart.umd.min.js']) {
    const r = await context.request.get(consoleUrl + path, { maxRedirects: 0 });
    assert.equal(r.status(), 401, `/${path} without a token`);
    assert.ok(!(await r.text()).includes('"regions"'), `/${path} leaks no data`);
  }
  const bad = await context.request.get(`${consoleUrl}api/overview`, { headers: { authorization: 'Bearer not.a.token' } });
  assert.equal(bad.status(), 401, 'a forged token is refused');
  const { page } = await newPage(context);
  await page.goto(consoleUrl);
  assert.ok(await page.isVisible('form[action="/login"]'), 'the sign-in form is shown');
  await page.fill('#token', 'not-a-token');
  await page.click('button[type=submit]');
  assert.match(await page.textContent('.notice'), /refused|not a token/);
  await context.close();
});

test('every panel shows data, and every checkpoint verifies in the browser', async () => {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const { page, problems } = await newPage(context);
  await signIn(page, problems);
  const regions = await page.$$eval('#regions tbody tr', (rows) => rows.map((r) => [r.dataset.region, r.dataset.verified]));
  assert.deepEqual(regions, [['eu-de', 'yes'], ['eu-fr', 'yes'], ['us', 'yes']]);
  for (const id of ['chart-groups', 'chart-rows', 'chart-budget', 'chart-consent']) {
    const points = await page.$eval(`#${id}`, (c) => Number(c.closest('figure').dataset.points));
    assert.ok(points > 0, `${id} draws data (${points} points)`);
  }
  const count = (selector) => page.$$eval(selector, (rows) => rows.filter((r) => !r.querySelector('.empty')).length);
  assert.ok(await count('#releases tbody tr') >= 3, 'releases per region and purpose');
  assert.deepEqual(await page.$$eval('#requests table.counts tbody tr', (rows) => rows.map((r) => r.dataset.kind)),
    ['access', 'portability', 'erasure', 'restriction', 'objection'], 'request counts per kind');
  assert.equal(await count('#requests table.open tbody tr'), 3, 'one erasure held in each region');
  assert.match(await page.textContent('#oldest-open'), /^3 open\. Oldest: (eu-de|eu-fr|us)\.sr-[0-9a-f]{32} \(erasure\)/);
  // The case queue (ListSubjectRequests): the held erasures, soonest due first, with counts.
  const queue = await page.$$eval('#queue table.queue tbody tr', (rows) => rows.map((r) => [r.dataset.status, r.dataset.overdue]));
  assert.deepEqual(queue, [['partially_completed', 'no'], ['partially_completed', 'no'], ['partially_completed', 'no']]);
  const queueCounts = await page.$$eval('#queue table.queue-counts tbody tr', (rows) => rows.map((r) => [r.dataset.queueRegion, Number(r.children[1].textContent)]));
  assert.deepEqual(queueCounts.sort(), [['eu-de', 1], ['eu-fr', 1], ['us', 1]], 'one open request per region');
  await page.check('#queue-overdue');
  await page.waitForFunction(() => document.querySelector('#queue table.queue tbody tr .empty') !== null);
  assert.equal(await page.textContent('#queue table.queue tbody tr'), 'No open requests.', 'none overdue');
  await page.uncheck('#queue-overdue');
  await page.waitForFunction(() => document.querySelectorAll('#queue table.queue tbody tr[data-status]').length === 3);
  const incidents = await page.$$('#incidents .card');
  assert.equal(incidents.length, 1, 'the dev incident');
  const before = await page.textContent('#incidents .countdown');
  assert.match(before, /^\d+ d \d+ h left to notify$|^\d+ h \d+ min left to notify$/);
  assert.ok(await count('#incidents .card tbody tr') >= 6, 'affected counts per region and category');
  assert.ok(await count('#consent tbody tr') >= 9, 'consent per country, purpose and channel');
  const followUps = await page.$$eval('#follow-ups tbody tr', (rows) => rows.map((r) => [r.dataset.region, Number(r.children[1].textContent)]));
  assert.deepEqual(followUps, [['eu-de', 1], ['eu-fr', 1], ['us', 1]], 'the dev follow-up of each region, open');
  assert.equal(await page.textContent('#tenant'), 'demo');
  assert.equal(await page.textContent('#dp-note'), 'Cross-border figures carry calibrated noise');
  await page.screenshot({ path: join(OUTPUT, 'console.png'), fullPage: true });
  // The first screenful, as the README shows it.
  await page.screenshot({ path: join(OUTPUT, 'console-top.png') });
  assert.deepEqual(problems, [], 'no script error and no content-security-policy violation');
  await context.close();
});

test('a tampered checkpoint fails the check in the browser', async () => {
  const context = await browser.newContext();
  const { page } = await newPage(context);
  // Flip one bit of eu-fr's head hash on its way to the page: the signature no longer covers it.
  await page.route('**/api/overview*', async (route) => {
    const response = await route.fetch();
    const data = await response.json();
    const fr = data.regions.find((r) => r.region_id === 'eu-fr');
    const c = fr.report.checkpoint;
    c.head_hash = (parseInt(c.head_hash[0], 16) ^ 1).toString(16) + c.head_hash.slice(1);
    // And the gateway's witness reporting a fork for it (tests/attacks.rs makes a real one).
    fr.audit_witness = {
      status: 'fork', witnessed_seq: 42, witnessed_hash: '00'.repeat(32),
      detail: 'the log ends at entry 7 but entry 42 was witnessed: truncated, or restored from an older copy',
    };
    await route.fulfill({ response, json: data });
  });
  await signIn(page);
  const verdicts = await page.$$eval('#regions tbody tr', (rows) => rows.map((r) => r.dataset.verified));
  assert.deepEqual(verdicts, ['yes', 'no', 'yes']);
  assert.equal(await page.textContent('tr[data-region="eu-fr"] .signature'), 'invalid');
  const fork = page.locator('tr[data-region="eu-fr"] [data-witness="fork"]');
  assert.equal(await fork.textContent(), 'AUDIT LOG FORK: witnessed #42');
  assert.match(await fork.getAttribute('title'), /restored from an older copy/);
  assert.equal(await page.locator('tr[data-region="eu-de"] [data-witness="fork"]').count(), 0);
  await context.close();
});

test('a stopped region is shown as unavailable and the rest is still drawn', async () => {
  dev.stdin.write('stop us\n');
  await waitFor(/^stopped region us$/m, 30);
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const { page, problems } = await newPage(context);
  await signIn(page, problems);
  const us = page.locator('tr[data-region="us"]');
  assert.equal(await us.getAttribute('data-verified'), 'unavailable');
  assert.equal(await us.locator('.status').textContent(), 'unavailable');
  assert.match(await page.textContent('#notice'), /Unavailable: us \(/);
  const verdicts = await page.$$eval('#regions tbody tr', (rows) => rows.map((r) => r.dataset.verified));
  assert.deepEqual(verdicts, ['yes', 'yes', 'unavailable']);
  const erasures = await page.$eval('#requests tr[data-kind="erasure"]', (r) => [...r.cells].map((c) => c.textContent));
  assert.deepEqual(erasures, ['erasure', '2 (1 open)', '2 (1 open)', '2', '0'], 'per region, with the open ones');
  const countries = await page.$$eval('#consent tbody tr', (rows) => [...new Set(rows.map((r) => r.dataset.country))]);
  assert.deepEqual(countries.sort(), ['DE', 'FR'], 'consent from the regions that answered');
  assert.equal(await page.$$eval('#requests table.open tbody tr', (r) => r.length), 2);
  assert.equal(await page.$$eval('#queue table.queue tbody tr[data-status]', (r) => r.length), 2, 'the queue of the regions that answered');
  assert.equal(await page.$eval('#queue table.queue-counts tr.down', (r) => r.dataset.queueRegion), 'us');
  const points = await page.$eval('#chart-groups', (c) => Number(c.closest('figure').dataset.points));
  assert.ok(points > 0, 'releases still drawn');
  await page.screenshot({ path: join(OUTPUT, 'console-region-down.png'), fullPage: true });
  assert.deepEqual(problems, [], 'no script error');
  await context.close();
});
