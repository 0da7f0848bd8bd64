// Radpipe study viewer: WADO-RS rendered slices, window presets, scroll, zoom/pan, the AI SEG
// overlay, findings, review and sign-off, the resident's read. No external code.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("study-data").textContent);
  const csrf = document.querySelector("meta[name=csrf-token]").content;
  const PRESETS = {
    "1": { name: "soft tissue", width: 400, center: 40 },
    "2": { name: "lung", width: 1500, center: -600 },
    "3": { name: "bone", width: 2500, center: 480 },
    "4": { name: "brain", width: 80, center: 40 },
  };
  const $ = (id) => document.getElementById(id);
  const canvas = $("view");
  const g = canvas.getContext("2d", { willReadFrequently: true });
  const st = { k: 0, preset: "2", zoom: 1, panX: 0, panY: 0, overlay: true, opacity: 0.5 };
  const images = new Map();
  const overlays = new Map();
  const n = data.slices.length;
  st.k = Math.floor(n / 2);

  function imageUrl(k, preset) {
    const s = data.slices[k], p = PRESETS[preset];
    return `/dicom-web/studies/${data.study_uid}/series/${s.series}/instances/${s.sop}` +
      `/rendered?window=${p.center},${p.width},linear&quality=95`;
  }
  function load(map, key, url) {
    if (!map.has(key)) {
      const img = new Image();
      img.onload = () => { img.ready = true; draw(); };
      img.onerror = () => { img.failed = true; };
      img.src = url;
      map.set(key, img);
    }
    return map.get(key);
  }
  function current() {
    if (!n) return null;
    const img = load(images, `${st.k}|${st.preset}`, imageUrl(st.k, st.preset));
    for (const d of [-1, 1]) {  // neighbours, so scrolling does not wait
      const j = st.k + d;
      if (j >= 0 && j < n) load(images, `${j}|${st.preset}`, imageUrl(j, st.preset));
    }
    return img;
  }
  function overlay() {
    if (!data.overlay || !n) return null;
    const sop = data.slices[st.k].sop;
    return load(overlays, sop, `/api/studies/${data.id}/overlay/${sop}.png`);
  }
  function draw() {
    const img = current(), ov = overlay();
    g.setTransform(1, 0, 0, 1, 0, 0);
    g.fillStyle = "#000";
    g.fillRect(0, 0, canvas.width, canvas.height);
    if (img && img.ready) {
      const fit = Math.min(canvas.width / img.width, canvas.height / img.height) * st.zoom;
      const x = (canvas.width - img.width * fit) / 2 + st.panX;
      const y = (canvas.height - img.height * fit) / 2 + st.panY;
      g.imageSmoothingEnabled = false;
      g.setTransform(fit, 0, 0, fit, x, y);
      g.drawImage(img, 0, 0);
      if (st.overlay && ov && ov.ready) {
        g.globalAlpha = st.opacity;
        g.drawImage(ov, 0, 0, img.width, img.height);
        g.globalAlpha = 1;
      }
      canvas.dataset.drawn = `${st.k}|${st.preset}|${st.overlay && ov && ov.ready ? st.opacity : 0}`;
    }
    $("slice-indicator").textContent = n ? `Slice ${st.k + 1} / ${n}` : "No images";
    $("preset-indicator").textContent = `${PRESETS[st.preset].name} (W ${PRESETS[st.preset].width} / L ${PRESETS[st.preset].center})`;
    $("zoom-indicator").textContent = `${Math.round(st.zoom * 100)} %`;
    if ($("read-slice")) $("read-slice").value = st.k + 1;  // shown from 1, sent from 0
  }
  function go(k) { st.k = Math.max(0, Math.min(n - 1, k)); draw(); }
  function zoom(f) { st.zoom = Math.max(0.25, Math.min(16, st.zoom * f)); draw(); }
  window.radpipeViewer = { go, state: st, draw };

  canvas.addEventListener("wheel", (e) => { e.preventDefault(); go(st.k + (e.deltaY > 0 ? 1 : -1)); }, { passive: false });
  canvas.addEventListener("keydown", (e) => {
    const step = 20;
    if (e.key in PRESETS) { st.preset = e.key; draw(); }
    else if (e.shiftKey && e.key.startsWith("Arrow")) {
      if (e.key === "ArrowLeft") st.panX -= step; if (e.key === "ArrowRight") st.panX += step;
      if (e.key === "ArrowUp") st.panY -= step; if (e.key === "ArrowDown") st.panY += step;
      draw();
    }
    else if (e.key === "ArrowUp" || e.key === "ArrowLeft" || e.key === "PageUp") go(st.k - 1);
    else if (e.key === "ArrowDown" || e.key === "ArrowRight" || e.key === "PageDown") go(st.k + 1);
    else if (e.key === "Home") go(0);
    else if (e.key === "End") go(n - 1);
    else if (e.key === "+" || e.key === "=") zoom(1.25);
    else if (e.key === "-") zoom(0.8);
    else if (e.key === "0") { st.zoom = 1; st.panX = st.panY = 0; draw(); }
    else if (e.key === "o" && $("overlay-toggle")) { $("overlay-toggle").click(); }
    else return;
    e.preventDefault();
  });
  let drag = null;
  canvas.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, moved: false }; });
  window.addEventListener("mouseup", () => { drag = null; });
  canvas.addEventListener("mousemove", (e) => {
    if (!drag) return;
    st.panX += e.clientX - drag.x; st.panY += e.clientY - drag.y;
    drag.moved = drag.moved || Math.abs(e.clientX - drag.x) + Math.abs(e.clientY - drag.y) > 0;
    drag.x = e.clientX; drag.y = e.clientY; draw();
  });
  canvas.addEventListener("click", (e) => {  // a click places the read's centre
    const img = current();
    if (!img || !img.ready || !$("read-center")) return;
    const r = canvas.getBoundingClientRect();
    const fit = Math.min(canvas.width / img.width, canvas.height / img.height) * st.zoom;
    const x = ((e.clientX - r.left) * canvas.width / r.width - (canvas.width - img.width * fit) / 2 - st.panX) / fit;
    const y = ((e.clientY - r.top) * canvas.height / r.height - (canvas.height - img.height * fit) / 2 - st.panY) / fit;
    $("read-center").value = `${Math.round(y)},${Math.round(x)}`;
  });
  for (const [key] of Object.entries(PRESETS)) {
    const b = $(`preset-${key}`); if (b) b.addEventListener("click", () => { st.preset = key; draw(); canvas.focus(); });
  }
  $("zoom-in").addEventListener("click", () => zoom(1.25));
  $("zoom-out").addEventListener("click", () => zoom(0.8));
  $("zoom-reset").addEventListener("click", () => { st.zoom = 1; st.panX = st.panY = 0; draw(); });
  $("slice-prev").addEventListener("click", () => go(st.k - 1));
  $("slice-next").addEventListener("click", () => go(st.k + 1));
  if ($("overlay-toggle")) {
    $("overlay-toggle").addEventListener("change", (e) => { st.overlay = e.target.checked; draw(); });
    $("overlay-opacity").addEventListener("input", (e) => { st.opacity = Number(e.target.value) / 100; draw(); });
  }
  document.querySelectorAll("[data-goto]").forEach((b) =>
    b.addEventListener("click", () => { go(Number(b.dataset.goto)); canvas.focus(); }));

  async function post(url, body) {
    const r = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    let payload = {};
    try { payload = await r.json(); } catch (_) { /* no body */ }
    return { ok: r.ok, status: r.status, payload };
  }
  function say(el, text, ok) { el.textContent = text; el.className = ok ? "msg ok" : "msg error"; }
  document.querySelectorAll("form.decision").forEach((form) => form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form), body = { decision: e.submitter.value };
    if (body.decision === "reject") body.reason = f.get("reason");
    if (body.decision === "edit") body.diameter_mm = Number(f.get("diameter_mm")) || null;
    const r = await post(`/api/studies/${data.id}/findings/${form.dataset.finding}/decision`, body);
    const out = form.querySelector(".msg");
    const done = { accept: "accepted", reject: "rejected", edit: "edited" };
    if (r.ok) { say(out, done[r.payload.decision], true); form.closest("tr").dataset.decision = r.payload.decision; }
    else say(out, r.payload.detail || `error ${r.status}`, false);
  }));
  if ($("sign")) $("sign").addEventListener("click", async () => {
    const r = await post(`/api/studies/${data.id}/sign`);
    if (r.ok) { say($("sign-msg"), `Signed by ${r.payload.by}`, true); setTimeout(() => location.reload(), 300); }
    else say($("sign-msg"), r.payload.detail || `error ${r.status}`, false);
  });
  if ($("read-form")) $("read-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData($("read-form"));
    const present = f.get("finding_present") === "yes";
    const center = String(f.get("center_yx") || "").split(",").map(Number);
    const body = { finding_present: present, diameter_mm: null, slice: st.k, center_yx: null };
    if (present) {
      body.diameter_mm = Number(f.get("diameter_mm")) || null;
      if (center.length === 2 && center.every(Number.isFinite)) body.center_yx = center;
    } else body.slice = null;
    const r = await post(`/api/studies/${data.id}/reads`, body);
    if (r.ok) location.reload(); else say($("read-msg"), r.payload.detail || `error ${r.status}`, false);
  });
  draw();
  canvas.focus();
})();

