"""A real deid worker (``python -m tests.integration.poison_worker``) for the poison-work tests.

It runs the production deid tasks on the pool given as its argument (``prefork``, the
default, or ``solo`` as in ``radpipe up``), with one change made before they are registered:
the de-identification of a study whose id is listed in ``POISON_STUDIES`` (a test-only
variable, not a Radpipe setting) writes the pid of the process running it to
``POISON_STARTS`` and then waits, so the test can kill that process from outside as the
kernel's OOM killer would. Every other study is de-identified by the real code.
"""

from __future__ import annotations

import os
import sys
import time

from radpipe.common.context import Context
from radpipe.common.logging import configure_logging
from radpipe.common.queues import run_worker
from radpipe.common.settings import get_settings
from radpipe.deid import service

POISON = set(filter(None, os.environ.get("POISON_STUDIES", "").split(",")))
real_deidentify = service.deidentify_study


def deidentify_or_hang(ctx: Context, study_id: str) -> None:
    if study_id not in POISON:
        real_deidentify(ctx, study_id)
        return
    with open(os.environ["POISON_STARTS"], "a") as starts:
        starts.write(f"{os.getpid()}\n")
    time.sleep(600)  # until the test kills this process


service.deidentify_study = deidentify_or_hang  # before the tasks capture it

if __name__ == "__main__":
    from radpipe.deid import tasks

    configure_logging(get_settings().log_level)
    pool = sys.argv[1] if len(sys.argv) > 1 else "prefork"
    run_worker(tasks.celery, "deid", 1, pool, warn_root=False)
