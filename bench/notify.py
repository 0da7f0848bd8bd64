"""Alert latency and escalation-timer slack of the notify worker, against a bare webhook POST.

Real processes: the embedded broker (valkey), ``radpipe worker notify`` processes, the embedded
document store in a temp data dir, and a local HTTP receiver that verifies every signature.

* Latency: for each of ``--studies`` studies in turn, the analysis (the finding) is stored with
  the ``analyzed`` transition and the notify task queued, as the inference stage does; the
  clock runs from just before that write to the receiver getting the signed webhook.
  Anchor: the same signed message POSTed directly (``channels.send``) to the same receiver.
* Slack: every alert was opened with ``RADPIPE_ACK_TIMEOUT_SECONDS``; nobody acknowledges, so
  each is re-paged by a sweeper. Slack is the re-page's arrival minus its stored deadline
  (bounded by ``RADPIPE_ALERT_SWEEP_SECONDS``, default 5 s).

Prints p50/p95 of each and the latency ratio.

    .venv/bin/python bench/notify.py [--studies 50] [--workers 2] [--sweep-seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECRET_KEY = "e7a91c3f5b0d28e64c9f1a7b3d5e0c82f6a4b9d1"
WEBHOOK_SECRET = b"bench-webhook-secret"


class Arrivals:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at: dict[str, float] = {}  # delivery id -> arrival (time.time())
        self.rejected = 0


def receiver(arrivals: Arrivals) -> tuple[ThreadingHTTPServer, str]:
    from radpipe.notify.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_webhook

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            now = time.time()
            ok = verify_webhook(
                WEBHOOK_SECRET,
                body,
                self.headers.get(TIMESTAMP_HEADER, ""),
                self.headers.get(SIGNATURE_HEADER, ""),
            )
            with arrivals.lock:
                if ok:
                    arrivals.at[self.headers.get("X-Radpipe-Delivery", "")] = now
                else:
                    arrivals.rejected += 1
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hook"


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.002)
    raise SystemExit(f"timed out waiting for {what}")


def pct(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sweep-seconds", type=float, default=5.0)
    parser.add_argument("--ack-timeout", type=float, default=3.0)
    args = parser.parse_args()

    from radpipe.common.context import build_context
    from radpipe.common.settings import Settings
    from radpipe.common.studies import StudyState
    from radpipe.notify import channels, paging
    from radpipe.notify.service import acknowledge, get_alert
    from radpipe.stack import start_broker

    arrivals = Arrivals()
    server, url = receiver(arrivals)
    with tempfile.TemporaryDirectory(prefix="radpipe-bench-notify-") as tmp:
        data = Path(tmp) / "data"
        broker, broker_url = start_broker(Path(tmp) / "broker")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADPIPE_")}
        env.update(
            RADPIPE_DATA_DIR=str(data),
            RADPIPE_SECRET_KEY=SECRET_KEY,
            RADPIPE_BROKER_URL=broker_url,
            RADPIPE_ALERT_WEBHOOK_URL=url,
            RADPIPE_WEBHOOK_SECRET=WEBHOOK_SECRET.decode(),
            RADPIPE_ACK_TIMEOUT_SECONDS=str(args.ack_timeout),
            RADPIPE_ALERT_SWEEP_SECONDS=str(args.sweep_seconds),
            RADPIPE_LOG_LEVEL="WARNING",
        )
        settings = Settings(
            data_dir=data,
            secret_key=SECRET_KEY,  # type: ignore[arg-type]
            broker_url=broker_url,
            alert_webhook_url=url,  # type: ignore[arg-type]
            webhook_secret=WEBHOOK_SECRET.decode(),  # type: ignore[arg-type]
            ack_timeout_seconds=args.ack_timeout,
        )
        ctx = build_context(settings)
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "radpipe.cli", "worker", "notify", "--pool", "solo"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=ROOT,
            )
            for _ in range(args.workers)
        ]
        try:
            # Warm-up: the workers are up once one study has gone through.
            latencies, direct, ids = [], [], []
            for n in range(args.studies + 1):
                study_id = f"bench{n:03d}"
                ctx.studies.record_instance(study_id, f"i{n}", {"raw_key": "k"}, "CT")
                for state in (StudyState.STABLE, StudyState.DEIDENTIFIED):
                    ctx.studies.transition(study_id, state)
                analysis = {
                    "risk": {"score": 0.9, "category": "high"},
                    "findings": [{"diameter_mm": 14.0, "probability": 0.9}],
                    "model": {"name": "bench"},
                }
                started = time.time()
                ctx.studies.transition(study_id, StudyState.ANALYZED, fields={"analysis": analysis})
                ctx.tasks.send("notify", study_id)
                key = f"{study_id}-v1:1:alert"
                wait(lambda key=key: key in arrivals.at, 120 if n == 0 else 30, key)
                if n == 0:
                    continue
                latencies.append(arrivals.at[key] - started)
                ids.append(f"{study_id}-v1")
                # Anchor: the same message, signed and POSTed directly to the same receiver.
                alert = get_alert(ctx, f"{study_id}-v1")
                message = paging.message_for(ctx, alert, 1, "alert", "webhook")
                message.delivery_id = f"direct-{n}"
                target = channels.Target("webhook", "webhook", url, "webhook")
                started = time.time()
                channels.send(settings, target, message)
                direct.append(arrivals.at[message.delivery_id] - started)
            # Slack: nobody acknowledges; each alert is re-paged at (after) its deadline.
            repages = [f"{alert_id}:2:re-page" for alert_id in ids]
            wait(
                lambda: all(k in arrivals.at for k in repages),
                60 + 3 * args.sweep_seconds,
                "re-pages",
            )
            slack = []
            for alert_id, key in zip(ids, repages, strict=True):
                # The first deadline: the opening time (stored) plus the acknowledgement timeout.
                history = get_alert(ctx, alert_id)["history"]
                opened = next(h["at"] for h in history if h["type"] == "alert.opened")
                slack.append(arrivals.at[key] - (opened.timestamp() + args.ack_timeout))
            for alert_id in ids:
                acknowledge(ctx, alert_id, "bench")
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(20)
            broker.terminate()
            broker.wait(10)
            ctx.documents.close()
            server.shutdown()
    result = {
        "studies": args.studies,
        "workers": args.workers,
        "sweep_seconds": args.sweep_seconds,
        "ack_timeout_seconds": args.ack_timeout,
        "latency_p50_ms": round(pct(latencies, 50) * 1000, 1),
        "latency_p95_ms": round(pct(latencies, 95) * 1000, 1),
        "direct_post_p50_ms": round(pct(direct, 50) * 1000, 1),
        "direct_post_p95_ms": round(pct(direct, 95) * 1000, 1),
        "latency_ratio_p50": round(pct(latencies, 50) / pct(direct, 50), 1),
        "slack_p50_s": round(pct(slack, 50), 3),
        "slack_p95_s": round(pct(slack, 95), 3),
        "slack_max_s": round(max(slack), 3),
        "rejected_signatures": arrivals.rejected,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
