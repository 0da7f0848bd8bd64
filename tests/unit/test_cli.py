from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from radpipe.cli import main
from radpipe.common.auth import AuthService
from radpipe.common.docstore import open_embedded
from radpipe.common.errors import Unauthorized


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("RADPIPE_DATA_DIR", str(tmp_path / "data"))
    return CliRunner()


def auth(tmp_path: Path) -> AuthService:
    return AuthService(open_embedded(tmp_path / "data" / "documents", "radpipe"))


def test_token_create_prints_a_working_token_as_last_line(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(main, ["token", "create", "--role", "modality", "--name", "ct-1"])
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    principal = auth(tmp_path).authenticate_token(token)
    assert (principal.name, principal.role) == ("ct-1", "modality")


def test_token_create_refuses_an_unknown_role(runner: CliRunner) -> None:
    result = runner.invoke(main, ["token", "create", "--role", "janitor", "--name", "x"])
    assert result.exit_code == 2 and "janitor" in result.output


def test_user_add_reads_the_password_from_stdin(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        main, ["user", "add", "ana", "--role", "resident"], input="s3cret-pass\n"
    )
    assert result.exit_code == 0, result.output
    assert auth(tmp_path).login("ana", "s3cret-pass")
    again = subprocess.run(
        [sys.executable, "-m", "radpipe.cli", "user", "add", "ana", "--role", "resident"],
        input="s3cret-pass\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 1
    assert again.stderr.strip() == "error: user 'ana' exists already"


def test_push_names_a_missing_path(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        main,
        ["push", str(tmp_path / "nope"), "--url", "http://127.0.0.1:9/dicom-web", "--token", "t"],
    )
    assert result.exit_code == 2 and "does not exist" in result.output


def _last_line(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, result.output
    return str(result.output.strip().splitlines()[-1])


def test_token_list_revoke_and_rotate(runner: CliRunner, tmp_path: Path) -> None:
    old = _last_line(runner.invoke(main, ["token", "create", "--role", "modality", "--name", "ct"]))
    rotated = runner.invoke(main, ["token", "rotate", "ct"])
    new = _last_line(rotated)
    store = auth(tmp_path)
    principal = store.authenticate_token(new)
    assert (principal.name, principal.role) == ("ct", "modality")
    with pytest.raises(Unauthorized):
        store.authenticate_token(old)
    listing = runner.invoke(main, ["token", "list"])
    rows = [line.split() for line in listing.output.splitlines()[1:]]
    assert sorted((r[0], r[1], r[-1]) for r in rows) == [
        ("ct", "modality", "revoked"),
        ("ct", "modality", "valid"),
    ]
    assert new not in listing.output and old not in listing.output
    revoked = runner.invoke(main, ["token", "revoke", "ct"])
    assert revoked.exit_code == 0 and "revoked 1 token(s)" in revoked.output
    with pytest.raises(Unauthorized):
        store.authenticate_token(new)
    again = runner.invoke(main, ["token", "rotate", "ct"])
    assert again.exit_code == 1 and "no valid token named 'ct'" in str(again.exception)
    actions = [
        (e["actor"][:4], e["action"], e["target"])
        for e in store.documents.collection("audit").find({})
    ]
    assert [a[1:] for a in actions] == [
        ("token.create", "ct"),
        ("token.rotate", "ct"),
        ("token.revoke", "ct"),
    ]
    assert all(a[0] == "cli:" for a in actions)


def test_token_expires(runner: CliRunner, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    args = ["token", "create", "--role", "radiologist", "--name", "r", "--expires", "90d"]
    token = _last_line(runner.invoke(main, args))
    [entry] = auth(tmp_path).list_tokens()
    expected = datetime.now(UTC) + timedelta(days=90)
    assert abs((entry["expires_at"] - expected).total_seconds()) < 60
    assert auth(tmp_path).authenticate_token(token).role == "radiologist"
    dated = [*args[:-1], "2999-01-31"]
    assert runner.invoke(main, dated).exit_code == 0
    for bad in ("soon", "2001-01-01", "0d"):
        refused = runner.invoke(main, [*args[:-1], bad])
        assert refused.exit_code == 2 and "--expires" in refused.output, bad
    assert len(auth(tmp_path).list_tokens()) == 2  # nothing stored for a refused one


def test_user_disable_ends_sessions_and_sign_in(runner: CliRunner, tmp_path: Path) -> None:
    runner.invoke(main, ["user", "add", "ana", "--role", "resident"], input="s3cret-pass\n")
    session = auth(tmp_path).login("ana", "s3cret-pass")
    result = runner.invoke(main, ["user", "disable", "ana"])
    assert result.exit_code == 0 and "disabled" in result.output
    with pytest.raises(Unauthorized):
        auth(tmp_path).authenticate_session(session)
    with pytest.raises(Unauthorized):
        auth(tmp_path).login("ana", "s3cret-pass")
    missing = runner.invoke(main, ["user", "disable", "nobody"])
    assert missing.exit_code == 1 and "no user 'nobody'" in str(missing.exception)


def test_demo_creates_one_token_per_role_and_reuses_them(tmp_path: Path) -> None:
    from radpipe.common.auth import Principal
    from radpipe.demo import DEMO_TOKENS_FILE, demo_tokens

    store = auth(tmp_path)
    data = tmp_path / "data"
    actor = Principal("cli:test", "admin", "cli")
    first = demo_tokens(store, data, actor)
    assert {store.authenticate_token(t).role for t in first.values()} == {"modality", "radiologist"}
    assert demo_tokens(store, data, actor) == first  # reused, nothing added
    assert sorted(e["name"] for e in store.list_tokens()) == ["demo-modality", "demo-radiologist"]
    assert (data / DEMO_TOKENS_FILE).stat().st_mode & 0o777 == 0o600
    assert first["modality"] not in str(list(store.tokens.find({})))  # the store: hashes only
    store.revoke_token("demo-radiologist")
    second = demo_tokens(store, data, actor)
    assert second["modality"] == first["modality"]
    assert second["radiologist"] != first["radiologist"]
    assert store.authenticate_token(second["radiologist"]).name == "demo-radiologist"
    valid = [e["name"] for e in store.list_tokens() if not e.get("revoked")]
    assert sorted(valid) == ["demo-modality", "demo-radiologist"]
