"""WADO-RS retrieval from the de-identified store (PS3.18 10.4): instances, metadata and
rendered images (frames and bulk data are cut in ``bulkdata``). No FastAPI here."""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian

from radpipe.common.context import Context
from radpipe.common.dicomindex import INDEX
from radpipe.common.dicomio import check_pixel_size, read_part10, write_part10
from radpipe.common.errors import BadRequest, NotAcceptable, NotFound
from radpipe.common.identity import pseudonymous_uid
from radpipe.common.studies import UID_PATTERN

from .bulkdata import PIXEL_DATA


def entries(
    ctx: Context,
    study: str | None = None,
    series: str | None = None,
    instance: str | None = None,
    *,
    mapped: bool = False,
) -> list[dict[str, Any]]:
    """Index entries under a study/series/instance; NotFound when a named one has none, and
    BadRequest when a path segment is not a UID at all (PS3.18 8.2: UIDs per PS3.5 9.1)."""
    check_path(study, series, instance)
    query: dict[str, Any] = {}
    if study:
        query["attributes.StudyInstanceUID"] = study
    if series:
        query["attributes.SeriesInstanceUID"] = series
    if instance:
        query["_id"] = instance
    found = list(ctx.documents.collection(INDEX).find(query))
    if not found and study and not mapped:
        # A RetrieveURL from a STOW-RS response names the original UIDs: map them to their
        # keyed pseudonyms (the caller knows the originals already; reads are audited).
        secret = ctx.study_key(study)
        return entries(
            ctx,
            pseudonymous_uid(secret, study),
            pseudonymous_uid(secret, series) if series else None,
            pseudonymous_uid(secret, instance) if instance else None,
            mapped=True,
        )
    if not found and (study or series or instance):
        raise NotFound("no such study, series or instance in the de-identified store")
    found.sort(
        key=lambda e: (
            str(e["attributes"].get("SeriesNumber", "")),
            int(e["attributes"].get("InstanceNumber") or 0),
        )
    )
    return found


def check_path(study: str | None, series: str | None = None, instance: str | None = None) -> None:
    """BadRequest when a path segment is not a UID (PS3.18 8.2: UIDs per PS3.5 9.1)."""
    for name, uid in (("study", study), ("series", series), ("instance", instance)):
        if uid is not None and (len(uid) > 64 or not UID_PATTERN.fullmatch(uid)):
            raise BadRequest(
                f"the {name} UID in the path, {uid[:80]!r}, is not a UID: digits and dots, "
                "at most 64 characters"
            )


def scope(
    ctx: Context, study: str | None, series: str | None = None
) -> tuple[str | None, str | None]:
    """The de-identified study/series UIDs a search under a path names (original UIDs from a
    STOW-RS response are mapped to their pseudonyms, as in :func:`entries`); NotFound when the
    index holds none, read from the index, not by loading the study."""
    check_path(study, series)
    if not study:
        return None, None
    index = ctx.documents.collection(INDEX)
    secret = ctx.study_key(study)
    candidates = [(study, series)]
    candidates.append(
        (pseudonymous_uid(secret, study), pseudonymous_uid(secret, series) if series else None)
    )
    for uids in candidates:
        query = {"attributes.StudyInstanceUID": uids[0]}
        if uids[1]:
            query["attributes.SeriesInstanceUID"] = uids[1]
        if index.find_one(query) is not None:
            return uids
    raise NotFound("no such study, series or instance in the de-identified store")


def read_bytes(ctx: Context, entry: dict[str, Any]) -> bytes:
    return ctx.objects.get(entry["bucket"], entry["key"])


def transfer_syntax(ctx: Context, entry: dict[str, Any]) -> str:
    """The transfer syntax an indexed instance is stored in (read from its file when the index
    entry predates the field)."""
    syntax = entry.get("transfer_syntax")
    if syntax:
        return str(syntax)
    ds = read_part10(io.BytesIO(read_bytes(ctx, entry)), stop_before_pixels=True)
    return str(ds.file_meta.TransferSyntaxUID)


def as_explicit_le(ctx: Context, entry: dict[str, Any]) -> bytes:
    """A stored native little-endian object re-encoded as Explicit VR Little Endian, the
    default transfer syntax of ``application/dicom`` (PS3.18 8.7.3): the values are kept,
    only the encoding changes."""
    ds = read_dataset(ctx, entry)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return write_part10(ds)


def read_dataset(ctx: Context, entry: dict[str, Any]) -> pydicom.Dataset:
    return read_part10(
        io.BytesIO(read_bytes(ctx, entry)), max_inflated_bytes=ctx.settings.max_instance_bytes
    )


def resource_path(found: list[dict[str, Any]], level: str) -> str:
    """The path (under the DICOMweb base) of the study, series or instance ``found`` belongs
    to, with its de-identified UIDs, whatever UIDs the request named (PS3.18 10.4.1)."""
    return uid_path(found[0]["attributes"], level)


