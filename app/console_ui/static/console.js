// The console's pages, filled from the read API as the caller may read it (its masking
// and bounds). No framework: the DOM, fetch and uPlot (vendor/, MIT) for the charts.
"use strict";

// Every path relative to the page (/console/PAGE): the same under a cell's
// /systems/SYSTEM/console/PAGE, where the system's API is /systems/SYSTEM/v1/...
const ROOT = "..";
const $ = (selector) => document.querySelector(selector);
const status = (text) => { $("#status").textContent = text || ""; };

function element(tag, text, attributes) {
  const made = document.createElement(tag);
  if (text !== undefined && text !== null) made.textContent = String(text);
  for (const [name, value] of Object.entries(attributes || {})) made.setAttribute(name, value);
  return made;
}

function row(cells) {
  const tr = element("tr");
  for (const cell of cells) {
    tr.append(cell instanceof Node ? element("td").appendChild(cell).parentNode : element("td", cell));
  }
  return tr;
}

// A read of the API; a problem document (4xx, 5xx) is thrown as an Error saying its
// status and detail, with its `status` and the parameter it names (`parameter`), if any.
async function api(path, options) {
  const answer = await fetch(path, options);
  if (!answer.ok) {
    let detail = answer.statusText, parameter = null, field = null;
    try {
      const problem = await answer.json();
      detail = problem.detail || detail;
      parameter = typeof problem.parameter === "string" ? problem.parameter : null;
      field = typeof problem.field === "string" ? problem.field : null;
    } catch (_) { /* not JSON */ }
    throw Object.assign(new Error(`${answer.status}: ${detail}`), { status: answer.status, parameter, field });
  }
  return answer;
}

// What the API refused of what the forms asked (a read of the filters, an export), said
// beside the filters, where the reader is, with the input it names marked; said no
// more (null) once what they ask is answered.
function refused(error) {
  const said = $("#refused");
  said.textContent = error ? error.message : "";
  said.hidden = !error;
  for (const input of document.querySelectorAll("form input[name], form select[name]")) {
    if (error && input.name === error.parameter) {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", "refused");
    } else if (input.hasAttribute("aria-invalid")) {
      input.removeAttribute("aria-invalid");
      input.removeAttribute("aria-describedby");
    }
  }
}

