"""``RADPIPE_SECRET_KEY`` rules, shared by :class:`~radpipe.common.settings.Settings` and the
offline ``radpipe deid`` tool.

The offline tool reads only this one variable and must start fast (it is benchmarked as a
whole process), so it uses :func:`secret_key_from_environment` instead of loading the full
settings model; both apply :func:`check_secret_key`.
"""

from __future__ import annotations

import os

#: The development secret of ``radpipe up``; refused everywhere else.
DEFAULT_SECRET_KEY = "radpipe-insecure-development-key-change-me"


def check_secret_key(value: str) -> None:
    """Raise ``ValueError`` naming the fix when ``value`` may not key real data."""
    if value == DEFAULT_SECRET_KEY:
        raise ValueError(
            "RADPIPE_SECRET_KEY is the development default; set it to a long random value "
            "(e.g. `openssl rand -hex 32`) or use `radpipe up` for a local trial"
        )
    if len(value) < 16:
        raise ValueError("RADPIPE_SECRET_KEY must be at least 16 characters long")


def secret_key_from_environment() -> bytes:
    """The key from ``RADPIPE_SECRET_KEY`` (checked), for tools that need nothing else."""
    value = os.environ.get("RADPIPE_SECRET_KEY", "") or DEFAULT_SECRET_KEY
    check_secret_key(value)
    return value.encode()
