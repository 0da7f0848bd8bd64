"""Bundle discovery and routing rules (services/inference/registry.py)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from radpipe.common.context import Context
from radpipe.common.errors import PipelineError
from radpipe.common.routing import (
    ROUTING_RULES,
    Rule,
    clear_override,
    instance_frames,
    overrides,
    series_images,
    set_override,
)
from radpipe.inference.registry import BUILTIN, discover, route

CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


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
    assert "MR BRAIN (30 images in 30 instances)" in message
    assert "CT CHEST (2 images in 2 instances)" in message
    assert "lung_nodule_demo: modality in ['CT']" in message and "RADPIPE_MODELS_DIR" in message


def test_min_instances_counts_frames_so_one_multi_frame_instance_is_routed() -> None:
    enhanced = {**series("CT", 1, sop_class_uid=ENHANCED_CT), "frames": 100}
    entry, chosen, rule = route(discover(None), [enhanced])
    assert entry.name == "lung_nodule_demo" and chosen is enhanced and rule.origin == "bundle"
    assert series_images(enhanced) == 100
    # Too few frames is refused as too few slices would be, the message naming both counts.
    with pytest.raises(PipelineError, match=r"CT CHEST \(2 images in 1 instance\)"):
        route(discover(None), [{**enhanced, "frames": 2}])
    # The largest series in images wins, not the one with the most instances.
    study = [series("CT", 40), enhanced]
    assert route(discover(None), study)[1] is enhanced


def test_a_series_document_without_a_frame_count_counts_its_instances() -> None:
    rule = Rule.from_dict({"min_instances": 3}, "test")
    old = series("CT", 3)  # stored before de-identification counted frames
    assert "frames" not in old and series_images(old) == 3 and rule.matches(old)
    assert not rule.matches(series("CT", 2))
    assert series_images({**old, "frames": 0}) == 3  # not a count: fall back
    assert rule.describe() == ">= 3 images (frames)"
    assert rule.to_dict() == {"min_instances": 3}  # the same key as stored overrides use


@pytest.mark.parametrize(
    ("value", "frames"),
    [(None, 1), ("", 1), ("100", 100), (100, 100), (" 7 ", 7), ("0", 1), ("-2", 1), ("x", 1)],
)
def test_an_instance_counts_its_number_of_frames_or_one(value: object, frames: int) -> None:
    assert instance_frames(value) == frames


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


def _head_bundle(tmp_path: Path) -> None:
    head = tmp_path / "head_ct"
    shutil.copytree(BUILTIN / "lung_nodule_demo", head)
    meta = json.loads((head / "configs" / "metadata.json").read_text())
    meta["name"] = "head_ct_demo"
    meta["radpipe_routing"] = [{"modality": ["CT"], "body_part": ["HEAD", "BRAIN"]}]
    (head / "configs" / "metadata.json").write_text(json.dumps(meta))


def test_admin_overrides_change_which_bundle_analyses_a_series(
    tmp_path: Path, ctx: Context
) -> None:
    _head_bundle(tmp_path)
    head, chest = [series("CT", 60, "HEAD")], [series("CT", 60, "CHEST")]
    docs = ctx.documents
    assert route(discover(tmp_path, docs), head)[0].name == "head_ct_demo"

    # add: the admin's rule is tried before every bundle's own, so the lung bundle now wins.
    at = datetime.now(UTC)
    set_override(docs, "lung_nodule_demo", "add", [{"body_part": ["head"]}], "trial", "root", at)
    entry, _, rule = route(discover(tmp_path, docs), head)
    assert entry.name == "lung_nodule_demo" and rule.origin == "admin"
    assert rule.describe() == "body_part in ['HEAD'] [admin]"
    assert route(discover(tmp_path, docs), chest)[2].origin == "bundle"  # its own rule stays
    assert route(discover(tmp_path), head)[0].name == "head_ct_demo"  # without the store

    # replace: only the admin's rules; the bundle's own no longer route.
    set_override(docs, "lung_nodule_demo", "replace", [{"modality": ["MR"]}], "", "root", at)
    assert route(discover(tmp_path, docs), head)[0].name == "head_ct_demo"
    with pytest.raises(PipelineError, match="CT CHEST"):
        route(discover(tmp_path, docs), chest)
    assert route(discover(tmp_path, docs), [series("MR", 30)])[0].name == "lung_nodule_demo"

    # disable: the bundle analyses nothing, and the failure says why.
    set_override(docs, "head_ct_demo", "disable", [], "recalled", "root", at)
    with pytest.raises(PipelineError) as raised:
        route(discover(tmp_path, docs), head)
    assert "head_ct_demo: disabled by an admin" in raised.value.message

    # reset: back to the bundles' own rules.
    assert clear_override(docs, "head_ct_demo") and clear_override(docs, "lung_nodule_demo")
    assert not clear_override(docs, "head_ct_demo")
    assert route(discover(tmp_path, docs), head)[0].name == "head_ct_demo"
    assert route(discover(tmp_path, docs), chest)[0].name == "lung_nodule_demo"


@pytest.mark.parametrize(
    ("mode", "rules", "message"),
    [
        ("add", [{"colour": ["red"]}], "unknown routing key"),
        ("add", [{"series_description": "(unclosed"}], "not a regular expression"),
        ("add", [{"modality": "CT"}], "must be a list of strings"),
        ("replace", [{"min_instances": 0}], "at least 1"),
        ("add", [], "needs at least one rule"),
        ("disable", [{"modality": ["CT"]}], "takes no rules"),
        ("pause", [], "use one of add, replace, disable"),
    ],
)
def test_a_bad_override_is_refused_and_nothing_is_stored(
    ctx: Context, mode: str, rules: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        set_override(ctx.documents, "lung_nodule_demo", mode, rules, "", "root", None)
    assert overrides(ctx.documents) == {}


def test_a_damaged_stored_override_fails_routing_with_the_fix(ctx: Context) -> None:
    ctx.documents.collection(ROUTING_RULES).insert_one(
        {"_id": "lung_nodule_demo", "mode": "add", "rules": [{"modality": "CT"}]}
    )
    with pytest.raises(PipelineError, match="fix or reset it in the portal's admin screen"):
        discover(None, ctx.documents)
