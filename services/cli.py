"""The ``radpipe`` command line (DESIGN section 4)."""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from radpipe.common.roles import ROLES
from radpipe.common.secret import DEFAULT_SECRET_KEY

if TYPE_CHECKING:
    from datetime import datetime

    from radpipe.common.auth import AuthService, Principal
    from radpipe.common.settings import Settings

SERVICES = ("ingest", "portal", "notify")


def _settings(**overrides: object) -> Settings:
    from radpipe.common.settings import Settings, get_settings

    get_settings.cache_clear()
    return Settings(**overrides)  # type: ignore[arg-type]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Radpipe: DICOM studies in, de-identified AI results and alerts out."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--data-dir", type=click.Path(path_type=Path), help="default: $RADPIPE_DATA_DIR")
@click.option(
    "--http-workers",
    type=int,
    default=min(2, os.cpu_count() or 1),
    show_default=True,
    help="HTTP server processes (STOW-RS parsing is CPU-bound)",
)
@click.option(
    "--dimse-port",
    type=click.IntRange(1, 65535),
    help="also start the DIMSE C-STORE SCP on this port (default: $RADPIPE_DIMSE_PORT, off)",
)
def up(
    host: str, port: int, data_dir: Path | None, http_workers: int, dimse_port: int | None
) -> None:
    """Run the whole pipeline on this machine: API, portal, workers, broker, stores."""
    import uvicorn

    from radpipe.app import build_app
    from radpipe.common.auth import AuthService
    from radpipe.common.context import build_context
    from radpipe.common.logging import configure_logging, get_logger
    from radpipe.common.queues import inference_queue
    from radpipe.stack import Supervisor, local_secret, start_broker_command

    base = _settings(all_in_one=True)
    configure_logging(base.log_level)  # this process's own lines (DIMSE, supervisor) as JSON
    data = (data_dir or base.data_dir).resolve()
    env = dict(os.environ, RADPIPE_ALL_IN_ONE="true", RADPIPE_DATA_DIR=str(data))
    if base.secret_key.get_secret_value() == DEFAULT_SECRET_KEY:
        env["RADPIPE_SECRET_KEY"] = local_secret(data)
    env.setdefault("RADPIPE_PUBLIC_URL", f"http://{host}:{port}")
    if dimse_port is not None:
        env["RADPIPE_DIMSE_PORT"] = str(dimse_port)
    # Decided once for every child: deid hands studies to the queue the inference worker reads.
    env["RADPIPE_INFERENCE_QUEUE"] = inference_queue(base)
    broker = None
    if base.broker_url is None:
        broker, env["RADPIPE_BROKER_URL"], broker_argv = start_broker_command(data / "broker")
    os.environ.update(env)  # this process serves the API with the same settings
    settings = _settings()
    context = build_context(settings)
    passwords = _bootstrap_users(AuthService(context.documents))
    if os.geteuid() == 0:  # said once here; the workers of `radpipe up` do not repeat it
        get_logger("radpipe.up").warning(
            "up.root", advice="run radpipe as an unprivileged user; nothing in it needs root"
        )
    supervisor = Supervisor(
        env,
        state_dir=data,
        backoff_max_seconds=settings.supervisor_backoff_max_seconds,
        healthy_seconds=settings.supervisor_healthy_seconds,
    )
    if broker is not None:
        supervisor.adopt("broker", broker, broker_argv)  # restarted on its port if it dies
    threading.Thread(target=supervisor.run, name="supervisor", daemon=True).start()
    click.echo(f"Radpipe is up: {settings.public_url}  (data in {data})")
    click.echo(f"  DICOMweb STOW-RS: {settings.public('dicom-web/studies')}")
    on = "GPU" if env["RADPIPE_INFERENCE_QUEUE"] == "inference-gpu" else "CPU"
    click.echo(f"  inference on the {on} (queue {env['RADPIPE_INFERENCE_QUEUE']})")
    if passwords:
        click.echo(
            f"  portal login: radiologist / {passwords['radiologist']}  "
            f"(worklist, viewer, sign-off), admin / {passwords['admin']}  "
            "(users, tokens, rules; no clinical data); shown once"
        )
    if settings.dimse_port:
        from radpipe.ingest.dimse import start_scp

        start_scp(context, host)
        click.echo(f"  DIMSE C-STORE SCP: {settings.dimse_ae_title}@{host}:{settings.dimse_port}")
    click.echo("  try it: `radpipe demo` in another terminal")
    try:
        if http_workers > 1:
            uvicorn.run(
                "radpipe.app:up_app",
                factory=True,
                host=host,
                port=port,
                workers=http_workers,
                log_config=None,
            )
        else:
            uvicorn.run(build_app(context, list(SERVICES)), host=host, port=port, log_config=None)
    finally:
        supervisor.stop()  # the workers, then the broker


