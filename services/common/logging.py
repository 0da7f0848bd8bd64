"""Structured JSON logging that writes no patient value, whoever wrote the line.

Radpipe's own log calls take an event name and keyword fields (ids: study pseudonym, task id,
alert id). Workers see original DICOM data before de-identification, and the libraries they
call quote it in their texts: a pydicom validation warning (``Invalid value for VR PN:
'Doe^Jane'``), an exception message, Celery's retry and failure lines (which carry the
exception's repr, the task's args and a traceback). So every handler carries
:class:`PhiFilter`, which rewrites each record before any formatter sees it:

- a library's message is reduced by :func:`scrub` (quoted values, UIDs, person names with
  ``^``, e-mail addresses and anything with a run of four or more digits are replaced), but
  for the exact lines that name a process id (uvicorn's ``Started server process [pid]``,
  Celery's and billiard's pool lines: ``_PROCESS_LINES``), which are kept whole;
- an exception becomes its type, a scrubbed message and the innermost frame (file, line,
  function); the traceback text is never written (it ends with the exception's message);
- string fields of Radpipe's own lines are scrubbed too, and fields named like identifying
  attributes are dropped; Celery's ``data`` extra (task args and kwargs) is removed.

:func:`configure_logging` installs the JSON handler, routes ``warnings`` (pydicom's validation
warnings among them) through logging, and logs uncaught exceptions of threads and of the
process the same way; :func:`secure_handlers` puts the filter and formatter on handlers that
others add later (Celery's worker and task loggers: ``queues.run_worker`` calls it from
``after_setup_logger`` / ``after_setup_task_logger``). See docs/security.md, "Logs".
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

#: Field names that must never reach a log line, whatever a caller passes.
_PHI_FIELDS = frozenset(
    {
        "patient_name",
        "patient_id",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "AccessionNumber",
        "source_study_uid",
        "StudyInstanceUID",
        "password",
        "token",
    }
)
#: Record attributes that carry task arguments or raw values (Celery's ``extra={"data": ...}``).
_DROPPED_EXTRAS = ("data", "args_repr", "kwargs_repr")

REDACTED = "[redacted]"
_QUOTED = re.compile(
    r"""(?<![\w'"])[bBrRuU]{0,2}(?P<q>'''|\"\"\"|'|")(?:\\.|(?!(?P=q)).)*?(?P=q)(?![\w'"])""",
    re.DOTALL,
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PERSON_NAME = re.compile(r"[^\s'\"(),;\[\]]*\^[^\s'\"(),;\[\]]*")
_DOTTED = re.compile(r"(?<![\w.])\d+(?:\.\d+){2,}(?![\w.])")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
#: A word, or an address with its port (``127.0.0.1:6379``), which is kept whole.
_WORD = re.compile(r"(?P<address>(?:\d{1,3}(?:\.\d{1,3}){3}|localhost):\d{1,5}\b)|[\w.+-]+")
_DIGITS = re.compile(r"\d{4}")
#: Ids Radpipe writes on purpose: UUIDs (task ids) and hex pseudonyms (study, instance keys).
_ALLOWED_ID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|(?=[0-9a-f]*[a-f])[0-9a-f]{16,64}"
    r"|[a-z][\w-]*-[0-9a-f]{16,64}(?:-v\d+)?"  # ids built on a pseudonym (alerts)
)
_DECIMAL = re.compile(r"\d{1,6}\.\d+(?:e-?\d+)?[a-zA-Z%]{0,3}")
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: Library lines that name a process id, whole (logger prefix -> the exact messages): kept
#: as they are, since every variable part of them is a pid, a code-defined name or a UUID,
#: never a value. Operators need the pid to match a log line to a process (``ps``, ``kill``).
_PROCESS_LINES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (  # uvicorn/server.py, supervisors/basereload.py and multiprocess.py
        "uvicorn.error",
        re.compile(
            r"(?:Started|Finished) server process \[\d+\]"
            r"|Started reloader process \[\d+\] using \w+"
            r"|Stopping reloader process \[\d+\]"
            r"|(?:Started|Stopping) parent process \[\d+\]"
            r"|(?:Terminated|Waiting for) child process \[\d+\]"
            r"|Child process \[\d+\] (?:died|failed to start, stopping the parent process\.)"
        ),
    ),
    (  # celery/worker/request.py: a prefork child took a task
        "celery.",
        re.compile(rf"Task accepted: [\w.]+\[{_UUID}\] pid:\d+"),
    ),
    (  # billiard/pool.py (logger "multiprocessing"): a pool child died
        "multiprocessing",
        re.compile(
            r"Process '[\w-]+' pid:\d+ exited with "
            r"'(?:signal \d+(?: \(SIG[A-Z0-9]+\))?|exitcode -?\d+)'"
        ),
    ),
)


def _word(match: re.Match[str]) -> str:
    word = match.group(0)
    if match.group("address"):
        return word
    bare = word.strip(".-+")
    if _ALLOWED_ID.fullmatch(bare) or _DECIMAL.fullmatch(bare) or not _DIGITS.search(word):
        return word
    return REDACTED


def _process_line(logger: str, message: str) -> bool:
    """Whether ``message`` is one of the exact lines of ``_PROCESS_LINES`` for ``logger``."""
    return any(
        logger.startswith(prefix) and pattern.fullmatch(message)
        for prefix, pattern in _PROCESS_LINES
    )


def scrub(text: str) -> str:
    """``text`` with what could be a DICOM value replaced by ``[redacted]``.

    Quoted strings (reprs of values, bytes and lists in exception and warning texts), e-mail
    addresses, DICOM person names (``Family^Given``), dotted numbers of three or more parts
    (UIDs; an IPv4 address stays), and any word with a run of four or more digits (dates,
    times, record and accession numbers, phone numbers). UUIDs and hex pseudonyms of 16 or
    more characters, and decimals such as durations, are kept, so lines still name what they
    are about. The rules are deliberately wide: a lost number costs less than a leaked value,
    and an unquoted free-text name cannot be recognised at all (see docs/security.md).
    """
    text = _QUOTED.sub(REDACTED, text)
    text = _EMAIL.sub(REDACTED, text)
    text = _PERSON_NAME.sub(REDACTED, text)
    text = _DOTTED.sub(lambda m: m.group(0) if _IPV4.fullmatch(m.group(0)) else "[uid]", text)
    return _WORD.sub(_word, text)


def _where(tb: TracebackType | None) -> str | None:
    """The innermost frame as ``folder/file.py:line in function`` (code, never values)."""
    frames = traceback.extract_tb(tb) if tb is not None else []
    if not frames:
        return None
    frame = frames[-1]
    path = Path(frame.filename)
    return f"{path.parent.name}/{path.name}:{frame.lineno} in {frame.name}"


def _scrub_field(key: str, value: Any) -> Any:
    if key in _PHI_FIELDS:
        return REDACTED
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, list | tuple | set):
        return [_scrub_field(key, item) for item in value]
    if isinstance(value, dict):
        return {str(k): _scrub_field(str(k), v) for k, v in value.items()}
    return scrub(str(value))


