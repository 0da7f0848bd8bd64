// Admin screens: users and tokens through /api/admin (JSON, the session's CSRF token).
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
  fetch("/api/alerts/config", { credentials: "same-origin" }).then((r) => r.json()).then((c) => { box.value = JSON.stringify(c, null, 2); });
  document.getElementById("save-alert-config").addEventListener("click", async () => {
    let body;
    try { body = JSON.parse(box.value); } catch (err) { msg.textContent = `not JSON: ${err.message}`; msg.className = "msg error"; return; }
    const r = await fetch("/api/alerts/config", { method: "PUT", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: JSON.stringify(body) });
    let payload = {}; try { payload = await r.json(); } catch (_) { /* none */ }
    if (r.ok) { box.value = JSON.stringify(payload, null, 2); msg.textContent = "saved"; msg.className = "msg ok"; }
    else { msg.textContent = JSON.stringify(payload.detail || r.status).slice(0, 400); msg.className = "msg error"; }
  });
})();
