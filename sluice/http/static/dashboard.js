// sluice dashboard: reads the JSON report endpoints (README "Reports") and draws SVG.
// No library and no other host: everything here is this file, the page and its CSS.
"use strict";

const SOURCES = ["facebook", "tiktok"];
const RANGES = ["1h", "24h", "7d", "all", "custom"];
const PRESET_MS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };
const TOP_LIMIT = 10;
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

// --- the view, kept in the URL so it can be shared ---------------------------------------

function readView() {
  const q = new URLSearchParams(location.search);
  const range = RANGES.includes(q.get("range")) ? q.get("range") : "all";
  const source = SOURCES.includes(q.get("source")) ? q.get("source") : "both";
  return { range, source, from: q.get("from") || "", to: q.get("to") || "" };
}

function writeView(view) {
  const q = new URLSearchParams({ range: view.range });
  if (view.range === "custom") {
    if (view.from) q.set("from", view.from);
    if (view.to) q.set("to", view.to);
  }
  if (view.source !== "both") q.set("source", view.source);
  history.replaceState(null, "", "?" + q.toString());
}

// A timestamp without a zone is UTC, as the API reads it.
function parseUtc(text) {
  return Date.parse(/(Z|[+-]\d\d:?\d\d)$/i.test(text) ? text : text + "Z");
}

// [from, to) to ask for, and the instants [lo, hi] the charts' time axis spans.
function resolveRange(view, now, extent) {
  const first = extent.first ? parseUtc(extent.first) : now;
  const last = extent.last ? parseUtc(extent.last) : now;
  if (view.range in PRESET_MS) {
    const lo = now - PRESET_MS[view.range];
    return { from: new Date(lo).toISOString(), to: null, lo, hi: now };
  }
  if (view.range === "custom") {
    const lo = view.from ? parseUtc(view.from) : first;
    const hi = view.to ? parseUtc(view.to) - 1 : Math.max(now, last);
    return { from: view.from || null, to: view.to || null, lo, hi: Math.max(lo, hi) };
  }
  return { from: null, to: null, lo: first, hi: last };
}

const INTERVAL_MS = { minute: 60e3, hour: 3600e3, day: 86400e3 };

function intervalFor(range) {
  const span = range.hi - range.lo;
  if (span <= 3 * 3600e3) return "minute";
  if (span <= 4 * 86400e3) return "hour";
  return "day";
}

// The time axis: one slot per interval from the range's first bucket to its last (UTC).
function timeAxis(range, interval) {
  const step = INTERVAL_MS[interval];
  const start = Math.floor(range.lo / step) * step;
  const slots = Math.floor(range.hi / step) - Math.floor(range.lo / step) + 1;
  return { start, step, slots: Math.max(1, slots), interval };
}

// --- numbers for humans -----------------------------------------------------------------

const INTEGER = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

function fmtInt(n) {
  return INTEGER.format(n);
}

// Money stays the API's decimal string ("1234.50"); only separators are added.
function fmtMoney(text) {
  const negative = text.startsWith("-");
  const [whole, cents] = (negative ? text.slice(1) : text).split(".");
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return (negative ? "-" : "") + grouped + (cents === undefined ? "" : "." + cents);
}

function fmtRate(rate) {
  return rate === null ? "n/a" : (rate * 100).toFixed(1) + "%";
}

// "2026-11-23T10:00:00Z" -> "2026-11-23 10:00" (day buckets: the date alone).
function fmtBucket(iso, interval) {
  const text = iso.replace("T", " ");
  return interval === "day" ? text.slice(0, 10) : text.slice(0, 16);
}

function fmtInstant(iso) {
  return iso === null ? "none yet" : iso.replace("T", " ").replace(/(\.\d+)?Z$/, "") + " UTC";
}

function compact(n) {
  return n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : n >= 1e4 ? Math.round(n / 1e3) + "k" : fmtInt(n);
}

// --- DOM and SVG building ---------------------------------------------------------------

function build(make, tag, attrs, children) {
  const el = make(tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, value);
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) el.append(child);
  }
  return el;
}

const h = (tag, attrs, ...children) => build((t) => document.createElement(t), tag, attrs, children);
const s = (tag, attrs, ...children) =>
  build((t) => document.createElementNS(SVG_NS, t), tag, attrs, children);

// columns: [{ title, numeric }]; rows: arrays of cell texts.
function table(name, columns, rows) {
  const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.numeric ? "num" : "" }, c.title)));
  const body = rows.map((row) =>
    h("tr", {}, row.map((cell, i) => h("td", { class: columns[i].numeric ? "num" : "" }, cell))),
  );
  return h("div", { class: "table-wrap" }, h("table", { "data-table": name }, h("thead", {}, head), h("tbody", {}, body)));
}

