// Model monitoring: GET /api/monitoring, one card per model version with its figures, paging
// conditions, drift table and uPlot charts (vendored) of the inputs against the reference.
"use strict";
(function () {
  const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(0)} %`);
  const num = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  const LABELS = { pixel_spacing_mm: "Pixel spacing (mm)", slice_thickness_mm: "Slice thickness (mm)", hu: "HU histogram" };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function figures(m) {
    const items = [
      ["Studies analysed", m.studies],
      ["Findings decided", m.decided],
      ["Acceptance rate", pct(m.acceptance_rate)],
      ["PPV", pct(m.ppv)],
      [`PPV, last ${m.recent.decided}`, pct(m.recent.ppv)],
      ["Signed studies", m.signed_studies],
      ["False positives / study", num(m.false_positives_per_study, 2)],
    ];
    return el("div", { class: "figures" }, ...items.map(([label, value]) =>
      el("div", { class: "figure", "data-figure": label }, el("b", {}, String(value)), label)));
  }

  function conditions(m) {
    const box = el("p", {});
    for (const [name, c] of Object.entries(m.conditions)) {
      box.append(el("span", { class: `pill condition ${c.active ? "on" : "off"}`, "data-condition": name, title: c.reason },
        `${name === "drift" ? "Input drift" : "Reader PPV"}: ${c.active ? "paging" : "ok"}`));
    }
    return box;
  }

  function driftTable(m) {
    const body = el("tbody", {});
    for (const name of Object.keys(LABELS)) {
      const d = m.inputs.drift[name];
      body.append(el("tr", { "data-feature": name }, el("td", {}, LABELS[name]),
        el("td", { class: "num" }, d ? num(d.psi, 3) : "–"), el("td", { class: "num" }, d ? num(d.ks, 3) : "–"),
        el("td", { class: "num" }, d ? pct(d.outside) : "–")));
    }
    const head = el("thead", {}, el("tr", {}, el("th", {}, "Input"), el("th", { class: "num" }, "PSI"),
      el("th", { class: "num" }, "KS"), el("th", { class: "num" }, "Outside training data")));
    return el("table", { class: "drift" }, head, body);
  }

  function chart(target, m, name) {
    const edges = m.inputs.edges[name];
    const observed = m.inputs.observed[name];
    const reference = m.inputs.reference[name];
    const mids = edges.slice(0, -1).map((e, i) => (e + edges[i + 1]) / 2);
    const series = [{}];
    const data = [mids];
    if (reference) {
      series.push({ label: "training data", stroke: "#b54708", width: 2 });
      data.push(reference);
    }
    if (observed) {
      series.push({ label: `last ${m.inputs.window} studies`, stroke: "#2450a6", fill: "#2450a633", width: 2 });
      data.push(observed);
    }
    if (data.length === 1) {
      target.append(el("p", { class: "muted" }, "No data yet."));
      return;
    }
    const width = Math.max(280, target.clientWidth || 360);
    new uPlot({ width, height: 200, scales: { x: { time: false } }, series,
      axes: [{}, { values: (u, t) => t.map((v) => `${(v * 100).toFixed(0)}%`) }] }, data, target);
  }

  function trend(target, m) {
    const days = m.recent.daily;
    if (!days.length) {
      target.append(el("p", { class: "muted" }, "No decision yet."));
      return;
    }
    const x = days.map((d) => Date.parse(`${d.day}T12:00:00Z`) / 1000);
    const width = Math.max(280, target.clientWidth || 360);
    const span = [x[0] - 86400, x[x.length - 1] + 86400]; // a day either side (one day: a point)
    new uPlot({ width, height: 200, scales: { x: { time: true, auto: false, range: span }, y: { range: [0, 1] } },
      series: [{}, { label: "PPV", stroke: "#2450a6", width: 2 },
        { label: "decided", stroke: "#667085", scale: "n", paths: uPlot.paths.bars({ size: [0.5, 30] }) }],
      axes: [{}, { values: (u, t) => t.map((v) => `${(v * 100).toFixed(0)}%`) }, { scale: "n", side: 1 }] },
    [x, days.map((d) => d.ppv), days.map((d) => d.decided)], target);
  }

  function card(m) {
    const title = el("h3", {}, `${m.name} ${m.version} `, el("span", { class: "muted" }, `sha256 ${String(m.sha256).slice(0, 12)}`));
    const charts = el("div", { class: "charts" });
    const card = el("div", { class: "card model", "data-model": m.model }, title, figures(m), conditions(m), driftTable(m), charts);
    document.getElementById("models").append(card);
    if (!m.inputs.has_reference) {
      card.insertBefore(el("p", { class: "muted" }, "This bundle carries no reference distribution: drift is not measured."), charts);
    }
    const boxes = Object.keys(LABELS).map((name) => [name, el("div", { class: "chart", "data-chart": name })]);
    for (const [name, box] of boxes) charts.append(el("div", {}, el("h4", {}, LABELS[name]), box));
    const daily = el("div", { class: "chart", "data-chart": "ppv" });
    charts.append(el("div", {}, el("h4", {}, "Reader PPV per day (recent decisions)"), daily));
    for (const [name, box] of boxes) chart(box, m, name); // sized once the grid has its columns
    trend(daily, m);
  }

  async function load() {
    const r = await fetch("/api/monitoring", { credentials: "same-origin" });
    const data = await r.json();
    const box = document.getElementById("models");
    box.replaceChildren();
    if (!r.ok) { box.textContent = data.detail || `error ${r.status}`; return; }
    const t = data.thresholds;
    document.getElementById("thresholds").textContent =
      `drift at PSI ≥ ${t.drift_psi} with ≥ ${pct(t.drift_outside)} outside the training data, over the last ${t.window} studies (from ${t.min_studies}); ` +
      `PPV under ${pct(t.ppv)} over the last ${t.ppv_window} decisions (from ${t.min_decisions})`;
    if (!data.models.length) box.append(el("p", { class: "muted", id: "no-models" }, "No model has analysed a study yet."));
    for (const m of data.models) card(m);
    document.body.dataset.monitoringLoaded = "yes";
  }
  load();
})();
