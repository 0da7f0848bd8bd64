"""One typed settings class for every service (env prefix ``RADPIPE_``).

Nothing else in Radpipe reads ``os.environ`` (the one exception: ``secret.py``, for the
offline tool's start-up time); services receive a :class:`Settings` instance.
Unset values mean the embedded default of the all-in-one mode (``radpipe up``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import AnyHttpUrl, Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .keys import Purpose, purpose_key
from .roles import CLINICAL_ROLES, ROLES, Role
from .secret import DEFAULT_SECRET_KEY, check_secret_key, local_secret
from .transport import check_transport

__all__ = ["CLINICAL_ROLES", "DEFAULT_SECRET_KEY", "ROLES", "Role", "Settings", "get_settings"]


class Settings(BaseSettings):
    """Radpipe configuration; see docs/operations.md for every field."""

    model_config = SettingsConfigDict(env_prefix="RADPIPE_", extra="ignore", env_ignore_empty=True)

    data_dir: Path = Path(".radpipe")
    mongo_url: str | None = None
    mongo_database: str = "radpipe"
    s3_endpoint: AnyHttpUrl | None = None
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    bucket_prefix: str = "radpipe"
    broker_url: str | None = None
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    public_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8000")
    risk_threshold: float = Field(0.5, ge=0.0, le=1.0)
    study_stable_seconds: float = Field(10.0, ge=0.0)
    alert_webhook_url: AnyHttpUrl | None = None
    alert_timeout_seconds: float = Field(10.0, gt=0)
    #: HMAC-SHA256 key for webhook signatures (``X-Radpipe-Signature``, docs/security.md).
    webhook_secret: SecretStr | None = None
    #: Overrides the acknowledgement deadline of every alert (tests and small sites).
    ack_timeout_seconds: float | None = Field(None, gt=0)
    #: Rules, urgency deadlines, schedules and silences (TOML, see docs/operations.md).
    alert_config: Path | None = None
    #: The prebuilt OHIF viewer (npm @ohif/app's ``dist``, ``make ohif``) the portal serves at
    #: ``/ohif`` against its own DICOMweb; unset: no "Open in OHIF".
    ohif_dir: Path | None = None
    #: Pages per alert (the first and its re-pages) before escalation stops.
    alert_max_pages: int = Field(6, ge=1)
    #: Delivery attempts per page and channel, with exponential backoff from the base delay.
    alert_delivery_attempts: int = Field(4, ge=1)
    alert_retry_seconds: float = Field(2.0, gt=0)
    #: How often the notify worker's sweeper looks for due timers.
    alert_sweep_seconds: float = Field(5.0, gt=0)
    #: A claimed page not finished in this time is taken over by another sweeper (renewed
    #: before each delivery; never shorter than two ``alert_timeout_seconds``).
    alert_lease_seconds: float = Field(60.0, gt=0)
    #: The same study and rule within this window is one alert with a count.
    alert_group_seconds: float = Field(3600.0, ge=0)
    #: Lifetime of the signed, single-use acknowledgement links in messages.
    ack_link_seconds: float = Field(86400.0, gt=0)
    #: E-mail channel (SMTP; STARTTLS whenever the server offers it).
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "radpipe@localhost"
    #: CA bundle that signs the SMTP server's certificate (default: the system's).
    smtp_ca_file: Path | None = None
    alert_email_to: list[str] = []
    #: Chat channels (incoming webhooks; the URLs are secrets).
    slack_webhook_url: SecretStr | None = None
    teams_webhook_url: SecretStr | None = None
    models_dir: Path | None = None
    inference_device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Queue the deid stage hands studies to and ``radpipe worker inference`` consumes by
    #: default; unset, the queue of the device ``inference_device`` gives on this host
    #: (:func:`radpipe.common.queues.inference_queue`). Split deployments set it everywhere.
    inference_queue: Literal["inference-cpu", "inference-gpu"] | None = None
    inference_threads: int | None = Field(None, ge=1)
    #: Model monitoring (docs/monitoring.md): the rolling window of analysed studies whose
    #: inputs are compared with the bundle's reference, the fewest that page, and the
    #: population stability index at or above which a feature has drifted.
    monitor_window: int = Field(200, ge=1)
    monitor_min_studies: int = Field(30, ge=1)
    monitor_drift_psi: float = Field(0.25, gt=0)
    #: ... and at least this share of the window falls where the training data has under 1 %
    #: (a site narrower than a broad training set is no drift); 0 pages on the PSI alone.
    monitor_drift_outside: float = Field(0.1, ge=0.0, le=1.0)
    #: Reader PPV over the last ``monitor_ppv_window`` decisions under which the admins are
    #: paged, once at least ``monitor_min_decisions`` were made.
    monitor_ppv_threshold: float = Field(0.5, ge=0.0, le=1.0)
    monitor_ppv_window: int = Field(200, ge=1)
    monitor_min_decisions: int = Field(30, ge=1)
    #: STOW-RS bodies are streamed to disk, so these bound disk use, not memory (413 above).
    max_request_bytes: int = Field(16 * 1024**3, gt=0)
    max_instance_bytes: int = Field(2 * 1024**3, gt=0)
    #: Bodies read whole (JSON, forms: mask edits, reads, alert and admin APIs): 413 above,
    #: before they are read (common/bodylimit.py; a mask edit at the caps is ~1.3 MB).
    max_json_bytes: int = Field(4 * 1024**2, gt=0)
    #: Declared pixel data (Rows x Columns x Frames x Samples x BitsAllocated) above which an
    #: instance is not decoded (rendering, thumbnails, inference); and the same for one frame.
    max_pixel_bytes: int = Field(2 * 1024**3, gt=0)
    max_frame_bytes: int = Field(256 * 1024**2, gt=0)
    #: Frames one WADO-RS frames request may name (after removing repeats).
    wado_max_frames: int = Field(1000, ge=1)
    #: Results one QIDO-RS response holds; more matches get ``Warning: 299`` (PS3.18 8.3.4.4).
    qido_max_results: int = Field(1000, ge=1)
    #: Back-pressure (ingest/backpressure.py): STOW-RS answers 503 with Retry-After and
    #: C-STORE 0xA700 while a stage queue holds more ready tasks than its limit (0: none),
    #: per queue in ``queue_limits`` (JSON, e.g. {"inference-gpu": 200}); lengths are read
    #: from the broker at most once per ``queue_check_seconds``.
    queue_limit: int = Field(10_000, ge=0)
    queue_limits: dict[str, int] = {}
    queue_check_seconds: float = Field(2.0, ge=0)
    #: Intake stops while the data dir's filesystem has less free space than this, or than
    #: this share of its size (whichever is larger), and resumes by itself when space returns.
    disk_low_water_bytes: int = Field(1024**3, ge=0)
    disk_low_water_percent: float = Field(0.0, ge=0, le=100)
    #: The Retry-After of those refusals.
    busy_retry_seconds: int = Field(30, ge=1)
    task_max_retries: int = Field(5, ge=0)
    #: Deliveries of one task attempt whose worker died (OOM, SIGKILL) before it is dead-lettered.
    max_deliveries: int = Field(3, ge=1)
    #: Seconds before the Redis broker hands an unacknowledged task to a worker again (one
    #: whose worker died); longer than the longest task, or a running task is started twice.
    broker_visibility_timeout: int = Field(900, ge=1)
    #: ``radpipe up`` restarts a worker that died after a backoff doubled for each death in
    #: a row, at most this long; one that then runs ``supervisor_healthy_seconds`` is healthy.
    supervisor_backoff_max_seconds: float = Field(60.0, gt=0)
    supervisor_healthy_seconds: float = Field(60.0, gt=0)
    #: De-identification profile file (TOML): options per source (see ``deid/profile.py``).
    deid_profile: Path | None = None
    log_level: str = "INFO"
    #: IANA time zone of the site (e.g. Europe/Paris): TAT hour-of-day and weekday cuts, and
    #: RIS and DICOM times that carry no offset, are read in it (daylight saving included).
    site_timezone: ZoneInfo = ZoneInfo("UTC")
    #: ``GET /api/tat`` may answer a report this many seconds old for the same filters when
    #: studies changed since (``stale: true``, recomputed in the background); 0 recomputes
    #: before answering whenever a study's facts changed.
    tat_report_ttl_s: float = Field(60.0, ge=0)
    #: First port a worker serves its Prometheus metrics on (stage durations); each worker on
    #: a host takes the next free one (up to 31 above). 0: workers serve no metrics.
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    #: Which process exports ``radpipe_queue_length``: ``api`` (every HTTP replica's
    #: ``/metrics``) or ``notify`` (the notify workers' metrics port only: once per deployment
    #: with one notify worker; set RADPIPE_WORKER_METRICS_PORT there).
    queue_metrics: Literal["api", "notify"] = "api"
    #: DIMSE C-STORE SCP (the second door); off unless a port is set.
    dimse_port: int | None = Field(None, ge=1, le=65535)
    dimse_ae_title: str = Field("RADPIPE", min_length=1, max_length=16)
    #: Calling AE titles allowed to associate; empty accepts any (restrict it in production).
    dimse_calling_aets: list[str] = []
    #: Reject associations whose called AE title is not ``dimse_ae_title`` (A-ASSOCIATE-RJ
    #: reason 7). Off by default, as in Orthanc and dcmtk's storescp: senders such as dcmtk's
    #: ``storescu`` call ``ANY-SCP`` unless told otherwise, and the calling AE allow-list is
    #: what admits a peer.
    dimse_check_called_ae: bool = False
    #: Longest P-DATA-TF PDU the SCP announces and reads (PS3.8 9.3.1, D.1); a longer PDU
    #: aborts the association before its bytes are read.
    dimse_max_pdu_bytes: int = Field(1024**2, ge=4096, le=64 * 1024**2)
    #: DICOM TLS (PS3.15 B.1/B.9; docs/security.md): Radpipe's certificate chain and key
    #: (PEM). With them the C-STORE SCP speaks TLS only; the exporter presents them to the
    #: PACS. The CA bundle verifies modalities' client certificates and the PACS's.
    dimse_tls_cert: Path | None = None
    dimse_tls_key: Path | None = None
    dimse_tls_ca: Path | None = None
    dimse_tls_require_client_cert: bool = True
    #: The setting's name before 0.2 (default on); refused, so a deployment relying on the
    #: check does not lose it silently.
    dimse_require_called_aet: bool | None = Field(None, exclude=True, repr=False)
    #: Where result objects go back to (the PACS): a STOW-RS base URL, and/or a DIMSE peer.
    export_stow_url: AnyHttpUrl | None = None
    #: Extra headers for the STOW-RS destination, e.g. {"Authorization": "Bearer ..."} as JSON.
    export_stow_headers: dict[str, str] = {}
    #: DIMSE destination as AE@host:port, e.g. PACS@10.0.0.5:104.
    export_dimse: str | None = Field(None, pattern=r"^[^@\s]{1,16}@[^:\s]+:\d{1,5}$")
    #: C-STORE to the PACS over DICOM TLS (required outside development, see transport.py).
    export_dimse_tls: bool = False
    #: Origins of browser viewers allowed to call the API (CORS), e.g. an OHIF deployment.
    cors_origins: list[str] = ["*"]
    #: Set by ``radpipe up`` only. With the embedded stores (no Mongo, no S3) an unset
    #: ``RADPIPE_SECRET_KEY`` means the random ``<data dir>/secret.key`` (created on first
    #: use); it never relaxes anything else, and set by hand with Mongo or S3 it changes
    #: nothing: the secret checks stay on (docs/security.md "Keys").
    all_in_one: bool = False
    #: This process holds no master secret and derives no key (the inference worker, which
    #: runs bundle code): ``RADPIPE_SECRET_KEY`` must then be unset, :meth:`key` refuses.
    keyless: bool = False
    _master: bytes | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.dimse_require_called_aet is not None:
            raise ValueError(
                "RADPIPE_DIMSE_REQUIRE_CALLED_AET was renamed: set "
                f"RADPIPE_DIMSE_CHECK_CALLED_AE={str(self.dimse_require_called_aet).lower()} "
                "instead (the called AE title is accepted whatever it is by default)"
            )
        secret = self.secret_key.get_secret_value()
        if self.keyless:
            if secret != DEFAULT_SECRET_KEY:
                raise ValueError(
                    "RADPIPE_KEYLESS is set (the inference worker holds no keys): unset "
                    "RADPIPE_SECRET_KEY in this process's environment"
                )
        elif not (secret == DEFAULT_SECRET_KEY and self.embedded_trial):
            check_secret_key(secret)
        if self.s3_endpoint is not None and (not self.s3_access_key or self.s3_secret_key is None):
            raise ValueError(
                "RADPIPE_S3_ENDPOINT is set: set RADPIPE_S3_ACCESS_KEY and "
                "RADPIPE_S3_SECRET_KEY too"
            )
        return self

    @model_validator(mode="after")
    def _transport(self) -> Settings:
        check_transport(self)  # DICOM TLS files; https/TLS destinations outside development
        return self

    @property
    def embedded_trial(self) -> bool:
        """``radpipe up`` on its embedded stores: the only mode whose key may come from the
        data dir (``RADPIPE_ALL_IN_ONE`` with Mongo or S3 configured is not one)."""
        return self.all_in_one and self.mongo_url is None and self.s3_endpoint is None

    def key(self, purpose: Purpose) -> bytes:
        """The key for ``purpose`` (HKDF from the master secret, ``common/keys.py``)."""
        return purpose_key(self.master_secret, purpose)

    @property
    def master_secret(self) -> bytes:
        """The master secret: only for :meth:`key`, and for reading data written before keys
        per purpose (0.1: study ids, pseudonyms and the vault keyed with it directly)."""
        if self._master is None:
            if self.keyless:
                raise RuntimeError(
                    "this process runs with RADPIPE_KEYLESS and holds no keys: run this work "
                    "in a service that has RADPIPE_SECRET_KEY (ingest, deid, portal, notify)"
                )
            value = self.secret_key.get_secret_value()
            if value == DEFAULT_SECRET_KEY:  # the validator let it through: embedded_trial
                value = local_secret(self.data_dir)
            self._master = value.encode()
        return self._master

    @property
    def secret(self) -> bytes:
        """Deprecated: the master secret; use :meth:`key` with a :class:`Purpose`."""
        return self.master_secret

    def public(self, path: str) -> str:
        """An absolute URL under ``RADPIPE_PUBLIC_URL`` (never built from the Host header)."""
        return str(self.public_url).rstrip("/") + "/" + path.lstrip("/")


@lru_cache
def get_settings() -> Settings:
    return Settings()
