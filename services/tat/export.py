"""TAT exports: CSV (one row per study, a column per stage) and a Parquet star schema.

Neither carries a date of an event: stage times are seconds since the study's first event, and
the only calendar value is the local day and hour the study arrived (the time dimension).
Study keys are Radpipe's keyed study ids; no accession number, patient value or UID appears.

Star schema (``docs/tat.md``)::

    fact_study_event     study_key, stage, stage_order, seconds_since_first,
                         modality_key, source_key, priority_key, time_key
    fact_study_interval  study_key, interval, kind, seconds, target_s, within_target,
                         modality_key, source_key, priority_key, time_key
    dim_modality         modality_key, modality
    dim_source           source_key, source
    dim_priority         priority_key, ris_priority, ai_risk
    dim_time             time_key (local YYYYMMDDHH of arrival), date, hour, weekday,
                         iso_week, month, year, timezone
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Sequence
from datetime import tzinfo
from typing import Any

from radpipe.common.errors import BadRequest

from .intervals import STAGES, TARGETS, WEEKDAYS, Timeline, local

TABLES = (
    "fact_study_event",
    "fact_study_interval",
    "dim_modality",
    "dim_source",
    "dim_priority",
    "dim_time",
)


def to_csv(timelines: Sequence[Timeline], zone: tzinfo) -> str:
    """One row per study; a ``<stage>_s`` column per stage: seconds since its first event."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(
        [
            "study",
            "modality",
            "priority",
            "ai_risk",
            "source",
            "arrival_weekday",
            "arrival_hour",
            *(f"{stage}_s" for stage in STAGES),
        ]
    )
    for t in timelines:
        offsets = t.offsets()
        arrival = local(t.arrival, zone) if t.arrival else None
        writer.writerow(
            [
                t.study,
                t.modality,
                t.priority,
                t.risk,
                t.source,
                WEEKDAYS[arrival.weekday()] if arrival else "",
                arrival.hour if arrival else "",
                *(f"{offsets[stage]:.3f}" if stage in offsets else "" for stage in STAGES),
            ]
        )
    return out.getvalue()


class _Keys:
    """Surrogate keys of one dimension, in order of first use."""

    def __init__(self) -> None:
        self.keys: dict[Any, int] = {}

    def __call__(self, value: Any) -> int:
        return self.keys.setdefault(value, len(self.keys) + 1)


def star_tables(timelines: Sequence[Timeline], zone: tzinfo) -> dict[str, Any]:
    """The star schema as ``pyarrow`` tables (imported here: only exports need it)."""
    import pyarrow as pa

    modality, source, priority = _Keys(), _Keys(), _Keys()
    times: dict[int, dict[str, Any]] = {}
    events: dict[str, list[Any]] = {k: [] for k in _EVENT_COLUMNS}
    spans: dict[str, list[Any]] = {k: [] for k in _INTERVAL_COLUMNS}
    order = {stage: i for i, stage in enumerate(STAGES)}
    for t in timelines:
        arrival = local(t.arrival, zone) if t.arrival else None
        time_key = int(arrival.strftime("%Y%m%d%H")) if arrival else None
        if arrival is not None and time_key is not None and time_key not in times:
            iso = arrival.isocalendar()
            times[time_key] = {
                "time_key": time_key,
                "date": arrival.date(),
                "hour": arrival.hour,
                "weekday": WEEKDAYS[arrival.weekday()],
                "iso_week": iso.week,
                "month": arrival.month,
                "year": arrival.year,
                "timezone": str(zone),
            }
        keys = {
            "modality_key": modality(t.modality),
            "source_key": source(t.source),
            "priority_key": priority((t.priority, t.risk)),
            "time_key": time_key,
        }
        for stage, seconds in t.offsets().items():
            row = {
                "study_key": t.study,
                "stage": stage,
                "stage_order": order[stage],
                "seconds_since_first": seconds,
                **keys,
            }
            for column in _EVENT_COLUMNS:
                events[column].append(row[column])
        kinds = [("consecutive", i) for i in t.consecutive()] + [
            ("end_to_end", i) for i in t.end_to_end()
        ]
        for kind, (name, seconds) in kinds:
            target = TARGETS.get(name)
            row = {
                "study_key": t.study,
                "interval": name,
                "kind": kind,
                "seconds": seconds,
                "target_s": target,
                "within_target": None if target is None else 0 <= seconds <= target,
                **keys,
            }
            for column in _INTERVAL_COLUMNS:
                spans[column].append(row[column])
    return {
        "fact_study_event": pa.table(events, schema=_event_schema(pa)),
        "fact_study_interval": pa.table(spans, schema=_interval_schema(pa)),
        "dim_modality": pa.table(
            {"modality_key": list(modality.keys.values()), "modality": list(modality.keys)},
            schema=pa.schema([("modality_key", pa.int32()), ("modality", pa.string())]),
        ),
        "dim_source": pa.table(
            {"source_key": list(source.keys.values()), "source": list(source.keys)},
            schema=pa.schema([("source_key", pa.int32()), ("source", pa.string())]),
        ),
        "dim_priority": pa.table(
            {
                "priority_key": list(priority.keys.values()),
                "ris_priority": [p for p, _ in priority.keys],
                "ai_risk": [r for _, r in priority.keys],
            },
            schema=pa.schema(
                [
                    ("priority_key", pa.int32()),
                    ("ris_priority", pa.string()),
                    ("ai_risk", pa.string()),
                ]
            ),
        ),
        "dim_time": pa.Table.from_pylist(list(times.values()), schema=_time_schema(pa)),
    }