def uid_path(attributes: dict[str, Any], level: str) -> str:
    """``/studies/{study}[/series/{series}[/instances/{instance}]]`` down to ``level``."""
    path = f"/studies/{attributes.get('StudyInstanceUID')}"
    if level in ("series", "instance"):
        path += f"/series/{attributes.get('SeriesInstanceUID')}"
    if level == "instance":
        path += f"/instances/{attributes.get('SOPInstanceUID')}"
    return path


def _uri(url: str) -> Callable[[pydicom.DataElement], str]:
    return lambda _element: url


def _to_json(ds: pydicom.Dataset, instance_url: str, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """DICOM JSON (PS3.18 F.2) whose BulkDataURIs encode each element's position: the tag,
    or sequence tag / item number (from 1) / tag, at any nesting depth."""
    out: dict[str, Any] = {}
    for element in ds:
        key = f"{element.tag:08X}"
        here = (*path, key)
        if element.VR == "SQ":
            items = [
                _to_json(item, instance_url, (*here, str(number)))
                for number, item in enumerate(element.value or [], 1)
            ]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        # Pixel data is always a BulkDataURI (never InlineBinary, however small).
        threshold = 0 if element.tag == PIXEL_DATA and not path else 1024
        out[key] = element.to_json_dict(
            _uri(f"{instance_url}/bulkdata/{'/'.join(here)}"), threshold
        )
    return out


def metadata(ctx: Context, found: list[dict[str, Any]], base_url: str) -> list[dict[str, Any]]:
    """DICOM JSON per instance; binary values above 768 bytes, and pixel data always, as
    BulkDataURI (PS3.18 8.7.2) answered by :func:`bulkdata`."""
    out = []
    for entry in found:
        ds = read_dataset(ctx, entry)
        out.append(_to_json(ds, base_url + resource_path([entry], "instance")))
    return out


def render(
    ctx: Context,
    entry: dict[str, Any],
    *,
    frame: int,
    media_type: str,
    window: tuple[float, float] | None,
    quality: int,
    viewport: tuple[int, int] | None = None,
) -> bytes:
    """A windowed 8-bit rendering (PNG or JPEG) of one frame, shrunk to ``viewport``.

    The declared pixel size is checked against ``RADPIPE_MAX_PIXEL_BYTES`` and
    ``RADPIPE_MAX_FRAME_BYTES`` before anything is decoded (400), and only the frame asked
    for is decoded (``pydicom.pixels.pixel_array(..., index=)``), never every frame.
    """
    ds = read_part10(
        io.BytesIO(read_bytes(ctx, entry)), max_inflated_bytes=ctx.settings.max_instance_bytes
    )
    if "PixelData" not in ds:
        raise BadRequest("the instance has no pixel data to render")
    check_pixel_size(
        ds,
        max_pixel_bytes=ctx.settings.max_pixel_bytes,
        max_frame_bytes=ctx.settings.max_frame_bytes,
    )
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= count:
        raise NotFound(f"frame {frame} does not exist: the instance has {count} frame(s)")
    try:
        pixels = pixel_array(ds, index=frame - 1)
    except Exception as exc:  # no decoder for this transfer syntax
        raise NotAcceptable(
            f"cannot render transfer syntax {ds.file_meta.TransferSyntaxUID}: retrieve the "
            "instance or its frames instead"
        ) from exc
    values = pixels.astype(np.float32) * float(ds.get("RescaleSlope", 1) or 1)
    values += float(ds.get("RescaleIntercept", 0) or 0)
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = ds.WindowCenter, ds.WindowWidth
        center = center[0] if isinstance(center, pydicom.multival.MultiValue) else center
        width = width[0] if isinstance(width, pydicom.multival.MultiValue) else width
        window = (float(center), float(width))
    if window is None:
        low, high = float(values.min()), float(values.max())
    else:
        low, high = window[0] - window[1] / 2, window[0] + window[1] / 2
    scaled = np.clip((values - low) / max(high - low, 1e-6), 0, 1) * 255
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 255 - scaled
    image = Image.fromarray(scaled.astype(np.uint8))
    if viewport is not None:
        image.thumbnail(viewport)  # keeps the aspect ratio
    buffer = io.BytesIO()
    if media_type == "image/png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def multipart_stream(
    parts: Iterator[tuple[bytes, str, str]], root_type: str
) -> tuple[Iterator[bytes], str]:
    """A ``multipart/related`` body (RFC 2387, PS3.18 8.7.1) produced one part at a time from
    ``(data, content type, location)`` triples, and its Content-Type: a study retrieval holds
    one instance in memory, not all of them (and not twice). Framed as
    ``radpipe.common.mime.encode_multipart`` frames a body built whole."""
    boundary = "radpipe-" + secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        for data, content_type, location in parts:
            head = f"--{boundary}\r\nContent-Type: {content_type}\r\n"
            if location:
                head += f"Content-Location: {location}\r\n"
            yield head.encode() + b"\r\n"
            yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return body(), f'multipart/related; type="{root_type}"; boundary={boundary}'
