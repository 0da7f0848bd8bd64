"""Turnaround arithmetic on study timelines: pure functions, no store, no web.

A :class:`Timeline` is one study's first time at each known stage (UTC). Intervals are taken
between *consecutive known* stages in :data:`STAGES` order (a study never alerted goes from
``analyzed`` straight to the next stage it has), plus the end-to-end intervals a manager asks
for (:data:`END_TO_END`). Figures per interval: count, p50, p90 (linear interpolation between
closest ranks, as ``numpy.percentile``'s default), mean, share within target and breaches.
Local cuts (hour of day, weekday, day) use the site's time zone; ``zoneinfo`` applies daylight
saving, so a spring-forward day has no 02:00 hour and a fall-back day counts 01:00 twice.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

#: Known stages in clinical order: RIS (ordered, exam complete), acquisition (from the
#: interval measured at receipt), the pipeline's state events, the portal's, and the RIS report.
STAGES: tuple[str, ...] = (
    "ordered",
    "exam_complete",
    "acquired",
    "received",
    "stable",
    "deidentified",
    "analyzed",
    "alerted",
    "acknowledged",
    "opened",
    "read",
    "signed",
    "final_report",
)
STAGE_LABELS: dict[str, str] = {
    "ordered": "ordered",
    "exam_complete": "exam complete",
    "acquired": "acquired",
    "received": "received",
    "stable": "stable",
    "deidentified": "de-identified",
    "analyzed": "analyzed",
    "alerted": "AI flag (alerted)",
    "acknowledged": "acknowledged",
    "opened": "opened",
    "read": "read (resident)",
    "signed": "signed",
    "final_report": "final report (RIS)",
}

#: Study timeline event type -> stage (the first event of each type counts).
EVENT_STAGES: dict[str, str] = {
    "received": "received",
    "stable": "stable",
    "deidentified": "deidentified",
    "analyzed": "analyzed",
    "alerted": "alerted",
    "alert.acknowledged": "acknowledged",
    "opened": "opened",
    "viewed": "opened",
    "study.opened": "opened",
    "read": "read",
    "signed": "signed",
}

#: The end-to-end intervals: (name, from stage, to stage).
END_TO_END: tuple[tuple[str, str, str], ...] = (
    ("order→signed", "ordered", "signed"),
    ("exam complete→signed", "exam_complete", "signed"),
    ("received→signed", "received", "signed"),
    ("AI flag→acknowledged", "alerted", "acknowledged"),
)

#: Default targets (seconds) per interval; an interval without one has no breaches.
TARGETS: dict[str, float] = {
    "ordered→exam_complete": 24 * 3600,
    "exam_complete→acquired": 3600,
    "exam_complete→received": 3600,
    "acquired→received": 15 * 60,
    "received→stable": 5 * 60,
    "stable→deidentified": 5 * 60,
    "deidentified→analyzed": 10 * 60,
    "analyzed→alerted": 2 * 60,
    "alerted→acknowledged": 15 * 60,
    "order→signed": 24 * 3600,
    "exam complete→signed": 8 * 3600,
    "received→signed": 8 * 3600,
    "AI flag→acknowledged": 15 * 60,
}

#: How long a study may wait in a stage before it is listed as stuck, by its last stage.
STUCK_AFTER: dict[str, float] = {
    "received": 30 * 60,
    "stable": 30 * 60,
    "deidentified": 30 * 60,
    "analyzed": 8 * 3600,
    "alerted": 30 * 60,
    "acknowledged": 8 * 3600,
    "opened": 8 * 3600,
    "read": 24 * 3600,
}

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def interval_name(start: str, end: str) -> str:
    return f"{start}→{end}"


@dataclass
class Timeline:
    """One study's stages (first time each, UTC) and what it is cut by."""

    study: str
    stages: dict[str, datetime]
    modality: str = "unknown"
    priority: str = "unknown"  # RIS priority: STAT, URGENT, ROUTINE
    risk: str = "pending"  # AI risk category
    source: str = "unknown"
    state: str = ""
    failed: bool = False
    #: Intervals computed once (``stages`` is not changed after construction).
    _memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def arrival(self) -> datetime | None:
        """When the study reached Radpipe (else its first known event)."""
        return self.stages.get("received") or (min(self.stages.values()) if self.stages else None)

    def ordered_stages(self) -> list[tuple[str, datetime]]:
        return [(stage, self.stages[stage]) for stage in STAGES if stage in self.stages]

    def spans(self) -> list[tuple[str, float]]:
        """:meth:`consecutive` then :meth:`end_to_end`."""
        if "spans" not in self._memo:
            self._memo["spans"] = self.consecutive() + self.end_to_end()
        spans: list[tuple[str, float]] = self._memo["spans"]
        return spans

    def consecutive(self) -> list[tuple[str, float]]:
        """(name, seconds) between each known stage and the next known one, in stage order;
        a negative value means the two happened out of order."""
        if "consecutive" in self._memo:
            memo: list[tuple[str, float]] = self._memo["consecutive"]
            return memo
        known = self.ordered_stages()
        self._memo["consecutive"] = [
            (interval_name(a, b), (tb - ta).total_seconds())
            for (a, ta), (b, tb) in itertools.pairwise(known)
        ]
        return self.consecutive()

    def end_to_end(self) -> list[tuple[str, float]]:
        return [
            (name, (self.stages[b] - self.stages[a]).total_seconds())
            for name, a, b in END_TO_END
            if a in self.stages and b in self.stages
        ]

    def offsets(self) -> dict[str, float]:
        """Seconds of each known stage since the study's first event."""
        known = self.ordered_stages()
        if not known:
            return {}
        first = min(t for _, t in known)
        return {stage: (t - first).total_seconds() for stage, t in known}


