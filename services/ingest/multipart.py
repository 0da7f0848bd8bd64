"""A lenient ``multipart/related`` reader for STOW-RS bodies (RFC 2387, PS3.18 8.6.1.2).

Accepts what real clients send: quoted or unquoted ``boundary``/``type`` parameters, a leading
CRLF before the first delimiter (dicomweb-client), per-part headers such as Content-Length
(Orthanc) and part types with parameters (``application/dicom; transfer-syntax=...``).
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from enum import Enum, auto
from typing import BinaryIO

from radpipe.common.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from radpipe.common.mime import parse_media_type

#: Parts up to this size stay in memory; larger ones spill to a temporary file.
SPOOL_BYTES = 8 * 1024 * 1024
#: A part's header block larger than this is not a header block.
MAX_HEADER_BYTES = 64 * 1024


@dataclass
class Part:
    """One body part; ``file`` holds its bytes (in memory or spilled to disk), at offset 0."""

    content_type: str
    file: BinaryIO
    size: int
    truncated: bool = False

    @classmethod
    def from_bytes(cls, content_type: str, data: bytes, truncated: bool = False) -> Part:
        return cls(content_type, io.BytesIO(data), len(data), truncated)

    def read(self) -> bytes:
        self.file.seek(0)
        data = self.file.read()
        self.file.seek(0)
        return data

    def close(self) -> None:
        self.file.close()


def stow_boundary(content_type: str) -> str:
    """Validate a STOW-RS request Content-Type and return its boundary.

    Raises ``UnsupportedMediaType`` for anything but ``multipart/related`` with
    ``type=application/dicom`` (PS3.18 10.5.1.1) and ``BadRequest`` without a boundary.
    """
    media, params = parse_media_type(content_type or "")
    if media != "multipart/related":
        raise UnsupportedMediaType(
            f'STOW-RS needs Content-Type multipart/related; type="application/dicom", '
            f"got {media or 'none'!r}"
        )
    part_type = params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType(
            f'this server stores type="application/dicom" parts, got type={part_type!r}'
        )
    boundary = params.get("boundary")
    if not boundary:
        raise BadRequest("the multipart/related Content-Type has no boundary parameter")
    return boundary


class _State(Enum):
    PREAMBLE = auto()
    AFTER_DELIMITER = auto()
    HEADERS = auto()
    BODY = auto()
    DONE = auto()


class MultipartReader:
    """Incremental ``multipart/related`` parser: feed chunks as they arrive, get whole parts.

    Memory stays bounded whatever the request size: a part's bytes go to a spooled temporary
    file, and only a delimiter's length of look-behind is buffered. ``max_part_bytes`` bounds one
    part (``PayloadTooLarge``, answered 413).
    """

    def __init__(self, boundary: str, *, max_part_bytes: int, spool_bytes: int = SPOOL_BYTES):
        self._first = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._first
        self._max_part = max_part_bytes
        self._spool = spool_bytes
        self._buffer = bytearray()
        self._state = _State.PREAMBLE
        self._part: Part | None = None
        self._seen_delimiter = False

    def feed(self, chunk: bytes) -> list[Part]:
        self._buffer += chunk
        done: list[Part] = []
        while self._step(done):
            pass
        return done

    def close(self) -> list[Part]:
        """End of the body: a part cut off before its delimiter is returned ``truncated``."""
        done: list[Part] = []
        if not self._seen_delimiter:
            raise BadRequest("the body contains no multipart delimiter matching the boundary")
        if self._state is _State.BODY and self._part is not None:
            self._write(bytes(self._buffer))
            self._part.truncated = True
            self._part.file.seek(0)
            done.append(self._part)
        elif self._state in (_State.HEADERS, _State.AFTER_DELIMITER):
            done.append(Part.from_bytes("application/dicom", b"", truncated=True))
        self._part = None
        self._buffer.clear()
        self._state = _State.DONE
        return done

    def _step(self, done: list[Part]) -> bool:
        """Advance as far as the buffer allows; False when more input is needed."""
        buffer = self._buffer
        if self._state is _State.PREAMBLE:
            index = buffer.find(self._first)
            if index < 0:
                del buffer[: max(0, len(buffer) - len(self._first))]
                return False
            del buffer[: index + len(self._first)]
            self._seen_delimiter = True
            self._state = _State.AFTER_DELIMITER
            return True
        if self._state is _State.AFTER_DELIMITER:
            if len(buffer) < 2:
                return False
            if buffer.startswith(b"--"):
                self._state = _State.DONE
                return False
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                return False
            del buffer[:line_end]  # keep the CRLF: an empty header block is CRLF CRLF
            self._state = _State.HEADERS
            return True
        if self._state is _State.HEADERS:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    raise BadRequest("a part's header block is larger than 64 KiB")
                return False
            headers = _headers(bytes(buffer[2:end]))
            del buffer[: end + 4]
            spooled = tempfile.SpooledTemporaryFile(max_size=self._spool)  # noqa: SIM115
            content_type = headers.get("content-type", "application/dicom")
            self._part = Part(content_type, spooled, 0)  # type: ignore[arg-type]
            self._state = _State.BODY
            return True
        if self._state is _State.BODY:
            index = buffer.find(self._delimiter)
            if index < 0:
                keep = len(self._delimiter) - 1
                if len(buffer) > keep:
                    self._write(bytes(buffer[: len(buffer) - keep]))
                    del buffer[: len(buffer) - keep]
                return False
            self._write(bytes(buffer[:index]))
            del buffer[: index + len(self._delimiter)]
            assert self._part is not None
            self._part.file.seek(0)
            done.append(self._part)
            self._part = None
            self._state = _State.AFTER_DELIMITER
            return True
        return False

    def _write(self, data: bytes) -> None:
        assert self._part is not None
        self._part.size += len(data)
        if self._part.size > self._max_part:
            raise PayloadTooLarge(
                f"an instance exceeds RADPIPE_MAX_INSTANCE_BYTES ({self._max_part} bytes)"
            )
        self._part.file.write(data)


def split_parts(body: bytes, boundary: str, max_part_bytes: int = 2**40) -> list[Part]:
    """Parse a complete body at once (tests and small callers)."""
    reader = MultipartReader(boundary, max_part_bytes=max_part_bytes)
    return reader.feed(body) + reader.close()


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return headers
