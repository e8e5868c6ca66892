// The Domicile console: draws GET /api/overview (the gateway's GetOverview as JSON) and
// GET /api/requests (the case queue, ListSubjectRequests as JSON).
// No build step: plain JavaScript, Chart.js from /vendor. Every text is set with textContent,
// never parsed as HTML.
'use strict';

const $ = (selector, root = document) => root.querySelector(selector);

/** An element with properties (`class`, `data-*`, others as attributes) and children. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') node.className = v;
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const pad = (n) => String(n).padStart(2, '0');
/** A time in UTC, to the minute. */
function utc(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  const d = new Date(seconds * 1000);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())} UTC`;
}
/** A duration in seconds as "3 d 4 h", "5 h 12 min" or "42 s". */
function span(seconds) {
  const s = Math.abs(Math.floor(seconds));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${m} min`;
  if (m > 0) return `${m} min`;
  return `${s} s`;
}
const words = (name) => String(name).replaceAll('_', ' ');
const fmt = (n) => Number(n).toLocaleString('en-US');

function hexBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

/**
 * Checks a checkpoint's Ed25519 signature with `keyHex` over the bytes the region signed:
 * "domicile/v1/audit-checkpoint" 0x00 region_id 0x00 u64be(seq) i64be(at) head_hash.
 * Returns "yes", "no", or "unchecked" (no key, or a browser without Ed25519 in WebCrypto).
 */
async function verifyCheckpoint(c, keyHex) {
  if (!c || !keyHex || !(window.crypto && crypto.subtle)) return 'unchecked';
  const enc = new TextEncoder();
  const prefix = enc.encode('domicile/v1/audit-checkpoint');
  const region = enc.encode(c.region_id);
  const hash = hexBytes(c.head_hash);
  const msg = new Uint8Array(prefix.length + 1 + region.length + 1 + 16 + hash.length);
  let at = 0;
  msg.set(prefix, at); at += prefix.length + 1;
  msg.set(region, at); at += region.length + 1;
  const view = new DataView(msg.buffer);
  view.setBigUint64(at, BigInt(c.seq)); at += 8;
  view.setBigInt64(at, BigInt(c.at)); at += 8;
  msg.set(hash, at);
  try {
    const key = await crypto.subtle.importKey('raw', hexBytes(keyHex), { name: 'Ed25519' }, false, ['verify']);
    const ok = await crypto.subtle.verify({ name: 'Ed25519' }, key, hexBytes(c.signature), msg);
    return ok ? 'yes' : 'no';
  } catch (e) {
    return e && e.name === 'NotSupportedError' ? 'unchecked' : 'no';
  }
}

const PALETTE = ['#2d5bd7', '#1b7f4b', '#b54708', '#7a3fd1', '#0e7490', '#be185d', '#4d7c0f', '#a16207'];
const charts = {};
function chart(id, config) {
  if (charts[id]) charts[id].destroy();
  config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, config.options);
  charts[id] = new Chart(document.getElementById(id), config);
  const points = config.data.datasets.reduce((n, d) => n + d.data.filter((v) => v > 0).length, 0);
  document.getElementById(id).closest('figure').dataset.points = String(points);
}

function setRows(section, rows, empty, columns) {
  const body = $(`#${section} tbody`);
  body.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { class: 'empty', colspan: columns }, empty))]));
}

/**
 * The gateway's witness of the region's audit head: a fork (the log was rewritten, truncated
 * or restored from an older copy since the gateway last saw it) is shown loudly.
 */
function witnessBadge(w) {
  if (!w || w.status === 'unspecified') return '';
  const [kind, text] = {
    fork: ['bad', `AUDIT LOG FORK: witnessed #${w.witnessed_seq}`],
    extends: ['ok', 'extends the witnessed head'],
    first: ['warn', 'first witnessed'],
  }[w.status] || ['warn', w.status];
  return [' ', el('span', { class: `badge ${kind} witness`, title: w.detail || '', 'data-witness': w.status }, text)];
}