class PhiFilter(logging.Filter):
    """Rewrites a record so that no formatter can write a DICOM value (see the module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "radpipe_scrubbed", False):
            return True
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {key: _scrub_field(key, value) for key, value in fields.items()}
        else:  # a library's line: its arguments are interpolated, then scrubbed
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: keep the template only
                message = str(record.msg)
            kept = _process_line(record.name, message)  # uvicorn's "server process [pid]"
            record.msg, record.args = message if kept else scrub(message), None
        if record.exc_info and record.exc_info[0] is not None:
            _, exc, tb = record.exc_info
            record.error = type(exc).__name__
            record.error_message = scrub(str(exc))[:300]
            record.error_at = _where(tb)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        for name in _DROPPED_EXTRAS:
            if name in record.__dict__:
                delattr(record, name)
        record.radpipe_scrubbed = True
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        PhiFilter().filter(record)  # a handler someone built without the filter
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        for key in ("error", "error_message", "error_at"):
            if getattr(record, key, None):
                entry[key] = getattr(record, key)
        return json.dumps(entry, default=str)


class EventLogger:
    """``log.info("study.stable", study_id=...)``: an event name plus structured fields."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info, fields)


def get_logger(name: str) -> EventLogger:
    return EventLogger(name)


def _secure(handler: logging.Handler) -> None:
    if not any(isinstance(f, PhiFilter) for f in handler.filters):
        handler.addFilter(PhiFilter())
    if not isinstance(handler.formatter, JsonFormatter):
        handler.setFormatter(JsonFormatter())


def secure_handlers(*_: Any, **__: Any) -> None:
    """Put :class:`PhiFilter` and the JSON formatter on every handler of every logger.

    Safe to call again (a receiver of Celery's ``after_setup_logger`` and
    ``after_setup_task_logger``, which add handlers of their own).
    """
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            _secure(handler)


_uncaught = logging.getLogger("radpipe.uncaught")


def _log_uncaught(
    kind: str, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    _uncaught.error(kind, exc_info=(exc_type, exc, tb))


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        _log_uncaught("thread.uncaught", args.exc_type, args.exc_value, args.exc_traceback)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    _secure(handler)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    secure_handlers()
    # warnings.warn (pydicom's validation of values it reads) -> logger "py.warnings".
    logging.captureWarnings(True)
    # Uncaught exceptions would print a traceback ending with the exception's text.
    sys.excepthook = lambda t, e, tb: _log_uncaught("process.uncaught", t, e, tb)
    threading.excepthook = _thread_hook
    # Third-party loggers that would print request lines with query strings (source UIDs).
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # At DEBUG these dump what they read and the DIMSE messages; INFO at most, whatever is set.
    for name in ("pydicom", "pynetdicom"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.getEffectiveLevel()))