function filterParams(form, names) {
  const params = new URLSearchParams();
  for (const name of names) {
    const value = form.elements[name] && form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

// A view's filters live in the page's address too, so that it can be bookmarked, shared
// and reloaded: read from it when the page opens (only the form's own fields, each as
// an input's value), written back at each read.
function filtersFromAddress(form, names) {
  const asked = new URLSearchParams(window.location.search);
  for (const name of names) {
    if (asked.has(name) && form.elements[name]) form.elements[name].value = asked.get(name);
  }
}

function filtersToAddress(params) {
  const search = params.toString();
  window.history.replaceState(null, "", search ? `?${search}` : window.location.pathname);
}

// The `where` box's suggestions (its <datalist>): the operands of the filter language
// this list takes (the page's own options), then the attribute keys and the data's
// members the page has shown, each offered as the whole text with the word being typed
// completed, wherever an operand may stand (at the start, after `(`, AND, OR, NOT or
// EXISTS). `see(root, keys)` adds keys met under `data` or `attributes`.
const SEEN_AT_MOST = 200;

function whereSuggestions(input) {
  const list = document.getElementById(input.getAttribute("list"));
  const operands = [...list.options].map((option) => option.value);
  const seen = new Set();

  function offer() {
    const text = input.value;
    const word = text.match(/[^\s(),]*$/)[0];
    const before = text.slice(0, text.length - word.length);
    const offered = [];
    if (/(^|\(|\b(and|or|not|exists)\s)\s*$/i.test(before)) {
      for (const operand of [...operands, ...[...seen].sort()]) {
        if (operand.startsWith(word) && operand !== word) offered.push(before + operand);
        if (offered.length === 50) break;
      }
    }
    list.replaceChildren(...offered.map((value) => element("option", undefined, { value })));
  }

  function see(root, keys) {
    for (const key of keys) {
      if (seen.size >= SEEN_AT_MOST) break;
      // A plain word after a dot; any other name in ["…"] (one holding `"`, `\` or a
      // control character cannot be asked for).
      if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) seen.add(`${root}.${key}`);
      else if (key && !/["\\\u0000-\u001f\u007f]/.test(key)) seen.add(`${root}["${key}"]`);
    }
  }

  input.addEventListener("input", offer);
  offer();
  return { see, offer };
}

// A chart of `data` ([times, ...values]); with `trailing`, its time axis the last that
// many seconds to the newest time, however few samples there are yet.
function chart(target, series, data, height, trailing) {
  target.replaceChildren();
  const options = {
    width: Math.max(300, target.clientWidth || 320), height: height || 140,
    legend: { show: series.length > 1, live: false },
    series: [{}, ...series.map((label, at) => ({ label, stroke: ["#1f6feb", "#d1242f", "#8250df", "#1a7f37"][at % 4], width: 1.5 }))],
    axes: [{ space: 60 }, { size: 40 }],
  };
  if (trailing) {
    options.scales = { x: { time: true, range: (_, min, max) => [max - trailing, max] } };
    // Times of day in UTC, as the API writes them.
    options.axes[0].values = (_, ticks) => ticks.map((tick) => new Date(tick * 1000).toISOString().slice(11, 19));
  }
  return new uPlot(options, data, target);
}

// -- counts -----------------------------------------------------------------------

// How long a bucket is, in words: "1 minute", "5 minutes", "0.25 s".
function lasting(seconds) {
  for (const [unit, length] of [["day", 86400], ["hour", 3600], ["minute", 60]]) {
    const many = seconds / length;
    if (many >= 1 && Number.isInteger(many)) return `${many} ${unit}${many === 1 ? "" : "s"}`;
  }
  return `${Number(seconds.toPrecision(3))} s`;
}

// A time as the API writes it, to the second.
const toSecond = (text) => text.replace(/\.\d+Z$/, "Z");

// A time (seconds) in UTC, as the API writes times, to the `step` between ticks: to the
// millisecond below a second, the date first over a range longer than a day.
function utc(seconds, step, days) {
  const iso = new Date(seconds * 1000).toISOString();
  if (step >= 86400) return iso.slice(0, 10);
  const time = step < 1 ? iso.slice(11, 23).replace(/\.?0+$/, "") : iso.slice(11, step < 60 ? 19 : 16);
  return days ? `${iso.slice(5, 10)} ${time}` : time;
}

// A count's buckets as bars (uPlot's), each from its start to the next, the time axis
// `[since, until)` in UTC, as the API writes times; `plot`, the one drawn before, let go.
function bars(target, answer, plot) {
  if (plot) plot.destroy();
  target.replaceChildren();
  const since = Date.parse(answer.since) / 1000, until = Date.parse(answer.until) / 1000;
  const xs = answer.counts.map((_, at) => since + at * answer.width_seconds);
  return new uPlot({
    width: Math.max(300, target.clientWidth || 320), height: 120,
    legend: { show: false }, cursor: { show: false },
    scales: { x: { time: true, range: [since, until] }, y: { range: (_, min, max) => [0, Math.max(1, max)] } },
    series: [{}, {
      label: "records", stroke: "#1f6feb", fill: "#1f6feb99", width: 1,
      paths: uPlot.paths.bars({ size: [0.9, Infinity], align: 1 }), points: { show: false },
    }],
    axes: [
      { space: 90, values: (_, ticks, __, ___, step) => ticks.map((tick) => utc(tick, step, until - since > 86400)) },
      { size: 40, space: 20, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 1e6, 1e7, 1e8, 1e9] },
    ],
  }, [xs, answer.counts], target);
}

// How many records the filters keep, and when (`/v1/counts/records`, 60 buckets from the
// filters' `since`, or the last hour): counted anew at each read of the filters
// (`count(filters)`), and again each COUNT_EVERY ms while following (`again()`). One
// count in flight at most: a newer read's abandons the one it overtakes, and `again`
// waits for the one in flight. A count refused is said quietly beside it, its figures
// cleared; the rows are the list's, and stay.
const COUNT_EVERY = 60_000, COUNT_SINCE = "1h", COUNT_BUCKETS = "60";

function counter() {
  const said = $("#count"), why = $("#count-refused"), figure = $("#histogram");
  let filters = null, flying = null, plot = null, retry = true;

  // The chart gone: `text` said in its place, if any.
  function cleared(text, label) {
    if (plot) { plot.destroy(); plot = null; }
    figure.replaceChildren(...(text ? [element("p", text, { class: "empty" })] : []));
    figure.setAttribute("aria-label", label || text);
  }

  function show(answer, since) {
    const total = answer.total;
    said.textContent = `${total.toLocaleString()} ${total === 1 ? "record matches" : "records match"} since ${since}`;
    said.dataset.total = String(total);
    // What the chart holds, for whoever reads the page's data (and its tests).
    Object.assign(figure.dataset, {
      counts: JSON.stringify(answer.counts), since: answer.since, until: answer.until,
    });
    if (!total) { cleared("no records in this range"); return; }
    plot = bars(figure, answer, plot);
    figure.setAttribute("aria-label",
      `Histogram of the ${total.toLocaleString()} ${total === 1 ? "record" : "records"} these filters keep since ${since}: ` +
      `${answer.counts.length} bars of ${lasting(answer.width_seconds)} each, ` +
      `from ${toSecond(answer.since)} to ${toSecond(answer.until)}`);
  }

  async function count(asked) {
    if (asked) {
      filters = asked;
      if (flying) flying.abort();
    } else if (flying || !filters || !retry) return;
    const controller = new AbortController();
    flying = controller;
    const params = new URLSearchParams(filters);
    const since = params.get("since") || COUNT_SINCE;
    params.set("since", since);
    params.set("buckets", COUNT_BUCKETS);
    try {
      const answer = await (await api(`${ROOT}/v1/counts/records?${params}`, { signal: controller.signal })).json();
      if (flying !== controller) return;  // overtaken by a newer read's
      show(answer, since);
      why.textContent = "";
      why.hidden = true;
      retry = true;
    } catch (error) {
      if (flying !== controller) return;
      said.textContent = "Not counted";
      delete said.dataset.total;
      for (const name of ["counts", "since", "until"]) delete figure.dataset[name];
      cleared("", "no count");
      why.textContent = error.message;
      why.hidden = false;
      // Asked again while following only if it may be answered later (a 5xx: the store
      // not answering; no answer at all); filters refused (4xx) wait to be read anew.
      retry = !(error.status < 500);
    } finally { if (flying === controller) flying = null; }
  }

  return { count, again: () => count() };
}

// -- records ----------------------------------------------------------------------

const RECORD_FILTERS = ["since", "attribute", "producer", "record_id", "message_id", "field", "where"];
// What the table shows of every row, asked for beside what the `fields` box selects.
const RECORD_KEYS = ["ingest_time", "id", "message_id"];

// `select` as the box has it, then the table's own columns it does not name (after it,
// so that a refusal names an entry where the reader typed it).
function withKeys(chosen) {
  const named = chosen.split(",").map((entry) => entry.trim());
  return [chosen, ...RECORD_KEYS.filter((key) => !named.includes(key))].join(",");
}

// What a row shows of a field a projection may have left out.
const shownOf = (value) => (value === undefined ? "not selected" : JSON.stringify(value, null, 2));

function sequenceOf(attributes = {}) {
  const producer = attributes["recordline-producer"];
  return producer ? `${producer} · ${attributes["recordline-epoch"] || ""} · ${attributes["recordline-seq"] || ""}` : "";
}

function recordDetail(record) {
  const list = element("dl");
  const facts = [
    ["message id", record.message_id], ["record id", record.id],
    ["timestamp", record.timestamp], ["published", record.publish_time],
    ["ingested", record.ingest_time], ["producer sequence", sequenceOf(record.attributes) || "none"],
    ["subscription", record.subscription], ["schema", record.schema],
  ];
  for (const [name, value] of facts) list.append(element("dt", name), element("dd", value ?? "—"));
  list.append(element("dt", "trace"));
  const trace = element("dd");
  if (record.trace_id) {
    const link = element("a", record.trace_id, {
      href: `https://console.cloud.google.com/traces/list?tid=${encodeURIComponent(record.trace_id)}`,
      target: "_blank", rel: "noopener", class: "trace",
    });
    trace.append(link);
  } else trace.textContent = "not sampled";
  list.append(trace);
  const cell = element("td", undefined, { colspan: "5" });
  cell.append(
    list,
    element("h3", "attributes"), element("pre", shownOf(record.attributes)),
    element("h3", "data"), element("pre", shownOf(record.data)),
  );
  const tr = element("tr", undefined, { class: "detail" });
  tr.append(cell);
  return tr;
}

function recordRow(record) {
  const payload = record.data === undefined ? "—" : JSON.stringify(record.data);
  const tr = row([record.ingest_time, record.id, sequenceOf(record.attributes), record.message_id, payload]);
  tr.className = "row";
  tr.dataset.messageId = record.message_id;
  tr.lastChild.className = "payload";
  tr.addEventListener("click", () => {
    const open = tr.nextSibling && tr.nextSibling.classList && tr.nextSibling.classList.contains("detail");
    if (open) tr.nextSibling.remove(); else tr.after(recordDetail(record));
  });
  return tr;
}

function records() {
  const form = $("#filters"), body = $("#rows tbody"), more = $("#more");
  // The view opens at now, the newest row first (`order=newest`): `older` reads on to
  // older rows (More, at the bottom); `newer` follows what comes after the first page,
  // oldest first from its `complete_until`, each row put on top.
  let older = null, newer = null, query = null, generation = 0, reads = 0;
  // The follower's waiting read, if one is in flight: abandoned when the reader scrolls
  // down (the rows it would bring wait for them) or reads anew.
  let waiting = null;
  // Whether the view holds no row yet, which the status line says (following or not).
  let empty = false;
  const sayEmpty = () => status(follow.checked ? "No record yet: following." : "No record is kept by these filters.");
  const follow = $("#follow");
  const atTop = () => window.scrollY <= 40;

  const suggestions = whereSuggestions(form.elements.where);
  const counts = counter();
  setInterval(() => { if (follow.checked && !document.hidden) counts.again(); }, COUNT_EVERY);

  function shown(record) {
    suggestions.see("attributes", Object.keys(record.attributes || {}));
    const data = record.data;
    if (data !== null && typeof data === "object" && !Array.isArray(data)) suggestions.see("data", Object.keys(data));
    return recordRow(record);
  }

  async function page(params, signal, filters) {
    const asked = new URLSearchParams(filters || query);
    for (const [name, value] of Object.entries(params)) asked.set(name, value);
    if (asked.has("page_token")) asked.delete("since");
    if (asked.has("select")) asked.set("select", withKeys(asked.get("select")));
    asked.set("limit", "100");
    return await (await api(`${ROOT}/v1/records?${asked}`, { signal })).json();
  }

  // The view is the filters' once their first page is answered: until then, and if it
  // is refused, the rows shown (and their follower, and the address) stay as they were.
  async function read(event) {
    if (event) event.preventDefault();
    const mine = reads += 1;
    // The filters say which rows (and what is counted); `select`, what of each is shown.
    const filters = filterParams(form, RECORD_FILTERS);
    counts.count(filters);
    const asked = new URLSearchParams(filters);
    const chosen = form.elements.select.value.trim();
    if (chosen) asked.set("select", chosen);
    let answer;
    try {
      answer = await page({ order: "newest" }, undefined, asked);
    } catch (error) {
      if (mine === reads) refused(error);
      return;
    }
    if (mine !== reads) return;  // a later read's filters are the view's
    generation += 1;
    if (waiting) waiting.abort();
    query = asked;
    filtersToAddress(query);
    refused(null);
    status("");
    body.replaceChildren(...answer.records.map(shown));
    suggestions.offer();
    empty = !answer.records.length;
    if (empty) sayEmpty();
    older = answer.next_page_token;
    more.hidden = !older;
    // What comes after this page, oldest first, from where it is complete.
    newer = { since: answer.complete_until };
    if (follow.checked) tail(generation);
  }

  // Follows as rows arrive (long-poll pages, the API's follow protocol), each on top;
  // paused while the reader has scrolled down, and goes on from where it was once at
  // the top again.
  async function tail(mine) {
    while (follow.checked && mine === generation && newer) {
      if (!atTop()) {
        $("#paused").hidden = false;
        await new Promise((resolve) => window.addEventListener("scroll", function back() {
          if (atTop()) { window.removeEventListener("scroll", back); resolve(); }
        }));
        $("#paused").hidden = true;
        continue;
      }
      const controller = new AbortController();
      waiting = controller;
      try {
        const answer = await page({ ...newer, wait: "20" }, controller.signal);
        if (mine !== generation) return;
        for (const record of answer.records) body.prepend(shown(record));
        if (answer.next_page_token) newer = { page_token: answer.next_page_token };
        if (answer.records.length) { empty = false; status(""); }
      } catch (error) {
        // Abandoned: scrolled down (paused above, `newer` unchanged) or read anew.
        if (controller.signal.aborted) continue;
        status(error.message); return;
      } finally { if (waiting === controller) waiting = null; }
    }
  }

  window.addEventListener("scroll", () => { if (waiting && !atTop()) waiting.abort(); });

  more.addEventListener("click", async () => {
    const mine = generation;
    try {
      const answer = await page({ order: "newest", page_token: older });
      if (mine !== generation) return;
      for (const record of answer.records) body.append(shown(record));
      older = answer.next_page_token;
      more.hidden = !older;
    } catch (error) { status(error.message); }
  });
  follow.addEventListener("change", () => {
    if (empty) sayEmpty();
    if (follow.checked) tail(generation);
  });
  form.addEventListener("submit", read);
  // Offered to whoever may export here alone (the page says so: no form otherwise).
  if ($("#export")) $("#export").addEventListener("submit", (event) => { event.preventDefault(); download(event.submitter.value); });
  filtersFromAddress(form, [...RECORD_FILTERS, "select"]);
  read();
  if ($("#publish")) publishing($("#publish"));
}

// An operator's test message (`POST /v1/publish`): its payload (UTF-8 text) and
// attributes checked against today's validation (a dry run, nothing published), then
// published to the system's own topic with a note; what became of it once its push was
// answered is read from `/v1/messages/{id}`, for up to a minute.
function publishing(details) {
  const data = details.querySelector("[name=data]"), attributes = details.querySelector("[name=attributes]");
  const note = details.querySelector("[name=note]"), said = $("#publish-said");
  const check = $("#publish-check"), send = $("#publish-send");

  function body(dryRun) {
    let parsed;
    try { parsed = JSON.parse(attributes.value); } catch (error) { throw new Error(`attributes are not JSON: ${error.message}`); }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)
        || Object.values(parsed).some((value) => typeof value !== "string")) {
      throw new Error('attributes are an object of strings, {"name": "value"}');
    }
    let binary = "";
    for (const byte of new TextEncoder().encode(data.value)) binary += String.fromCharCode(byte);
    return { data: btoa(binary), attributes: parsed, dry_run: dryRun, note: note.value.trim() || null };
  }

  async function asked(dryRun) {
    return await (await api(`${ROOT}/v1/publish`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body(dryRun)),
    })).json();
  }

  const verdict = (answer) => answer.verdict === "stored"
    ? "today's validation would store it"
    : `today's validation would reject it: ${answer.reason}`;

  // Each publish's own: a poll of an earlier one stops once another is asked for, so
  // what the page says is of the latest.
  let latest = 0;
  for (const input of [data, attributes]) input.addEventListener("input", () => { send.disabled = true; said.textContent = ""; });
  check.addEventListener("click", async () => {
    latest += 1;
    send.disabled = true;
    try {
      const answer = await asked(true);
      said.textContent = `To ${answer.topic}: ${verdict(answer)}.`;
      send.disabled = false;
    } catch (error) { said.textContent = error.message; }
  });
  send.addEventListener("click", async () => {
    const mine = ++latest;
    send.disabled = true;
    let answer;
    try { answer = await asked(false); } catch (error) { if (mine === latest) said.textContent = error.message; return; }
    if (mine !== latest) return;
    const id = answer.message_id;
    said.textContent = `Published as ${id} (${verdict(answer)}); waiting for its push…`;
    for (let tries = 0; tries < 60; tries += 1) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      if (mine !== latest) return;
      try {
        const found = await (await api(`${ROOT}/v1/messages/${encodeURIComponent(id)}`)).json();
        if (mine !== latest) return;
        said.textContent = found.status === "stored"
          ? `Published as ${id}: stored as record ${found.record.id}.`
          : `Published as ${id}: ${found.status}${found.reason ? `: ${found.reason}` : ""}.`;
        return;
      } catch (error) {
        if (mine !== latest) return;
        if (error.status !== 404) { said.textContent = error.message; return; }
      }
    }
    said.textContent = `Published as ${id}: not delivered within a minute (the push subscription's backlog, or its retry).`;
  });
}

