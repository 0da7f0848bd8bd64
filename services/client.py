"""STOW-RS client for ``radpipe push`` and ``radpipe demo`` (with progress bars)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from radpipe.common.mime import encode_multipart

BATCH_BYTES = 32 * 1024 * 1024


@dataclass
class PushReport:
    stored: int = 0
    failed: int = 0
    warnings: list[str] = field(default_factory=list)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"{path} does not exist")


def _batches(files: list[Path]) -> Iterator[list[tuple[Path, bytes]]]:
    batch: list[tuple[Path, bytes]] = []
    size = 0
    for path in files:
        data = path.read_bytes()
        if batch and size + len(data) > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append((path, data))
        size += len(data)
    if batch:
        yield batch


def push(files: list[Path], url: str, token: str, *, show_progress: bool = True) -> PushReport:
    """Send ``files`` to ``{url}/studies`` in batches; count stored and failed instances."""
    report = PushReport()
    endpoint = url.rstrip("/") + "/studies"
    columns = (TextColumn("pushing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with (
        httpx.Client(timeout=120, headers={"Authorization": f"Bearer {token}"}) as http,
        Progress(*columns, disable=not show_progress) as progress,
    ):
        task = progress.add_task("push", total=len(files))
        for batch in _batches(files):
            body, content_type = encode_multipart([data for _, data in batch])
            response = http.post(
                endpoint,
                content=body,
                headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            )
            if response.status_code in (401, 403, 413, 415):
                raise RuntimeError(f"{endpoint} answered {response.status_code}: {response.text}")
            answer = response.json() if response.content else {}
            report.stored += len(answer.get("00081199", {}).get("Value", []))
            report.failed += len(answer.get("00081198", {}).get("Value", []))
            if warning := response.headers.get("warning"):
                report.warnings.append(warning)
            progress.advance(task, len(batch))
    return report