// A chart with its title, and the table behind it as its text alternative (toggleable).
function figure(title, chart, tableEl) {
  return h(
    "figure",
    {},
    h("figcaption", {}, title),
    chart,
    h("details", {}, h("summary", {}, "Table: " + title), tableEl),
  );
}

function empty(text) {
  return h("p", { class: "empty" }, text || "No events in this range.");
}

function legend(keys) {
  return h("div", { class: "legend", "aria-hidden": "true" }, keys.map((k) =>
    h("span", {}, h("span", { class: "swatch swatch-" + k }), k)));
}

// Vertical bars on a time axis, stacked: buckets = [{ at, label, parts: [{ key, value, text }] }].
function columnChart(title, axis, buckets, W) {
  const H = W / 4, left = 52, bottom = 22, top = 10;
  const max = Math.max(1e-9, ...buckets.map((b) => b.parts.reduce((sum, p) => sum + p.value, 0)));
  const step = (W - left) / axis.slots;
  const slot = (at) => Math.min(axis.slots - 1, Math.max(0, Math.floor((at - axis.start) / axis.step)));
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title });
  svg.append(
    s("line", { x1: left, y1: H - bottom, x2: W, y2: H - bottom, class: "axis" }),
    s("text", { x: left - 6, y: top + 8, "text-anchor": "end" }, max < 1 ? "" : compact(max)),
    s("text", { x: left - 6, y: H - bottom, "text-anchor": "end" }, "0"),
  );
  for (const b of buckets) {
    const i = slot(b.at);
    let y = H - bottom;
    for (const part of b.parts) {
      const height = (part.value / max) * (H - bottom - top);
      y -= height;
      svg.append(s("rect", {
        x: left + i * step + step * 0.1, y, width: Math.max(step * 0.8, 0.5), height,
        class: "bar-" + part.key,
      }, s("title", {}, `${b.label} ${part.key}: ${part.text}`)));
    }
  }
  const tick = (i) => fmtBucket(new Date(axis.start + i * axis.step).toISOString(), axis.interval);
  svg.append(s("text", { x: left, y: H - 6, "text-anchor": "start" }, tick(0)));
  if (axis.slots > 1) svg.append(s("text", { x: W, y: H - 6, "text-anchor": "end" }, tick(axis.slots - 1)));
  return svg;
}