def _bootstrap_users(auth: AuthService) -> dict[str, str]:
    """On first start, a ``radiologist`` (the reading room) and an ``admin`` (users, tokens,
    rules: admin is not a clinical role and sees no study), each with a random password
    printed once; nothing when the store has users already."""
    if auth.users.count_documents({}) > 0:
        return {}
    passwords = {name: secrets.token_urlsafe(12) for name in ("radiologist", "admin")}
    for name, password in passwords.items():
        auth.add_user(name, name, password)
    return passwords


@main.command()
@click.argument("service", type=click.Choice(SERVICES))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(service: str, host: str, port: int) -> None:
    """Run one HTTP service (ingest, portal or notify)."""
    import uvicorn

    from radpipe.app import build_app
    from radpipe.common.context import build_context

    context = build_context(_settings())
    if service == "ingest" and context.settings.dimse_port:
        from radpipe.ingest.dimse import start_scp

        start_scp(context, host)
    app = build_app(context, [service])
    uvicorn.run(app, host=host, port=port, log_config=None)


@main.command()
@click.argument("stage", type=click.Choice(["deid", "inference", "notify", "export"]))
@click.option("--concurrency", type=int, default=1, show_default=True)
@click.option("--pool", type=click.Choice(["prefork", "solo", "threads"]), default="prefork")
@click.option(
    "--queue",
    help="default: the stage's queue (inference: RADPIPE_INFERENCE_QUEUE, unset: "
    "inference-gpu where torch sees CUDA, else inference-cpu)",
)
def worker(stage: str, concurrency: int, pool: str, queue: str | None) -> None:
    """Run one Celery worker consuming a stage's queue."""
    from importlib import import_module

    from radpipe.common.logging import configure_logging
    from radpipe.common.queues import inference_queue, run_worker

    settings = _settings()
    configure_logging(settings.log_level)
    # The exporter belongs to ingest (DICOMweb and DIMSE out); its worker has a queue of its own.
    tasks = import_module("radpipe.ingest.tasks" if stage == "export" else f"radpipe.{stage}.tasks")
    default_queue = stage
    if stage == "inference":
        # The queue deid hands studies to (RADPIPE_INFERENCE_QUEUE, or by this host's device:
        # inference-gpu where torch sees CUDA); a device it cannot have stops it here. Both
        # asked without starting CUDA in this process: a prefork worker forks its children
        # after this, and a child cannot use CUDA its parent started.
        from radpipe.common.gpu import cuda_present

        if settings.inference_device.startswith("cuda") and not cuda_present():
            raise click.ClickException(
                f"RADPIPE_INFERENCE_DEVICE={settings.inference_device}, but torch sees no CUDA "
                "device: install a CUDA build of torch (the image's VARIANT=cuda), or set it "
                "to auto or cpu"
            )
        default_queue = inference_queue(settings)
    run_worker(
        tasks.celery,
        queue or default_queue,
        concurrency,
        pool,
        warn_root=not settings.all_in_one,  # `radpipe up` says it once for all its workers
    )


def _store(settings: Settings | None = None) -> AuthService:
    from radpipe.common.auth import AuthService
    from radpipe.common.docstore import make_document_store

    return AuthService(make_document_store(settings or _settings(all_in_one=True)))


def _cli_principal() -> Principal:
    """Who the audit log names for a change made on the command line (the OS user)."""
    import getpass

    from radpipe.common.auth import Principal

    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        who = str(os.getuid())
    return Principal(f"cli:{who}", "admin", "cli")


_DURATION = {"m": 60, "h": 3600, "d": 86400}


