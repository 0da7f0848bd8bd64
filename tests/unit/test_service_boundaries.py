"""Shared code lives in ``services/common`` and nothing else is imported across services
(STYLE.md 1): the portal writes its verified SEG with ``radpipe.common.seg``, not the
inference service's writer, and ``common`` imports no service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import radpipe

ROOT = Path(radpipe.__file__).resolve().parent
SERVICES = ("deid", "ingest", "inference", "portal", "notify", "tat")


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (relative ones made
    absolute)."""
    package = ["radpipe", *path.relative_to(ROOT).parent.parts]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            found.add(".".join([*base, node.module or ""]).rstrip("."))
    return found


@pytest.mark.parametrize("folder", ["common", "portal"])
def test_no_import_crosses_into_another_service(folder: str) -> None:
    crossing = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for module in imported(path)
        for service in SERVICES
        if service != folder and module.startswith(f"radpipe.{service}")
    }
    assert crossing == set()


def test_the_inference_seg_writer_is_the_shared_one() -> None:
    from radpipe.common import seg as common_seg
    from radpipe.inference import seg as inference_seg
    from radpipe.inference.result_context import ResultContext, UnsupportedSources

    assert inference_seg.binary_segmentation is common_seg.binary_segmentation
    assert inference_seg.Segment is common_seg.Segment and callable(inference_seg.segmentation)
    assert issubclass(ResultContext, common_seg.DerivedContext)
    assert UnsupportedSources is common_seg.UnsupportedSources
