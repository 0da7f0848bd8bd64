"""The mask wire encoding (rle-slices-v1): round trip, strict refusals with the fix named,
and the measures (Dice, IoU, volume, equivalent diameter, the sphere stand-in)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radpipe.common import masks

GEO = masks.Geometry(series_uid="1.2.3", slices=4, rows=6, columns=5, spacing=(2.0, 0.5, 0.5))


def payload(slices: dict, **extra: object) -> dict:
    return {
        "encoding": "rle-slices-v1",
        "series_uid": "1.2.3",
        "shape": [4, 6, 5],
        "slices": slices,
        **extra,
    }


def test_round_trip_and_runs() -> None:
    dense = np.zeros((4, 6, 5), dtype=bool)
    dense[1, 0, 0:3] = True
    dense[1, 1, 4] = True
    dense[1, 2, 0] = True  # touches the previous row's run: one run 9..10
    dense[3, 5, 4] = True
    mask = masks.from_dense({k: dense[k] for k in range(4)})
    encoded = masks.encode(mask, GEO)
    assert encoded == payload({"1": [0, 3, 9, 2], "3": [29, 1]}, empty=False)
    decoded = masks.decode(encoded, GEO)
    assert sorted(decoded) == [1, 3] and decoded[1].tolist() == [0, 1, 2, 9, 10]
    for k in range(4):
        assert (masks.to_dense_slice(decoded, k, GEO) == dense[k]).all()
    assert masks.voxel_count(decoded) == 6
    assert masks.decode(payload({}, empty=True), GEO) == {}
    assert masks.encode({}, GEO)["empty"] is True


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ([], "JSON object"),
        (payload({}, encoding="rle"), "encoding"),
        ({**payload({}), "encoding": None}, "encoding"),
        (payload({}, series_uid="9.9"), "analysed series"),
        (payload({}, shape=[4, 6, 6]), "shape"),
        (payload({}, shape="4x6x5"), "shape"),
        (payload({"4": [0, 1]}), "outside"),
        (payload({"01": [0, 1]}), "decimal"),
        (payload({"x": [0, 1]}), "decimal"),
        (payload({"1": []}), "even length"),
        (payload({"1": [0]}), "even length"),
        (payload({"1": [0, 0]}), "length"),
        (payload({"1": [3, 2, 4, 1]}), "before the end"),
        (payload({"1": [3, 2, 5, 1]}), "before the end"),  # touching: not maximal
        (payload({"1": [28, 3]}), "leaves"),
        (payload({"1": [1.0, 2]}), "integer"),
        (payload({"1": [False, 2]}), "integer"),
        (payload({}), "empty"),
        (payload({"1": [0, 1]}, empty=True), "empty"),
        (payload({}, empty="yes"), "true or false"),
        (payload({}, extra=1), "unknown"),
        (payload({"1": "0,1"}), "even length"),
    ],
)
def test_refusals_name_the_fix(bad: object, says: str) -> None:
    with pytest.raises(masks.MaskError, match=says):
        masks.decode(bad, GEO)


def test_bounds() -> None:
    big = masks.Geometry("1.2.3", 1, 1000, 1000, (1.0, 1.0, 1.0))
    runs = [v for i in range(masks.MAX_RUNS + 1) for v in (2 * i, 1)]
    with pytest.raises(masks.MaskError, match="runs"):
        masks.decode(
            {
                "encoding": "rle-slices-v1",
                "series_uid": "1.2.3",
                "shape": [1, 1000, 1000],
                "slices": {"0": runs},
            },
            big,
        )


def test_overlap_on_known_masks() -> None:
    a = masks.from_dense({0: np.arange(30).reshape(6, 5) < 10})  # rows 0-1: 10 pixels
    b = masks.from_dense(
        {0: (np.arange(30).reshape(6, 5) >= 5) & (np.arange(30).reshape(6, 5) < 15)}
    )
    assert masks.overlap(a, b) == {"dice": 0.5, "iou": 0.3333}
    assert masks.overlap(a, a) == {"dice": 1.0, "iou": 1.0}
    assert masks.overlap({}, {}) == {"dice": "n/a", "iou": "n/a"}
    assert masks.overlap(a, {}) == {"dice": 0.0, "iou": 0.0}
    assert masks.voxel_count(masks.union([a, b])) == 15


def test_sphere_and_diameter() -> None:
    geo = masks.Geometry("1.2.3", 41, 41, 41, (1.0, 1.0, 1.0))
    ball = masks.sphere(geo, (20.0, 20.0, 20.0), 20.0)
    volume = masks.voxel_count(ball) * geo.voxel_mm3
    assert volume == pytest.approx(4 / 3 * math.pi * 10**3, rel=0.02)
    assert masks.equivalent_diameter(volume) == pytest.approx(20.0, rel=0.01)
    assert masks.equivalent_diameter(0.0) == 0.0
    assert masks.sphere(geo, (100.0, 100.0, 100.0), 4.0) == {}
