"""A production worker (``python -m tests.e2e.hang_worker <stage>``) that can be killed mid-task,
for tests/e2e/test_faults.py.

Before the stage's tasks are registered, ``radpipe.common.bus.stage_task`` is wrapped: the
first task of the stage (``<stage>`` only, not the stability check) runs the real stage to its
end, then writes ``<stage> <pid>`` to ``HANG_FILE`` (a test-only variable, not a Radpipe
setting) and waits, before the task returns and its message is acknowledged. The test then
SIGKILLs the process there: the work is done, the acknowledgement is not, the broker hands the
message out again, and the redelivered task meets the stage's own record of what it did (the
hardest moment for exactly-once). A marker file beside ``HANG_FILE`` makes it once per stage.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from radpipe.common import bus
from radpipe.common.context import Context
from radpipe.common.logging import configure_logging
from radpipe.common.queues import run_worker
from radpipe.common.settings import get_settings

STAGE = sys.argv[1] if len(sys.argv) > 1 else "deid"
HANG_FILE = Path(os.environ["HANG_FILE"])
real_stage_task = bus.stage_task


def stage_task(*args: Any, **kwargs: Any) -> Callable[[Callable[[Context, str], None]], Any]:
    stage = args[2] if len(args) > 2 else kwargs["stage"]
    decorate = real_stage_task(*args, **kwargs)

    def wrap(fn: Callable[[Context, str], None]) -> Any:
        def run_then_hang(ctx: Context, study_id: str) -> None:
            fn(ctx, study_id)
            marker = HANG_FILE.with_name(f"hung-{stage}")
            if stage != STAGE or marker.exists():
                return
            marker.write_text(study_id)
            with HANG_FILE.open("a") as hang:
                hang.write(f"{stage} {os.getpid()}\n")
            time.sleep(600)  # until the test kills this process

        return decorate(run_then_hang)

    return wrap


bus.stage_task = stage_task  # before the tasks capture it

if __name__ == "__main__":
    settings = get_settings()
    configure_logging(settings.log_level)
    module = "radpipe.ingest.tasks" if STAGE == "export" else f"radpipe.{STAGE}.tasks"
    tasks = import_module(module)
    queue = "inference-cpu" if STAGE == "inference" else STAGE
    run_worker(tasks.celery, queue, 1, "solo", warn_root=False)
