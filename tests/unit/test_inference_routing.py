"""Bundle discovery and routing rules (services/inference/registry.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from radpipe.common.errors import PipelineError
from radpipe.inference.registry import BUILTIN, discover, route

CT = "1.2.840.10008.5.1.4.1.1.2"


def series(modality: str, n: int, body_part: str = "CHEST", **extra: str) -> dict[str, object]:
    return {
        "series_uid": f"2.25.{n}{len(modality)}",
        "modality": modality,
        "body_part": body_part,
        "sop_class_uid": extra.get("sop_class_uid", CT),
        "description": extra.get("description", ""),
        "keys": [f"k{i}" for i in range(n)],
    }


def test_demo_bundle_is_discovered_with_its_rules() -> None:
    bundles = discover(None)
    demo = bundles["lung_nodule_demo"]
    assert demo.path == BUILTIN / "lung_nodule_demo"
    [rule] = demo.rules
    assert rule.modality == {"CT"} and "CHEST" in (rule.body_part or set())


def test_route_picks_the_largest_matching_series() -> None:
    study = [series("CT", 40), series("CT", 120), series("SR", 1), series("CT", 200, "HEAD")]
    entry, chosen, rule = route(discover(None), study)
    assert entry.name == "lung_nodule_demo" and len(chosen["keys"]) == 120
    assert rule.matches(chosen) and not rule.matches(study[3])


def test_no_matching_rule_names_the_series_and_the_fix() -> None:
    with pytest.raises(PipelineError) as raised:
        route(discover(None), [series("MR", 30, "BRAIN"), series("CT", 2)])
    message = raised.value.message
    assert "MR BRAIN (30 instances)" in message and "CT CHEST (2 instances)" in message
    assert "lung_nodule_demo: modality in ['CT']" in message and "RADPIPE_MODELS_DIR" in message


def test_models_dir_adds_bundles_and_overrides_by_name(tmp_path: Path) -> None:
    head = tmp_path / "head_ct"
    shutil.copytree(BUILTIN / "lung_nodule_demo", head)
    meta = json.loads((head / "configs" / "metadata.json").read_text())
    meta["name"] = "head_ct_demo"
    meta["radpipe_routing"] = [{"modality": ["CT"], "body_part": ["HEAD", "BRAIN"]}]
    (head / "configs" / "metadata.json").write_text(json.dumps(meta))
    bundles = discover(tmp_path)
    assert set(bundles) == {"lung_nodule_demo", "head_ct_demo"}
    entry, _, _ = route(bundles, [series("CT", 60, "HEAD")])
    assert entry.name == "head_ct_demo" and entry.path == head
    described = series("CT", 60, "ABDOMEN", description="CT ABD routine")
    meta["radpipe_routing"] = [{"series_description": "(?i)abd"}]
    (head / "configs" / "metadata.json").write_text(json.dumps(meta))
    assert route(discover(tmp_path), [described])[0].name == "head_ct_demo"


def test_a_bad_rule_is_refused_when_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(BUILTIN / "lung_nodule_demo", bad)
    meta = json.loads((bad / "configs" / "metadata.json").read_text())
    meta["radpipe_routing"] = [{"modality": "CT", "colour": ["red"]}]
    (bad / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown routing key"):
        discover(tmp_path)
