"""Study completeness: a study is stable once no instance arrived for the configured quiet time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from radpipe.common.context import Context
from radpipe.common.logging import get_logger
from radpipe.common.studies import StudyState, now

log = get_logger("radpipe.deid")


def check_stable(ctx: Context, study_id: str, *, clock: Callable[[], datetime] = now) -> None:
    """Mark the study stable and hand it to deid, or re-arm the check for the remaining time
    (the study's only pending check: see ``StudyRepository.claim_stability_check``).

    ``clock`` is injected by tests that step past the quiet time instead of sleeping through it.
    """
    study = ctx.studies.get(study_id)
    if study["state"] == StudyState.STABLE:  # redelivered after the hand-off was lost
        ctx.tasks.send("deid", study_id)
        return
    if study["state"] != StudyState.RECEIVED:
        return
    quiet = ctx.settings.study_stable_seconds
    elapsed = (clock() - study["last_instance_at"]).total_seconds()
    if elapsed < quiet:
        # This is the study's one pending check (ingest queues no other while it is due).
        ctx.studies.rearm_stability_check(study_id, clock() + timedelta(seconds=quiet - elapsed))
        ctx.tasks.send("stable", study_id, countdown=quiet - elapsed)
        return
    moved = ctx.studies.transition(
        study_id,
        StudyState.STABLE,
        detail={"instances": study.get("instance_count", 0)},
        fields={"stable_check_until": None},  # a re-opened study claims a new check
    )
    if moved is not None:
        log.info("study.stable", study_id=study_id, instances=study.get("instance_count", 0))
        ctx.tasks.send("deid", study_id)
