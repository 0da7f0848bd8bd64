"use strict";
// Idle logout: after the idle limit without input the session is ended here as on the server.
(function () {
  const meta = document.querySelector("meta[name=idle-seconds]");
  if (!meta) return;
  const limit = Number(meta.content) * 1000;
  let last = Date.now();
  for (const ev of ["keydown", "mousedown", "wheel", "touchstart"]) window.addEventListener(ev, () => { last = Date.now(); }, { passive: true });
  setInterval(() => { if (Date.now() - last > limit) { const f = document.getElementById("logout-form"); if (f) f.submit(); } }, 5000);
})();