function renderRegions(data) {
  const now = data.at;
  const checks = [];
  const rows = data.regions.map((r) => {
    const rep = r.report;
    const up = r.status === 'ok' && rep;
    const status = el('span', { class: `badge ${up ? 'ok' : 'bad'}` }, up ? 'serving' : 'unavailable');
    if (!up) {
      return el('tr', { class: 'unavailable', 'data-region': r.region_id, 'data-verified': 'unavailable' },
        el('td', {}, el('strong', {}, r.region_id)), el('td', { class: 'status' }, status),
        el('td', {}, r.countries.join(', ')),
        el('td', { colspan: 6 }, `No answer: ${words(r.status)}. ${r.detail}`));
    }
    const c = rep.checkpoint;
    const sig = el('td', { class: 'signature' }, el('span', { class: 'badge warn' }, 'checking…'));
    const keyMatches = c && c.public_key === r.audit_public_key;
    const row = el('tr', { 'data-region': r.region_id, 'data-verified': 'pending' },
      el('td', {}, el('strong', {}, r.region_id)),
      el('td', { class: 'status' }, status),
      el('td', {}, r.countries.join(', ')),
      el('td', {}, rep.policy_versions.join(', ')),
      el('td', {}, el('code', {}, rep.sealing_key_id)),
      el('td', {}, rep.sealing_key_since ? span(now - rep.sealing_key_since) : '–'),
      el('td', {}, c ? [`#${c.seq} at ${utc(c.at)} `, el('code', {}, c.head_hash.slice(0, 16) + '…')] : '–',
        witnessBadge(r.audit_witness)),
      sig,
      el('td', {}, el('code', {}, (r.audit_public_key || '').slice(0, 16) + '…'),
        keyMatches ? '' : [' ', el('span', { class: 'badge bad' }, 'differs from the checkpoint')]));
    checks.push(verifyCheckpoint(c, r.audit_public_key).then((v) => {
      const verdict = keyMatches ? v : 'no';
      row.dataset.verified = verdict;
      const label = { yes: ['ok', 'verified'], no: ['bad', 'invalid'], unchecked: ['warn', 'not checked'] }[verdict];
      sig.replaceChildren(el('span', { class: `badge ${label[0]}` }, label[1]));
    }));
    return row;
  });
  setRows('regions', rows, 'No regions configured.', 9);
  return Promise.all(checks);
}

function bucketLabels(data) {
  const n = Math.max(1, Math.ceil((data.at - data.since) / data.bucket_seconds));
  const labels = [];
  for (let i = 0; i < n; i++) {
    const d = new Date((data.since + i * data.bucket_seconds) * 1000);
    const hm = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
    const day = `${d.toLocaleString('en-US', { month: 'short', timeZone: 'UTC' })} ${d.getUTCDate()}`;
    labels.push(data.window === '30d' ? day : data.window === '7d' ? `${day} ${hm}` : hm);
  }
  return labels;
}

function renderReleases(data) {
  const labels = bucketLabels(data);
  const index = (start) => Math.min(labels.length - 1, Math.max(0, Math.floor((start - data.since) / data.bucket_seconds)));
  const up = data.regions.filter((r) => r.report);
  const groups = [], rows = [];
  const suppressed = new Array(labels.length).fill(0);
  const summary = [];
  let series = 0;
  up.forEach((r) => {
    // One series per region and purpose, in each chart.
    const byPurpose = new Map();
    const totals = new Map();
    for (const b of r.report.releases) {
      const at = index(b.start);
      const s = byPurpose.get(b.purpose) || { released: new Array(labels.length).fill(0), streamed: new Array(labels.length).fill(0) };
      s.released[at] += b.groups_released;
      s.streamed[at] += b.rows_released;
      byPurpose.set(b.purpose, s);
      suppressed[at] += b.groups_suppressed;
      const key = `${b.purpose}|${b.kind}`;
      const t = totals.get(key) || { purpose: b.purpose, kind: b.kind, releases: 0, groups: 0, suppressed: 0, rows: 0, epsilon: 0 };
      t.releases += b.releases; t.groups += b.groups_released; t.suppressed += b.groups_suppressed;
      t.rows += b.rows_released; t.epsilon += b.epsilon;
      totals.set(key, t);
    }
    for (const [purpose, s] of byPurpose) {
      const color = PALETTE[series++ % PALETTE.length];
      const label = `${r.region_id} · ${words(purpose)}`;
      if (s.released.some((v) => v > 0)) groups.push({ label, data: s.released, backgroundColor: color, stack: 'groups' });
      if (s.streamed.some((v) => v > 0)) rows.push({ label, data: s.streamed, backgroundColor: color, stack: 'rows' });
    }
    for (const t of totals.values()) {
      summary.push(el('tr', { 'data-region': r.region_id },
        el('td', {}, r.region_id), el('td', {}, words(t.purpose)), el('td', {}, words(t.kind)),
        el('td', { class: 'n' }, fmt(t.releases)), el('td', { class: 'n' }, fmt(t.groups)),
        el('td', { class: 'n' }, fmt(t.suppressed)), el('td', { class: 'n' }, fmt(t.rows)),
        el('td', { class: 'n' }, t.epsilon.toFixed(2))));
    }
  });
  groups.push({ label: 'suppressed (all regions)', data: suppressed, backgroundColor: '#d92d20', stack: 'suppressed' });
  const stacked = { x: { stacked: true }, y: { stacked: true, beginAtZero: true } };
  chart('chart-groups', { type: 'bar', data: { labels, datasets: groups }, options: { scales: stacked } });
  chart('chart-rows', { type: 'bar', data: { labels, datasets: rows }, options: { scales: stacked } });
  chart('chart-budget', {
    type: 'bar',
    data: {
      labels: up.map((r) => r.region_id),
      datasets: [
        { label: 'spent', data: up.map((r) => r.report.budget.spent), backgroundColor: '#b54708' },
        { label: 'left', data: up.map((r) => r.report.budget.remaining), backgroundColor: '#9fd6b4' },
      ],
    },
    options: { indexAxis: 'y', scales: { x: { stacked: true, beginAtZero: true }, y: { stacked: true } } },
  });
  setRows('releases', summary, 'Nothing was released in this window.', 8);
}

