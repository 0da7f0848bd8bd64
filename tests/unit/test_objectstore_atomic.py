"""The folder object store writes atomically: a reader sees the old object or the whole new one;
a writer that dies mid-write leaves only a temp file, never listed, and swept later."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from radpipe.common.objectstore import TEMP_PREFIX, FolderObjectStore


class Breaks(io.BytesIO):
    """A source that fails after its first chunk, as a dying upload does."""

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() > 0:
            raise ConnectionResetError("the client went away")
        return super().read(4)


def test_a_write_that_fails_midway_leaves_the_old_object_and_no_temp_file(tmp_path: Path) -> None:
    store = FolderObjectStore(tmp_path)
    store.put("raw", "s/1.dcm", b"old object")
    with pytest.raises(ConnectionResetError):
        store.put_file("raw", "s/1.dcm", Breaks(b"new object, longer"), 18)
    assert store.get("raw", "s/1.dcm") == b"old object"
    assert list(store.list("raw")) == ["s/1.dcm"]
    assert not [p for p in (tmp_path / "raw").rglob(TEMP_PREFIX + "*")]


def test_a_temp_file_left_by_a_killed_writer_is_never_an_object_and_is_swept(
    tmp_path: Path,
) -> None:
    store = FolderObjectStore(tmp_path)
    store.put("raw", "s/1.dcm", b"whole")
    left = tmp_path / "raw" / "s" / f"{TEMP_PREFIX}abc123"  # what a SIGKILLed writer leaves
    left.write_bytes(b"ha")
    assert list(store.list("raw")) == ["s/1.dcm"]
    assert not store.exists("raw", f"s/{TEMP_PREFIX}abc123")
    assert store.sweep_temp(older_than=3600) == 0  # a writer may still be at it
    hour_ago = time.time() - 7200
    os.utime(left, (hour_ago, hour_ago))
    assert store.sweep_temp(older_than=3600) == 1
    assert not left.exists() and store.get("raw", "s/1.dcm") == b"whole"
