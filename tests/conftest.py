"""Session-wide real servers and per-test isolated settings."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import AnyHttpUrl

from radpipe.common.context import Context, build_context
from radpipe.common.settings import Settings, get_settings

from .servers import S3Server, redis_server, s3_server

TEST_SECRET = "5c18c8337cfa30ddd8ac8915058cb6a93a70b5ec773e271056648b5c7f98582d"  # 256 bits


TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test carries its tier's marker (its folder), so `-m "not e2e"` selects by tier."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


class RecordingDispatcher:
    """Collects hand-offs instead of sending them, for tests of one stage at a time."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, float | None]] = []

    def send(self, stage: str, study_id: str, *, countdown: float | None = None) -> None:
        self.sent.append((stage, study_id, countdown))

    def ping(self) -> None:
        return None

    def queue_lengths(self) -> dict[str, int]:
        return {"deid": sum(1 for stage, *_ in self.sent if stage in ("stable", "deid"))}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    get_settings.cache_clear()
    return Settings(
        data_dir=tmp_path / "data",
        secret_key=TEST_SECRET,  # type: ignore[arg-type]
        bucket_prefix="t" + secrets.token_hex(4),
        study_stable_seconds=0.5,
    )


@pytest.fixture
def ctx(settings: Settings) -> Iterator[Context]:
    """Embedded stores in a temp folder and a recording dispatcher."""
    context = build_context(settings, tasks=RecordingDispatcher())
    yield context
    context.documents.close()


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RADPIPE_"):
            monkeypatch.delenv(key)


@pytest.fixture
def client(ctx: Context) -> Iterator[TestClient]:
    """The all-in-one app over the embedded stores, with the recording dispatcher."""
    from radpipe.app import build_app

    with TestClient(build_app(ctx, ["ingest", "portal", "notify"])) as test_client:
        yield test_client


@pytest.fixture
def tokens(ctx: Context) -> dict[str, str]:
    """One API token per role."""
    from radpipe.common.auth import AuthService
    from radpipe.common.settings import ROLES

    auth = AuthService(ctx.documents)
    return {role: auth.create_token(f"test-{role}", role) for role in ROLES}


@pytest.fixture
def live_url(ctx: Context) -> Iterator[str]:
    """The all-in-one app served by uvicorn on a free loopback port (for real HTTP clients)."""
    import threading

    import uvicorn

    from radpipe.app import build_app

    from .servers import free_port, wait_for_port

    port = free_port()
    ctx.settings.public_url = AnyHttpUrl(f"http://127.0.0.1:{port}")
    app = build_app(ctx, ["ingest", "portal", "notify"])
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
