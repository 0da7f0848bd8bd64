"""What a de-identified object says about itself (PS3.15 E.1.1): Patient Identity Removed,
De-identification Method and its CID 7050 codes, Longitudinal Temporal Information Modified,
and a File Meta Information rebuilt without the source's AE titles or private meta."""

from __future__ import annotations

from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_sequence
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian

from .profile import Profile

IMPLEMENTATION_CLASS_UID = "2.25.302276541947036655349212185420826170493"
IMPLEMENTATION_VERSION = "RADPIPE_020"

_METHOD_CODES = BaseTag(0x00120064)


def rebuild_file_meta(ds: Dataset) -> None:
    """Rebuild the File Meta Information: no source AE, no private meta (PS3.10 7.1)."""
    old = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = old.get("TransferSyntaxUID") or ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    if getattr(ds, "preamble", None):
        ds.preamble = b"\x00" * 128  # 128 free bytes (PS3.10 7.1) could carry anything


class Markers:
    """The markers of one profile; its code items are built and encoded once."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._codes: dict[bool, list[Dataset]] = {}
        self._encoded: dict[tuple[bool, bool], RawDataElement] = {}

    def _code_items(self, pixels_cleaned: bool) -> list[Dataset]:
        """The method code items of this profile, built once (shared by every output)."""
        cached = self._codes.get(pixels_cleaned)
        if cached is None:
            cached = []
            for value, meaning in self.profile.method_codes(pixels_cleaned):
                item = Dataset()
                item.add_new(0x00080100, "SH", value)
                item.add_new(0x00080102, "SH", "DCM")
                item.add_new(0x00080104, "LO", meaning)
                cached.append(item)
            self._codes[pixels_cleaned] = cached
        return cached

    def _encoded_codes(self, pixels_cleaned: bool, implicit: bool) -> RawDataElement:
        """The method code sequence as an already-encoded element (copied as is on write)."""
        key = (pixels_cleaned, implicit)
        raw = self._encoded.get(key)
        if raw is None:
            element = DataElement(_METHOD_CODES, "SQ", Sequence(self._code_items(pixels_cleaned)))
            buffer = DicomBytesIO()
            buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
            write_sequence(buffer, element, [default_encoding])
            value = buffer.getvalue()
            raw = RawDataElement(
                _METHOD_CODES, None if implicit else "SQ", len(value), value, 0, implicit, True
            )
            self._encoded[key] = raw
        return raw

    def apply(self, ds: Dataset, pixels_cleaned: bool) -> None:
        """PS3.15 E.1.1: Patient Identity Removed, the method and its codes, and
        Longitudinal Temporal Information Modified; earlier methods and codes are kept."""
        ds.add_new(0x00120062, "CS", "YES")
        ours = self.profile.method_text()
        earlier = ds.get("DeidentificationMethod")
        if earlier:
            values = [earlier] if isinstance(earlier, str) else [str(m) for m in earlier]
            methods = [m for m in values if m and m != ours] + [ours]
        else:
            methods = [ours]
        ds.add_new(0x00120063, "LO", methods if len(methods) > 1 else ours)
        syntax = ds.file_meta.TransferSyntaxUID
        if _METHOD_CODES not in ds and syntax.is_little_endian and not syntax.is_deflated:
            # The usual case: our items only, already encoded once for this profile.
            ds[_METHOD_CODES] = self._encoded_codes(pixels_cleaned, syntax.is_implicit_VR)
            items = []
        else:
            items = list(ds.get("DeidentificationMethodCodeSequence", []) or [])
        present = {
            (str(i.get("CodeValue", "")), str(i.get("CodingSchemeDesignator", ""))) for i in items
        }
        if _METHOD_CODES not in ds or items:
            items += [
                item
                for item in self._code_items(pixels_cleaned)
                if (item[0x00080100].value, "DCM") not in present
            ]
            ds.add_new(_METHOD_CODES, "SQ", Sequence(items))
        ds.add_new(0x00280303, "CS", self.profile.temporal_marker())
        if pixels_cleaned:
            ds.add_new(0x00280301, "CS", "NO")
