"""The one settings class: renamed settings are refused with the new name, not ignored; the
master secret is refused when it is a placeholder or weak, whatever RADPIPE_ALL_IN_ONE says."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from radpipe import stack
from radpipe.common.keys import Purpose
from radpipe.common.secret import (
    LOCAL_SECRET_FILE,
    check_secret_key,
    estimate_entropy_bits,
    secret_key_from_environment,
)
from radpipe.common.settings import DEFAULT_SECRET_KEY, Settings

from ..conftest import TEST_SECRET


def test_the_old_called_ae_setting_is_refused_with_its_new_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RADPIPE_SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("RADPIPE_DIMSE_REQUIRE_CALLED_AET", "true")
    with pytest.raises(ValidationError, match="RADPIPE_DIMSE_CHECK_CALLED_AE=true"):
        Settings()
    monkeypatch.delenv("RADPIPE_DIMSE_REQUIRE_CALLED_AET")
    monkeypatch.setenv("RADPIPE_DIMSE_CHECK_CALLED_AE", "true")
    assert Settings().dimse_check_called_ae is True
    assert Settings(secret_key=TEST_SECRET).dimse_check_called_ae is True  # type: ignore[arg-type]


# -- the master secret: placeholders and weak values are refused (issue 13.4) -----------------

REPO = Path(__file__).resolve().parents[2]


def k8s_example_secret() -> str:
    """The RADPIPE_SECRET_KEY of k8s/base/secret.example.yaml, as a user would copy it."""
    document = yaml.safe_load((REPO / "k8s/base/secret.example.yaml").read_text())
    return str(document["stringData"]["RADPIPE_SECRET_KEY"])


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (DEFAULT_SECRET_KEY, "development default"),
        ("change-me", "placeholder"),
        ("ChangeMe-7f3a9c2e5b8d1f4a6c0e9b3d7a2f5c8e", "placeholder"),
        ("c0ffee-PLACEHOLDER-91d2b7e4a8c3f6d0e5b9a1c4", "placeholder"),
        ("example-3b9f1d7a2c5e8b0f4d6a9c1e7b3f5d2a", "placeholder"),
        ("my-secret-9c4e1a7d3f8b2c6e0a5d9f1b4e7c3a8d", "placeholder"),
        ("x" * 64, "too weak"),
        ("0123456789abcdef" * 4, "too weak"),  # hex, but a run repeated: ~4 bits
        ("5f3c9a0e7b2d4186a9e0c3f7", "too weak"),  # random hex, 96 bits
        ("Tr0ub4dor&3-Tr0ub4dor&3-Tr0ub4dor&3", "too weak"),  # a word repeated
        ("correct horse battery staple correct horse", "too weak"),
        ("short-but-random-Q7", "too weak"),
    ],
)
def test_placeholder_and_weak_secrets_are_refused_with_the_fix(value: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason) as refused:
        Settings(secret_key=value)  # type: ignore[arg-type]
    assert "openssl rand -hex 32" in str(refused.value)
    with pytest.raises(ValueError, match=reason):
        check_secret_key(value)


def test_the_k8s_example_value_is_a_refused_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    example = k8s_example_secret()
    assert example == "change-me-run-openssl-rand-hex-32"
    with pytest.raises(ValidationError, match=r"placeholder.*openssl rand -hex 32"):
        Settings(secret_key=example)  # type: ignore[arg-type]
    monkeypatch.setenv("RADPIPE_SECRET_KEY", example)  # and the offline tool's path
    with pytest.raises(ValueError, match="placeholder"):
        secret_key_from_environment()


def test_random_secrets_pass() -> None:
    for value in (secrets.token_hex(32), secrets.token_urlsafe(32), TEST_SECRET):
        assert Settings(secret_key=value).master_secret == value.encode()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "at_least", "at_most"),
    [
        ("0123456789abcdef" * 4, 0, 16),  # two runs: their first two characters
        ("ab" * 40, 0, 12),  # a unit repeated
        ("a" * 100, 0, 4),  # one hex character
        (
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            200,
            256,
        ),  # hex: 4/char
        ("x-K2Uh3rDRAs-PsHoXMPYW171xA9pnqFCOaSKZNMnoI", 220, 258),  # base64url: 6/char
        ("abcdefghijklmnopqrstuvwxyzabcdefghij", 0, 16),  # lower case only, a run
    ],
)
def test_entropy_estimate(value: str, at_least: float, at_most: float) -> None:
    assert at_least <= estimate_entropy_bits(value) <= at_most


# -- RADPIPE_ALL_IN_ONE relaxes nothing outside `radpipe up` on its embedded stores -----------


def test_all_in_one_by_hand_in_production_keeps_the_checks() -> None:
    production = {"mongo_url": "mongodb://mongo:27017/radpipe", "all_in_one": True}
    with pytest.raises(ValidationError, match="development default"):
        Settings(**production)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(secret_key=k8s_example_secret(), **production)  # type: ignore[arg-type]
    s3 = {"s3_endpoint": "http://minio:9000", "s3_access_key": "a", "s3_secret_key": "b"}
    with pytest.raises(ValidationError, match="development default"):
        Settings(all_in_one=True, **s3)  # type: ignore[arg-type]


def test_all_in_one_from_the_environment_keeps_the_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADPIPE_ALL_IN_ONE", "1")
    monkeypatch.setenv("RADPIPE_MONGO_URL", "mongodb://mongo:27017/radpipe")
    with pytest.raises(ValidationError, match="development default"):
        Settings()
    monkeypatch.setenv("RADPIPE_SECRET_KEY", "change-me")
    with pytest.raises(ValidationError, match="placeholder"):
        Settings()


def test_all_in_one_never_keys_data_with_the_default(tmp_path: Path) -> None:
    # A weak value set explicitly is refused even under `radpipe up`.
    with pytest.raises(ValidationError, match="too weak"):
        Settings(all_in_one=True, data_dir=tmp_path, secret_key="x" * 40)  # type: ignore[arg-type]
    # Unset on the embedded stores: the random key of the data dir, created 0600 on first use.
    settings = Settings(all_in_one=True, data_dir=tmp_path / "data")
    master = settings.master_secret
    assert master != DEFAULT_SECRET_KEY.encode()
    check_secret_key(master.decode())
    path = tmp_path / "data" / LOCAL_SECRET_FILE
    assert path.read_text().strip().encode() == master
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Settings(all_in_one=True, data_dir=tmp_path / "data")
    assert again.key(Purpose.VAULT) == settings.key(Purpose.VAULT)


def test_a_keyless_process_derives_nothing(tmp_path: Path) -> None:
    settings = Settings(keyless=True, mongo_url="mongodb://mongo:27017/radpipe")
    with pytest.raises(RuntimeError, match="RADPIPE_KEYLESS"):
        settings.key(Purpose.PSEUDONYMS)
    with pytest.raises(RuntimeError, match="holds no keys"):
        Settings(keyless=True, all_in_one=True, data_dir=tmp_path).master_secret  # noqa: B018
    assert not (tmp_path / LOCAL_SECRET_FILE).exists()
    with pytest.raises(ValidationError, match="unset RADPIPE_SECRET_KEY"):
        Settings(keyless=True, secret_key=TEST_SECRET)  # type: ignore[arg-type]


# -- the inference worker of `radpipe up` gets no key and no object store credentials --------


def test_the_inference_child_of_radpipe_up_gets_no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    started: dict[str, dict[str, str]] = {}

    class Recorder:
        def __init__(self, args: list[str], env: dict[str, str], **_: object) -> None:
            started[args[4]] = env

    monkeypatch.setattr(stack.subprocess, "Popen", Recorder)
    env = {
        "PATH": "/usr/bin",
        "RADPIPE_DATA_DIR": "/tmp/x",
        "RADPIPE_ALL_IN_ONE": "true",
        "RADPIPE_SECRET_KEY": TEST_SECRET,
        "RADPIPE_S3_ACCESS_KEY": "radpipe",
        "RADPIPE_S3_SECRET_KEY": "s3-shared-key",
        "RADPIPE_WEBHOOK_SECRET": "w",
        "RADPIPE_INFERENCE_S3_ACCESS_KEY": "inference",
        "RADPIPE_INFERENCE_S3_SECRET_KEY": "s3-inference-key",
    }
    supervisor = stack.Supervisor(env)
    for name in stack.WORKERS:
        supervisor.start(name)
    inference = started["inference"]
    assert "RADPIPE_SECRET_KEY" not in inference and "RADPIPE_WEBHOOK_SECRET" not in inference
    assert inference["RADPIPE_KEYLESS"] == "true"
    assert inference["RADPIPE_S3_ACCESS_KEY"] == "inference"  # its own account, not the shared
    assert "s3-shared-key" not in inference.values()
    assert not any(k.startswith("RADPIPE_INFERENCE_S3") for k in inference)
    assert started["deid"] == env  # the others are unchanged
    # Without an account of its own it has no S3 credentials at all (the folder store needs none).
    bare = stack.inference_env({k: v for k, v in env.items() if "INFERENCE" not in k})
    assert not any(k.startswith("RADPIPE_S3_") for k in bare)
    # And the settings the child loads refuse nothing and hold no key.
    for key, value in bare.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RuntimeError, match="RADPIPE_KEYLESS"):
        Settings().key(Purpose.PSEUDONYMS)