// An export of what the filters keep, read as it streams (its progress shown), then saved.
// The last line of an export (a note is shorter than its last 64 KiB).
async function lastLine(file) {
  const tail = await file.slice(Math.max(0, file.size - 65536)).text();
  return tail.replace(/\n$/, "").split("\n").pop();
}

// Whether a line is an export's note of where it was cut: its own shape, not a row
// that names it.
function isNote(line) {
  if (line.startsWith("# recordline_export: incomplete after ")) return true;
  if (!line.startsWith('{"recordline_export":')) return false;
  try {
    const note = JSON.parse(line).recordline_export;
    return note !== null && typeof note === "object" && note.complete === false;
  } catch (_) { return false; }
}

async function download(format) {
  const params = filterParams($("#filters"), RECORD_FILTERS);
  for (const [name, value] of filterParams($("#export"), ["columns", "max_rows"])) params.set(name, value);
  params.set("format", format);
  const progress = $("#progress");
  try {
    const answer = await api(`${ROOT}/v1/export/records?${params}`);
    refused(null);
    const reader = answer.body.getReader(), parts = [];
    let bytes = 0, lines = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      bytes += value.length;
      for (const byte of value) if (byte === 10) lines += 1;
      progress.textContent = `${lines.toLocaleString()} lines, ${bytes.toLocaleString()} bytes…`;
    }
    // The export once, as the file saved; what was read of it let go.
    const file = new Blob(parts, { type: answer.headers.get("content-type") });
    parts.length = 0;
    const cut = isNote(await lastLine(file));
    progress.textContent = `${lines.toLocaleString()} lines, ${bytes.toLocaleString()} bytes${cut ? ": cut at a bound (see its last line)" : ""}`;
    const name = (answer.headers.get("content-disposition") || "").match(/filename="([^"]+)"/);
    const href = URL.createObjectURL(file);
    const link = element("a", "", { href, download: name ? name[1] : `records.${format}` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(href), 60_000);
  } catch (error) { refused(error); progress.textContent = ""; }
}

