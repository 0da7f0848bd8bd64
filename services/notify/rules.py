"""Alert rules: which analysed study opens an alert, and how urgent it is.

Urgency follows the ACR practice parameter on communication of diagnostic imaging findings:
category 1 (critical, minutes), 2 (urgent, hours), 3 (significant unexpected, days). The
category sets the acknowledgement deadline; ``RADPIPE_ACK_TIMEOUT_SECONDS`` overrides every
deadline. The configuration comes from the TOML file ``RADPIPE_ALERT_CONFIG`` and from the
API (stored in the document store); the API's copy wins, section by section.

The first rule whose matchers (modality, bundle, smallest largest-finding size) all match
decides: its own threshold (default: ``RADPIPE_RISK_THRESHOLD``) and urgency. A study no rule
matches alerts at the global threshold with ``default_urgency``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from radpipe.common.errors import BadRequest

Urgency = Literal[1, 2, 3]
#: A time without a zone is read as UTC (TOML allows both).
Time = Annotated[datetime, AfterValidator(lambda v: v if v.tzinfo else v.replace(tzinfo=UTC))]

#: Default acknowledgement deadlines per ACR category (seconds).
DEADLINES: dict[int, float] = {1: 15 * 60, 2: 4 * 3600, 3: 72 * 3600}


class Rule(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    modality: str | None = None
    bundle: str | None = None
    min_diameter_mm: float | None = Field(None, ge=0)
    threshold: float | None = Field(None, ge=0, le=1)
    urgency: Urgency = 2


class Silence(BaseModel):
    """An alert opened while ``starts_at <= now < ends_at`` for a study the matchers all match
    pages nobody, ever (it is still opened and shown, marked silenced)."""

    name: str = Field(min_length=1, max_length=64)
    modality: str | None = None
    bundle: str | None = None
    source: str | None = None  # the sender: a modality's token name or calling AE title
    starts_at: Time
    ends_at: Time
    reason: str = ""


class Rotation(BaseModel):
    """People on call in turn, each for ``shift_hours`` from ``starts_at``."""

    people: list[str] = Field(min_length=1)
    starts_at: Time
    shift_hours: float = Field(24.0, gt=0)


class Override(BaseModel):
    person: str
    starts_at: Time
    ends_at: Time


class Schedule(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    rotation: Rotation
    overrides: list[Override] = []


class Person(BaseModel):
    """How to reach someone: an e-mail address and/or their own webhook."""

    name: str = Field(min_length=1, max_length=64)
    email: str | None = None
    webhook_url: str | None = None


class EscalationStep(BaseModel):
    """Page the on-call of ``schedule`` (or ``people``) for ``repeat`` pages, then move on."""

    schedule: str | None = None
    people: list[str] = []
    repeat: int = Field(1, ge=1)


class AlertConfig(BaseModel):
    deadlines: dict[int, float] = Field(default_factory=lambda: dict(DEADLINES))
    default_urgency: Urgency = 2
    rules: list[Rule] = []
    silences: list[Silence] = []
    schedules: list[Schedule] = []
    people: list[Person] = []
    #: The escalation chain; empty: every page goes to the configured channels.
    escalation: list[EscalationStep] = []
    #: Page for a study outside its model's validated input (`radpipe.inference.scope`,
    #: e.g. 5 mm slices for a model validated on 1-3 mm); by default its alert is opened
    #: silenced: shown on the worklist and the study page, nobody paged.
    page_outside_validated_input: bool = False

    def deadline_seconds(self, urgency: int, override: float | None) -> float:
        return override if override is not None else self.deadlines.get(urgency, DEADLINES[2])


def load_config(path: Path | None, stored: dict[str, Any] | None = None) -> AlertConfig:
    """The file's configuration, with the API's stored sections replacing the file's."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BadRequest(
                f"RADPIPE_ALERT_CONFIG ({path}) cannot be read: {exc}; fix the file or unset it"
            ) from exc
    for key, value in (stored or {}).items():
        if key in AlertConfig.model_fields:
            data[key] = value
    return AlertConfig.model_validate(data)


@dataclass(frozen=True)
class Decision:
    rule: str
    urgency: int
    threshold: float


def facts(study: dict[str, Any]) -> dict[str, Any]:
    """What rules match on, taken from the study and its current analysis."""
    analysis = study.get("analysis") or {}
    findings = analysis.get("findings") or []
    return {
        "modality": (study.get("modality") or "").upper(),
        "bundle": (analysis.get("model") or {}).get("name") or "",
        "largest_mm": max((float(f.get("diameter_mm") or 0.0) for f in findings), default=0.0),
        "score": float(((analysis.get("risk") or {}).get("score")) or 0.0),
    }


def decide(config: AlertConfig, threshold: float, study: dict[str, Any]) -> Decision | None:
    """The alert a study opens, or ``None`` when its risk is under the deciding threshold."""
    known = facts(study)
    for rule in config.rules:
        if rule.modality and rule.modality.upper() != known["modality"]:
            continue
        if rule.bundle and rule.bundle != known["bundle"]:
            continue
        if rule.min_diameter_mm is not None and known["largest_mm"] < rule.min_diameter_mm:
            continue
        limit = threshold if rule.threshold is None else rule.threshold
        return Decision(rule.name, rule.urgency, limit) if known["score"] >= limit else None
    if known["score"] >= threshold:
        return Decision("default", config.default_urgency, threshold)
    return None


def silenced_by(
    config: AlertConfig, study: dict[str, Any], source: str | None, at: datetime
) -> Silence | None:
    known = facts(study)
    for silence in config.silences:
        if not silence.starts_at <= at < silence.ends_at:
            continue
        if silence.modality and silence.modality.upper() != known["modality"]:
            continue
        if silence.bundle and silence.bundle != known["bundle"]:
            continue
        if silence.source and silence.source != source:
            continue
        return silence
    return None


def on_call(config: AlertConfig, schedule_name: str, at: datetime) -> str | None:
    """Who is on call in ``schedule_name`` at ``at``: an override, else the rotation's turn."""
    schedule = next((s for s in config.schedules if s.name == schedule_name), None)
    if schedule is None:
        return None
    for override in schedule.overrides:
        if override.starts_at <= at < override.ends_at:
            return override.person
    rotation = schedule.rotation
    if at < rotation.starts_at:
        return None
    shift = int((at - rotation.starts_at).total_seconds() // (rotation.shift_hours * 3600))
    return rotation.people[shift % len(rotation.people)]


def escalation_step(config: AlertConfig, page: int) -> tuple[int, EscalationStep] | None:
    """The chain step for page ``page`` (1-based): each step lasts its ``repeat`` pages; the
    last step repeats until the cap. ``None`` without a chain."""
    if not config.escalation:
        return None
    remaining = page
    for index, step in enumerate(config.escalation):
        if remaining <= step.repeat:
            return index, step
        remaining -= step.repeat
    return len(config.escalation) - 1, config.escalation[-1]
