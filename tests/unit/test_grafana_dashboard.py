"""The Grafana dashboard in docs/grafana parses and queries only metrics the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import radpipe.common.metrics  # noqa: F401 - registers the metrics the dashboard queries

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "radpipe.json"


def exported() -> set[str]:
    """Every series name the registry can produce (histogram and counter suffixes included)."""
    names = set()
    for collector in list(REGISTRY._collector_to_names):
        names.update(REGISTRY._collector_to_names[collector])
    return names


def test_the_dashboard_parses_and_every_metric_it_queries_exists() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 9
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("stage duration", "queue lengths", "tat", "alerts"):
        assert topic in titles, topic
    queried = {name for expr in exprs for name in re.findall(r"\b(radpipe_[a-z_]+)\b", expr)}
    assert queried >= {
        "radpipe_stage_seconds_bucket",
        "radpipe_queue_length",
        "radpipe_tat_seconds",
    }
    assert queried - exported() == set()
    assert {p["id"] for p in dashboard["panels"]} == set(range(1, len(dashboard["panels"]) + 1))
