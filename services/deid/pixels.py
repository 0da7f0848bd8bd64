"""Pixels that may show identity (PS3.15 E.3.1 Clean Pixel Data): detection and the cleaner.

An instance at risk is quarantined unless its source's profile configures rectangles to blank
(``clean_pixel_regions``); then :func:`clean_pixels` blanks them in every frame.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

#: SOP classes whose pixels commonly carry burned-in text or a face (PS3.15 E.3.1 notes).
AT_RISK_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic",
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA",
}
AT_RISK_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES", "GM", "DOC", "SM"})


def burned_in_risk(ds: Dataset) -> str | None:
    """Why the pixels may carry identity (PS3.15 E.3.1, Clean Pixel Data), or ``None``."""
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class in AT_RISK_SOP_CLASSES:
        return f"{AT_RISK_SOP_CLASSES[sop_class]} images often carry burned-in text"
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in AT_RISK_MODALITIES and "PixelData" in ds:
        return f"modality {modality} often carries burned-in text"
    image_type = [str(v).upper() for v in ds.get("ImageType", []) or []]
    if "SCREEN SAVE" in image_type or "DOSE_INFO" in image_type:
        return "a screen capture (dose or annotation screen)"
    return None


def clean_pixels(ds: Dataset, regions: Iterable[tuple[int, int, int, int]]) -> None:
    """A configured pixel cleaner (Clean Pixel Data, 113101): blank the regions in every frame.

    The pixels are decoded and written back uncompressed (Explicit VR Little Endian).
    """
    pixels = np.array(ds.pixel_array)  # writable copy
    frames = pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[np.newaxis]
    for x0, y0, x1, y1 in regions:
        frames[:, y0:y1, x0:x1, ...] = 0
    ds.PixelData = pixels.tobytes()
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if "PhotometricInterpretation" in ds and str(ds.PhotometricInterpretation).startswith(
            "YBR"
        ):
            ds.PhotometricInterpretation = "RGB"
    ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