// -- rejections -------------------------------------------------------------------

const REJECTION_FILTERS = ["since", "attribute", "producer", "message_id", "where"];

function rejections() {
  const form = $("#filters");
  let found = [], shown = null, reads = 0;
  const selected = new Set();
  const replay = $("#replay");
  const suggestions = whereSuggestions(form.elements.where);

  function show(reason) {
    shown = reason;
    const body = $("#rows tbody");
    body.replaceChildren();
    selected.clear();
    if (replay) replay.disabled = true;
    $("#chosen-reason").hidden = false;
    $("#chosen-reason").textContent = reason;
    for (const rejection of found.filter((r) => r.reason === reason)) {
      const box = element("input", undefined, { type: "checkbox", "aria-label": `select ${rejection.message_id}` });
      box.disabled = !replay;
      box.addEventListener("change", () => {
        if (box.checked) selected.add(rejection); else selected.delete(rejection);
        if (replay) replay.disabled = selected.size === 0;
      });
      let payload;
      try { payload = atob(rejection.data); } catch (_) { payload = rejection.data; }
      const tr = row([box, rejection.ingest_time, rejection.message_id, payload, rejection.stored ? "stored since" : "rejected"]);
      tr.children[3].className = "payload";
      tr.dataset.messageId = rejection.message_id;
      if (replay && !rejection.stored) {
        const fix = element("button", "Fix…", { type: "button", class: "fix", "aria-label": `fix ${rejection.message_id}` });
        fix.addEventListener("click", () => {
          const open = tr.nextSibling && tr.nextSibling.classList && tr.nextSibling.classList.contains("editor");
          if (open) tr.nextSibling.remove(); else tr.after(editor(rejection, read));
        });
        tr.append(element("td").appendChild(fix).parentNode);
      }
      body.append(tr);
    }
  }

  function unshow() {
    shown = null;
    $("#rows tbody").replaceChildren();
    selected.clear();
    if (replay) replay.disabled = true;
    $("#chosen-reason").hidden = true;
  }

  // Each read's own rejections: one overtaken by a later read (other filters) is let go;
  // one refused leaves the view (and the address) as it was.
  async function read(event) {
    if (event) event.preventDefault();
    const mine = reads += 1, kept = [];
    const filters = filterParams(form, REJECTION_FILTERS);
    try {
      let params = new URLSearchParams(filters);
      params.set("limit", "1000");
      // At most 5,000 rejections are grouped: the newest pages past that are not read.
      for (let pages = 0; pages < 5; pages += 1) {
        const answer = await (await api(`${ROOT}/v1/rejections?${params}`)).json();
        if (mine !== reads) return;
        kept.push(...answer.rejections);
        if (!answer.next_page_token || answer.rejections.length < 1000) break;
        params = new URLSearchParams({ page_token: answer.next_page_token, limit: "1000" });
      }
    } catch (error) { if (mine === reads) refused(error); return; }
    filtersToAddress(filters);
    refused(null);
    status("");
    found = kept;
    for (const rejection of found) suggestions.see("attributes", Object.keys(rejection.attributes || {}));
    suggestions.offer();
    const reasons = new Map();
    for (const rejection of found) {
      const seen = reasons.get(rejection.reason) || { count: 0, last: "" };
      seen.count += 1;
      seen.last = rejection.ingest_time;
      reasons.set(rejection.reason, seen);
    }
    const body = $("#reasons tbody");
    body.replaceChildren();
    for (const [reason, seen] of [...reasons].sort((a, b) => b[1].count - a[1].count)) {
      const tr = row([reason, seen.count, seen.last]);
      tr.className = "row";
      tr.addEventListener("click", () => show(reason));
      body.append(tr);
    }
    // Counts by hour, every reason together, each hour from the first (24 hours ago at
    // the latest; 30 days at most) to now.
    const hours = new Map();
    for (const rejection of found) {
      const hour = Math.floor(Date.parse(rejection.ingest_time) / 3.6e6) * 3600;
      hours.set(hour, (hours.get(hour) || 0) + 1);
    }
    const now = Math.floor(Date.now() / 3.6e6) * 3600;
    const first = Math.max(Math.min(now - 23 * 3600, ...hours.keys()), now - 30 * 24 * 3600);
    const xs = [];
    for (let hour = first; hour <= now; hour += 3600) xs.push(hour);
    chart($("#chart"), ["rejections an hour"], [xs, xs.map((x) => hours.get(x) || 0)]);
    if (!found.length) $("#chart").append(element("p", "No rejection is kept by these filters.", { class: "empty" }));
    // The reason shown, as these filters keep it; none, if they keep none of its.
    if (shown !== null && reasons.has(shown)) show(shown);
    else if (shown !== null) unshow();
  }

  if (replay) replay.addEventListener("click", async () => {
    try {
      const answer = await replayed({ messages: [...selected].map((r) => delivered(r)) });
      showOutcomes(answer.results);
      await read();  // each row's state as it is now: stored since, or rejected still
    } catch (error) { status(error.message); }
  });
  form.addEventListener("submit", read);
  filtersFromAddress(form, REJECTION_FILTERS);
  read();
}

