"""The error hierarchy shared by every service, mapped to HTTP once (see ``api.py``).

Messages name the fix, as pydicom's ``InvalidDicomError`` does.
"""

from __future__ import annotations


class RadpipeError(Exception):
    """Base class; ``status`` is the HTTP status an API answers with."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidDicom(RadpipeError):
    """A part or file is not usable DICOM. ``failure_reason`` is the PS3.18 Table I.2-2 code."""

    status = 400

    def __init__(self, message: str, failure_reason: int = 0xC000) -> None:
        super().__init__(message)
        self.failure_reason = failure_reason


class BadRequest(RadpipeError):
    status = 400


class UnsupportedMediaType(RadpipeError):
    status = 415


class PayloadTooLarge(RadpipeError):
    status = 413


class Unauthorized(RadpipeError):
    status = 401


class Forbidden(RadpipeError):
    status = 403


class NotFound(RadpipeError):
    status = 404


class NotAcceptable(RadpipeError):
    """No representation the client accepts (PS3.18: 406)."""

    status = 406


class Conflict(RadpipeError):
    status = 409


class DeidPolicyViolation(RadpipeError):
    """De-identification refused an object (e.g. burned-in annotation); it stays in ``raw``."""

    status = 422


class TransientError(RadpipeError):
    """A failure worth retrying (store or broker briefly unavailable)."""

    status = 503


class PipelineError(RadpipeError):
    """A stage cannot finish for this study; the study ends ``failed`` with this reason."""

    status = 422
