"""A local webhook receiver (a real HTTP server on loopback) that records alert posts.

With a ``secret`` it verifies every post as a receiver in a hospital would
(``radpipe.notify.signing.verify_webhook``: HMAC-SHA256 over timestamp + raw body) and
answers 401 to one that fails; ``rejected`` counts those.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from radpipe.notify.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_webhook


@dataclass
class Receiver:
    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    status: int = 200
    secret: bytes | None = None
    rejected: int = 0


@contextmanager
def webhook_receiver(secret: bytes | None = None) -> Iterator[Receiver]:
    receiver = Receiver("", secret=secret)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            status = receiver.status
            if receiver.secret is not None and not verify_webhook(
                receiver.secret,
                body,
                self.headers.get(TIMESTAMP_HEADER, ""),
                self.headers.get(SIGNATURE_HEADER, ""),
            ):
                status = 401
                with lock:
                    receiver.rejected += 1
            if status == 200:
                with lock:
                    receiver.raw.append(body)
                    receiver.posts.append(json.loads(body))
                    receiver.headers.append(dict(self.headers.items()))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/radpipe"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