// A rejection fixed in the browser: its payload (as UTF-8 text) and attributes edited,
// checked against today's validation (a dry run, nothing stored), then replayed under
// its original message id with the operator's note, which the access record keeps.
// What changed is shown before it is sent: the JSON paths, where both sides are JSON.
function editor(rejection, reread) {
  const cell = element("td", undefined, { colspan: "6" });
  const tr = element("tr", undefined, { class: "editor" });
  tr.append(cell);
  let text = null;
  try {
    const bytes = Uint8Array.from(atob(rejection.data), (c) => c.charCodeAt(0));
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (_) { /* not UTF-8 text: replayed as it came, not edited here */ }
  if (text === null) {
    cell.append(element("p", "Its payload is not UTF-8 text: it can be replayed as it came (select it above), not edited here."));
    return tr;
  }
  const id = rejection.message_id;
  const data = element("textarea", undefined, { class: "edit-data", rows: "8", cols: "80", spellcheck: "false", "aria-label": `payload of ${id}` });
  data.value = text;
  const attributes = element("textarea", undefined, { class: "edit-attributes", rows: "4", cols: "80", spellcheck: "false", "aria-label": `attributes of ${id}` });
  attributes.value = JSON.stringify(rejection.attributes, null, 2);
  const note = element("input", undefined, { class: "edit-note", size: "70", maxlength: "500", "aria-label": `why ${id} is fixed`, placeholder: "why: kept with the replay in the access record" });
  const check = element("button", "Check against today's validation", { type: "button", class: "edit-check" });
  const send = element("button", "Replay fixed", { type: "button", class: "edit-replay", disabled: "" });
  const changes = element("p", "", { class: "edit-changes" });
  const verdict = element("p", "", { class: "edit-verdict" });
  cell.append(
    element("h3", "payload"), data, element("h3", "attributes"), attributes,
    element("h3", "why"), note, element("div"), check, send, changes, verdict,
  );

  // The message as edited, or an Error saying what is wrong with the edit.
  function message() {
    let edited;
    try { edited = JSON.parse(attributes.value); } catch (error) { throw new Error(`attributes are not JSON: ${error.message}`); }
    if (edited === null || typeof edited !== "object" || Array.isArray(edited)
        || Object.values(edited).some((value) => typeof value !== "string")) {
      throw new Error('attributes are an object of strings, {"name": "value"}');
    }
    let binary = "";
    for (const byte of new TextEncoder().encode(data.value)) binary += String.fromCharCode(byte);
    return delivered(rejection, { data: btoa(binary), attributes: edited });
  }

  function said() {
    const paths = [];
    try {
      changed(parsed(text), parsed(data.value), "data", paths);
      let edited = null;
      try { edited = JSON.parse(attributes.value); } catch (_) { paths.push("attributes (not JSON)"); }
      if (edited !== null) walk(rejection.attributes, edited, "attributes", paths);
    } catch (_) {
      // Nested past what the browser's stack can walk: said, and the edit goes on.
      changes.textContent = "Changed: cannot tell (nested too deeply to compare).";
      return;
    }
    changes.textContent = paths.length ? `Changed: ${paths.slice(0, 20).join(", ")}${paths.length > 20 ? ", …" : ""}` : "Nothing changed yet.";
  }

  // Any edit after a check needs a check of its own before it is sent.
  for (const input of [data, attributes]) input.addEventListener("input", () => { send.disabled = true; verdict.textContent = ""; said(); });
  note.addEventListener("input", () => { send.disabled = send.dataset.checked !== "stored" || !note.value.trim(); });
  said();

  async function asked(dryRun) {
    const answer = await replayed({ messages: [message()], dry_run: dryRun, note: note.value.trim() || null });
    return answer.results[0];
  }

  check.addEventListener("click", async () => {
    send.disabled = true;
    send.dataset.checked = "";
    try {
      const result = await asked(true);
      send.dataset.checked = result.outcome;
      verdict.textContent = {
        stored: "Today's validation would store it." + (note.value.trim() ? "" : " Say why, then replay it."),
        rejected: `Today's validation would reject it: ${result.reason}`,
        already_stored: "Its message is stored already: nothing to replay.",
      }[result.outcome] || result.outcome;
      send.disabled = result.outcome !== "stored" || !note.value.trim();
    } catch (error) { verdict.textContent = error.message; }
  });
  send.addEventListener("click", async () => {
    send.disabled = true;
    try {
      showOutcomes([await asked(false)]);
      await reread();  // its row as it is now: stored since, or rejected still
    } catch (error) { verdict.textContent = error.message; }
  });
  return tr;
}

// A rejection as Pub/Sub delivered it, for `POST /v1/replay` (with `edits` made to it):
// its original message id, publish time and subscription.
function delivered(rejection, edits) {
  return {
    message_id: rejection.message_id, publish_time: rejection.publish_time,
    data: rejection.data, attributes: rejection.attributes,
    ...(rejection.subscription ? { subscription: rejection.subscription } : {}),
    ...edits,
  };
}

// `POST /v1/replay` with `body` (its messages, `dry_run`, `note`): the service's answer.
async function replayed(body) {
  return await (await api(`${ROOT}/v1/replay`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  })).json();
}

