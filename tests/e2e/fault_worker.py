"""The production deid worker (``python -m tests.e2e.fault_worker``) with one planted fault,
for tests/e2e/test_phi_logs.py.

Before the deid tasks are registered, the stage is wrapped: for a study of the patient whose
original Patient ID is ``FAULT_PATIENT_ID`` (a test-only variable, not a Radpipe setting) it
reads the raw instance as the real stage does, runs pydicom's own validation of the patient's
name as a date (a genuine pydicom validation warning quoting the value) and then raises the
kind of exception a library raises, its text quoting the patient's values, so the worker's
retry and dead-letter lines meet real PHI. Every other study is de-identified by the real code.
"""

from __future__ import annotations

import io
import os

from pydicom import config, dcmread
from pydicom.valuerep import validate_value

from radpipe.common.context import Context
from radpipe.common.logging import configure_logging
from radpipe.common.queues import run_worker
from radpipe.common.settings import get_settings
from radpipe.deid import service

FAULT_PATIENT = os.environ.get("FAULT_PATIENT_ID", "")
real_deidentify = service.deidentify_study


def deidentify_or_raise(ctx: Context, study_id: str) -> None:
    instance = ctx.studies.instances_of(study_id)[0]
    raw = ctx.objects.get(ctx.buckets["raw"], instance["raw_key"])
    ds = dcmread(io.BytesIO(raw), stop_before_pixels=True)
    if str(ds.get("PatientID", "")) != FAULT_PATIENT:
        real_deidentify(ctx, study_id)
        return
    validate_value("DA", str(ds.PatientName), config.WARN)  # pydicom warns, quoting the value
    raise ValueError(
        f"Invalid value for VR PN: {str(ds.PatientName)!r} (patient {ds.PatientID}, study date "
        f"{ds.StudyDate}, institution {str(ds.get('InstitutionName', ''))!r})"
    )


service.deidentify_study = deidentify_or_raise  # before the tasks capture it

if __name__ == "__main__":
    from radpipe.deid import tasks

    configure_logging(get_settings().log_level)
    run_worker(tasks.celery, "deid", 1, "solo", warn_root=False)