def timeline_from_events(
    study: str, events: Iterable[Mapping[str, Any]], extra: Mapping[str, datetime] | None = None
) -> dict[str, datetime]:
    """The first time of each known stage in a study's ``events`` (plus ``extra`` stages)."""
    stages: dict[str, datetime] = {}
    for event in events:
        stage = EVENT_STAGES.get(str(event.get("type")))
        at = event.get("at")
        if stage is None or not isinstance(at, datetime):
            continue
        if stage not in stages or at < stages[stage]:
            stages[stage] = at
    for stage, at in (extra or {}).items():
        stages.setdefault(stage, at)
    return stages


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Figures:
    """The figures of one interval."""

    count: int
    p50: float | None
    p90: float | None
    mean: float | None
    target: float | None
    within_target: float | None  # share 0..1
    breaches: int
    out_of_order: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def figures(values: Sequence[float], target: float | None, out_of_order: int = 0) -> Figures:
    """Figures of ``values`` (seconds, non-negative) against ``target`` (seconds or None)."""
    if not values:
        return Figures(0, None, None, None, target, None, 0, out_of_order)
    breaches = sum(1 for v in values if target is not None and v > target)
    return Figures(
        count=len(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        mean=sum(values) / len(values),
        target=target,
        within_target=None if target is None else (len(values) - breaches) / len(values),
        breaches=breaches,
        out_of_order=out_of_order,
    )


@dataclass
class _Samples:
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    negative: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, seconds: float) -> None:
        if seconds < 0:
            self.negative[name] += 1
        else:
            self.values[name].append(seconds)

    def figures(self, targets: Mapping[str, float], order: Sequence[str]) -> dict[str, Any]:
        names = [n for n in order if n in self.values or n in self.negative]
        return {
            n: figures(self.values.get(n, []), targets.get(n), self.negative[n]).as_dict()
            for n in names
        }


def _interval_order(timelines: Iterable[Timeline]) -> list[str]:
    """Consecutive interval names seen, ordered by their start then end stage."""
    seen = {name for t in timelines for name, _ in t.consecutive()}
    rank = {stage: i for i, stage in enumerate(STAGES)}
    return sorted(seen, key=lambda n: tuple(rank[s] for s in n.split("→")))


def local(moment: datetime, zone: tzinfo) -> datetime:
    return moment.astimezone(zone)


def analyse(
    timelines: Sequence[Timeline],
    zone: tzinfo,
    now: datetime,
    targets: Mapping[str, float] | None = None,
    stuck_limit: int = 100,
) -> dict[str, Any]:
    """Everything the dashboard and ``GET /api/tat`` show, from ``timelines``."""
    targets = {**TARGETS, **(targets or {})}
    order = _interval_order(timelines)
    e2e_names = [name for name, _, _ in END_TO_END]
    samples = _Samples()
    for t in timelines:
        for name, seconds in t.spans():
            samples.add(name, seconds)
    intervals = samples.figures(targets, order)
    end_to_end = samples.figures(targets, e2e_names)
    bottleneck = max(
        (n for n in order if intervals.get(n, {}).get("count")),
        key=lambda n: intervals[n]["p90"],
        default=None,
    )
    return {
        "studies": len(timelines),
        "timezone": str(zone),
        "stages": [{"stage": s, "label": STAGE_LABELS[s]} for s in STAGES],
        "intervals": intervals,
        "end_to_end": end_to_end,
        "bottleneck": bottleneck,
        "cuts": {
            dimension: _cut(timelines, key, targets, order + e2e_names)
            for dimension, key in _dimensions(zone).items()
        },
        "arrivals_by_hour": arrivals_by_hour(timelines, zone),
        "daily": daily_trend(timelines, zone, targets),
        "stuck": stuck(timelines, now, stuck_limit),
        "kpis": kpis(timelines, zone),
    }


