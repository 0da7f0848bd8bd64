// Turnaround dashboard: GET /api/tat with the filters, figures, uPlot charts (vendored),
// cuts, stuck studies, and the RIS CSV import (multipart, the session's CSRF token).
"use strict";
(function () {
  const csrf = document.querySelector("meta[name=csrf-token]").content;
  const form = document.getElementById("tat-filters");
  const charts = {};
  let last = null;

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.abs(seconds);
    if (s < 120) return `${seconds.toFixed(0)} s`;
    if (s < 7200) return `${(seconds / 60).toFixed(1)} min`;
    if (s < 172800) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }
  const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(0)} %`);
  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }
  function query() {
    const params = new URLSearchParams();
    for (const [k, v] of new FormData(form).entries()) if (v) params.set(k, v);
    return params.toString();
  }
  function fillSelect(name, values) {
    const select = form.elements[name];
    const keep = select.value;
    select.replaceChildren(new Option("all", ""));
    for (const v of values) select.appendChild(new Option(v, v));
    select.value = values.includes(keep) ? keep : "";
  }

  function agreementText(agreement, side) {
    const a = (agreement || {})[side];
    if (!a || a.agreement === null || a.agreement === undefined) return "–";
    const kappa = a.kappa === null ? "n/a" : a.kappa.toFixed(2);
    return `${pct(a.agreement)} (κ ${kappa}, ${a.pairs} reads)`;
  }

  function figures(data) {
    const box = document.getElementById("tat-figures");
    box.replaceChildren();
    const k = data.kpis;
    const items = [
      ["Studies", data.studies],
      ["Bottleneck", data.bottleneck || "–"],
      ["received→signed p50", duration((data.end_to_end["received→signed"] || {}).p50)],
      ["AI flag→acknowledged p50", duration((data.end_to_end["AI flag→acknowledged"] || {}).p50)],
      ["AI-positive rate", pct(k.ai_positive_rate)],
      ["Failed-study rate", pct(k.failed_rate)],
      ["Reader agreement (resident vs attending)", agreementText(k.reader_agreement, "attending")],
      ["Reader agreement (resident vs AI)", agreementText(k.reader_agreement, "ai")],
      ["Stuck", data.stuck.length],
    ];
    for (const [label, value] of items) {
      const div = document.createElement("div");
      div.className = "figure";
      const b = document.createElement("b");
      b.textContent = value;
      div.append(b, document.createTextNode(label));
      box.appendChild(div);
    }
  }

  function intervalTable(data) {
    const body = document.querySelector("#tat-intervals tbody");
    body.replaceChildren();
    const rows = [...Object.entries(data.intervals), ...Object.entries(data.end_to_end)];
    for (const [name, f] of rows) {
      const tr = document.createElement("tr");
      tr.dataset.interval = name;
      if (name === data.bottleneck) tr.className = "bottleneck";
      cell(tr, name);
      cell(tr, f.count, "num");
      cell(tr, duration(f.p50), "num");
      cell(tr, duration(f.p90), "num");
      cell(tr, duration(f.mean), "num");
      cell(tr, f.target ? duration(f.target) : "–", "num");
      cell(tr, pct(f.within_target), "num");
      cell(tr, f.breaches, f.breaches ? "num breach" : "num");
      cell(tr, f.out_of_order, "num");
      body.appendChild(tr);
    }
    if (!rows.length) {
      const tr = document.createElement("tr");
      cell(tr, "No study in this period.", "muted").colSpan = 9;
      body.appendChild(tr);
    }
  }

  function chart(id, opts, series) {
    const el = document.getElementById(id);
    if (charts[id]) charts[id].destroy();
    const width = Math.max(320, el.clientWidth || 420);
    charts[id] = new uPlot({ width, height: 220, ...opts }, series, el);
  }
  // Side by side when two series share an x: the first left of it, the second right.
  const bars = (align) => uPlot.paths.bars({ size: [align ? 0.35 : 0.6, 40], align: align || 0 });
  function labelled(labels) {
    return {
      scales: { x: { time: false, range: [-0.5, Math.max(labels.length - 0.5, 0.5)] } },
      axes: [
        { values: (u, ticks) => ticks.map((t) => labels[t] ?? ""), splits: () => labels.map((_, i) => i),
          rotate: 35, size: 110, gap: 4 },
        {},
      ],
    };
  }

  function charts_(data) {
    const names = Object.keys(data.intervals);
    const idx = names.map((_, i) => i);
    const minutes = (key) => names.map((n) => (data.intervals[n][key] ?? null) === null ? null : data.intervals[n][key] / 60);
    chart("chart-intervals", {
      ...labelled(names),
      series: [{}, { label: "p50 min", fill: "#2450a6aa", stroke: "#2450a6", paths: bars(-1) },
        { label: "p90 min", fill: "#b5470866", stroke: "#b54708", paths: bars(1) }],
    }, [idx, minutes("p50"), minutes("p90")]);
    const hours = data.arrivals_by_hour.map((_, h) => h);
    chart("chart-arrivals", {
      scales: { x: { time: false, range: [-0.5, 23.5] } },
      axes: [{ values: (u, t) => t.map((h) => `${h}h`) }, {}],
      series: [{}, { label: "studies", fill: "#027a48aa", stroke: "#027a48", paths: bars() }],
    }, [hours, data.arrivals_by_hour]);
    const days = data.daily.map((d) => Date.parse(`${d.day}T12:00:00Z`) / 1000);
    chart("chart-daily", {
      series: [{}, { label: "studies", stroke: "#2450a6", width: 2, scale: "n" },
        { label: "received→signed p50 (h)", stroke: "#b42318", width: 2, scale: "h" }],
      axes: [{}, { scale: "n" }, { scale: "h", side: 1 }],
    }, [days, data.daily.map((d) => d.studies), data.daily.map((d) => (d.p50["received→signed"] ?? null) === null ? null : d.p50["received→signed"] / 3600)]);
  }

  function cutTable() {
    if (!last) return;
    const dimension = document.getElementById("cut-dimension").value;
    const pick = document.getElementById("cut-interval");
    const available = [...Object.keys(last.end_to_end), ...Object.keys(last.intervals)];
    const keep = pick.value || "received→signed";
    pick.replaceChildren(...available.map((n) => new Option(n, n)));
    pick.value = available.includes(keep) ? keep : (available[0] || "");
    document.querySelector("#tat-cut").closest(".card").querySelector("h3").textContent =
      `By ${dimension} (${pick.value || "no interval"})`;
    const body = document.querySelector("#tat-cut tbody");
    body.replaceChildren();
    for (const [value, group] of Object.entries(last.cuts[dimension] || {})) {
      const f = group.intervals[pick.value] || {};
      const tr = document.createElement("tr");
      cell(tr, value);
      cell(tr, group.studies, "num");
      cell(tr, duration(f.p50), "num");
      cell(tr, duration(f.p90), "num");
      body.appendChild(tr);
    }
  }

  function stuckTable(data) {
    const body = document.querySelector("#tat-stuck tbody");
    body.replaceChildren();
    for (const s of data.stuck) {
      const tr = document.createElement("tr");
      cell(tr, s.study);
      cell(tr, s.stage);
      cell(tr, duration(s.waiting_s), "num breach");
      cell(tr, duration(s.limit_s), "num");
      cell(tr, s.modality);
      cell(tr, s.priority);
      cell(tr, s.risk);
      body.appendChild(tr);
    }
    if (!data.stuck.length) {
      const tr = document.createElement("tr");
      cell(tr, "No study is stuck.", "muted").colSpan = 7;
      body.appendChild(tr);
    }
  }

  function importReport(report) {
    const box = document.getElementById("ris-report");
    box.replaceChildren();
    if (!report) {
      box.textContent = "No RIS file imported yet.";
      box.className = "muted";
      return;
    }
    box.className = "";
    const p = document.createElement("p");
    p.id = "ris-summary";
    p.textContent = `Last import ${report.at.replace("T", " ").slice(0, 16)} UTC by ${report.by}: ` +
      `${report.rows} rows, ${report.clean} clean, ${report.flagged} flagged, ${report.matched} matched to studies.`;
    box.appendChild(p);
    if (!report.flagged_rows.length) return;
    const table = document.createElement("table");
    table.id = "ris-flagged";
    table.innerHTML = "<thead><tr><th>Line</th><th>Accession (pseudonym)</th><th>Why</th></tr></thead>";
    const body = document.createElement("tbody");
    for (const row of report.flagged_rows) {
      const tr = document.createElement("tr");
      cell(tr, row.line, "num");
      cell(tr, row.accession || "–");
      cell(tr, row.reasons.join("; "));
      body.appendChild(tr);
    }
    table.appendChild(body);
    box.appendChild(table);
  }

  async function load() {
    const q = query();
    for (const [id, path] of [["export-csv", "/api/tat.csv"], ["export-parquet", "/api/tat.parquet"], ["export-star", "/api/tat/star.zip"]])
      document.getElementById(id).href = q ? `${path}?${q}` : path;
    const r = await fetch(`/api/tat${q ? "?" + q : ""}`, { credentials: "same-origin" });
    const data = await r.json();
    if (!r.ok) { alert(data.detail || `error ${r.status}`); return; }
    last = data;
    fillSelect("modality", data.choices.modality);
    fillSelect("source", data.choices.source);
    fillSelect("priority", data.choices.priority);
    figures(data);
    intervalTable(data);
    charts_(data);
    cutTable();
    stuckTable(data);
    importReport(data.last_import);
    document.body.dataset.tatLoaded = "yes";
  }

  form.addEventListener("submit", (e) => { e.preventDefault(); load(); });
  document.getElementById("cut-dimension").addEventListener("change", cutTable);
  document.getElementById("cut-interval").addEventListener("change", cutTable);
  document.getElementById("ris-import").addEventListener("submit", async (e) => {
    e.preventDefault();
    const msg = document.getElementById("ris-msg");
    const r = await fetch("/api/tat/import", { method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf }, body: new FormData(e.target) });
    let payload = {}; try { payload = await r.json(); } catch (_) { /* none */ }
    msg.className = r.ok ? "msg ok" : "msg error";
    msg.textContent = r.ok
      ? (payload.already_imported ? "This file was imported before: nothing changed." : `Imported: ${payload.clean} clean, ${payload.flagged} flagged rows.`)
      : String(payload.detail || `error ${r.status}`).slice(0, 400);
    if (r.ok) load();
  });
  load();
})();
