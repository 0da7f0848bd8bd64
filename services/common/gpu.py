"""Whether this host has a CUDA device, asked without starting CUDA in the asking process.

``torch.cuda.is_available()`` initialises the CUDA runtime; a process forked after that cannot
use CUDA ("poison fork": its first CUDA call fails with an initialization error). A Celery
prefork worker's parent decides its queue and checks its device before it forks the children
that run the model, so it asks NVML for the device count instead (what
``PYTORCH_NVML_BASED_CUDA_CHECK=1`` makes ``is_available`` do). The children choose their
device with :func:`radpipe.inference.bundle.select_device`.
"""

from __future__ import annotations


def cuda_present() -> bool:
    """A CUDA build of torch and at least one device NVML counts (the CUDA runtime's count
    only where NVML cannot answer)."""
    import torch  # only here: the stages without a model never load it otherwise

    return torch.cuda.device_count() > 0
