"""A checker of the DICOM JSON Model (PS3.18 Annex F.2), and a fixture that runs it on every
``application/dicom+json`` response a test receives, whatever client fetched it.

Test modules of the DICOMweb tier import :func:`every_dicom_json_response_is_checked`; it is
autouse, so each response of httpx (and FastAPI's TestClient) and of requests (dicomweb-client)
is checked as it arrives, and a violation fails the test that received it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from pydicom.valuerep import VR

#: PS3.5 Table 6.2-1 (pydicom's list, less its "US or SS"-style ambiguous entries).
VRS = frozenset(vr.value for vr in VR if " " not in vr.value)
PN_GROUPS = frozenset({"Alphabetic", "Ideographic", "Phonetic"})
_KEY = re.compile(r"[0-9A-F]{8}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def check_model(body: Any, where: str = "$") -> None:
    """Raise AssertionError, with the JSON path, where ``body`` leaves the DICOM JSON Model:
    a dataset object or an array of them; keys of 8 uppercase hex digits in ascending tag
    order (F.2.2) and no group length (gggg,0000); each attribute with a valid ``vr`` and at
    most one of Value, BulkDataURI, InlineBinary (F.2.3); Value a non-empty array; PN values
    objects of Alphabetic/Ideographic/Phonetic strings (F.2.4); SQ values dataset objects,
    checked the same way at any depth."""
    if isinstance(body, list):
        for index, dataset in enumerate(body):
            check_dataset(dataset, f"{where}[{index}]")
    else:
        check_dataset(body, where)


def check_dataset(dataset: Any, where: str) -> None:
    assert isinstance(dataset, dict), f"{where}: a dataset is a JSON object, got {dataset!r}"
    keys = list(dataset)
    for key in keys:
        assert _KEY.fullmatch(key), f"{where}: key {key!r} is not 8 uppercase hex digits"
        assert not key.endswith("0000"), f"{where}: group length {key} in the model"
    assert keys == sorted(keys, key=lambda k: int(k, 16)), f"{where}: keys out of order: {keys}"
    for key, attribute in dataset.items():
        check_attribute(attribute, f"{where}.{key}")


def check_attribute(attribute: Any, where: str) -> None:
    assert isinstance(attribute, dict), f"{where}: an attribute is a JSON object"
    vr = attribute.get("vr")
    assert vr in VRS, f"{where}: vr {vr!r} missing or not a VR"
    extra = set(attribute) - {"vr", "Value", "BulkDataURI", "InlineBinary"}
    assert not extra, f"{where}: unexpected members {sorted(extra)}"
    payloads = [name for name in ("Value", "BulkDataURI", "InlineBinary") if name in attribute]
    assert len(payloads) <= 1, f"{where}: more than one of {payloads}"
    if "BulkDataURI" in attribute:
        assert isinstance(attribute["BulkDataURI"], str) and attribute["BulkDataURI"], where
    if "InlineBinary" in attribute:
        inline = attribute["InlineBinary"]
        assert isinstance(inline, str) and _BASE64.fullmatch(inline), f"{where}: not base64"
    if "Value" not in attribute:
        return
    values = attribute["Value"]
    assert isinstance(values, list) and values, f"{where}: Value is a non-empty array"
    for index, value in enumerate(values):
        here = f"{where}.Value[{index}]"
        if vr == "SQ":
            check_dataset(value, here)
        elif vr == "PN":
            if value is None:
                continue
            assert isinstance(value, dict) and value, f"{here}: a PN value is an object"
            assert set(value) <= PN_GROUPS, f"{here}: PN groups {sorted(value)}"
            assert all(isinstance(v, str) for v in value.values()), here
        else:
            assert not isinstance(value, dict | list), f"{here}: {vr} value is not a scalar"


def _is_dicom_json(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "application/dicom+json"


@pytest.fixture(autouse=True)
def every_dicom_json_response_is_checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Check every DICOM JSON response body this test receives; yields the URLs checked."""
    checked: list[str] = []
    httpx_send = httpx.Client.send
    requests_send = requests.Session.send

    def check(url: str, method: str, content_type: str | None, content: bytes) -> None:
        if method != "HEAD" and _is_dicom_json(content_type) and content:
            check_model(json.loads(content), f"{method} {url}")
            checked.append(url)

    def checked_httpx(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> Any:
        response = httpx_send(self, request, **kwargs)
        if _is_dicom_json(response.headers.get("content-type")):
            response.read()
            check(
                str(request.url), request.method, response.headers["content-type"], response.content
            )
        return response

    def checked_requests(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        response = requests_send(self, request, **kwargs)
        content_type = response.headers.get("content-type")
        if _is_dicom_json(content_type):
            check(request.url, request.method, content_type, response.content)
        return response

    monkeypatch.setattr(httpx.Client, "send", checked_httpx)
    monkeypatch.setattr(requests.Session, "send", checked_requests)
    yield checked
