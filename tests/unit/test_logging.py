"""The log scrubber: library texts, exceptions, warnings and Radpipe's own fields reach the
handlers without a DICOM value (docs/security.md, "Logs")."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest

from radpipe.common.logging import JsonFormatter, PhiFilter, configure_logging, get_logger, scrub

from ..dicom import PHI

STUDY = "0a1b2c3d4e5f60718293a4b5"
TASK = "3f2a1234-5678-4abc-9def-0123456789ab"
UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Invalid value for VR PN: 'Doe^Jane'.", "Invalid value for VR PN: [redacted]."),
        (
            "Unable to convert '20230105' to 'DA' object",
            "Unable to convert [redacted] to [redacted] object",
        ),
        (f'ValueError("{PHI["institution"]}")', "ValueError([redacted])"),
        (f"study {UID} of MRN7731904 ACC55120", "study [uid] of [redacted] [redacted]"),
        ("Smith^John at jane.doe@example.org", "[redacted] at [redacted]"),
        (
            "born 1970-01-01, phone 555-0134, b'\\x00Doe'",
            "born [redacted], phone [redacted], [redacted]",
        ),
        (
            f"Task radpipe.deid.run[{TASK}] retry: Retry in 2s",
            f"Task radpipe.deid.run[{TASK}] retry: Retry in 2s",
        ),
        (
            f"study {STUDY} alert pipeline-failed-{STUDY}-v1",
            f"study {STUDY} alert pipeline-failed-{STUDY}-v1",
        ),
        (
            "succeeded in 0.0123s: None; can't reach 127.0.0.1:6379/0",
            "succeeded in 0.0123s: None; can't reach 127.0.0.1:6379/0",
        ),
    ],
)
def test_scrub_replaces_values_and_keeps_ids(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root handler as ``configure_logging`` builds it, writing to a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("INFO")
    stream = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    yield stream
    logging.captureWarnings(False)
    root.handlers[:], root.level = saved


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_library_failure_line_keeps_ids_and_the_type_not_the_text(captured: io.StringIO) -> None:
    try:
        raise ValueError("Doe^Jane is not a number")
    except ValueError as exc:  # as Celery logs a task failure (message, exc_info, extra data)
        logging.getLogger("celery.app.trace").error(
            "Task %(name)s[%(id)s] raised unexpected: %(exc)s",
            {"name": "radpipe.deid.run", "id": TASK, "exc": repr(exc)},
            exc_info=True,
            extra={"data": {"args": ["Doe^Jane"], "kwargs": {}}},
        )
    (line,) = lines(captured)
    assert (
        line["event"] == f"Task radpipe.deid.run[{TASK}] raised unexpected: ValueError([redacted])"
    )
    assert line["error"] == "ValueError" and line["error_message"] == "[redacted] is not a number"
    assert str(line["error_at"]).startswith("unit/test_logging.py:")
    assert "Doe" not in captured.getvalue() and "Traceback" not in captured.getvalue()


def test_radpipe_fields_are_scrubbed_and_identifying_names_dropped(captured: io.StringIO) -> None:
    get_logger("radpipe.deid").warning(
        "deid.excluded",
        study_id=STUDY,
        reason="Invalid value for VR DA: '19700101'",
        PatientName="Doe^Jane",
        instances=3,
    )
    (line,) = lines(captured)
    assert line == {
        **line,
        "event": "deid.excluded",
        "study_id": STUDY,
        "reason": "Invalid value for VR DA: [redacted]",
        "PatientName": "[redacted]",
        "instances": 3,
    }


def test_warnings_are_logged_scrubbed(captured: io.StringIO) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)  # catch_warnings restores showwarning on exit
        warnings.warn("Invalid value for VR PN: 'Doe^Jane'", UserWarning, stacklevel=1)
    (line,) = lines(captured)
    assert line["logger"] == "py.warnings"
    assert "Doe" not in str(line["event"]) and "[redacted]" in str(line["event"])


def test_a_handler_added_later_is_covered_by_the_formatter() -> None:
    record = logging.LogRecord(
        "pydicom", logging.WARNING, __file__, 1, "value %r", ("Doe^Jane",), None
    )
    assert "Doe" not in JsonFormatter().format(record)
    again = logging.LogRecord("x", logging.INFO, __file__, 1, "'Doe^Jane'", None, None)
    assert PhiFilter().filter(again) and again.getMessage() == "[redacted]"


def test_process_lines_keep_their_pid_and_nothing_else_does(captured: io.StringIO) -> None:
    import os

    pid = os.getpid()
    # Exactly as uvicorn/server.py logs it (a template, the pid, a coloured copy in extra).
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]", pid, extra={"color_message": "Started … [%d]"}
    )
    logging.getLogger("uvicorn.error").info(f"Child process [{pid}] died")
    billiard = "Process %r pid:%r exited with %r"
    logging.getLogger("multiprocessing").error(billiard, "ForkPoolWorker-3", 4242, "exitcode 1")
    logging.getLogger("celery.worker.request").info(
        "Task accepted: %s[%s] pid:%r", "radpipe.deid.run", TASK, 4243
    )
    # Anything else still loses its numbers: a 10-digit MRN, a pid line with more in it, the
    # same words from another logger, a date in the exit status.
    logging.getLogger("uvicorn.error").info("Started server process [%d] MRN 1234567890", 4245)
    logging.getLogger("uvicorn.error").info("Started server process [1234567890 Doe]")
    logging.getLogger("pydicom").info("Started server process [%d]", 1234567890)
    logging.getLogger("multiprocessing").error(billiard, "W-1", 4244, "19700101")
    get_logger("radpipe.api").info("login.failed", reason="MRN 1234567890", pid=pid)
    events = [line["event"] for line in lines(captured)]
    assert events[:4] == [
        f"Started server process [{pid}]",
        f"Child process [{pid}] died",
        "Process 'ForkPoolWorker-3' pid:4242 exited with 'exitcode 1'",
        f"Task accepted: radpipe.deid.run[{TASK}] pid:4243",
    ]
    assert events[4:8] == [
        "Started server process [[redacted]] MRN [redacted]",
        "Started server process [[redacted] Doe]",
        "Started server process [[redacted]]",
        "Process [redacted] pid:[redacted] exited with [redacted]",
    ]
    assert lines(captured)[8]["reason"] == "MRN [redacted]"
    assert lines(captured)[8]["pid"] == pid  # an int field is kept as it is
    assert "1234567890" not in captured.getvalue() and "19700101" not in captured.getvalue()