function showOutcomes(results) {
  $("#outcomes tbody").replaceChildren(...results.map((r) => row([r.message_id, r.outcome, r.reason || ""])));
  $("#outcomes").hidden = false;
}

function parsed(text) {
  try { return { json: JSON.parse(text) }; } catch (_) { return { text }; }
}

// The paths at which `after` differs from `before` (each {json} or {text}), into `paths`.
function changed(before, after, path, paths) {
  if ("json" in before && "json" in after) walk(before.json, after.json, path, paths);
  else if (("text" in before ? before.text : JSON.stringify(before.json)) !== ("text" in after ? after.text : JSON.stringify(after.json))) {
    paths.push(`${path} (text)`);
  }
}

function walk(before, after, path, paths) {
  if (paths.length > 20) return;
  const isObject = (value) => value !== null && typeof value === "object";
  if (isObject(before) && isObject(after) && Array.isArray(before) === Array.isArray(after)) {
    const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
    for (const key of keys) {
      const at = Array.isArray(before) ? `${path}[${key}]` : `${path}.${key}`;
      if (!(key in before)) paths.push(`${at} (added)`);
      else if (!(key in after)) paths.push(`${at} (removed)`);
      else walk(before[key], after[key], at, paths);
    }
  } else if (JSON.stringify(before) !== JSON.stringify(after)) paths.push(path);
}

// -- producers --------------------------------------------------------------------

// Read again every 3 s: a gap opens, goes missing and closes as messages come.
async function producers() {
  await ledger();
  setInterval(ledger, 3000);
}

async function ledger() {
  try {
    const ledger = await (await api(`${ROOT}/v1/producers`)).json();
    const body = $("#producers tbody"), missing = $("#missing");
    body.replaceChildren();
    missing.replaceChildren();
    for (const producer of ledger.producers) {
      for (const epoch of producer.epochs) {
        body.append(row([producer.producer, epoch.epoch, epoch.stored, epoch.rejected, epoch.duplicates, epoch.conflicts, epoch.missing, epoch.gap_count]));
        for (const gap of epoch.gaps.filter((g) => g.missing)) {
          const range = gap.first === gap.last ? `sequence ${gap.first}` : `sequences ${gap.first} to ${gap.last} (${gap.count})`;
          const note = element("p", `${producer.producer} epoch ${epoch.epoch}: ${range} missing since ${gap.opened_at}. ` +
            "What to do: look for them among the rejections and the dead letters (recordline replay dead-letters), " +
            "or have the producer publish them again under the same sequences; once stored, the gap closes.", { class: "missing" });
          missing.append(note);
        }
      }
    }
    status("");
    if (!ledger.producers.length) status("No producer has sent a sequence (recordline-producer, -epoch, -seq).");
    const since = new Date(Date.now() - 24 * 3.6e6).toISOString().replace(/\.\d+Z$/, "Z");
    const audit = await (await api(`${ROOT}/v1/audit?since=${since}`)).json();
    const xs = audit.hours.map((h) => Date.parse(h.hour) / 1000);
    const counts = ["stored", "rejected", "missing", "conflicts"];
    chart($("#chart"), counts, [xs, ...counts.map((k) => audit.hours.map((h) => h[k]))], 180);
    // A chart of nothing but zeros says so.
    if (audit.hours.every((h) => counts.every((k) => !h[k]))) {
      $("#chart").append(element("p", "no data yet: no message with a producer sequence in the last 24 hours", { class: "empty" }));
    }
  } catch (error) { status(error.message); }
}

// -- access -----------------------------------------------------------------------

// The access record (`/v1/access`, an operator's), newest first, 100 lines at a time:
// Older reads on by the page's token. Read when the page opens and at each read of the
// filters, never by itself: each read that finds lines is a line of the record too.
const ACCESS_FILTERS = ["action", "principal", "since"];

function accessRow(entry) {
  const line = entry.line;
  const parameters = (line.parameters || []).map(([name, value]) => `${name}=${value}`).join(" ");
  const tr = row([
    entry.time, line.principal || "anyone", line.action, `${line.method} ${line.path}`,
    // A count serves no rows: what it counted is said instead.
    parameters, line.status, line.counted === undefined ? line.rows : `${line.counted} counted`,
    line.bytes, line.masked ? "yes" : "no",
  ]);
  tr.className = "row";
  tr.dataset.id = entry.id;
  tr.children[4].className = "parameters";
  tr.children[4].title = parameters;
  // Opened, the whole line (a replay's note, a follower's sums).
  tr.addEventListener("click", () => {
    const open = tr.nextSibling && tr.nextSibling.classList && tr.nextSibling.classList.contains("detail");
    if (open) { tr.nextSibling.remove(); return; }
    const cell = element("td", undefined, { colspan: "9" });
    cell.append(element("pre", JSON.stringify(line, null, 2)));
    const detail = element("tr", undefined, { class: "detail" });
    detail.append(cell);
    tr.after(detail);
  });
  return tr;
}

function access() {
  const body = $("#lines tbody");
  const read = pagedList({
    path: "/v1/access", key: "lines", carried: ["since"], filterNames: ACCESS_FILTERS,
    table: $("#lines"),
    show: (lines, appended) => {
      if (appended) body.append(...lines.map(accessRow)); else body.replaceChildren(...lines.map(accessRow));
    },
    empty: (filters) => `No line in the access record${filters.toString() ? " for these filters" : ""} yet.`,
  });
  read();
}

// A list the API pages newest first, a stretch of time a page (a week of the access
// record, a day of dead letters): a page that ends short (even empty) with a token goes
// on to the stretch before. Each read goes on until 100 rows or the list's start, 60
// pages at most (a year and a month of weeks); **Older** (#more) reads on by the last
// token, which carries the parameters named `carried`. As the records' view: the
// filters' once their first page is answered; refused, the rows shown (and the address)
// stay as they were; the table is busy (`aria-busy`, as the page opens) until the
// latest read is answered. `show(rows, appended)` puts rows in the table; `empty(filters)`
// says there are none. Returns the read, for the page to read the list again.
function pagedList({ path, key, carried, filterNames, table, show, empty }) {
  const form = $("#filters"), more = $("#more");
  let filters = null, older = null, reads = 0;

  function onward(params, token, limit) {
    const next = new URLSearchParams(params);
    for (const name of carried) next.delete(name);  // the token's
    next.set("page_token", token);
    next.set("limit", String(limit));
    return next;
  }

  async function readOn(params) {
    const found = [];
    let answer;
    for (let pages = 0; pages < 60; pages += 1) {
      answer = await (await api(`${ROOT}${path}?${params}`)).json();
      found.push(...answer[key]);
      if (!answer.next_page_token || found.length >= 100) break;
      params = onward(params, answer.next_page_token, 100 - found.length);
    }
    return { rows: found, next: answer.next_page_token };
  }

  async function read(event) {
    if (event) event.preventDefault();
    const mine = reads += 1;
    const asked = filterParams(form, filterNames);
    const params = new URLSearchParams(asked);
    params.set("limit", "100");
    table.setAttribute("aria-busy", "true");
    let answer;
    try { answer = await readOn(params); } catch (error) {
      if (mine === reads) { refused(error); table.removeAttribute("aria-busy"); }
      return;
    }
    if (mine !== reads) return;
    filters = asked;
    filtersToAddress(filters);
    refused(null);
    show(answer.rows, false);
    status(answer.rows.length ? "" : empty(filters));
    older = answer.next;
    more.hidden = !older;
    table.removeAttribute("aria-busy");
  }

  more.addEventListener("click", async () => {
    const mine = reads;
    try {
      const answer = await readOn(onward(filters, older, 100));
      if (mine !== reads) return;
      show(answer.rows, true);
      older = answer.next;
      more.hidden = !older;
    } catch (error) { status(error.message); }
  });
  form.addEventListener("submit", read);
  filtersFromAddress(form, filterNames);
  return read;
}

