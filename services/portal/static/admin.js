// Admin screens: users, tokens and routing rules through /api/admin, silences and on-call
// schedules through /api/alerts (JSON, the session's CSRF token on every change).
"use strict";
(function () {
  const csrf = document.querySelector("meta[name=csrf-token]").content;
  async function post(url, body) {
    const r = await fetch(url, { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: JSON.stringify(body || {}) });
    let payload = {}; try { payload = await r.json(); } catch (_) { /* none */ }
    if (!r.ok) alert(payload.detail || `error ${r.status}`);
    return { ok: r.ok, payload };
  }
  const enc = encodeURIComponent;
  async function send(method, url, body) {
    const r = await fetch(url, { method, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: body === undefined ? undefined : JSON.stringify(body) });
    let payload = {}; try { payload = await r.json(); } catch (_) { /* none */ }
    return { ok: r.ok, status: r.status, payload };
  }
  function say(el, r, okText) {
    const detail = r.payload && r.payload.detail;
    el.textContent = r.ok ? okText : (typeof detail === "string" ? detail : JSON.stringify(detail || r.status)).slice(0, 400);
    el.className = r.ok ? "msg ok" : "msg error";
  }
  const list = (text) => text.split(",").map((v) => v.trim()).filter(Boolean);
  const utc = (local) => `${local}${local.length === 16 ? ":00" : ""}Z`; // the inputs are UTC
  const when = (iso) => iso.replace("T", " ").slice(0, 16);
  function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); return td; }
  function button(label, cls, onClick) { const b = document.createElement("button"); b.type = "button"; b.textContent = label; b.className = cls; b.addEventListener("click", onClick); return b; }

  // Routing rules: a form that adds a rule to (or replaces, or disables) a bundle's override.
  const routingForm = document.getElementById("routing-form"), routingMsg = document.getElementById("routing-msg");
  routingForm.addEventListener("submit", async (e) => {
    e.preventDefault(); const f = new FormData(routingForm);
    const bundle = f.get("bundle"), mode = f.get("mode");
    const rule = {};
    for (const key of ["modality", "body_part", "sop_class"]) { const v = list(f.get(key) || ""); if (v.length) rule[key] = v; }
    if (f.get("series_description")) rule.series_description = f.get("series_description");
    const count = Number(f.get("min_instances") || 1); if (count !== 1) rule.min_instances = count;
    const row = document.querySelector(`#routing tr[data-bundle="${CSS.escape(bundle)}"]`);
    const current = row && row.dataset.mode === mode ? JSON.parse(row.dataset.override || "[]") : [];
    const rules = mode === "disable" ? [] : [...current, rule];
    const r = await send("PUT", `/api/admin/routing/${enc(bundle)}`, { mode, rules, reason: f.get("reason") || "" });
    say(routingMsg, r, "saved");
    if (r.ok) location.reload();
  });
  document.querySelectorAll("button.reset-routing").forEach((b) => b.addEventListener("click", async () => {
    const r = await send("DELETE", `/api/admin/routing/${enc(b.dataset.bundle)}`);
    say(routingMsg, r, "reset"); if (r.ok) location.reload();
  }));

  // Silences: listed, added and removed through /api/alerts/silences.
  const silenceBody = document.querySelector("#silences tbody"), silenceMsg = document.getElementById("silence-msg");
  async function loadSilences() {
    refreshConfig();
    const r = await send("GET", "/api/alerts/silences");
    silenceBody.replaceChildren();
    if (!r.ok) { say(silenceMsg, r, ""); return; }
    if (!r.payload.length) { const row = silenceBody.insertRow(); cell(row, "No silences.").colSpan = 7; row.cells[0].className = "muted"; }
    for (const s of r.payload) {
      const row = silenceBody.insertRow(); row.dataset.silence = s.name;
      cell(row, s.name);
      cell(row, [s.modality && `modality ${s.modality}`, s.bundle && `bundle ${s.bundle}`, s.source && `sender ${s.source}`].filter(Boolean).join(", ") || "every alert");
      cell(row, when(s.starts_at)); cell(row, when(s.ends_at)); cell(row, s.reason);
      cell(row, s.active ? "in force" : (new Date(s.starts_at) > new Date() ? "scheduled" : "ended"));
      cell(row, "").appendChild(button("Remove", "remove-silence", async () => {
        const out = await send("DELETE", `/api/alerts/silences/${enc(s.name)}`);
        say(silenceMsg, out, `removed ${s.name}`); if (out.ok) loadSilences();
      }));
    }
  }
  document.getElementById("silence-form").addEventListener("submit", async (e) => {
    e.preventDefault(); const form = e.target, f = new FormData(form);
    const body = { name: f.get("name"), starts_at: utc(f.get("starts_at")), ends_at: utc(f.get("ends_at")), reason: f.get("reason") };
    for (const key of ["modality", "bundle", "source"]) if (f.get(key)) body[key] = f.get(key);
    const r = await send("POST", "/api/alerts/silences", body);
    say(silenceMsg, r, `added ${body.name}`); if (r.ok) { form.reset(); loadSilences(); }
  });

  // On-call schedules: each rotation with who is on call now, its overrides and a form to add one.
  const schedules = document.getElementById("schedules"), scheduleMsg = document.getElementById("schedule-msg");
  function overrideForm(name) {
    const form = document.createElement("form"); form.className = "filters override-form"; form.dataset.schedule = name;
    form.setAttribute("aria-label", `Override for ${name}`);
    for (const [label, input] of [["On call instead", "person"], ["From (UTC)", "starts_at"], ["Until (UTC)", "ends_at"]]) {
      const l = document.createElement("label"); l.textContent = `${label} `;
      const i = document.createElement("input"); i.name = input; i.required = true;
      if (input !== "person") i.type = "datetime-local";
      l.appendChild(i); form.appendChild(l);
    }
    const submit = document.createElement("button"); submit.type = "submit"; submit.textContent = "Add override"; form.appendChild(submit);
    form.addEventListener("submit", async (e) => {
      e.preventDefault(); const f = new FormData(form);
      const r = await send("POST", `/api/alerts/schedules/${enc(name)}/overrides`, { person: f.get("person"), starts_at: utc(f.get("starts_at")), ends_at: utc(f.get("ends_at")) });
      say(scheduleMsg, r, `override added to ${name}`); if (r.ok) loadSchedules();
    });
    return form;
  }
  async function loadSchedules() {
    refreshConfig();
    const r = await send("GET", "/api/alerts/schedules");
    schedules.replaceChildren();
    if (!r.ok) { say(scheduleMsg, r, ""); return; }
    if (!r.payload.length) { const p = document.createElement("p"); p.className = "muted"; p.textContent = "No schedules."; schedules.appendChild(p); }
    for (const s of r.payload) {
      const box = document.createElement("div"); box.className = "schedule"; box.dataset.schedule = s.name;
      const h = document.createElement("h4");
      h.textContent = `${s.name}: ${s.rotation.people.join(", ")} in turn, ${s.rotation.shift_hours} h shifts from ${when(s.rotation.starts_at)} UTC · on call now: ${s.on_call_now || "nobody"}`;
      h.appendChild(button("Remove schedule", "remove-schedule", async () => {
        const out = await send("DELETE", `/api/alerts/schedules/${enc(s.name)}`);
        say(scheduleMsg, out, `removed ${s.name}`); if (out.ok) loadSchedules();
      }));
      box.appendChild(h);
      const table = document.createElement("table"); table.className = "overrides";
      const head = table.createTHead().insertRow();
      for (const t of ["On call instead", "From (UTC)", "Until (UTC)", ""]) { const th = document.createElement("th"); th.textContent = t; head.appendChild(th); }
      const body = table.createTBody();
      s.overrides.forEach((o, i) => {
        const row = body.insertRow(); cell(row, o.person); cell(row, when(o.starts_at)); cell(row, when(o.ends_at));
        cell(row, "").appendChild(button("Remove", "remove-override", async () => {
          const out = await send("DELETE", `/api/alerts/schedules/${enc(s.name)}/overrides/${i + 1}`);
          say(scheduleMsg, out, "override removed"); if (out.ok) loadSchedules();
        }));
      });
      box.appendChild(table); box.appendChild(overrideForm(s.name)); schedules.appendChild(box);
    }
  }
  document.getElementById("schedule-form").addEventListener("submit", async (e) => {
    e.preventDefault(); const form = e.target, f = new FormData(form);
    const rotation = { people: list(f.get("people")), starts_at: utc(f.get("starts_at")), shift_hours: Number(f.get("shift_hours") || 24) };
    const r = await send("PUT", `/api/alerts/schedules/${enc(f.get("name"))}`, rotation);
    say(scheduleMsg, r, `saved ${f.get("name")}`); if (r.ok) { form.reset(); loadSchedules(); }
  });

  document.querySelectorAll("button.disable").forEach((b) => b.addEventListener("click", async () => {
    if ((await post(`/api/admin/users/${enc(b.dataset.user)}/disable`)).ok) location.reload();
  }));
  document.querySelectorAll("select.role").forEach((s) => s.addEventListener("change", async () => {
    await post(`/api/admin/users/${enc(s.dataset.user)}/role`, { role: s.value });
  }));
  document.querySelectorAll("button.revoke").forEach((b) => b.addEventListener("click", async () => {
    if ((await post(`/api/admin/tokens/${enc(b.dataset.token)}/revoke`)).ok) location.reload();
  }));
  document.getElementById("add-user").addEventListener("submit", async (e) => {
    e.preventDefault(); const f = new FormData(e.target);
    if ((await post("/api/admin/users", { name: f.get("name"), role: f.get("role"), password: f.get("password") })).ok) location.reload();
  });
  document.getElementById("add-token").addEventListener("submit", async (e) => {
    e.preventDefault(); const f = new FormData(e.target);
    const expires = f.get("expires") ? `${f.get("expires")}T00:00:00Z` : null;
    const r = await post("/api/admin/tokens", { name: f.get("name"), role: f.get("role"), expires_at: expires });
    if (r.ok) document.getElementById("new-token").textContent = `New token (shown once): ${r.payload.token}`;
  });
  const box = document.getElementById("alert-config"), msg = document.getElementById("alert-config-msg");
  // The JSON view of the whole configuration follows the forms' changes.
  const refreshConfig = () => fetch("/api/alerts/config", { credentials: "same-origin" }).then((r) => r.json()).then((c) => { box.value = JSON.stringify(c, null, 2); });
  document.getElementById("save-alert-config").addEventListener("click", async () => {
    let body;
    try { body = JSON.parse(box.value); } catch (err) { msg.textContent = `not JSON: ${err.message}`; msg.className = "msg error"; return; }
    const r = await fetch("/api/alerts/config", { method: "PUT", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: JSON.stringify(body) });
    let payload = {}; try { payload = await r.json(); } catch (_) { /* none */ }
    if (r.ok) { box.value = JSON.stringify(payload, null, 2); msg.textContent = "saved"; msg.className = "msg ok"; }
    else { msg.textContent = JSON.stringify(payload.detail || r.status).slice(0, 400); msg.className = "msg error"; }
  });
  loadSilences(); loadSchedules(); // each refreshes the JSON view too
})();
