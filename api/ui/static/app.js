/* pretextlab dashboard: a little JavaScript over server-rendered pages.
   - api(): same-origin fetch; sends the session's CSRF token (from <meta name=csrf-token>) on writes.
   - stream(): the /v1/events/stream Server-Sent Events, one EventSource per page.
   - charts: uPlot (vendored, see vendor/NOTICE); zooming re-asks the server for that step range,
     so the points stay the server's downsampling of what is on screen. */
"use strict";
const Dash = (() => {
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                   "#7f7f7f", "#bcbd22", "#393b79", "#637939"];
  const PREFERRED = ["train/loss", "train/lr", "train/images_per_sec", "monitor/knn_top1"];
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  const $ = (sel, root = document) => root.querySelector(sel);
  const el = (tag, props = {}, ...kids) => {
    const e = Object.assign(document.createElement(tag), props);
    kids.forEach(k => e.append(k));
    return e;
  };
  const csrf = () => ($('meta[name="csrf-token"]') || {}).content || "";

  async function api(method, url, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(url, { method, headers, credentials: "same-origin",
                                 body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (r.status === 401) location.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search);
    if (!r.ok) {
      const err = new Error((data && data.error && data.error.message) || `HTTP ${r.status}`);
      err.status = r.status;
      throw err;
    }
    return data;
  }

  function stream(jobId, onJob) {
    const es = new EventSource("/v1/events/stream" + (jobId ? `?job_id=${jobId}` : ""));
    const live = $("#live");
    live.classList.add("shown");
    es.onopen = () => { live.textContent = "\u25cf live"; live.classList.add("on"); };
    es.onerror = () => { live.textContent = "\u25cf reconnecting"; live.classList.remove("on"); };
    es.addEventListener("job", ev => onJob(JSON.parse(ev.data)));
    window.addEventListener("pagehide", () => es.close());
    return es;
  }

  // -- progress --------------------------------------------------------------------------------
  function percent(s) {
    const p = s.progress || {};
    if (p.total_steps) return Math.min(100, (100 * (p.step || 0)) / p.total_steps);
    return s.status === "succeeded" ? 100 : 0;
  }
  function setProgress(cell, s) {
    if (!cell) return;
    const pct = percent(s);
    cell.replaceChildren(el("div", { className: "bar" }, el("div", { className: "fill", style: `width: ${pct.toFixed(1)}%` })),
                         el("span", { className: "pct", textContent: `${pct.toFixed(0)}%` }));
  }
  const etaText = s => (["running", "cancelling"].includes(s.status) && s.progress && s.progress.eta_s != null)
    ? `${Math.round(s.progress.eta_s)} s` : "";
  const ts = iso => iso ? iso.replace("T", " ").slice(0, 19) : "";
  function badge(status) { return el("span", { className: `badge ${status}`, textContent: status }); }

  // -- jobs page -------------------------------------------------------------------------------
  function newRow(s) {
    const tr = el("tr", { id: `job-${s.id}` });
    tr.dataset.id = s.id;
    const td = (cls, ...kids) => el("td", { className: cls || "" }, ...kids);
    tr.append(td("", el("input", { type: "checkbox", className: "pick", value: s.id })),
              td("", el("a", { href: `/ui/jobs/${s.id}`, textContent: s.id })), td("", s.name || ""),
              td("status"), td("", s.kind || ""), td("", s.method || ""), td("", ""), td("", s.dataset || ""),
              td("progress"), td("eta"), td("attempt"), td("", ...(s.tags || []).map(t => el("span", { className: "tag", textContent: t }))),
              td("", ts(s.created_at)), td("finished"));
    return tr;
  }
  function updateRow(tr, s) {
    tr.dataset.status = s.status;
    $(".status", tr).replaceChildren(badge(s.status));
    setProgress($(".progress", tr), s);
    $(".eta", tr).textContent = etaText(s);
    $(".attempt", tr).textContent = `${s.attempt}/${s.max_attempts}`;
    $(".finished", tr).textContent = ts(s.finished_at);
  }
  function jobsPage() {
    const table = $("#jobs");
    stream(null, s => {
      let tr = document.getElementById(`job-${s.id}`);
      if (!tr) {
        if (table.dataset.liveInsert !== "yes") return;
        const empty = $("tr.empty", table);
        if (empty) empty.remove();
        tr = newRow(s);
        $("tbody", table).prepend(tr);
      }
      updateRow(tr, s);
    });
    $("#compare-selected").addEventListener("click", () => {
      const ids = [...document.querySelectorAll("input.pick:checked")].map(c => c.value);
      if (ids.length) location.href = "/ui/compare?ids=" + ids.join(",");
    });
  }

  // -- charts ----------------------------------------------------------------------------------
  async function series(jobId, name, width, range) {
    let url = `/v1/jobs/${jobId}/metrics?name=${encodeURIComponent(name)}&max_points=${Math.max(200, Math.round(width))}`;
    if (range) url += `&start_step=${Math.max(0, Math.floor(range[0]))}&end_step=${Math.ceil(range[1])}`;
    const body = await api("GET", url);
    return [body.points.map(p => p.step), body.points.map(p => p.value)];
  }

  /* One chart: ``name`` for every job in ``jobIds`` on shared axes. */
  function chart(container, name, jobIds) {
    const box = el("div", { className: "chart" });
    box.dataset.metric = name;
    container.append(box);
    const width = () => Math.max(320, Math.min(container.clientWidth || 900, 900) - 10);
    let plot = null;
    let zoomed = null;
    async function load(range) {
      const tables = await Promise.all(jobIds.map(id => series(id, name, width(), range)));
      const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
      box.dataset.points = tables.reduce((n, t) => n + t[1].filter(v => v != null).length, 0);
      box.dataset.jobs = jobIds.join(",");
      if (plot) { plot.setData(data); return; }
      plot = new uPlot({
        title: name, width: width(), height: 220,
        scales: { x: { time: false } },
        cursor: { drag: { x: true, y: false, setScale: false } },
        series: [{ label: "step" }, ...jobIds.map((id, i) => ({
          label: jobIds.length > 1 ? `job ${id}` : name, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true,
        }))],
        hooks: { setSelect: [u => {
          if (u.select.width < 5) return;
          zoomed = [u.posToVal(u.select.left, "x"), u.posToVal(u.select.left + u.select.width, "x")];
          u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
          load(zoomed);
        }] },
      }, data, box);
      plot.over.addEventListener("dblclick", () => { zoomed = null; load(null); });
    }
    return { load, refresh: () => (zoomed ? Promise.resolve() : load(null)), box };
  }

  function ordered(names) {
    return [...PREFERRED.filter(n => names.includes(n)), ...names.filter(n => !PREFERRED.includes(n)).sort()].slice(0, 10);
  }

  function throttle(fn, ms) {
    let last = 0, timer = null;
    return () => {
      const wait = last + ms - Date.now();
      if (wait <= 0) { last = Date.now(); fn(); }
      else if (!timer) timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
    };
  }

  // -- job page --------------------------------------------------------------------------------
  async function drawJobCharts(jobId, charts) {
    const box = $("#charts");
    const names = ordered((await api("GET", `/v1/jobs/${jobId}/metrics`)).names);
    for (const n of names) {
      if (!charts.has(n)) { const c = chart(box, n, [jobId]); charts.set(n, c); await c.load(null); }
      else await charts.get(n).refresh();
    }
    if (!names.length && !$(".muted.none", box)) box.append(el("p", { className: "muted none", textContent: "no metrics yet" }));
    else if (names.length && $(".muted.none", box)) $(".muted.none", box).remove();
  }
  function message(text, isError) {
    const m = $("#action-msg");
    m.className = "msg" + (isError ? " error" : "");
    m.replaceChildren(...(Array.isArray(text) ? text : [text]));
  }
  function jobPage(jobId, kind) {
    const charts = new Map();
    const redraw = throttle(() => drawJobCharts(jobId, charts).catch(() => {}), 3000);
    drawJobCharts(jobId, charts).catch(e => message(`curves: ${e.message}`, true));
    stream(jobId, s => {
      if (s.id !== jobId) return;
      $("#status").replaceWith(Object.assign(badge(s.status), { id: "status" }));
      $("#job").dataset.status = s.status;
      setProgress($("#progress"), s);
      $("#eta").textContent = etaText(s);
      $("#ips").textContent = s.progress && s.progress.images_per_sec ? Math.round(s.progress.images_per_sec) : "";
      $("#attempt").textContent = `${s.attempt}/${s.max_attempts}`;
      $("#finished").textContent = ts(s.finished_at);
      if (FINAL.has(s.status)) $("#cancel").disabled = true;
      redraw();
    });
    $("#cancel").addEventListener("click", async () => {
      try {
        const j = await api("POST", `/v1/jobs/${jobId}/cancel`);
        message(`cancel requested: ${j.status}`);
      } catch (e) { message(`cancel: ${e.message}`, true); }
    });
    const evalForm = $("#evaluate");
    if (evalForm) evalForm.addEventListener("submit", async ev => {
      ev.preventDefault();
      const f = new FormData(evalForm);
      const spec = { source_job_id: jobId, protocol: { protocol: f.get("protocol") } };
      if (f.get("dataset")) spec.data = { dataset: f.get("dataset") };
      try {
        const j = await api("POST", "/v1/jobs", { kind: "evaluate", spec });
        message(["evaluation submitted: ", el("a", { href: `/ui/jobs/${j.id}`, textContent: `job ${j.id}` })]);
      } catch (e) { message(`evaluate: ${e.message}`, true); }
    });
    const clone = $("#clone-form");
    clone.addEventListener("submit", async ev => {
      ev.preventDefault();
      const f = new FormData(clone);
      let spec;
      try { spec = JSON.parse(f.get("spec")); } catch (e) { message(`spec: not valid JSON (${e.message})`, true); return; }
      try {
        const j = await api("POST", "/v1/jobs", { kind: spec.kind || kind, spec, name: f.get("name") || null });
        location.href = `/ui/jobs/${j.id}`;
      } catch (e) { message(`submit: ${e.message}`, true); }
    });
  }

  // -- compare page ----------------------------------------------------------------------------
  async function comparePage(jobIds) {
    const box = $("#charts");
    const lists = await Promise.all(jobIds.map(id => api("GET", `/v1/jobs/${id}/metrics`)));
    const names = ordered([...new Set(lists.flatMap(l => l.names))]);
    const finals = $("#final-metrics");
    for (const n of names) {
      const have = jobIds.filter((id, i) => lists[i].names.includes(n));
      await chart(box, n, have).load(null);
      const last = await Promise.all(jobIds.map(id => have.includes(id)
        ? series(id, n, 2, null).then(([, ys]) => ys[ys.length - 1]) : Promise.resolve(null)));
      finals.append(el("tr", {}, el("th", { textContent: `last ${n}` }),
                       ...last.map(v => el("td", { textContent: v == null ? "" : Number(v).toPrecision(4) }))));
    }
    if (!names.length) box.append(el("p", { className: "muted", textContent: "these jobs have no metrics yet" }));
  }

  // -- leaderboard -----------------------------------------------------------------------------
  function sortableTables() {
    document.querySelectorAll("table.sortable").forEach(table => {
      table.querySelectorAll("thead th").forEach((th, col) => {
        th.classList.add("sorter");
        th.addEventListener("click", () => {
          const asc = th.dataset.dir !== "asc";
          table.querySelectorAll("thead th").forEach(h => delete h.dataset.dir);
          th.dataset.dir = asc ? "asc" : "desc";
          const key = tr => { const c = tr.children[col]; const v = c.dataset.sort ?? c.textContent.trim();
                              return v !== "" && !isNaN(v) ? Number(v) : v; };
          const rows = [...table.tBodies[0].rows];
          rows.sort((a, b) => { const x = key(a), y = key(b); const r = x < y ? -1 : x > y ? 1 : 0; return asc ? r : -r; });
          table.tBodies[0].append(...rows);
        });
      });
    });
  }

  // -- workers ---------------------------------------------------------------------------------
  async function workersPage() {
    const box = $("#workers");
    let body;
    try { body = await api("GET", "/v1/workers"); }
    catch (e) { box.replaceChildren(el("p", { className: "muted", textContent: `no workers endpoint here (${e.message})` })); return; }
    const items = Array.isArray(body) ? body : (body && body.items) || [];
    if (!items.length) { box.replaceChildren(el("p", { textContent: "No workers registered." })); return; }
    const cols = [...new Set(items.flatMap(Object.keys))];
    const cell = v => el("td", { textContent: v == null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v) });
    box.replaceChildren(el("table", {}, el("thead", {}, el("tr", {}, ...cols.map(c => el("th", { textContent: c })))),
                           el("tbody", {}, ...items.map(w => el("tr", {}, ...cols.map(c => cell(w[c])))))));
  }

  return { api, stream, jobsPage, jobPage, comparePage, sortableTables, workersPage };
})();