// -- dead letters -----------------------------------------------------------------

// The dead letters (`/v1/dead-letters`, an operator's), newest first, 100 at a time: a
// page of the API reads a day, so each read goes on through the days until 100 (Older
// reads on by the last token). An operator selects some and replays them through
// `POST /v1/replay` under their own message ids, with a note saying why, each outcome
// shown. Every value a dead letter holds is shown as text, whatever it holds.
const DEAD_LETTER_FILTERS = ["since", "until"];
// What a cell or a detail shows of a value at most: a dead letter may be 10 MB.
const SHOWN_AT_MOST = 100_000;
// A replay request's messages and JSON at most (RECORDLINE_MAX_BODY_BYTES is 14 MiB by
// default; one larger message goes alone).
const REPLAY_AT_MOST = 100, REPLAY_BYTES = 8 * 1024 * 1024;
const OUTCOME_WORDS = { stored: "stored", rejected: "rejected again", already_stored: "already stored", refused: "refused as it stands" };

function shownText(value) {
  const text = String(value);
  return text.length > SHOWN_AT_MOST ? `${text.slice(0, SHOWN_AT_MOST)}… (${(text.length - SHOWN_AT_MOST).toLocaleString()} characters more)` : text;
}

// A dead letter as the view says to replay it: its id, the original's publish time
// where Pub/Sub kept it (else its own), data, attributes and the subscription that
// gave up on it (`recordline replay dead-letters` sends the same).
function redriven(letter) {
  return {
    message_id: letter.message_id,
    publish_time: letter.source_publish_time || letter.publish_time,
    data: letter.data, attributes: letter.attributes || {},
    ...(letter.source_subscription ? { subscription: letter.source_subscription } : {}),
  };
}

function letterState(letter) {
  if (letter.stored) return "stored since";
  if (letter.unreplayable) return `cannot be replayed: ${letter.unreplayable}`;
  return "not stored";
}

function letterDetail(letter) {
  const list = element("dl");
  const facts = [
    ["message id", letter.message_id ?? "none (NULL)"], ["dead-lettered", letter.publish_time],
    ["first published", letter.source_publish_time ?? "not said"],
    ["source subscription", letter.source_subscription ?? "not said"],
    ["deliveries", letter.delivery_count ?? "not said"],
    ["written by", letter.subscription_name ?? "not said"], ["state", letterState(letter)],
  ];
  for (const [name, value] of facts) list.append(element("dt", name), element("dd", shownText(value)));
  const cell = element("td", undefined, { colspan: "7" });
  let attributes;
  if (letter.attributes) attributes = JSON.stringify(letter.attributes, null, 2);
  else if (letter.attributes_text !== null) attributes = `not a JSON object of strings: ${letter.attributes_text}`;
  else attributes = "none (NULL)";
  let data;
  if (letter.data === null) data = "none (NULL)";
  else if (letter.text !== null) data = letter.text;
  else data = `not UTF-8 text; base64: ${letter.data}`;
  cell.append(
    list,
    element("h3", "attributes"), element("pre", shownText(attributes), { class: "letter-attributes" }),
    element("h3", "data"), element("pre", shownText(data), { class: "letter-data" }),
  );
  const tr = element("tr", undefined, { class: "detail" });
  tr.append(cell);
  return tr;
}