_EVENT_COLUMNS = (
    "study_key",
    "stage",
    "stage_order",
    "seconds_since_first",
    "modality_key",
    "source_key",
    "priority_key",
    "time_key",
)
_INTERVAL_COLUMNS = (
    "study_key",
    "interval",
    "kind",
    "seconds",
    "target_s",
    "within_target",
    "modality_key",
    "source_key",
    "priority_key",
    "time_key",
)


def _keys_schema(pa: Any) -> list[tuple[str, Any]]:
    return [
        ("modality_key", pa.int32()),
        ("source_key", pa.int32()),
        ("priority_key", pa.int32()),
        ("time_key", pa.int32()),
    ]


def _event_schema(pa: Any) -> Any:
    return pa.schema(
        [
            ("study_key", pa.string()),
            ("stage", pa.string()),
            ("stage_order", pa.int16()),
            ("seconds_since_first", pa.float64()),
            *_keys_schema(pa),
        ]
    )


def _interval_schema(pa: Any) -> Any:
    return pa.schema(
        [
            ("study_key", pa.string()),
            ("interval", pa.string()),
            ("kind", pa.string()),
            ("seconds", pa.float64()),
            ("target_s", pa.float64()),
            ("within_target", pa.bool_()),
            *_keys_schema(pa),
        ]
    )


def _time_schema(pa: Any) -> Any:
    return pa.schema(
        [
            ("time_key", pa.int32()),
            ("date", pa.date32()),
            ("hour", pa.int8()),
            ("weekday", pa.string()),
            ("iso_week", pa.int8()),
            ("month", pa.int8()),
            ("year", pa.int16()),
            ("timezone", pa.string()),
        ]
    )


def parquet_bytes(table: Any) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def one_table(timelines: Sequence[Timeline], zone: tzinfo, name: str) -> bytes:
    if name not in TABLES:
        raise BadRequest(f"no table {name!r}; choose one of {', '.join(TABLES)}")
    return parquet_bytes(star_tables(timelines, zone)[name])


def star_zip(timelines: Sequence[Timeline], zone: tzinfo) -> bytes:
    """Every table as ``<name>.parquet`` in one zip (``read_parquet('dir/*.parquet')``)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as bundle:
        for name, table in star_tables(timelines, zone).items():
            bundle.writestr(f"{name}.parquet", parquet_bytes(table))
    return out.getvalue()
