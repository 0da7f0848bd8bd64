"""Security headers on every HTTP answer (ASGI middleware, registered in ``create_app``).

- ``Content-Security-Policy``: the portal's pages load scripts only from their own origin
  (``/static/``); no inline script, no ``eval``, no plug-ins, no framing
  (``frame-ancestors 'none'``), forms post only to Radpipe. Inline *style* attributes stay
  allowed (the templates use a few; styles cannot run code). The prebuilt OHIF viewer under
  ``/ohif/`` gets its own, relaxed policy: its ``index.html`` carries inline bootstrap scripts,
  its codecs are WebAssembly, its image decoders run in ``blob:`` workers and its SEG/SR
  display needs ``eval``. Still same-origin only for every fetch, and never framed.
- ``X-Frame-Options: DENY`` for browsers that predate ``frame-ancestors`` (clickjacking).
- ``X-Content-Type-Options: nosniff``: a DICOM or JSON answer is never run as a script.
- ``Referrer-Policy: no-referrer``: URLs can carry pseudonymous ids and original UIDs; they
  never leave in a ``Referer`` header.
- ``Strict-Transport-Security`` (one year) when the request came over TLS (a TLS-terminating
  proxy passes ``X-Forwarded-Proto`` to uvicorn's ``--proxy-headers``) or
  ``RADPIPE_PUBLIC_URL`` is https. Never on plain http answers (RFC 6797 7.2).

``Cache-Control: no-store`` is set by ``api._csrf_and_no_store``.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PORTAL_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
#: OHIF 3 (npm @ohif/app): inline bootstrap scripts in index.html, WebAssembly codecs, web
#: workers from blob: URLs, data: fonts and images, and 'unsafe-eval': its SEG and SR
#: display compile code at run time (without it the SEG overlay never draws,
#: tests/e2e/test_reading_room_browser.py). Fetches stay same-origin; the portal's own pages
#: keep the strict policy. Checked in Chromium by tests/e2e/test_csp_browser.py.
OHIF_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval' blob:",
        "worker-src 'self' blob:",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "media-src 'self' data: blob:",
        "connect-src 'self' data: blob:",
        "font-src 'self' data:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HSTS = "max-age=31536000; includeSubDomains"
OHIF_PREFIX = "/ohif"


def policy_for(path: str) -> str:
    return OHIF_CSP if path == OHIF_PREFIX or path.startswith(OHIF_PREFIX + "/") else PORTAL_CSP


class SecurityHeaders:
    """Adds the headers above to every HTTP response (``app.add_middleware(SecurityHeaders)``).

    ``hsts`` is a fixed answer for tests and ``radpipe up``; by default it follows the
    request's scheme and ``RADPIPE_PUBLIC_URL`` (read from ``app.state.context``)."""

    def __init__(self, app: ASGIApp, hsts: bool | None = None) -> None:
        self.app = app
        self.hsts = hsts

    def _hsts(self, scope: Scope) -> bool:
        if self.hsts is not None:
            return self.hsts
        if scope.get("scheme") == "https":
            return True
        state = getattr(scope.get("app"), "state", None)
        context = getattr(state, "context", None)
        public = str(getattr(getattr(context, "settings", None), "public_url", ""))
        return public.startswith("https://")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = policy_for(scope.get("path", ""))
        hsts = self._hsts(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", csp)
                headers["X-Frame-Options"] = "DENY"
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                if hsts:
                    headers["Strict-Transport-Security"] = HSTS
            await send(message)

        await self.app(scope, receive, send_with_headers)