function deadLetters() {
  const body = $("#letters tbody");
  const replay = $("#replay"), note = $("#note"), all = $("#all"), chosen = $("#chosen");
  let shown = [];
  const selected = new Set();

  function said() {
    chosen.textContent = selected.size ? `${selected.size} selected` : "";
    replay.disabled = !selected.size || !note.value.trim();
    replay.title = selected.size && !note.value.trim() ? "say why first" : "";
  }

  function letterRow(letter) {
    const box = element("input", undefined, { type: "checkbox", class: "pick", "aria-label": `select ${letter.message_id ?? "a dead letter of no id"}` });
    box.disabled = Boolean(letter.unreplayable);
    box.addEventListener("click", (event) => event.stopPropagation());
    box.addEventListener("change", () => {
      if (box.checked) selected.add(letter); else selected.delete(letter);
      said();
    });
    let payload;
    if (letter.data === null) payload = "—";
    else if (letter.text !== null) payload = letter.text.slice(0, 500);
    else payload = `base64: ${letter.data.slice(0, 500)}`;
    const tr = row([
      box, letter.publish_time, letter.message_id ?? "—", letter.source_subscription ?? "—",
      letter.delivery_count ?? "—", letterState(letter), payload,
    ]);
    tr.className = "row";
    tr.children[5].className = "state";
    tr.children[6].className = "payload";
    if (letter.message_id !== null) tr.dataset.messageId = letter.message_id;
    tr.addEventListener("click", () => {
      const open = tr.nextSibling && tr.nextSibling.classList && tr.nextSibling.classList.contains("detail");
      if (open) tr.nextSibling.remove(); else tr.after(letterDetail(letter));
    });
    return { tr, box, letter };
  }

  function show(letters, append) {
    const made = letters.map(letterRow);
    if (append) { shown.push(...made); body.append(...made.map((m) => m.tr)); } else {
      shown = made;
      selected.clear();
      body.replaceChildren(...made.map((m) => m.tr));
    }
    all.checked = false;
    said();
  }

  const read = pagedList({
    path: "/v1/dead-letters", key: "dead_letters", carried: ["since", "until"],
    filterNames: DEAD_LETTER_FILTERS, table: $("#letters"), show,
    empty: (filters) => `No dead letter${filters.toString() ? " in this range" : ""}.`,
  });

  all.addEventListener("change", () => {
    for (const { box, letter } of shown) {
      if (box.disabled || letter.stored) continue;
      box.checked = all.checked;
      if (all.checked) selected.add(letter); else selected.delete(letter);
    }
    said();
  });
  note.addEventListener("input", said);

  // The selected in requests of 100 messages and 8 MiB at most; a message the service
  // refuses as it stands (a 400 naming it) is said and the rest sent again. Any other
  // refusal stops it, thrown with the outcomes of the requests answered before it
  // (`results`): those messages were replayed.
  async function redrive(letters, why) {
    const results = [];
    let pending = letters.map(redriven);
    while (pending.length) {
      const batch = [];
      let bytes = 0;
      for (const message of pending) {
        const size = JSON.stringify(message).length;
        if (batch.length && (batch.length === REPLAY_AT_MOST || bytes + size > REPLAY_BYTES)) break;
        batch.push(message);
        bytes += size;
      }
      try {
        const answer = await replayed({ messages: batch, note: why });
        results.push(...answer.results);
        pending = pending.slice(batch.length);
      } catch (error) {
        const one = error.status === 400 && error.field && error.field.match(/^messages\[(\d+)\]/);
        if (!one || Number(one[1]) >= batch.length) throw Object.assign(error, { results });
        const [gone] = pending.splice(Number(one[1]), 1);
        results.push({ message_id: gone.message_id, outcome: "refused", reason: error.message });
      }
    }
    return results;
  }

  // Each outcome shown and the list read again, all sent or not: a redrive stopped part
  // way (an outage) says how far it got and why, what it replayed shown as it went.
  replay.addEventListener("click", async () => {
    const why = note.value.trim();
    if (!selected.size || !why) return;
    replay.disabled = true;
    const asked = selected.size;
    let results, stopped = null;
    try { results = await redrive([...selected], why); } catch (error) {
      results = error.results || [];
      stopped = error;
    }
    $("#outcomes tbody").replaceChildren(...results.map((r) => {
      const tr = row([r.message_id, OUTCOME_WORDS[r.outcome] || r.outcome, r.reason || ""]);
      tr.dataset.outcome = r.outcome;
      return tr;
    }));
    $("#outcomes").hidden = !results.length;
    await read();  // each dead letter's state as it is now
    const counts = new Map();
    for (const r of results) counts.set(r.outcome, (counts.get(r.outcome) || 0) + 1);
    const summary = [...counts].map(([o, n]) => `${n} ${OUTCOME_WORDS[o] || o}`).join(", ");
    const done = `Replayed ${results.length}${stopped ? ` of ${asked}` : ""}${summary ? `: ${summary}` : ""}.`;
    status(stopped ? `${done} Stopped by ${stopped.message}` : done);
    said();
  });
  read();
}

// -- health -----------------------------------------------------------------------

// Prometheus text: each sample's name, labels (as text) and value.
function samples(text) {
  const found = [];
  for (const line of text.split("\n")) {
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (match) found.push({ name: match[1], labels: match[2] || "", value: Number(match[3]) });
  }
  return found;
}

function total(found, name, labelled) {
  return found.filter((s) => s.name === name && (!labelled || s.labels.includes(labelled))).reduce((sum, s) => sum + s.value, 0);
}

// The health charts' samples, one each 2 s: the last four minutes.
const SAMPLES = 120;

async function health() {
  const series = { pushes: [], latency: [], followers: [], rejections: [], export: [] };
  const times = [];
  const charts = {};
  let last = null;
  async function tick() {
    try {
      const ready = await fetch(`${ROOT}/readyz`);
      $("#ready").textContent = ready.ok ? "ready" : `not ready (${ready.status}): ${(await ready.json()).detail || ""}`;
      const answer = await fetch(`${ROOT}/metrics`);
      if (answer.status === 401 || answer.status === 403) { status(`/metrics refused (${answer.status}): beyond loopback the service's figures are an operator's.`); return; }
      if (!answer.ok) { status("No /metrics beside this console (OTEL_METRICS_EXPORTER is not prometheus, or a cell serves it at its root): nothing to chart."); return; }
      const found = samples(await answer.text());
      const now = Date.now() / 1000;
      const counts = {
        messages: total(found, "recordline_messages_total"),
        rejected: total(found, "recordline_messages_total", 'outcome="rejected"'),
        appendSum: total(found, "recordline_append_duration_seconds_sum"),
        appendCount: total(found, "recordline_append_duration_seconds_count"),
      };
      if (last) {
        const seconds = Math.max(0.001, now - last.at);
        times.push(now);
        series.pushes.push((counts.messages - last.messages) / seconds);
        const appended = counts.appendCount - last.appendCount;
        series.latency.push(appended ? 1000 * (counts.appendSum - last.appendSum) / appended : null);
        series.followers.push(total(found, "recordline_followers"));
        series.rejections.push(60 * (counts.rejected - last.rejected) / seconds);
        const lags = found.filter((s) => s.name === "recordline_export_lag_seconds");
        series.export.push(lags.length ? Math.max(...lags.map((s) => s.value)) : null);
        if (times.length > SAMPLES) { times.shift(); for (const list of Object.values(series)) list.shift(); }
        for (const [name, values] of Object.entries(series)) {
          if (charts[name]) charts[name].setData([times, values]);
          else charts[name] = chart($(`#${name}`), [name], [times, values], 120, SAMPLES * 2);
          // A chart with no value to draw says so (no append yet, no export here).
          const figure = $(`#${name}`).parentNode;
          const none = values.every((value) => value === null);
          let note = figure.querySelector(".empty");
          if (none && !note) figure.append(note = element("p", "no value yet", { class: "empty" }));
          if (!none && note) note.remove();
        }
        const body = $("#tables tbody");
        body.replaceChildren();
        for (const lag of found.filter((s) => s.name === "recordline_export_lag_seconds")) {
          const table = (lag.labels.match(/table="([^"]*)"/) || [])[1] || lag.labels;
          const blocked = found.some((s) => s.name === "recordline_export_blocked" && s.labels.includes(`"${table}"`) && s.value > 0);
          body.append(row([table, `${lag.value.toFixed(1)} s`, blocked ? "blocked" : "exporting",
            blocked ? "recordline export status names why; docs/operations.md says what to do for each" : ""]));
        }
        if (!body.children.length) body.append(row(["—", "—", "no export on this store", "none needed"]));
      }
      last = { at: now, ...counts };
    } catch (error) { status(error.message); }
  }
  await tick();
  setInterval(tick, 2000);
}

window.addEventListener("DOMContentLoaded", () => {
  ({ records, rejections, "dead-letters": deadLetters, producers, access, health })[document.body.dataset.page]();
});
