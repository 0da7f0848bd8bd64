"""The DIMSE door: a C-STORE / C-ECHO SCP (pynetdicom) feeding the same path as STOW-RS.

Each received instance is written as the Part 10 stream the sender encoded (file meta
included) and goes through :class:`StowSession`, so validation, raw storage, the study
record and the stability check are exactly those of STOW-RS.

AE titles are checked at association negotiation (PS3.8 Table 9-21): a calling AE
title not in ``RADPIPE_DIMSE_CALLING_AETS`` (when that list is set) is rejected with
A-ASSOCIATE-RJ result 1 (permanent), source 1 (service user), reason 3 "calling AE title not
recognized". The called AE title is accepted whatever it is, as Orthanc and dcmtk's storescp
do by default (dcmtk's ``storescu`` calls ``ANY-SCP`` unless given ``-aec``); with
``RADPIPE_DIMSE_CHECK_CALLED_AE=true`` one other than ``RADPIPE_DIMSE_AE_TITLE`` is rejected
with reason 7 "called AE title not recognized".
"""

from __future__ import annotations

from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from radpipe.common.auth import AuthService, Principal
from radpipe.common.context import Context
from radpipe.common.logging import get_logger

from .multipart import Part
from .service import StowSession

log = get_logger("radpipe.dimse")
SUCCESS = 0x0000


def handle_store(event: Any, ctx: Context) -> int:
    """EVT_C_STORE: pynetdicom passes the event first, then the bound arguments. Only
    associations from allowed calling AE titles get this far (see :func:`build_ae`)."""
    calling = event.assoc.requestor.ae_title.strip()
    session = StowSession(ctx, None, source=calling)  # the calling AE picks the deid profile
    outcome = session.add(Part.from_bytes("application/dicom", event.encoded_dataset()))
    if outcome.failure_reason is not None:
        return outcome.failure_reason
    session.commit()
    AuthService(ctx.documents).audit(
        Principal(f"dimse:{calling}", "modality", "dimse"), "c-store", outcome.study_id or "-"
    )
    return SUCCESS


def handle_rejected(event: Any) -> None:
    """EVT_REJECTED: log who was turned away at association negotiation, and why."""
    request = event.assoc.requestor.primitive
    log.warning(
        "dimse.rejected",
        calling_ae=str(getattr(request, "calling_ae_title", "")).strip(),
        called_ae=str(getattr(request, "called_ae_title", "")).strip(),
    )


def build_ae(ctx: Context) -> AE:
    settings = ctx.settings
    ae = AE(ae_title=settings.dimse_ae_title)
    ae.require_calling_aet = list(settings.dimse_calling_aets)  # empty: any calling AE
    ae.require_called_aet = settings.dimse_check_called_ae
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.maximum_pdu_size = 0
    return ae


def start_scp(ctx: Context, host: str = "0.0.0.0") -> Any:
    """Start the SCP on ``RADPIPE_DIMSE_PORT`` in background threads; returns the server."""
    assert ctx.settings.dimse_port is not None
    handlers: list[Any] = [
        (evt.EVT_C_STORE, handle_store, [ctx]),
        (evt.EVT_REJECTED, handle_rejected),
    ]
    server = build_ae(ctx).start_server(
        (host, ctx.settings.dimse_port), block=False, evt_handlers=handlers
    )
    log.info("dimse.listening", port=ctx.settings.dimse_port, ae=ctx.settings.dimse_ae_title)
    return server