// Horizontal bars: rows = [{ label, value, text, key }]; `small` for a grid cell.
function barChart(title, rows, small) {
  const [W, labelW, valueW] = small ? [360, 110, 70] : [640, 170, 120];
  const row = 24;
  const max = Math.max(1e-9, ...rows.map((r) => r.value));
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${rows.length * row + 4}`, class: "chart", role: "img", "aria-label": title,
  });
  rows.forEach((r, i) => {
    const y = i * row + 2;
    const width = (r.value / max) * (W - labelW - valueW);
    const room = small ? 15 : 24;
    const label = r.label.length > room ? r.label.slice(0, room - 1) + "…" : r.label;
    svg.append(
      s("text", { x: labelW - 8, y: y + 16, "text-anchor": "end" }, label),
      s("rect", { x: labelW, y: y + 3, width: Math.max(width, 0.5), height: row - 6, class: "bar-" + r.key },
        s("title", {}, `${r.label}: ${r.text}`)),
      s("text", { x: labelW + width + 6, y: y + 16 }, r.text),
    );
  });
  return svg;
}

// --- fetching ---------------------------------------------------------------------------

async function getJson(path, params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") q.set(name, value);
  }
  const url = q.toString() ? `${path}?${q}` : path;
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" } });
  } catch (err) {
    throw new Error(`${path}: the server did not answer (${err.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const why = body && body.error ? body.error : response.statusText;
    throw new Error(`${path} answered ${response.status}: ${why}`);
  }
  return body;
}

// --- panels -----------------------------------------------------------------------------

// Distinct users come later (over a partial range they are counted from raw events).
function renderTotals(d) {
  const item = (name, title, value) =>
    h("div", {}, h("dt", {}, title), h("dd", { "data-total": name }, value));
  return [h("dl", { class: "totals" },
    item("events", "Events", fmtInt(d.events.total)),
    item("revenue", "Revenue", fmtMoney(d.revenue.total)),
    item("users", "Distinct users (per platform)", "counting…"),
    item("last", "Last stored event", fmtInstant(d.extent.last)),
  )];
}

function renderEvents(d) {
  const byBucket = new Map();
  d.shown.forEach((src, i) => {
    for (const point of d.series[i].series) {
      if (!byBucket.has(point.bucket)) byBucket.set(point.bucket, Object.fromEntries(d.shown.map((k) => [k, 0])));
      byBucket.get(point.bucket)[src] = point.count;
    }
  });
  const buckets = [...byBucket.keys()].sort();
  const title = `Events per ${d.interval}, stacked by source (UTC)`;
  if (buckets.length === 0) return [h("h3", {}, title), empty()];
  const columns = [{ title: "Bucket (UTC)" }, ...d.shown.map((k) => ({ title: k, numeric: true })), { title: "Total", numeric: true }];
  const rows = buckets.map((b) => {
    const counts = byBucket.get(b);
    const total = d.shown.reduce((sum, k) => sum + counts[k], 0);
    return [fmtBucket(b, d.interval), ...d.shown.map((k) => fmtInt(counts[k])), fmtInt(total)];
  });
  const chart = columnChart(title, d.axis, buckets.map((b) => ({
    at: parseUtc(b),
    label: fmtBucket(b, d.interval),
    parts: d.shown.map((k) => ({ key: k, value: byBucket.get(b)[k], text: fmtInt(byBucket.get(b)[k]) })),
  })), 960);
  return [legend(d.shown), figure(title, chart, table("events-series", columns, rows))];
}

function renderFunnel(f) {
  const title = "Top to bottom of the funnel, per source";
  const rows = f.bySource.map((r) => [r.source, fmtInt(r.top), fmtInt(r.bottom), fmtRate(r.conversionRate)]);
  rows.push(["all", fmtInt(f.top), fmtInt(f.bottom), fmtRate(f.conversionRate)]);
  const columns = [{ title: "Source" }, { title: "Top", numeric: true }, { title: "Bottom", numeric: true }, { title: "Conversion", numeric: true }];
  if (f.top === 0 && f.bottom === 0) return [h("h3", {}, title), empty(), table("funnel", columns, rows)];
  const bars = f.bySource.flatMap((r) => [
    { label: `${r.source} top`, value: r.top, text: fmtInt(r.top), key: "top" },
    { label: `${r.source} bottom`, value: r.bottom, text: `${fmtInt(r.bottom)} (${fmtRate(r.conversionRate)})`, key: "bottom" },
  ]);
  return [figure(title, barChart(title, bars), table("funnel", columns, rows))];
}

function renderRevenue(d) {
  const r = d.revenue;
  const out = [h("p", {}, `${fmtMoney(r.total)} from ${fmtInt(r.transactions)} transactions`)];
  const overTime = `Revenue per ${d.interval} (UTC)`;
  if (!r.series || r.series.length === 0) {
    out.push(h("h3", {}, overTime), empty("No revenue in this range."));
  } else {
    const chart = columnChart(overTime, d.axis, r.series.map((p) => ({
      at: parseUtc(p.bucket),
      label: fmtBucket(p.bucket, d.interval),
      parts: [{ key: "revenue", value: Number(p.revenue), text: fmtMoney(p.revenue) }],
    })), 640);
    const rows = r.series.map((p) => [fmtBucket(p.bucket, d.interval), fmtMoney(p.revenue), fmtInt(p.transactions)]);
    out.push(figure(overTime, chart, table("revenue-series", [
      { title: "Bucket (UTC)" }, { title: "Revenue", numeric: true }, { title: "Transactions", numeric: true },
    ], rows)));
  }
  const byCampaign = `Revenue by campaign (top ${TOP_LIMIT} of ${fmtInt(r.byCampaign.length)})`;
  const campaigns = r.byCampaign.slice(0, TOP_LIMIT);
  if (campaigns.length === 0) {
    out.push(h("h3", {}, byCampaign), empty("No campaign revenue in this range."));
  } else {
    const chart = barChart(byCampaign, campaigns.map((c) => ({
      label: c.campaignId, value: Number(c.revenue), text: fmtMoney(c.revenue), key: "revenue",
    })));
    const rows = campaigns.map((c) => [c.campaignId, fmtMoney(c.revenue), fmtInt(c.transactions)]);
    out.push(figure(byCampaign, chart, table("revenue-campaigns", [
      { title: "Campaign" }, { title: "Revenue", numeric: true }, { title: "Transactions", numeric: true },
    ], rows)));
  }
  return out;
}

async function showUsers(gen, shown, demographics) {
  let text;
  try {
    const d = await demographics;
    text = fmtInt(shown.reduce((sum, src) => sum + (d[src] ? d[src].users : 0), 0));
  } catch {
    text = "unavailable (see Demographics)";
  }
  const cell = document.querySelector('#totals [data-total="users"]');
  if (gen !== generation || cell === null) return;
  cell.textContent = text;
}

function countFigure(name, title, items, key) {
  if (items.length === 0 || items.every((i) => i.count === 0)) return h("div", {}, h("h3", {}, title), empty());
  const chart = barChart(title, items.map((i) => ({ label: i.label, value: i.count, text: fmtInt(i.count), key })), true);
  const rows = items.map((i) => [i.label, fmtInt(i.count)]);
  return figure(title, chart, table(name, [{ title: "Value" }, { title: "Events", numeric: true }], rows));
}

function renderDemographics(d) {
  const figures = [];
  const fb = d.demographics.facebook;
  const tt = d.demographics.tiktok;
  if (fb) {
    figures.push(
      countFigure("facebook-age", "Facebook: age", fb.age.map((a) => ({ label: a.range, count: a.count })), "facebook"),
      countFigure("facebook-gender", "Facebook: gender", fb.gender.map((g) => ({ label: g.gender, count: g.count })), "facebook"),
    );
  }
  if (tt) {
    figures.push(
      countFigure("tiktok-followers", "TikTok: followers", tt.followers.buckets.map((b) => ({ label: b.range, count: b.count })), "tiktok"),
      countFigure("tiktok-devices", "TikTok: devices", tt.devices.map((v) => ({ label: v.device, count: v.count })), "tiktok"),
    );
  }
  const countriesTitle = `Top ${TOP_LIMIT} countries`;
  if (d.countries.length === 0) {
    figures.push(h("div", {}, h("h3", {}, countriesTitle), empty()));
  } else {
    const chart = barChart(countriesTitle, d.countries.map((c) => ({
      label: c.country, value: c.events, text: fmtInt(c.events), key: "facebook",
    })), true);
    const rows = d.countries.map((c) => [c.country, fmtInt(c.events), fmtMoney(c.revenue)]);
    figures.push(figure(countriesTitle, chart, table("countries", [
      { title: "Country" }, { title: "Events", numeric: true }, { title: "Revenue", numeric: true },
    ], rows)));
  }
  return [h("div", { class: "grid" }, figures)];
}

const TOP_KEYS = { campaigns: "campaignId", users: "userId", videos: "videoId" };

function renderTop(d) {
  const blocks = [];
  for (const entity of Object.keys(TOP_KEYS)) {
    for (const by of ["events", "revenue"]) {
      const items = d.top[`${entity}-${by}`];
      const title = `Top ${entity} by ${by}`;
      const rows = items.map((item, i) => [
        String(i + 1), item.source, item[TOP_KEYS[entity]], fmtInt(item.events), fmtMoney(item.revenue),
      ]);
      const none = by === "revenue" ? "No transactions in this range." : undefined;
      blocks.push(h("div", {}, h("h3", {}, title), items.length === 0 ? empty(none) : table(`top-${entity}-${by}`, [
        { title: "#", numeric: true }, { title: "Source" }, { title: entity.slice(0, -1) },
        { title: "Events", numeric: true }, { title: "Revenue", numeric: true },
      ], rows)));
    }
  }
  return [h("div", { class: "grid roomy" }, blocks)];
}

// --- refresh ----------------------------------------------------------------------------

// A promise whose failure its panel shows: marked handled, so the browser logs no
// "uncaught" error when a panel stops at an earlier failure and never awaits it.
function handled(promise) {
  promise.catch(() => {});
  return promise;
}

let generation = 0;
let timer = null;
let paused = false;
let refreshes = 0;

async function showPanel(id, gen, load, render) {
  const section = $(id);
  section.dataset.state = "loading";
  section.setAttribute("aria-busy", "true");
  let content;
  let state = "ready";
  try {
    content = render(await load());
  } catch (err) {
    content = [h("p", { class: "error", role: "alert" }, `Could not load this panel: ${err.message}`)];
    state = "error";
  }
  if (gen !== generation) return; // a newer view is being drawn
  section.querySelector(".body").replaceChildren(...content);
  section.dataset.state = state;
  section.removeAttribute("aria-busy");
  performance.mark("sluice:panel:" + id);
}

async function refresh() {
  const gen = ++generation;
  clearTimeout(timer);
  const view = readView();
  const shown = view.source === "both" ? SOURCES : [view.source];
  const source = view.source === "both" ? null : view.source;
  const extentLoad = handled(getJson("/reports/extent"));
  const framed = (extent) => {
    const range = resolveRange(view, Date.now(), extent);
    const interval = intervalFor(range);
    return { range, interval, axis: timeAxis(range, interval) };
  };
  // Every request waits for the range: a preset's is known now; "all" and custom ends
  // need the extent. Then they go out in the order asked, the cheap ones first: over a
  // partial range, distinct users and top users/videos read raw events.
  const ready = view.range in PRESET_MS
    ? Promise.resolve(framed({}))
    : handled(extentLoad.then(framed));
  const ask = (path, extra, withInterval) => handled(ready.then(({ range, interval }) =>
    getJson(path, {
      from: range.from, to: range.to, source, ...(withInterval ? { interval } : {}), ...extra,
    })));
  const events = ask("/reports/events", { groupBy: "source" });
  const series = shown.map((src) => ask("/reports/events", { groupBy: "source", source: src }, true));
  const funnel = ask("/reports/funnel");
  const revenue = ask("/reports/revenue", {}, true);
  const countries = ask("/reports/countries", { limit: TOP_LIMIT });
  const top = {};
  for (const entity of ["campaigns", "users", "videos"]) {
    for (const by of ["events", "revenue"]) {
      top[`${entity}-${by}`] = ask("/reports/top", { entity, by, limit: TOP_LIMIT });
    }
  }
  const demographics = ask("/reports/demographics");

  const panels = [
    showPanel("totals", gen, async () => ({
      extent: await extentLoad,
      events: await events,
      revenue: await revenue,
    }), renderTotals).then(() => showUsers(gen, shown, demographics)),
    showPanel("events", gen, async () => ({
      shown,
      interval: (await ready).interval,
      axis: (await ready).axis,
      series: await Promise.all(series),
    }), renderEvents),
    showPanel("funnel", gen, () => funnel, renderFunnel),
    showPanel("revenue", gen, async () => ({
      interval: (await ready).interval,
      axis: (await ready).axis,
      revenue: await revenue,
    }), renderRevenue),
    showPanel("demographics", gen, async () => ({
      demographics: await demographics,
      countries: await countries,
    }), renderDemographics),
    showPanel("top", gen, async () => {
      const answers = await Promise.all(Object.values(top));
      return { top: Object.fromEntries(Object.keys(top).map((key, i) => [key, answers[i]])) };
    }, renderTop),
  ];
  await Promise.all(panels);
  if (gen !== generation) return;
  refreshes += 1;
  document.body.dataset.refreshes = String(refreshes);
  performance.mark("sluice:refreshed"); // every panel drawn (bench/dashboard.py times it)
  $("refreshed").textContent = `Last refreshed ${new Date().toISOString().slice(11, 19)} UTC`;
  sayWhatIsNext();
  schedule();
}

function schedule() {
  clearTimeout(timer);
  if (!paused) timer = setTimeout(refresh, Number($("every").value) * 1000);
}

// --- controls ---------------------------------------------------------------------------

function showControls(view) {
  $("range").value = view.range;
  $("source").value = view.source;
  $("from").value = view.from;
  $("to").value = view.to;
  $("custom-range").hidden = view.range !== "custom";
}

function onControlsChanged() {
  const view = {
    range: $("range").value,
    source: $("source").value,
    from: $("from").value,
    to: $("to").value,
  };
  writeView(view);
  showControls(readView());
  refresh();
}

// "Last refreshed ...; next in N s" or "...; refresh paused", after the timer's state.
function sayWhatIsNext() {
  const text = $("refreshed").textContent.replace(/; (next in \d+ s|refresh paused)$/, "");
  if (!text.startsWith("Last refreshed")) return;
  $("refreshed").textContent = paused ? `${text}; refresh paused` : `${text}; next in ${$("every").value} s`;
}

function onPause() {
  paused = !paused;
  const button = $("pause");
  button.setAttribute("aria-pressed", String(paused));
  button.textContent = paused ? "Resume refresh" : "Pause refresh";
  sayWhatIsNext();
  schedule();
}

function onEveryChanged() {
  sayWhatIsNext();
  schedule();
}

document.addEventListener("DOMContentLoaded", () => {
  showControls(readView());
  for (const id of ["range", "source", "from", "to"]) $(id).addEventListener("change", onControlsChanged);
  $("every").addEventListener("change", onEveryChanged);
  $("pause").addEventListener("click", onPause);
  refresh();
});