def _dimensions(zone: tzinfo) -> dict[str, Any]:
    def hour(t: Timeline) -> str | None:
        return f"{local(t.arrival, zone).hour:02d}" if t.arrival else None

    def weekday(t: Timeline) -> str | None:
        return WEEKDAYS[local(t.arrival, zone).weekday()] if t.arrival else None

    return {
        "modality": lambda t: t.modality,
        "priority": lambda t: t.priority,
        "risk": lambda t: t.risk,
        "source": lambda t: t.source,
        "hour": hour,
        "weekday": weekday,
    }


def _cut(
    timelines: Sequence[Timeline], key: Any, targets: Mapping[str, float], order: Sequence[str]
) -> dict[str, Any]:
    groups: dict[str, list[Timeline]] = defaultdict(list)
    for t in timelines:
        value = key(t)
        if value is not None:
            groups[value].append(t)
    out = {}
    for value in sorted(groups):
        group = _Samples()
        for t in groups[value]:
            for name, seconds in t.spans():
                group.add(name, seconds)
        out[value] = {"studies": len(groups[value]), "intervals": group.figures(targets, order)}
    return out


def arrivals_by_hour(timelines: Iterable[Timeline], zone: tzinfo) -> list[int]:
    """Studies received per local hour of day (0-23)."""
    hours = [0] * 24
    for t in timelines:
        if t.arrival is not None:
            hours[local(t.arrival, zone).hour] += 1
    return hours


def daily_trend(
    timelines: Iterable[Timeline], zone: tzinfo, targets: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Per local day of arrival: studies, and p50 and breaches of each end-to-end interval."""
    days: dict[str, list[Timeline]] = defaultdict(list)
    for t in timelines:
        if t.arrival is not None:
            days[local(t.arrival, zone).date().isoformat()].append(t)
    trend = []
    for day in sorted(days):
        group = _Samples()
        for t in days[day]:
            for name, seconds in t.end_to_end():
                group.add(name, seconds)
        figs = group.figures(targets, [name for name, _, _ in END_TO_END])
        trend.append(
            {
                "day": day,
                "studies": len(days[day]),
                "p50": {n: f["p50"] for n, f in figs.items()},
                "breaches": {n: f["breaches"] for n, f in figs.items()},
            }
        )
    return trend


def stuck(timelines: Iterable[Timeline], now: datetime, limit: int = 100) -> list[dict[str, Any]]:
    """Studies waiting in a stage longer than :data:`STUCK_AFTER` allows, longest first
    (how long, never since when: the answer carries no event time)."""
    found: list[dict[str, Any]] = []
    for t in timelines:
        if t.failed or "signed" in t.stages:
            continue
        pipeline = [(s, at) for s, at in t.ordered_stages() if s in STUCK_AFTER]
        if not pipeline:
            continue
        stage, since = max(pipeline, key=lambda item: item[1])
        waiting = (now - since).total_seconds()
        if waiting > STUCK_AFTER[stage]:
            found.append(
                {
                    "study": t.study,
                    "stage": stage,
                    "waiting_s": round(waiting, 1),
                    "limit_s": STUCK_AFTER[stage],
                    "modality": t.modality,
                    "priority": t.priority,
                    "risk": t.risk,
                }
            )
    found.sort(key=lambda item: -item["waiting_s"])
    return found[:limit]


def kpis(timelines: Sequence[Timeline], zone: tzinfo) -> dict[str, Any]:
    """Studies per day by modality, AI-positive rate, alert acknowledgement, failed rate."""
    per_day: dict[str, Counter[str]] = defaultdict(Counter)
    for t in timelines:
        if t.arrival is not None:
            per_day[local(t.arrival, zone).date().isoformat()][t.modality] += 1
    analysed = [t for t in timelines if t.risk not in ("pending", "unknown")]
    positive = [t for t in analysed if t.risk in ("high", "moderate")]
    acks = [
        (t.stages["acknowledged"] - t.stages["alerted"]).total_seconds()
        for t in timelines
        if "alerted" in t.stages and "acknowledged" in t.stages
    ]
    acks = [a for a in acks if a >= 0]
    failed = sum(1 for t in timelines if t.failed)
    return {
        "studies_per_day": {day: dict(sorted(c.items())) for day, c in sorted(per_day.items())},
        "ai_positive_rate": len(positive) / len(analysed) if analysed else None,
        "alert_ack_p50_s": percentile(acks, 50) if acks else None,
        "alerts": sum(1 for t in timelines if "alerted" in t.stages),
        "alerts_acknowledged": len(acks),
        "failed_rate": failed / len(timelines) if timelines else None,
    }