def _expiry(text: str | None) -> datetime | None:
    """``--expires``: a duration from now (``90d``, ``12h``, ``30m``) or an ISO 8601 date or
    time (UTC when it names no zone); it must lie ahead."""
    if text is None:
        return None
    from datetime import UTC, datetime, timedelta

    at = datetime.now(UTC)
    value = text.strip()
    if value[:-1].isdigit() and value[-1:] in _DURATION:
        moment = at + timedelta(seconds=int(value[:-1]) * _DURATION[value[-1]])
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise click.BadParameter(
                f"{text!r} is neither a duration (90d, 12h, 30m) nor an ISO 8601 date or time "
                "(2027-01-31 or 2027-01-31T18:00:00Z)",
                param_hint="--expires",
            ) from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if moment <= at:
        raise click.BadParameter(f"{text!r} is in the past", param_hint="--expires")
    return moment


_EXPIRES_HELP = "expiry: a duration (90d, 12h, 30m) or an ISO 8601 date/time; default: none"


@main.group()
def token() -> None:
    """API tokens (stored as SHA-256 only; every change is audited)."""


@token.command("create")
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--name", required=True)
@click.option("--expires", help=_EXPIRES_HELP)
def token_create(role: str, name: str, expires: str | None) -> None:
    """Create a token; it is printed once, as the last line."""
    auth = _store()
    value = auth.create_token(name, role, _expiry(expires))
    auth.audit(_cli_principal(), "token.create", name, role=role, expires=expires)
    click.echo(f"created token {name!r} with role {role}; store it now, it is not shown again:")
    click.echo(value)


