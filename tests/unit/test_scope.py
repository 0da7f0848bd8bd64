"""A bundle's validated input (`radpipe.inference.scope`): declared ranges are read strictly and
each series is checked against them."""

from __future__ import annotations

import pytest

from radpipe.inference.scope import check_input, geometry, parse_validated_input


def test_a_series_is_within_or_outside_with_the_reason() -> None:
    ranges = parse_validated_input(
        {"slice_thickness_mm": [0.6, 3.0], "pixel_spacing_mm": [0.4, 1.0]}, "here"
    )
    inside = check_input(ranges, geometry((2.5, 0.7, 0.7), 2.0))  # the attribute wins
    assert inside is not None and inside["within"] is True and inside["reasons"] == []
    assert inside["measured"] == {"slice_thickness_mm": 2.0, "pixel_spacing_mm": 0.7}
    outside = check_input(ranges, geometry((5.0, 0.5, 1.7), None))  # else the spacing
    assert outside is not None and outside["within"] is False
    assert outside["reasons"] == [
        "slice thickness 5 mm is outside the 0.6-3 mm this model was validated on",
        "pixel spacing 1.1 mm is outside the 0.4-1 mm this model was validated on",
    ]
    edge = check_input(ranges, geometry((3.0, 1.0, 1.0), 3.0))
    assert edge is not None and edge["within"] is True  # bounds are inclusive
    assert check_input({}, geometry((5.0, 1.0, 1.0), None)) is None  # nothing declared


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([0.6, 3.0], "must be an object"),
        ({"kernel": [1, 2]}, "unknown feature 'kernel' \\(known: slice_thickness_mm"),
        ({"slice_thickness_mm": [3.0, 0.6]}, "0 < low <= high, not \\[3.0, 0.6\\]"),
        ({"slice_thickness_mm": [0, 3]}, "0 < low <= high"),
        ({"slice_thickness_mm": [1.0]}, "must be \\[low, high\\]"),
        ({"slice_thickness_mm": ["1", "3"]}, "must be \\[low, high\\]"),
        ({"slice_thickness_mm": [True, 3]}, "must be \\[low, high\\]"),
    ],
)
def test_a_bad_declaration_is_refused_with_the_fix(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"bundle x: configs/inference.json: .*{message}"):
        parse_validated_input(value, "bundle x: configs/inference.json")


def test_a_bundle_with_a_bad_declaration_does_not_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import shutil

    from radpipe.inference.bundle import default_bundle_path, load_bundle

    root = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), root)
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["validated_input"] = {"slice_thickness_mm": [3.0, 1.0]}
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"validated_input\.slice_thickness_mm must be"):
        load_bundle(root, "cpu")
