// Radpipe study viewer: WADO-RS rendered slices, window presets, scroll, zoom/pan, the AI SEG
// overlay, findings, review and sign-off (a finding's mask edited with a brush and an eraser),
// the resident's read (with a drawn mask). No external code.
// Masks travel as "rle-slices-v1" (radpipe.common.masks): per slice, [start, length, ...] runs
// of 1-pixels in row-major order, in the analysed series' grid (series UID and shape echoed).
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
  const st = { k: 0, preset: "2", zoom: 1, panX: 0, panY: 0, overlay: true, opacity: 0.5, gen: 0 };
  // Mask editing: null, or { finding (null: the read's own mask), geo, slices: Map k ->
  // Uint8Array(rows * columns), tool: "brush" | "eraser", radius (mask pixels), cursor }.
  st.edit = null;
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
    const img = load(overlays, `${sop}|${st.gen}`, `/api/studies/${data.id}/overlay/${sop}.png?v=${st.gen}`);
    img.gen = st.gen;
    return img;
  }
  const scratch = document.createElement("canvas");
  function drawEdit(img) {  // the mask being edited, over the image, in its own colour
    const e = st.edit, { rows, columns } = e.geo;
    scratch.width = columns; scratch.height = rows;
    const sg = scratch.getContext("2d"), pixels = sg.createImageData(columns, rows);
    const m = e.slices.get(st.k);
    if (m) for (let i = 0; i < m.length; i++) if (m[i]) pixels.data.set([255, 210, 0, 255], i * 4);
    sg.putImageData(pixels, 0, 0);
    g.globalAlpha = Math.max(st.opacity, 0.35);
    g.drawImage(scratch, 0, 0, img.width, img.height);
    g.globalAlpha = 1;
    const sy = img.height / rows, sx = img.width / columns;  // the keyboard cursor
    g.strokeStyle = e.tool === "brush" ? "#ffd200" : "#00c8ff";
    g.lineWidth = 1 / Math.max(sx, sy);
    g.beginPath();
    g.ellipse((e.cursor.x + 0.5) * sx, (e.cursor.y + 0.5) * sy, e.radius * sx, e.radius * sy, 0, 0, 2 * Math.PI);
    g.stroke();
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
      if (st.overlay && ov && ov.ready && !st.edit) {
        g.globalAlpha = st.opacity;
        g.drawImage(ov, 0, 0, img.width, img.height);
        g.globalAlpha = 1;
        canvas.dataset.overlayGen = String(ov.gen);
      }
      if (st.edit) drawEdit(img);
      canvas.dataset.drawn = `${st.k}|${st.preset}|${st.overlay && ov && ov.ready && !st.edit ? st.opacity : 0}`;
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
    const step = 20, ed = st.edit;
    if (ed && "ijkl".includes(e.key) && e.key.length === 1) {  // the mask cursor, a pixel a press
      const c = ed.cursor;
      if (e.key === "j") c.x = Math.max(0, c.x - 1);
      if (e.key === "l") c.x = Math.min(ed.geo.columns - 1, c.x + 1);
      if (e.key === "i") c.y = Math.max(0, c.y - 1);
      if (e.key === "k") c.y = Math.min(ed.geo.rows - 1, c.y + 1);
      canvas.dataset.cursor = `${c.y},${c.x}`;
      draw();
    }
    else if (ed && e.key === " ") paint(ed.cursor.y, ed.cursor.x);
    else if (ed && (e.key === "b" || e.key === "e")) setTool(e.key === "b" ? "brush" : "eraser");
    else if (ed && (e.key === "[" || e.key === "]")) setRadius(ed.radius + (e.key === "]" ? 1 : -1));
    else if (e.key in PRESETS) { st.preset = e.key; draw(); }
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
  function imagePoint(e) {  // the image pixel (fractional) under a mouse event
    const img = current();
    if (!img || !img.ready) return null;
    const r = canvas.getBoundingClientRect();
    const fit = Math.min(canvas.width / img.width, canvas.height / img.height) * st.zoom;
    const x = ((e.clientX - r.left) * canvas.width / r.width - (canvas.width - img.width * fit) / 2 - st.panX) / fit;
    const y = ((e.clientY - r.top) * canvas.height / r.height - (canvas.height - img.height * fit) / 2 - st.panY) / fit;
    return { x, y, img };
  }
  function maskPoint(p) {  // image pixel -> mask pixel (the rendered frame may be scaled)
    const { rows, columns } = st.edit.geo;
    return { y: Math.floor(p.y * rows / p.img.height), x: Math.floor(p.x * columns / p.img.width) };
  }
  function paint(y, x) {  // the tool's disc at mask pixel (y, x) of the current slice
    const e = st.edit, { rows, columns } = e.geo, r = e.radius;
    let m = e.slices.get(st.k);
    if (!m) { m = new Uint8Array(rows * columns); e.slices.set(st.k, m); }
    const value = e.tool === "brush" ? 1 : 0;
    for (let yy = Math.max(0, y - r); yy <= Math.min(rows - 1, y + r); yy++)
      for (let xx = Math.max(0, x - r); xx <= Math.min(columns - 1, x + r); xx++)
        if ((yy - y) ** 2 + (xx - x) ** 2 <= r * r) m[yy * columns + xx] = value;
    e.cursor = { y, x };
    canvas.dataset.cursor = `${y},${x}`;
    e.dirty = true;
    maskStatus();
    draw();
  }
  let drag = null;
  canvas.addEventListener("mousedown", (e) => {
    if (st.edit) {
      const p = imagePoint(e);
      if (p) { const q = maskPoint(p); paint(q.y, q.x); drag = { paint: true }; }
      return;
    }
    drag = { x: e.clientX, y: e.clientY, moved: false };
  });
  window.addEventListener("mouseup", () => { drag = null; });
  canvas.addEventListener("mousemove", (e) => {
    if (!drag) return;
    if (drag.paint) {
      const p = imagePoint(e);
      if (p && st.edit) { const q = maskPoint(p); paint(q.y, q.x); }
      return;
    }
    st.panX += e.clientX - drag.x; st.panY += e.clientY - drag.y;
    drag.moved = drag.moved || Math.abs(e.clientX - drag.x) + Math.abs(e.clientY - drag.y) > 0;
    drag.x = e.clientX; drag.y = e.clientY; draw();
  });
  canvas.addEventListener("click", (e) => {  // a click places the read's centre
    const p = imagePoint(e);
    if (!p || !$("read-center")) return;
    $("read-center").value = `${Math.round(p.y)},${Math.round(p.x)}`;
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

  // -- masks ---------------------------------------------------------------------------------
  function decodeMask(payload) {
    const [, rows, columns] = payload.shape, slices = new Map();
    for (const [key, runs] of Object.entries(payload.slices || {})) {
      const m = new Uint8Array(rows * columns);
      for (let i = 0; i < runs.length; i += 2) m.fill(1, runs[i], runs[i] + runs[i + 1]);
      slices.set(Number(key), m);
    }
    return slices;
  }
  function encodeMask() {
    const e = st.edit, out = {};
    for (const k of [...e.slices.keys()].sort((a, b) => a - b)) {
      const m = e.slices.get(k), runs = [];
      for (let i = 0; i < m.length; i++) {
        if (!m[i]) continue;
        let j = i;
        while (j < m.length && m[j]) j++;
        runs.push(i, j - i);
        i = j;
      }
      if (runs.length) out[String(k)] = runs;
    }
    return { encoding: "rle-slices-v1", series_uid: e.geo.series_uid,
             shape: [e.geo.slices, e.geo.rows, e.geo.columns], slices: out,
             empty: Object.keys(out).length === 0 };
  }
  function voxels() {
    let count = 0;
    if (st.edit) for (const m of st.edit.slices.values()) for (let i = 0; i < m.length; i++) count += m[i];
    return count;
  }
  function maskStatus() {
    const n = voxels();
    canvas.dataset.maskVoxels = String(n);
    if ($("mask-voxels")) $("mask-voxels").textContent = `${n} voxel(s) on ${st.edit ? st.edit.slices.size : 0} slice(s)`;
  }
  function setTool(tool) {
    if (!st.edit) return;
    st.edit.tool = tool;
    $(`mask-${tool}`).checked = true;
    canvas.dataset.tool = tool;
    draw();
  }
  function setRadius(r) {
    if (!st.edit) return;
    st.edit.radius = Math.max(0, Math.min(30, r));
    $("mask-size").value = st.edit.radius;
    draw();
  }
  async function startEdit(finding, label) {
    let payload;
    const url = finding === null ? `/api/studies/${data.id}/geometry` : `/api/studies/${data.id}/findings/${finding}/mask`;
    const r = await fetch(url, { credentials: "same-origin" });
    payload = await r.json();
    if (!r.ok) { say($("mask-msg"), payload.detail || `error ${r.status}`, false); return; }
    const [slices, rows, columns] = payload.shape;
    const centre = String(($("read-center") || {}).value || "").split(",").map(Number);
    const cursor = centre.length === 2 && centre.every(Number.isFinite)
      ? { y: Math.round(centre[0] * rows / (current().height || rows)), x: Math.round(centre[1] * columns / (current().width || columns)) }
      : { y: Math.floor(rows / 2), x: Math.floor(columns / 2) };
    st.edit = {
      finding, geo: { series_uid: payload.series_uid, slices, rows, columns },
      slices: finding === null ? new Map() : decodeMask(payload),
      tool: "brush", radius: Number($("mask-size").value) || 3, cursor, dirty: false,
    };
    $("mask-tools").style.display = "";
    $("mask-title").textContent = label;
    if ($("mask-save")) $("mask-save").hidden = finding === null;
    canvas.dataset.editing = finding === null ? "read" : String(finding);
    setTool("brush");
    maskStatus();
    say($("mask-msg"), "", true);
    draw();
    canvas.focus();
  }
  function stopEdit() {
    st.edit = null;
    $("mask-tools").style.display = "none";
    canvas.dataset.editing = "";
    draw();
  }
  document.querySelectorAll("button.mask-edit").forEach((b) => b.addEventListener("click", () =>
    startEdit(Number(b.dataset.finding), `Editing the mask of finding ${b.dataset.finding}`)));
  if ($("read-draw")) $("read-draw").addEventListener("click", () => {
    if (st.edit) { stopEdit(); $("read-draw").setAttribute("aria-pressed", "false"); return; }
    startEdit(null, "Drawing your read's mask");
    $("read-draw").setAttribute("aria-pressed", "true");
  });
  if ($("mask-tools")) {
    $("mask-brush").addEventListener("change", () => setTool("brush"));
    $("mask-eraser").addEventListener("change", () => setTool("eraser"));
    $("mask-size").addEventListener("input", (e) => setRadius(Number(e.target.value)));
    $("mask-cancel").addEventListener("click", () => { stopEdit(); if ($("read-draw")) $("read-draw").setAttribute("aria-pressed", "false"); canvas.focus(); });
  }
  if ($("mask-save")) $("mask-save").addEventListener("click", async () => {
    if (!st.edit || st.edit.finding === null) return;
    const n = st.edit.finding;
    const r = await post(`/api/studies/${data.id}/findings/${n}/decision`, { decision: "edit", mask: encodeMask() });
    if (!r.ok) { say($("mask-msg"), r.payload.detail || `error ${r.status}`, false); return; }
    say($("mask-msg"), `finding ${n}: mask saved, ${r.payload.diameter_mm} mm, ${r.payload.volume_mm3} mm³`, true);
    const row = document.querySelector(`tr[data-finding='${n}']`);
    if (row) { row.dataset.decision = "edit"; const m = row.querySelector(".msg"); if (m) say(m, "edited", true); }
    decided();
    st.gen += 1;  // the overlay again, from the server: the saved mask in place of the AI's
    stopEdit();
    canvas.focus();
  });

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
  // A decision saved makes an earlier refusal of the sign-off stale: clear it.
  function decided() { if ($("sign-msg")) { $("sign-msg").textContent = ""; $("sign-msg").className = "msg"; } }
  document.querySelectorAll("form.decision").forEach((form) => form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form), body = { decision: e.submitter.value };
    if (body.decision === "reject") body.reason = f.get("reason");
    if (body.decision === "edit") body.diameter_mm = Number(f.get("diameter_mm")) || null;
    const r = await post(`/api/studies/${data.id}/findings/${form.dataset.finding}/decision`, body);
    const out = form.querySelector(".msg");
    const done = { accept: "accepted", reject: "rejected", edit: "edited" };
    if (r.ok) { say(out, done[r.payload.decision], true); form.closest("tr").dataset.decision = r.payload.decision; decided(); }
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
    if (st.edit && st.edit.finding === null && st.edit.dirty) {
      body.mask = encodeMask();
      if (!present && !body.mask.empty) { say($("read-msg"), "a read without a nodule has no mask: erase it", false); return; }
      if (present && body.mask.empty) body.mask = undefined;
    }
    const r = await post(`/api/studies/${data.id}/reads`, body);
    if (r.ok) location.reload(); else say($("read-msg"), r.payload.detail || `error ${r.status}`, false);
  });
  draw();
  canvas.focus();
})();