@token.command("list")
def token_list() -> None:
    """Every token: name, role, created, expires, state (never the token or its hash)."""
    from radpipe.common.studies import now

    at = now()
    rows = [("NAME", "ROLE", "CREATED", "EXPIRES", "STATE")]
    for entry in _store().list_tokens():
        expires = entry.get("expires_at")
        state = (
            "revoked"
            if entry.get("revoked")
            else "expired"
            if expires is not None and expires < at
            else "valid"
        )
        rows.append(
            (
                entry["name"],
                entry["role"],
                f"{entry['created_at']:%Y-%m-%d %H:%M}",
                f"{expires:%Y-%m-%d %H:%M}" if expires else "-",
                state,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@token.command("revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke every valid token named NAME (refused from now on)."""
    auth = _store()
    count = auth.revoke_token(name)
    auth.audit(_cli_principal(), "token.revoke", name, count=count)
    click.echo(f"revoked {count} token(s) named {name!r}")


@token.command("rotate")
@click.argument("name")
@click.option("--expires", help=_EXPIRES_HELP.replace("none", "the old token's"))
def token_rotate(name: str, expires: str | None) -> None:
    """A new secret for NAME (same role); the old one is revoked. Printed as the last line."""
    auth = _store()
    value = auth.rotate_token(name, _expiry(expires))
    auth.audit(_cli_principal(), "token.rotate", name, expires=expires)
    click.echo(f"rotated token {name!r}; the old one is revoked. Store this now:")
    click.echo(value)


@main.group()
def user() -> None:
    """Portal users (passwords stored with Argon2id; every change is audited)."""


@user.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES))
def user_add(name: str, role: str) -> None:
    """Add a portal user; the password is read from standard input."""
    if sys.stdin.isatty():
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\n")
    auth = _store()
    auth.add_user(name, role, password)
    auth.audit(_cli_principal(), "user.add", name, role=role)
    click.echo(f"user {name!r} added with role {role}")


@user.command("disable")
@click.argument("name")
def user_disable(name: str) -> None:
    """NAME can no longer sign in; their open sessions end now."""
    auth = _store()
    auth.disable_user(name)
    auth.audit(_cli_principal(), "user.disable", name)
    click.echo(f"user {name!r} disabled; their sessions ended")


@user.command("unlock")
@click.argument("name")
def user_unlock(name: str) -> None:
    """Lift NAME's sign-in lockout (after too many wrong passwords)."""
    auth = _store()
    lifted = auth.unlock(name)
    auth.audit(_cli_principal(), "user.unlock", name, locked=lifted)
    click.echo(f"user {name!r} " + ("unlocked" if lifted else "was not locked"))


@main.group()
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
def audit_verify() -> None:
    """Recompute the chain; exit 1 naming every edited or deleted entry."""
    from radpipe.common.audit import AuditLog
    from radpipe.common.docstore import make_document_store

    result = AuditLog(make_document_store(_settings(all_in_one=True))).verify()
    for problem in result.problems:
        click.echo(f"BROKEN: {problem}", err=True)
    before = (
        f"; {result.unchained} from before the chain, not verifiable" if result.unchained else ""
    )
    if not result.ok:
        click.echo(
            f"audit log broken: {len(result.problems)} problem(s) in {result.checked} "
            f"entries{before}",
            err=True,
        )
        sys.exit(1)
    click.echo(f"audit log intact: {result.checked} entries{before}")


@audit.command("hash")
@click.argument("value")
def audit_hash(value: str) -> None:
    """The keyed form of VALUE (an original UID, a searched name) as the audit log writes it,
    to look it up there; needs this deployment's RADPIPE_SECRET_KEY."""
    from radpipe.common.audit import keyed

    click.echo(keyed(_settings(all_in_one=True).secret, value))


@main.group()
def models() -> None:
    """MONAI bundles: list them, add one to RADPIPE_MODELS_DIR, verify their sha256."""


def _bundle_folders() -> dict[str, Path]:
    from radpipe.common.routing import declared_bundles

    return {
        name: folder
        for name, (folder, _) in declared_bundles(_settings(all_in_one=True).models_dir).items()
    }


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON document instead of text")
def models_list(as_json: bool) -> None:
    """Every installed bundle: name, version, kind, the sha256 of its weights and configs,
    its routing rules (its own and an admin's override) and whether its files are intact."""
    import json

    from radpipe.inference.zoo import bundle_info

    stored = _overrides()
    listing = []
    for name, folder in sorted(_bundle_folders().items()):
        info = bundle_info(folder)
        override = stored.get(name)
        info["routing_override"] = (
            {"mode": override.get("mode"), "rules": override.get("rules")} if override else None
        )
        listing.append(info)
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for info in listing:
        click.echo(
            f"{info['name']} {info['version']}  kind={info['kind']}  format={info['format']}  "
            f"integrity={info['integrity']}\n  path: {info['path']}"
        )
        for rel, digest in info["files"].items():
            click.echo(f"  sha256 {digest}  {rel}")
        rules = info["routing"]
        click.echo("  routing: " + (" | ".join(_rule_text(r) for r in rules) or "none declared"))
        if info["routing_override"]:
            override = info["routing_override"]
            texts = " | ".join(_rule_text(r) for r in override.get("rules") or [])
            click.echo(f"  admin override: {override.get('mode')} {texts}".rstrip())


def _rule_text(rule: object) -> str:
    """A routing rule as the admin screen shows it (``min_instances`` counts images, i.e.
    frames: ``>= 3 images (frames)``), its JSON beside it; the JSON alone if it is invalid."""
    import json

    from radpipe.common.routing import Rule

    raw = json.dumps(rule)
    try:
        return f"{Rule.from_dict(rule, 'rule').describe()}  {raw}"
    except ValueError:
        return raw


def _overrides() -> dict[str, dict[str, object]]:
    from radpipe.common.docstore import make_document_store
    from radpipe.common.routing import overrides

    return overrides(make_document_store(_settings(all_in_one=True)))


@models.command("add")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="replace an installed bundle of the same name")
def models_add(path: Path, replace: bool) -> None:
    """Copy the bundle at PATH into RADPIPE_MODELS_DIR and record its sha256 manifest; the
    inference worker refuses it once a recorded file changes."""
    import json
    import shutil

    from radpipe.inference.zoo import BundleError, Sidecar, bundle_info, write_manifest

    target_dir = _settings(all_in_one=True).models_dir
    if target_dir is None:
        raise click.ClickException(
            "RADPIPE_MODELS_DIR is not set: set it to the folder the inference workers read "
            "bundles from, then add the bundle again"
        )
    from radpipe.inference.zoo import inference_config

    if not (path / "configs" / "metadata.json").is_file():
        raise click.ClickException(
            f"{path} is not a MONAI bundle: configs/metadata.json is missing"
        )
    if inference_config(path) is None:
        raise click.ClickException(
            f"{path} is not a MONAI bundle: configs/inference.json (or .yaml) is missing"
        )
    if not any((path / w).is_file() for w in ("models/model.pt", "models/model.ts")):
        raise click.ClickException(f"{path} has no weights: models/model.pt or models/model.ts")
    from radpipe.inference.findings import post_processing
    from radpipe.inference.zoo import is_native

    if is_native(path):
        try:
            post_processing(path)  # a malformed limit is refused now, not at the first study
        except ValueError as exc:
            raise click.ClickException(f"{exc}; correct it and add the bundle again") from None
    try:
        Sidecar.read(path)
        name = str(json.loads((path / "configs" / "metadata.json").read_text()).get("name") or "")
    except (BundleError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    name = name or path.name
    if not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise click.ClickException(f"bundle name {name!r}: letters, digits, '_', '-', '.' only")
    target = target_dir / name
    if target.exists() and not replace:
        raise click.ClickException(
            f"a bundle named {name} is installed at {target}; add --replace to replace it"
        )
    target_dir.mkdir(parents=True, exist_ok=True)
    staging = target_dir / f".{name}.adding"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(path, staging, ignore=shutil.ignore_patterns("__pycache__", "eval"))
    files = write_manifest(staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    info = bundle_info(target)
    click.echo(f"added {info['name']} {info['version']} ({info['kind']}) at {target}")
    for rel, digest in files.items():
        click.echo(f"  sha256 {digest}  {rel}")
    if not info["routing"]:
        click.echo(
            '  no routing rules: add a radpipe.json with "routing" beside its configs/, or '
            "route it from the portal's admin screen (docs/models.md)"
        )
    click.echo("restart the inference workers to load it")


@models.command("verify")
def models_verify() -> None:
    """Recompute every installed bundle's sha256 against its recorded manifest; exits 1 when
    a bundle changed (the worker refuses it: re-add the approved bundle)."""
    from radpipe.inference.zoo import verify_manifest

    failed = False
    for name, folder in sorted(_bundle_folders().items()):
        problems = verify_manifest(folder)
        if problems is None:
            click.echo(f"{name}: no manifest recorded (not added with `radpipe models add`)")
        elif problems:
            failed = True
            click.echo(f"{name}: CHANGED: {'; '.join(problems)}")
        else:
            click.echo(f"{name}: ok")
    if failed:
        click.echo("re-add the approved bundle with `radpipe models add PATH --replace`")
        sys.exit(1)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), help="default: $RADPIPE_DATA_DIR")
