from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from radpipe.cli import main
from radpipe.common.auth import AuthService
from radpipe.common.docstore import open_embedded


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
