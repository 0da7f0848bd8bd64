"""The DIMSE door: a C-STORE / C-ECHO SCP (pynetdicom) feeding the same path as STOW-RS.

Each received instance is written as a Part 10 file (pynetdicom's chunked receive: the
dataset goes to a temporary file as it arrives, never whole into memory) and goes through
:class:`StowSession`, so validation, raw storage, the study record and the stability check
are exactly those of STOW-RS.

AE titles are checked at association negotiation (PS3.8 Table 9-21): a calling AE
title not in ``RADPIPE_DIMSE_CALLING_AETS`` (when that list is set) is rejected with
A-ASSOCIATE-RJ result 1 (permanent), source 1 (service user), reason 3 "calling AE title not
recognized". The called AE title is accepted whatever it is, as Orthanc and dcmtk's storescp
do by default (dcmtk's ``storescu`` calls ``ANY-SCP`` unless given ``-aec``); with
``RADPIPE_DIMSE_CHECK_CALLED_AE=true`` one other than ``RADPIPE_DIMSE_AE_TITLE`` is rejected
with reason 7 "called AE title not recognized".

Bounded input (:class:`PduGuard`): the SCP announces ``RADPIPE_DIMSE_MAX_PDU_BYTES`` as its
Maximum Length (PS3.8 D.1) and a peer that sends a longer P-DATA-TF PDU is aborted before the
PDU's bytes are read (pynetdicom itself would read any length up to 4 GiB into memory). An
instance larger than ``RADPIPE_MAX_INSTANCE_BYTES`` (the STOW-RS limit) is drained without
being kept and answered 0xA700 "Refused: Out of Resources" (PS3.4 Table GG.4-1); nothing is
stored.

DICOM TLS (PS3.15 B.1/B.9): with ``RADPIPE_DIMSE_TLS_CERT`` the port speaks TLS only, and the
handshake runs in the association's own thread (a slow or silent peer cannot hold up the
accept loop).
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from radpipe.common.auth import AuthService, Principal
from radpipe.common.context import Context
from radpipe.common.logging import get_logger
from radpipe.common.transport import scp_context

from . import backpressure
from .multipart import Part
from .service import OUT_OF_RESOURCES, StowSession

log = get_logger("radpipe.dimse")
SUCCESS = 0x0000
P_DATA_TF = 0x04
#: PDUs other than P-DATA-TF (association negotiation, release, abort) are small; an
#: A-ASSOCIATE-RQ with 128 presentation contexts of many transfer syntaxes stays well below.
CONTROL_PDU_LIMIT = 1024**2


class PduTooLong(OSError):
    """A PDU over the announced maximum: pynetdicom's reader treats an ``OSError`` from the
    socket as the transport closing (Evt17), so the association ends unread."""


class PduGuard:
    """Wraps one association socket's ``recv`` (pynetdicom's DUL reads a PDU as a 6-byte
    header, then ``recv(length)`` of the rest, PS3.8 9.3.1).

    A P-DATA-TF PDU longer than ``max_pdu`` (any other PDU longer than
    ``CONTROL_PDU_LIMIT``) is refused before its body is read. In each PDU the data set
    fragments (PDV items whose message control header has bit 0 clear, PS3.8 E.2) are
    counted per message; once a message's data set passes ``max_instance`` bytes, its further
    fragments are passed on empty, so the message still completes (and gets its C-STORE-RSP)
    but nothing beyond the limit is kept. :meth:`over_limit` tells the C-STORE handler, in
    message order, which data sets were cut.
    """

    def __init__(self, recv: Callable[[int], bytearray], max_pdu: int, max_instance: int):
        self._recv = recv
        self.max_pdu = max_pdu
        self.max_instance = max_instance
        self._body: bytearray | None = None
        self._dataset_bytes = 0
        self._cut = False
        self._lock = threading.Lock()
        self._messages: deque[bool] = deque()

    def recv(self, nr_bytes: int) -> bytearray:
        if self._body is not None:  # the body read (and maybe rewritten) with its header
            body, self._body = self._body, None
            return body
        header = self._recv(nr_bytes)
        if nr_bytes != 6 or len(header) != 6:
            return header
        pdu_type, reserved, length = struct.unpack(">BBL", header)
        limit = self.max_pdu if pdu_type == P_DATA_TF else CONTROL_PDU_LIMIT
        if length > limit:
            log.warning("dimse.pdu_too_long", pdu_type=pdu_type, length=length, limit=limit)
            raise PduTooLong(f"PDU of {length} bytes over the maximum of {limit}")
        body = self._recv(length)
        if pdu_type == P_DATA_TF and len(body) == length:
            body = self._bound(body)
            header = bytearray(struct.pack(">BBL", pdu_type, reserved, len(body)))
        self._body = body
        return header

    def _bound(self, body: bytearray) -> bytearray:
        """The PDU with every data set fragment past the instance limit emptied (the PDU
        itself, not a copy, when nothing is cut: the usual case)."""
        items: list[tuple[int, int, int, int]] = []  # (context, control, start, end)
        cut = False
        offset = 0
        while offset + 6 <= len(body):
            (item_length,) = struct.unpack_from(">L", body, offset)
            if item_length < 2:  # malformed: leave it to pynetdicom's decoder to refuse
                return body
            context_id, control = body[offset + 4], body[offset + 5]
            start, end = offset + 6, offset + 4 + item_length
            offset = end
            keep = True
            if not control & 1:  # a data set fragment
                self._dataset_bytes += end - start
                if self._dataset_bytes > self.max_instance:
                    self._cut = cut = True
                    keep = False
                if control & 2:  # its last fragment: the message is complete
                    with self._lock:
                        self._messages.append(self._cut)
                    self._dataset_bytes, self._cut = 0, False
            items.append((context_id, control, start, end if keep else start))
        if not cut:
            return body
        out = bytearray()
        for context_id, control, start, end in items:
            out += struct.pack(">LBB", end - start + 2, context_id, control)
            out += body[start:end]
        return out + body[offset:]

    def over_limit(self) -> bool:
        """Whether the oldest data set not asked about yet was cut at the instance limit."""
        with self._lock:
            return self._messages.popleft() if self._messages else False


#: Each open association's guard (dropped with the association).
_GUARDS: weakref.WeakKeyDictionary[Any, PduGuard] = weakref.WeakKeyDictionary()


def handle_open(event: Any, ctx: Context) -> None:
    """EVT_CONN_OPEN (before the first PDU is read): put the guard on the socket."""
    sock = event.assoc.dul.socket
    guard = PduGuard(sock.recv, ctx.settings.dimse_max_pdu_bytes, ctx.settings.max_instance_bytes)
    sock.recv = guard.recv
    _GUARDS[event.assoc] = guard


def handle_store(event: Any, ctx: Context) -> int:
    """EVT_C_STORE: pynetdicom passes the event first, then the bound arguments. Only
    associations from allowed calling AE titles get this far (see :func:`build_ae`)."""
    calling = event.assoc.requestor.ae_title.strip()
    path = Path(event.dataset_path)
    guard = _GUARDS.get(event.assoc)
    limit = ctx.settings.max_instance_bytes
    if (guard is not None and guard.over_limit()) or path.stat().st_size > limit + 1024:
        log.warning("dimse.instance_too_large", calling_ae=calling, limit=limit)
        return OUT_OF_RESOURCES  # the temporary file is removed by pynetdicom
    refusal = backpressure.for_context(ctx).refusal()  # low on disk, or a queue over its limit
    if refusal is not None:
        log.warning("dimse.refused", calling_ae=calling, reason=refusal.reason)
        return OUT_OF_RESOURCES  # PS3.4 B.2.3: the SCU may send again later
    session = StowSession(ctx, None, source=calling)  # the calling AE picks the deid profile
    with path.open("rb") as file:
        part = Part("application/dicom", file, path.stat().st_size)
        outcome = session.add(part)
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
    ae.maximum_pdu_size = settings.dimse_max_pdu_bytes
    return ae


class TlsDeferredServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved from the accept loop into
    the association's thread (``do_handshake_on_connect=False``: the handshake runs at the
    first read). A failed handshake ends that association only; nothing is read from it."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        # A peer stalled in the middle of a PDU (or of the handshake) times out instead of
        # holding its thread forever (AE.network_timeout, 60 s by default).
        client.settimeout(self.ae.network_timeout)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address


def start_scp(ctx: Context, host: str = "0.0.0.0") -> Any:
    """Start the SCP on ``RADPIPE_DIMSE_PORT`` in background threads; returns the server."""
    assert ctx.settings.dimse_port is not None
    # Received data sets go to a temporary file as they arrive (the STOW-RS body is spooled
    # to disk likewise). Process-wide in pynetdicom; event.dataset still works elsewhere.
    _config.STORE_RECV_CHUNKED_DATASET = True
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, handle_open, [ctx]),
        (evt.EVT_C_STORE, handle_store, [ctx]),
        (evt.EVT_REJECTED, handle_rejected),
    ]
    tls: ssl.SSLContext | None = scp_context(ctx.settings)
    ae = build_ae(ctx)
    server = ae.make_server(
        (host, ctx.settings.dimse_port),
        ssl_context=tls,
        evt_handlers=handlers,
        server_class=TlsDeferredServer,
    )
    thread = threading.Thread(target=server.serve_forever, name="dimse-scp", daemon=True)
    thread.start()
    ae._servers.append(server)  # so ae.shutdown() stops it, as with ae.start_server()
    log.info(
        "dimse.listening",
        port=ctx.settings.dimse_port,
        ae=ctx.settings.dimse_ae_title,
        tls=tls is not None,
    )
    return server
