"""WADO-RS retrieval from the de-identified store (PS3.18 10.4): instances, metadata,
frames and rendered images. No FastAPI here."""

from __future__ import annotations

import io
import secrets
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import generate_frames

from services.common.context import Context
from services.common.dicomindex import INDEX
from services.common.dicomio import read_part10
from services.common.errors import BadRequest, NotAcceptable, NotFound
from services.common.identity import pseudonymous_uid


def entries(
    ctx: Context,
    study: str | None = None,
    series: str | None = None,
    instance: str | None = None,
    *,
    mapped: bool = False,
) -> list[dict[str, Any]]:
    """Index entries under a study/series/instance; NotFound when a named one has none."""
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
        secret = ctx.settings.secret
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


def read_bytes(ctx: Context, entry: dict[str, Any]) -> bytes:
    return ctx.objects.get(entry["bucket"], entry["key"])


def multipart(parts: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """(body, boundary) of a multipart/related message."""
    boundary = secrets.token_hex(16)
    body = bytearray()
    for content_type, data in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), boundary


def metadata(ctx: Context, found: list[dict[str, Any]], base_url: str) -> list[dict[str, Any]]:
    """DICOM JSON per instance; bulk data (pixels) as BulkDataURI, never inline."""
    out = []
    for entry in found:
        ds = read_part10(io.BytesIO(read_bytes(ctx, entry)))
        a = entry["attributes"]
        instance_url = (
            f"{base_url}/studies/{a['StudyInstanceUID']}/series/{a['SeriesInstanceUID']}"
            f"/instances/{a['SOPInstanceUID']}"
        )

        def bulk(element: pydicom.DataElement, url: str = instance_url) -> str:
            if element.tag == 0x7FE00010:
                return f"{url}/frames/1"
            return f"{url}/bulkdata/{element.tag:08X}"

        out.append(ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=bulk))
    return out


def frames(ctx: Context, entry: dict[str, Any], numbers: list[int]) -> list[bytes]:
    """Raw frame bytes (numbered from 1) in the stored transfer syntax."""
    ds = read_part10(io.BytesIO(read_bytes(ctx, entry)))
    if "PixelData" not in ds:
        raise BadRequest("the instance has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    for number in numbers:
        if not 1 <= number <= count:
            raise NotFound(f"frame {number} does not exist: the instance has {count} frame(s)")
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        all_frames = list(generate_frames(ds.PixelData, number_of_frames=count))
        return [all_frames[n - 1] for n in numbers]
    size = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8
    data = bytes(ds.PixelData)
    return [data[(n - 1) * size : n * size] for n in numbers]


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
    """A windowed 8-bit rendering (PNG or JPEG) of one frame, shrunk to ``viewport``."""
    ds = read_part10(io.BytesIO(read_bytes(ctx, entry)))
    if "PixelData" not in ds:
        raise BadRequest("the instance has no pixel data to render")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # no decoder for this transfer syntax
        raise NotAcceptable(
            f"cannot render transfer syntax {ds.file_meta.TransferSyntaxUID}: retrieve the "
            "instance or its frames instead"
        ) from exc
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= count:
        raise NotFound(f"frame {frame} does not exist: the instance has {count} frame(s)")
    if count > 1:
        pixels = pixels[frame - 1]
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