const KINDS = ['access', 'portability', 'rectification', 'erasure', 'restriction', 'objection'];

function renderRequests(data) {
  const now = data.at;
  const up = data.regions.filter((r) => r.report);
  const open = [];
  let total = 0;
  // One row per kind: requests per region, then how many are open and overdue in all.
  const table = new Map(KINDS.map((k) => [k, { byRegion: new Map(), openByRegion: new Map(), open: 0, overdue: 0 }]));
  for (const r of up) {
    for (const c of r.report.subject_requests) {
      const row = table.get(c.kind) || { byRegion: new Map(), openByRegion: new Map(), open: 0, overdue: 0 };
      row.byRegion.set(r.region_id, (row.byRegion.get(r.region_id) || 0) + c.count);
      // Completed and refused requests are closed; every other status is open.
      const closed = c.status === 'completed' || c.status === 'refused';
      if (!closed) row.openByRegion.set(r.region_id, (row.openByRegion.get(r.region_id) || 0) + c.count);
      if (!closed) row.open += c.count;
      row.overdue += c.overdue;
      table.set(c.kind, row);
    }
    open.push(...r.report.open_requests);
    total += r.report.open_requests_total;
  }
  $('#requests table.counts thead').replaceChildren(el('tr', {}, el('th', {}, 'Kind'),
    up.map((r) => el('th', { class: 'n' }, r.region_id)),
    el('th', { class: 'n' }, 'Open'), el('th', { class: 'n' }, 'Overdue')));
  const counts = [...table.entries()].filter(([, row]) => row.byRegion.size > 0).map(([kind, row]) =>
    el('tr', { 'data-kind': kind, class: row.overdue > 0 ? 'overdue' : undefined },
      el('td', {}, words(kind)),
      up.map((r) => {
        const open = row.openByRegion.get(r.region_id) || 0;
        return el('td', { class: 'n' }, fmt(row.byRegion.get(r.region_id) || 0) + (open ? ` (${fmt(open)} open)` : ''));
      }),
      el('td', { class: 'n' }, fmt(row.open)), el('td', { class: 'n' }, fmt(row.overdue))));
  $('#requests table.counts tbody').replaceChildren(...(counts.length ? counts
    : [el('tr', {}, el('td', { class: 'empty', colspan: up.length + 3 }, 'No subject requests yet.'))]));
  open.sort((a, b) => a.due_at - b.due_at);
  $('#requests table.open tbody').replaceChildren(...(open.length ? open.map((o) => {
    const overdue = o.due_at < now;
    return el('tr', { class: overdue ? 'overdue' : undefined, 'data-overdue': overdue ? 'yes' : 'no' },
      el('td', {}, el('code', {}, o.request_id)), el('td', {}, words(o.kind)), el('td', {}, words(o.status)),
      el('td', {}, utc(o.submitted_at)),
      el('td', {}, utc(o.due_at), ' ', el('span', { class: `badge ${overdue ? 'bad' : 'ok'}` },
        overdue ? `overdue by ${span(now - o.due_at)}` : `in ${span(o.due_at - now)}`)));
  }) : [el('tr', {}, el('td', { class: 'empty', colspan: 5 }, 'No open requests.'))]));
  const oldest = open.slice().sort((a, b) => a.submitted_at - b.submitted_at)[0];
  $('#oldest-open').textContent = oldest
    ? `${total} open. Oldest: ${oldest.request_id} (${words(oldest.kind)}), received ${utc(oldest.submitted_at)}, due ${utc(oldest.due_at)}.`
    : 'No open requests.';
}

