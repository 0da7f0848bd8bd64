"""A real Celery worker (``python -m tests.integration.bus_worker``) running test stages through
the production stage wrapper (``stage_task``) on queue ``deid``, for tests/integration/test_bus.py.

Each stage appends the study id to the file ``BUS_CALLS`` (a test-only variable) and fails the
way its name says, so the test counts deliveries and retries from outside the worker.
"""

from __future__ import annotations

import os
import time

from radpipe.common.bus import app, run_worker, stage_task
from radpipe.common.context import Context
from radpipe.common.errors import PipelineError
from radpipe.common.logging import configure_logging
from radpipe.common.settings import get_settings


def called(study_id: str) -> None:
    with open(os.environ["BUS_CALLS"], "a") as calls:
        calls.write(f"{study_id}\n")


def permanent(_: Context, study_id: str) -> None:
    called(study_id)
    raise PipelineError("the series cannot form a volume: 2 slices")


def flaky(_: Context, study_id: str) -> None:
    called(study_id)
    raise ValueError("Doe^Jane is not a number")  # library text may quote DICOM values


def refused(_: Context, study_id: str) -> None:
    called(study_id)
    raise PipelineError("export destination refused the objects")


celery = app()
stage_task(celery, "radpipe.test.permanent", "inference", max_retries=3)(permanent)
stage_task(celery, "radpipe.test.flaky", "deid", max_retries=2)(flaky)
stage_task(celery, "radpipe.test.export", "export", max_retries=0, fails_study=False)(refused)


@celery.task(name="radpipe.test.busy", acks_late=True)
def busy(study_id: str) -> None:
    """Holds the solo worker (as a long CPU inference does) for ``BUS_BUSY_SECONDS``."""
    called(study_id)
    time.sleep(float(os.environ.get("BUS_BUSY_SECONDS", "8")))


@celery.task(name="radpipe.test.unwrapped", acks_late=True)
def unwrapped(study_id: str, patient: str) -> None:
    """A task outside the stage wrapper: Celery itself logs its failure, args and traceback."""
    called(study_id)
    raise ValueError(f"Invalid value for VR PN: {patient!r} of MRN7731904 born 19700101")


if __name__ == "__main__":
    configure_logging(get_settings().log_level)
    run_worker(celery, "deid", 1, "solo", warn_root=False)
