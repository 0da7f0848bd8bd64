"""The DIMSE door: a C-STORE / C-ECHO SCP (pynetdicom) feeding the same path as STOW-RS.

Each received instance is written as the Part 10 stream the sender encoded (file meta
included) and goes through :class:`StowSession`, so validation, raw storage, the study
record and the stability check are exactly those of STOW-RS.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.common.auth import AuthService, Principal
from services.common.context import Context
from services.common.logging import get_logger

from .multipart import Part
from .service import StowSession

log = get_logger("radpipe.dimse")
SUCCESS = 0x0000
#: PS3.4 Annex B: refused, not authorised (used for a calling AE title not on the list).
REFUSED_NOT_AUTHORIZED = 0x0124


def handle_store(event: Any, ctx: Context) -> int:
    """EVT_C_STORE: pynetdicom passes the event first, then the bound arguments."""
    calling = event.assoc.requestor.ae_title.strip()
    allowed = ctx.settings.dimse_calling_aets
    if allowed and calling not in allowed:
        log.warning("dimse.refused", calling_ae=calling)
        return REFUSED_NOT_AUTHORIZED
    session = StowSession(ctx, None)
    outcome = session.add(Part.from_bytes("application/dicom", event.encoded_dataset()))
    if outcome.failure_reason is not None:
        return outcome.failure_reason
    session.commit()
    AuthService(ctx.documents).audit(
        Principal(f"dimse:{calling}", "modality", "dimse"), "c-store", outcome.study_id or "-"
    )
    return SUCCESS


def build_ae(ctx: Context) -> AE:
    ae = AE(ae_title=ctx.settings.dimse_ae_title)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.maximum_pdu_size = 0
    return ae


def start_scp(ctx: Context, host: str = "0.0.0.0") -> Any:
    """Start the SCP on ``RADPIPE_DIMSE_PORT`` in background threads; returns the server."""
    assert ctx.settings.dimse_port is not None
    handlers: list[Any] = [(evt.EVT_C_STORE, handle_store, [ctx])]
    server = build_ae(ctx).start_server(
        (host, ctx.settings.dimse_port), block=False, evt_handlers=handlers
    )
    log.info("dimse.listening", port=ctx.settings.dimse_port, ae=ctx.settings.dimse_ae_title)
    return server
