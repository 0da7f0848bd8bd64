"""A size limit on request bodies that are read whole (JSON, forms), before anything reads them.

FastAPI reads a JSON body whole (``await request.json()`` and pydantic) before a route can look
at it, so the portal's mask edits and reads (at most 100,000 runs and 5,000,000 voxels,
docs/masks.md), the notify acknowledgement and admin APIs and the login form would otherwise
hold in memory whatever a client sends. :class:`BodyLimit` (ASGI middleware, registered in
``api.create_app``) refuses a request whose body is over ``RADPIPE_MAX_JSON_BYTES`` with 413
(RFC 9110 15.5.14) and a JSON error naming the limit and the setting:

- at once when ``Content-Length`` declares more, before a byte of the body is read (a client
  that sent ``Expect: 100-continue`` is never asked for it: uvicorn sends the interim answer
  only when the application first reads);
- otherwise (``Transfer-Encoding: chunked``) it counts the bytes as they arrive, stops reading
  at the first byte over the limit and answers 413.

The application sees the body only once it is whole and within the limit, so a refused
request never reaches a route: nothing is stored. The answer says ``Connection: close`` (the
rest of the body is not read). DICOMweb (STOW-RS) is exempt: it reads its body as it streams
in under ``RADPIPE_MAX_REQUEST_BYTES`` and ``RADPIPE_MAX_INSTANCE_BYTES``.

An upload route registers a larger limit of its own with :func:`limit_route` (the RIS CSV
import: one file of up to 64 MiB). Its body is passed through as it arrives, not held, and
counted: over a declared ``Content-Length`` it is refused unread as above; past the limit in
a chunked body the application is told the client left (Starlette then stops parsing and
spooling the multipart form) and the answer is 413 with the route's own advice. Without this,
the form would be spooled to disk whole, before authentication, whatever its size.

The default, 4 MiB, is sized from the mask wire format (docs/masks.md): the largest edit at the
caps, 100,000 runs in 1024 × 1024 slices (7-digit starts), is about 1.1 MB compact and 1.3 MB
as Python's ``json.dumps`` writes it, 3 MB indented by 2 (``tests/unit/test_bodylimit.py``
builds it); every other JSON body Radpipe takes is a few kilobytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Routes that read their bodies as streams under limits of their own: DICOMweb (STOW-RS).
EXEMPT_PREFIXES: tuple[str, ...] = ("/dicom-web/",)
EXEMPT_PATHS: frozenset[str] = frozenset()
SETTING = "RADPIPE_MAX_JSON_BYTES"


@dataclass(frozen=True)
class RouteLimit:
    """An upload route's own body limit and what to tell a client over it."""

    limit: int
    detail: str


#: Upload routes with limits of their own (exact paths), registered by their routers.
ROUTE_LIMITS: dict[str, RouteLimit] = {}


def limit_route(path: str, limit: int, detail: str) -> None:
    """Give the upload route ``path`` a body limit of its own (bytes, the whole request body
    with its multipart envelope); ``detail`` says what to do instead (the 413's ``detail``)."""
    ROUTE_LIMITS[path] = RouteLimit(limit, detail)


def too_large_body(limit: int) -> bytes:
    """The 413 answer's JSON (the shape of every Radpipe error: ``error`` and ``detail``)."""
    detail = (
        f"request body exceeds {SETTING} ({limit} bytes); send a smaller body (a mask: the "
        f"nodule only, at most 100,000 runs and 5,000,000 voxels) or raise {SETTING}"
    )
    return _error(detail)


def _error(detail: str) -> bytes:
    return json.dumps({"error": "PayloadTooLarge", "detail": detail}).encode()


class BodyLimit:
    """Refuses a request body over ``limit()`` bytes with 413 before the application reads it.

    ``limit`` is called per request (the settings object's current value), so a test or an
    operator's settings object changes it without rebuilding the app. ``exempt_prefixes``,
    ``exempt_paths``: routes passed through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: Callable[[], int],
        exempt_prefixes: tuple[str, ...] = EXEMPT_PREFIXES,
        exempt_paths: frozenset[str] = EXEMPT_PATHS,
    ) -> None:
        self.app = app
        self.limit = limit
        self.exempt_prefixes = exempt_prefixes
        self.exempt_paths = exempt_paths

    def exempt(self, path: str) -> bool:
        return path in self.exempt_paths or path.startswith(self.exempt_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or self.exempt(path):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is None and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body (RFC 9112 6.3)
            return
        own = ROUTE_LIMITS.get(path)
        if own is not None:
            await self._stream(scope, receive, send, declared, own)
            return
        limit = self.limit()
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, too_large_body(limit))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nothing to answer, nothing reached a route
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(send, too_large_body(limit))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: waits for the disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _stream(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        declared: bytes | None,
        own: RouteLimit,
    ) -> None:
        """An upload route's body, passed through as it arrives and counted against its own
        limit; past it the application hears a disconnect and the client gets the 413."""
        if declared is not None and declared.isdigit() and int(declared) > own.limit:
            await _refuse(send, _error(own.detail))
            return
        size = 0
        over = answered = False

        async def counted() -> Message:
            nonlocal size, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > own.limit:
                    over = True  # the rest is not read; the application stops its parsing
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal answered
            if over:
                return  # whatever the application answers to the "disconnect": ours follows
            answered = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not answered:
            await _refuse(send, _error(own.detail))


async def _refuse(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