const countdowns = [];
function tick() {
  const now = Date.now() / 1000;
  for (const { node, deadline } of countdowns) {
    const left = deadline - now;
    node.textContent = left > 0 ? `${span(left)} left to notify` : `deadline passed ${span(left)} ago`;
    node.className = `countdown ${left <= 0 ? 'passed' : left < 12 * 3600 ? 'soon' : ''}`;
  }
}

function renderIncidents(data) {
  const byId = new Map();
  for (const r of data.regions) {
    if (!r.report) continue;
    for (const i of r.report.incidents) {
      const inc = byId.get(i.incident_id) || { id: i.incident_id, detected: i.detected_at, deadline: i.deadline, categories: new Set(), parts: [] };
      inc.deadline = Math.min(inc.deadline, i.deadline);
      i.categories.forEach((c) => inc.categories.add(c));
      inc.parts.push(...i.affected.map((a) => ({ region: r.region_id, ...a })));
      byId.set(i.incident_id, inc);
    }
  }
  countdowns.length = 0;
  const cards = [...byId.values()].sort((a, b) => b.detected - a.detected).map((inc) => {
    const clock = el('div', { class: 'countdown' });
    countdowns.push({ node: clock, deadline: inc.deadline });
    return el('div', { class: 'card', 'data-incident': inc.id },
      el('h3', {}, el('code', {}, inc.id)),
      el('div', {}, `Detected ${utc(inc.detected)}; notify by ${utc(inc.deadline)}`),
      clock,
      el('div', { class: 'lead' }, [...inc.categories].map((c) => `${words(c)}: ${fmt(inc.parts.filter((p) => p.category === c).reduce((n, p) => n + p.subjects, 0))} subjects`).join(' · ')),
      el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'Region'), el('th', {}, 'Country'), el('th', {}, 'Category'), el('th', { class: 'n' }, 'Subjects'))),
        el('tbody', {}, inc.parts.map((p) => el('tr', {}, el('td', {}, p.region), el('td', {}, p.country),
          el('td', {}, words(p.category)), el('td', { class: 'n' }, fmt(p.subjects)))))));
  });
  $('#incidents .cards').replaceChildren(...(cards.length ? cards : [el('p', { class: 'empty' }, 'No incidents.')]));
  tick();
}

const STATES = { granted: 'granted', granted_confirmed: 'granted', pending_confirmation: 'pending', withdrawn: 'withdrawn', refused: 'refused', objected: 'objected' };
const COLUMNS = ['granted', 'pending', 'withdrawn', 'refused', 'objected'];
const STATE_COLORS = { granted: '#1b7f4b', pending: '#eaaa08', withdrawn: '#b54708', refused: '#d92d20', objected: '#7a3fd1' };

function renderConsent(data) {
  const rows = new Map();
  const byCountry = new Map();
  for (const r of data.regions) {
    if (!r.report) continue;
    for (const c of r.report.consents) {
      const column = STATES[c.state];
      if (!column) continue;
      const key = `${c.country}|${c.purpose}|${c.channel}`;
      const row = rows.get(key) || { country: c.country, purpose: c.purpose, channel: c.channel, granted: 0, pending: 0, withdrawn: 0, refused: 0, objected: 0 };
      row[column] += c.subjects;
      rows.set(key, row);
      const country = byCountry.get(c.country) || { granted: 0, pending: 0, withdrawn: 0, refused: 0, objected: 0 };
      country[column] += c.subjects;
      byCountry.set(c.country, country);
    }
  }
  const countries = [...byCountry.keys()].sort();
  chart('chart-consent', {
    type: 'bar',
    data: {
      labels: countries,
      datasets: COLUMNS.map((s) => ({ label: s, data: countries.map((c) => byCountry.get(c)[s]), backgroundColor: STATE_COLORS[s] })),
    },
    options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
  });
  setRows('consent', [...rows.values()].map((r) => el('tr', { 'data-country': r.country },
    el('td', {}, r.country), el('td', {}, words(r.purpose)),
    el('td', {}, r.channel === 'unspecified' ? 'every channel' : words(r.channel)),
    ...COLUMNS.map((s) => el('td', { class: 'n' }, fmt(r[s]))))), 'No consent on file.', 8);
}

function renderFollowUps(data) {
  const rows = data.regions.filter((r) => r.report).map((r) => {
    const f = r.report.follow_ups;
    return el('tr', { 'data-region': r.region_id, class: f.overdue > 0 ? 'overdue' : undefined },
      el('td', {}, r.region_id), el('td', { class: 'n' }, fmt(f.open)),
      el('td', { class: 'n' }, fmt(f.overdue)), el('td', { class: 'n' }, fmt(f.resolved)),
      el('td', { class: 'n' }, fmt(f.cancelled)));
  });
  setRows('follow-ups', rows, 'No region answered.', 5);
}

