"""uvicorn's start and stop lines keep the process id through the log scrubber (operators match
lines to processes), while the scrubber still redacts numbers everywhere else."""

from __future__ import annotations

import io
import json
import logging
import os
import threading

import uvicorn
from starlette.applications import Starlette

from radpipe.common.logging import configure_logging, get_logger

from ..servers import free_port, wait_for_port


def test_a_real_uvicorn_server_logs_its_pid_and_an_mrn_stays_redacted() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("INFO")  # as build_app does in every service
    stream = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(Starlette(), port=port, log_config=None))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for_port(port)
        logging.getLogger("uvicorn.error").warning("Invalid HTTP request: MRN 1234567890")
        get_logger("radpipe.portal").info("study.opened", note="MRN 1234567890")
        server.should_exit = True
        thread.join(10)
    finally:
        logging.captureWarnings(False)
        root.handlers[:], root.level = saved
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    events = [line["event"] for line in lines if line["logger"] == "uvicorn.error"]
    pid = os.getpid()
    assert f"Started server process [{pid}]" in events
    assert f"Finished server process [{pid}]" in events
    assert "Invalid HTTP request: MRN [redacted]" in events
    assert [line["note"] for line in lines if line["event"] == "study.opened"] == ["MRN [redacted]"]
    assert "1234567890" not in stream.getvalue()
