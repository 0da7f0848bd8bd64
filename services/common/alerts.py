"""The alert record shared by notify (which writes it) and the portal (which shows it).

An alert is one document in ``alerts``: its state, urgency, acknowledgement deadline, the page
being delivered and a ``history`` of every step. Every query of the product is answered by an
index created here at start-up (:func:`ensure_alert_indexes`): open alerts newest first, the
sweeper's due timers, an alert's study, and the list filters.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from .ports import Collection, Document, DocumentStore
from .studies import ALERTS

#: Single-use acknowledgement-link nonces (``_id`` is the nonce; a second insert fails).
ALERT_TOKENS = "alert_tokens"
#: Rules, schedules and silences set through the API (one document, ``_id`` "config").
ALERT_CONFIG = "alert_config"


class AlertState(StrEnum):
    OPEN = "open"  # paging until acknowledged (or the page cap is reached)
    ACKNOWLEDGED = "acknowledged"  # a person took it; no further page
    CLOSED = "closed"  # communication documented (or the study was signed)
    RETRACTED = "retracted"  # a re-analysis lowered the risk below the threshold


#: ``open`` is true exactly while the state is ``open``; it is the indexed field.
OPEN_QUERY: dict[str, Any] = {"open": True}
NEWEST_FIRST = [("created_at", -1)]


def ensure_alert_indexes(documents: DocumentStore) -> None:
    """The indexes behind every alert query (the same on MongoDB and the embedded engine)."""
    alerts = documents.collection(ALERTS)
    alerts.create_index([("open", 1), ("created_at", -1)])  # ?open=true
    alerts.create_index([("open", 1), ("kind", 1), ("created_at", -1)])  # the banner
    alerts.create_index([("open", 1), ("next_page_at", 1)])  # the sweeper's due timers
    alerts.create_index([("study_id", 1), ("created_at", -1)])  # ?study=, grouping, retraction
    alerts.create_index([("state", 1), ("created_at", -1)])  # ?state=
    alerts.create_index([("urgency", 1), ("created_at", -1)])  # ?urgency=
    alerts.create_index([("kind", 1), ("created_at", -1)])  # clinical vs pipeline alerts


def alerts_of(documents: DocumentStore) -> Collection:
    return documents.collection(ALERTS)


def open_alerts(documents: DocumentStore, limit: int = 50) -> list[Document]:
    """Clinical alerts still paging, newest first (index ``open, kind, created_at``)."""
    query = {**OPEN_QUERY, "kind": "clinical"}
    cursor = alerts_of(documents).find(query).sort(NEWEST_FIRST).limit(limit)
    return list(cursor)


def upgrade_legacy_alerts(documents: DocumentStore, batch: int = 1000) -> int:
    """Give alerts written before closed-loop alerting (0.1.x: one webhook, no state) the
    fields the indexes and the sweeper read; returns how many. They never page again: they
    were sent once, and paging a backlog after an upgrade would flood the on-call."""
    alerts = alerts_of(documents)
    upgraded = 0
    while True:
        legacy = list(alerts.find({"open": {"$exists": False}}).limit(batch))
        for doc in legacy:
            acknowledged = doc.get("acknowledged_at") is not None
            state = AlertState.ACKNOWLEDGED if acknowledged else AlertState.OPEN
            alerts.update_one(
                {"_id": doc["_id"], "open": {"$exists": False}},
                {
                    "$set": {
                        "open": not acknowledged,
                        "state": str(state),
                        "kind": "clinical",
                        "urgency": doc.get("urgency", 2),
                        "count": doc.get("count", 1),
                        "next_page_at": None,
                        "legacy": True,
                    }
                },
            )
        upgraded += len(legacy)
        if len(legacy) < batch:
            return upgraded