/** The case queue: each region's counts, then the open requests, soonest due first. */
async function loadQueue() {
  const query = new URLSearchParams();
  const tenant = new URLSearchParams(location.search).get('tenant');
  if (tenant) query.set('tenant', tenant);
  if ($('#queue-overdue').checked) query.set('overdue', '1');
  let data;
  try {
    const resp = await fetch(`/api/requests?${query}`, { credentials: 'same-origin', cache: 'no-store' });
    data = await resp.json();
    if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  } catch (e) {
    $('#queue table.queue tbody').replaceChildren(
      el('tr', {}, el('td', { class: 'empty', colspan: 6 }, `The queue did not load: ${e.message}.`)));
    return;
  }
  const now = data.at;
  const counts = data.counts.map((c) => el('tr', { 'data-queue-region': c.region_id, class: c.overdue > 0 ? 'overdue' : undefined },
    el('td', {}, c.region_id), el('td', { class: 'n' }, fmt(c.open)),
    el('td', { class: 'n' }, fmt(c.due_within_7_days)), el('td', { class: 'n' }, fmt(c.overdue))));
  const missing = data.coverage.filter((c) => c.status !== 'ok').map((c) =>
    el('tr', { 'data-queue-region': c.region_id, class: 'down' }, el('td', {}, c.region_id),
      el('td', { colspan: 3 }, `did not answer (${words(c.status)})`)));
  $('#queue table.queue-counts tbody').replaceChildren(...counts, ...missing);
  const rows = data.receipts.map((r) => {
    const badge = r.overdue
      ? el('span', { class: 'badge bad' }, `overdue by ${span(now - r.due_at)}`)
      : r.paused_since !== null
        ? el('span', { class: 'badge' }, `paused since ${utc(r.paused_since)}`)
        : el('span', { class: 'badge ok' }, `in ${span(r.due_at - now)}`);
    return el('tr', { 'data-status': r.status, 'data-overdue': r.overdue ? 'yes' : 'no', class: r.overdue ? 'overdue' : undefined },
      el('td', {}, el('code', {}, r.request_id)), el('td', {}, r.region_id), el('td', {}, words(r.kind)),
      el('td', {}, words(r.status), r.extended ? ' (extended)' : ''),
      el('td', {}, utc(r.submitted_at)), el('td', {}, utc(r.due_at), ' ', badge));
  });
  $('#queue table.queue tbody').replaceChildren(...(rows.length ? rows
    : [el('tr', {}, el('td', { class: 'empty', colspan: 6 }, 'No open requests.'))]));
  $('#queue-more').hidden = !data.more;
  $('#queue').dataset.state = 'ready';
}

async function load() {
  const query = new URLSearchParams({ window: $('#window').value });
  const tenant = new URLSearchParams(location.search).get('tenant');
  if (tenant) query.set('tenant', tenant);
  let data;
  try {
    const resp = await fetch(`/api/overview?${query}`, { credentials: 'same-origin', cache: 'no-store' });
    if (resp.status === 401) { location.assign('/login'); return; }
    data = await resp.json();
    if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  } catch (e) {
    const notice = $('#notice');
    notice.textContent = `The gateway did not answer: ${e.message}. Retrying.`;
    notice.hidden = false;
    return;
  }
  $('#tenant').textContent = data.tenant;
  $('#as-of').textContent = utc(data.at);
  const down = data.regions.filter((r) => !r.report);
  const notice = $('#notice');
  notice.textContent = down.length
    ? `Unavailable: ${down.map((r) => `${r.region_id} (${words(r.status)})`).join(', ')}. Their figures are missing below; the other regions are shown.`
    : '';
  notice.hidden = down.length === 0;
  document.body.dataset.unavailable = down.map((r) => r.region_id).join(' ');
  const verified = renderRegions(data);
  renderReleases(data);
  renderRequests(data);
  await loadQueue();
  renderIncidents(data);
  renderFollowUps(data);
  renderConsent(data);
  await verified;
  for (const panel of document.querySelectorAll('[data-panel]')) panel.dataset.state = 'ready';
  document.body.dataset.loadedAt = String(data.at);
}

document.addEventListener('DOMContentLoaded', () => {
  $('#window').addEventListener('change', load);
  $('#queue-overdue').addEventListener('change', loadQueue);
  load();
  setInterval(load, 30000);
  setInterval(tick, 1000);
});