def backup(directory: Path, data_dir: Path | None) -> None:
    """Back the all-in-one data dir up into DIRECTORY (new or empty): documents (online, while
    radpipe up runs), objects, vault and key, with a SHA-256 manifest (docs/backup.md)."""
    from radpipe.backup import BackupError
    from radpipe.backup import backup as run_backup

    overrides: dict[str, object] = {"all_in_one": True}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        summary = run_backup(_settings(**overrides), directory, _cli_principal().name)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"backed up to {summary.path}: {summary.files} files, {summary.objects} objects, "
        f"schema version {summary.schema_version}"
    )


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), help="default: $RADPIPE_DATA_DIR")
def restore(directory: Path, data_dir: Path | None) -> None:
    """Restore the backup in DIRECTORY into a fresh data dir, after checking every file against
    its manifest; the next start migrates it to this release's schema."""
    from radpipe.backup import BackupError
    from radpipe.backup import restore as run_restore

    overrides: dict[str, object] = {"all_in_one": True}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        summary = run_restore(_settings(**overrides), directory, _cli_principal().name)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"restored into {summary.path}: {summary.files} files, {summary.objects} objects, "
        f"schema version {summary.schema_version}; start it with radpipe up --data-dir "
        f"{summary.path}"
    )


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--url", required=True, help="DICOMweb base, e.g. http://127.0.0.1:8000/dicom-web")
@click.option("--token", required=True, envvar="RADPIPE_TOKEN")
def push(paths: tuple[Path, ...], url: str, token: str) -> None:
    """Push DICOM files and folders with STOW-RS."""
    from radpipe.client import iter_files
    from radpipe.client import push as stow

    files = list(iter_files(paths))
    report = stow(files, url, token)
    click.echo(f"{report.stored} stored, {report.failed} failed")
    for warning in report.warnings:
        click.echo(f"  {warning}", err=True)
    if report.failed:
        sys.exit(1)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--profile",
    "profile_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="RADPIPE_DEID_PROFILE",
    help="profile file (TOML); default: TCIA's options",
)
@click.option("--source", help="use this source's profile from the profile file")
@click.option("--jobs", type=int, help="processes (default: one per CPU core)")
def deid(
    inputs: tuple[Path, ...],
    out: Path,
    profile_file: Path | None,
    source: str | None,
    jobs: int | None,
) -> None:
    """De-identify DICOM files and folders into OUT (PS3.15 Basic Profile with options).

    The key is RADPIPE_SECRET_KEY: the same key gives the same pseudonyms and UIDs as the
    service; quarantined and failed inputs are listed in OUT.report.json beside OUT.
    """
    from radpipe.common.errors import RadpipeError
    from radpipe.common.secret import secret_key_from_environment
    from radpipe.deid import offline
    from radpipe.deid.profile import load_profiles

    try:
        secret = secret_key_from_environment()
    except ValueError as exc:
        raise RadpipeError(f"{exc} (export RADPIPE_SECRET_KEY=... first)") from None
    profile = load_profiles(profile_file).for_source(source)
    summary = offline.run(list(inputs), out, secret, profile, jobs, progress=sys.stderr.isatty())
    click.echo(
        f"{summary.count('done')} de-identified, {summary.count('quarantined')} quarantined, "
        f"{summary.count('failed')} failed -> {out}"
    )
    for (status, reason), count in sorted(summary.reasons().items()):
        click.echo(f"  {count} {status}: {reason}", err=True)
    if summary.count("quarantined") or summary.count("failed"):
        click.echo(f"  listed in {offline.report_path(out)}", err=True)


