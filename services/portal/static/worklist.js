// Worklist: acknowledge an open alert from the banner (POST /api/alerts/{id}/ack, CSRF token).
"use strict";
(function () {
  const csrf = document.querySelector("meta[name=csrf-token]");
  document.querySelectorAll("button.ack").forEach((button) => button.addEventListener("click", async () => {
    const r = await fetch(`/api/alerts/${button.dataset.alert}/ack`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf ? csrf.content : "" },
      body: JSON.stringify({ note: "acknowledged from the worklist" }),
    });
    const out = button.nextElementSibling;
    if (r.ok) { button.closest(".alert").classList.add("acknowledged"); button.remove(); out.textContent = "acknowledged"; out.className = "msg ok"; }
    else { let d = {}; try { d = await r.json(); } catch (_) { /* none */ } out.textContent = d.detail || `error ${r.status}`; out.className = "msg error"; }
  }));
})();
