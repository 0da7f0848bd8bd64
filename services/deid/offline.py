"""``radpipe deid INPUT... --out DIR``: the service's de-identifier on files and folders.

Same code as the pipeline stage (:mod:`radpipe.deid.engine`), no torch or MONAI import. Output
goes to ``DIR/<study>/<series>/<instance>.dcm`` named by the *new* UIDs, so no name or folder
carries an identifier from the input. Quarantined and failed inputs never reach ``DIR``; they
are listed, with their reasons, in ``DIR.report.json`` beside it (not inside: users copy the
output folder onward, and the report names input paths).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.errors import InvalidDicomError

from radpipe.common.dicomio import read_part10, write_part10_to
from radpipe.common.errors import RadpipeError
from radpipe.common.keys import Purpose, purpose_key

from .engine import Deidentifier, Quarantined
from .profile import Profile

MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class FileOutcome:
    source: str
    status: str  # "done" | "quarantined" | "failed"
    reason: str = ""
    output: str = ""


@dataclass
class Summary:
    outcomes: list[FileOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def reasons(self) -> Counter[tuple[str, str]]:
        return Counter((o.status, o.reason) for o in self.outcomes if o.status != "done")


def iter_inputs(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named, and every file under folders named (sorted, hidden files skipped)."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not any(p.startswith(".") for p in child.parts):
                    yield child
        elif path.is_file():
            yield path
        else:
            raise RadpipeError(f"{path} does not exist")


_worker: tuple[Deidentifier, Path] | None = None
_made: set[Path] = set()


def _init(secret: bytes, profile: Profile, out: Path) -> None:
    global _worker
    from pydicom import config

    # The engine writes only values valid for their VR, and never passes on a value it cannot
    # check; pydicom's re-check of every value on read and write costs a sixth of the run.
    # Offline worker processes only: the service keeps both checks.
    config.settings.writing_validation_mode = config.IGNORE
    config.settings.reading_validation_mode = config.IGNORE
    # The service's keys for a new study: pseudonyms and date offsets each their own.
    pseudonyms, dates = purpose_key(secret, Purpose.PSEUDONYMS), purpose_key(secret, Purpose.DATES)
    _worker = (Deidentifier(pseudonyms, profile, dates), out)
    _made.clear()


def _one(path: Path) -> FileOutcome:
    assert _worker is not None
    deidentifier, out = _worker
    temporary: Path | None = None
    try:
        with path.open("rb") as handle:
            ds = read_part10(handle)
        if str(ds.get("SOPClassUID", "")) == MEDIA_DIRECTORY:
            return FileOutcome(
                str(path), "failed", "a DICOMDIR names patients: rebuild it from the output"
            )
        if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds:
            return FileOutcome(str(path), "failed", "no SOP or Study Instance UID")
        clean = deidentifier.deidentify(ds)
        relative = Path(
            str(clean.StudyInstanceUID),
            str(clean.SeriesInstanceUID),
            f"{clean.SOPInstanceUID}.dcm",
        )
        target = out / relative
        if target.parent not in _made:
            target.parent.mkdir(parents=True, exist_ok=True)
            _made.add(target.parent)
        # Written straight to a hidden file, renamed when complete: no half file is ever
        # visible under its final name, and no in-memory copy of the pixels is made.
        temporary = target.with_name(f".{target.name}.part")
        with temporary.open("wb") as handle:
            write_part10_to(handle, clean)
        temporary.replace(target)
    except Quarantined as exc:
        return FileOutcome(str(path), "quarantined", exc.message)
    except RadpipeError as exc:
        return _failed(path, temporary, exc.message)
    except InvalidDicomError:
        return _failed(path, temporary, "not a DICOM Part 10 file (no 'DICM' prefix or File Meta)")
    except Exception as exc:  # unreadable or malformed input: a reason, never a crash
        return _failed(path, temporary, f"truncated or malformed: reading stopped ({_name(exc)})")
    return FileOutcome(str(path), "done", output=str(relative))


def _failed(path: Path, temporary: Path | None, reason: str) -> FileOutcome:
    if temporary is not None:
        temporary.unlink(missing_ok=True)
    return FileOutcome(str(path), "failed", reason)


def run(
    inputs: list[Path],
    out: Path,
    secret: bytes,
    profile: Profile,
    jobs: int | None = None,
    progress: bool = True,
) -> Summary:
    """De-identify ``inputs`` into ``out``; write the report beside it; return the summary.

    ``secret`` is the master secret (``RADPIPE_SECRET_KEY``): the keys per purpose are derived
    from it as the service derives them, so the output matches the service's."""
    files = list(iter_inputs(inputs))
    out.mkdir(parents=True, exist_ok=True)
    if any(out.resolve().is_relative_to(p.resolve()) for p in inputs if p.is_dir()):
        raise RadpipeError(f"--out {out} lies inside an input folder: choose a folder outside it")
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(files) or 1))
    summary = Summary()
    with _progress(progress, len(files)) as advance:
        if jobs == 1:
            _init(secret, profile, out)
            results: Iterable[FileOutcome] = map(_one, files)
            for outcome in results:
                summary.outcomes.append(outcome)
                advance()
        else:
            chunk = max(1, min(16, len(files) // (jobs * 4)))
            with ProcessPoolExecutor(
                jobs, initializer=_init, initargs=(secret, profile, out)
            ) as pool:
                for outcome in pool.map(_one, files, chunksize=chunk):
                    summary.outcomes.append(outcome)
                    advance()
    report_path(out).write_text(json.dumps(_report(summary, profile), indent=2))
    return summary


@contextmanager
def _progress(show: bool, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar on a terminal (rich, imported only then); a no-op otherwise."""
    if not show:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("de-identifying", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("deid", total=total)
        yield lambda: bar.advance(task)


def report_path(out: Path) -> Path:
    return out.with_name(out.name + ".report.json")


def _report(summary: Summary, profile: Profile) -> dict[str, object]:
    return {
        "profile": profile.name,
        "options": sorted(profile.options),
        "done": summary.count("done"),
        "quarantined": [
            {"input": o.source, "reason": o.reason}
            for o in summary.outcomes
            if o.status == "quarantined"
        ],
        "failed": [
            {"input": o.source, "reason": o.reason}
            for o in summary.outcomes
            if o.status == "failed"
        ],
    }


def _name(exc: Exception) -> str:
    kind = type(exc)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