@main.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True)
@click.option(
    "--token", help="a modality token, to push (default: the demo's own, in the local store)"
)
@click.option(
    "--reader-token",
    help="a radiologist token, to read the results (default: the demo's own, in the local store)",
)
@click.option("--wait", default=180.0, show_default=True, help="seconds to wait for results")
def demo(url: str, token: str | None, reader_token: str | None, wait: float) -> None:
    """Push a high-risk and a clean synthetic chest CT to a running stack, show the outcome.

    Pushing is a modality's act and reading a radiologist's (admin is not a clinical role):
    without tokens the demo uses its own two, ``demo-modality`` and ``demo-radiologist``,
    created once in the local store and reused on every run (``radpipe.demo.demo_tokens``).
    """
    import tempfile

    import httpx

    from radpipe.client import iter_files
    from radpipe.client import push as stow
    from radpipe.demo import demo_tokens, make_phantom, phantom_to_datasets, write_series

    if token is None or reader_token is None:
        settings = _settings(all_in_one=True)
        own = demo_tokens(_store(settings), settings.data_dir, _cli_principal())
        token = token or own["modality"]
        reader_token = reader_token or own["radiologist"]
    cases = {"high-risk (14 mm nodule)": [14.0], "clean (no nodule)": []}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (label, nodules) in enumerate(cases.items()):
            phantom = make_phantom(1000 + index, nodules=nodules)
            datasets = phantom_to_datasets(
                phantom,
                patient_name=f"Demo^Patient{index}",
                patient_id=f"DEMO{index:04d}",
                accession=f"DEMOACC{index}",
            )
            folder = Path(tmp) / f"case{index}"
            write_series(datasets, folder)
            click.echo(f"{label}: {len(datasets)} slices")
            report = stow(list(iter_files([folder])), url.rstrip("/") + "/dicom-web", token)
            click.echo(f"  {report.stored} stored, {report.failed} failed")
    headers = {"Authorization": f"Bearer {reader_token}"}
    click.echo("waiting for the pipeline (stable -> deid -> inference -> notify)...")
    deadline = time.monotonic() + wait
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        while time.monotonic() < deadline:
            studies = http.get("/api/studies", params={"limit": 10}).json()["studies"]
            done = [s for s in studies if s["state"] in ("alerted", "analyzed", "failed")]
            if len(done) >= len(cases):
                break
            time.sleep(2)
        for study in http.get("/api/studies", params={"limit": 10}).json()["studies"]:
            risk = study.get("risk") or {}
            click.echo(
                f"  study {study['id']}: {study['state']}, risk {risk.get('category', '-')} "
                f"{risk.get('score', 0):.2f} {risk.get('rule', '')}"
            )
        for alert in http.get("/api/alerts").json():
            click.echo(
                f"ALERT {alert['id']}: {alert['summary']} -> {url}/studies/{alert['study_id']}"
            )


def run() -> None:
    """Console entry point: Radpipe's own errors end with their message, not a traceback."""
    from radpipe.common.errors import RadpipeError

    try:
        main()
    except RadpipeError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
