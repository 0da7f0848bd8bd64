"""The one settings class: renamed settings are refused with the new name, not ignored."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from radpipe.common.settings import Settings

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
