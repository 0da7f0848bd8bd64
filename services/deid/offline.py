"""``radpipe deid INPUT... --out DIR``: the service's de-identifier on files and folders.

Same code as the pipeline stage (:mod:`services.deid.engine`), no torch or MONAI import. Output
goes to ``DIR/<study>/<series>/<instance>.dcm`` named by the *new* UIDs, so no name or folder
carries an identifier from the input. Quarantined and failed inputs never reach ``DIR``; they
are listed, with their reasons, in ``DIR.report.json`` beside it (not inside: users copy the
output folder onward, and the report names input paths).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.errors import InvalidDicomError

from services.common.dicomio import read_part10, write_part10
from services.common.errors import RadpipeError

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


def _init(secret: bytes, profile: Profile, out: Path) -> None:
    global _worker
    _worker = (Deidentifier(secret, profile), out)


def _one(path: Path) -> FileOutcome:
    assert _worker is not None
    deidentifier, out = _worker
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
        data = write_part10(clean)
    except Quarantined as exc:
        return FileOutcome(str(path), "quarantined", exc.message)
    except RadpipeError as exc:
        return FileOutcome(str(path), "failed", exc.message)
    except InvalidDicomError:
        return FileOutcome(
            str(path), "failed", "not a DICOM Part 10 file (no 'DICM' prefix or File Meta)"
        )
    except Exception as exc:  # unreadable or malformed input: a reason, never a crash
        return FileOutcome(
            str(path), "failed", f"truncated or malformed: reading stopped ({_name(exc)})"
        )
    relative = Path(
        str(clean.StudyInstanceUID), str(clean.SeriesInstanceUID), f"{clean.SOPInstanceUID}.dcm"
    )
    target = out / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.part")
    temporary.write_bytes(data)
    temporary.replace(target)
    return FileOutcome(str(path), "done", output=str(relative))


def run(
    inputs: list[Path],
    out: Path,
    secret: bytes,
    profile: Profile,
    jobs: int | None = None,
    progress: bool = True,
) -> Summary:
    """De-identify ``inputs`` into ``out``; write the report beside it; return the summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    files = list(iter_inputs(inputs))
    out.mkdir(parents=True, exist_ok=True)
    if any(out.resolve().is_relative_to(p.resolve()) for p in inputs if p.is_dir()):
        raise RadpipeError(f"--out {out} lies inside an input folder: choose a folder outside it")
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(files) or 1))
    summary = Summary()
    columns = ("de-identifying", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("deid", total=len(files))
        if jobs == 1:
            _init(secret, profile, out)
            results: Iterable[FileOutcome] = map(_one, files)
            for outcome in results:
                summary.outcomes.append(outcome)
                bar.advance(task)
        else:
            with ProcessPoolExecutor(
                jobs, initializer=_init, initargs=(secret, profile, out)
            ) as pool:
                for outcome in pool.map(_one, files, chunksize=8):
                    summary.outcomes.append(outcome)
                    bar.advance(task)
    report_path(out).write_text(json.dumps(_report(summary, profile), indent=2))
    return summary


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
