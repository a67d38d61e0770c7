"""Settings.from_env: defaults, and one message naming every bad variable. Pure."""

from __future__ import annotations

import pytest

from events.errors import ConfigError
from pipeline.config import Settings
from pipeline.media import LocalStorage, storage_from


def test_an_empty_environment_gives_the_local_defaults_and_no_cors() -> None:
    settings = Settings.from_env({})
    assert (settings.port, settings.web_concurrency, settings.cors_origins) == (8000, 2, ())


def test_cors_origins_are_read_as_a_list_without_trailing_slashes() -> None:
    env = {"CORS_ORIGINS": "https://crm.example.com/, http://localhost:5173"}
    origins = Settings.from_env(env).cors_origins
    assert origins == ("https://crm.example.com", "http://localhost:5173")
    assert Settings.from_env({"CORS_ORIGINS": "*"}).cors_origins == ("*",)


def test_every_bad_variable_is_named_in_one_message() -> None:
    env = {"PORT": "eighty", "CORS_ORIGINS": "crm.example.com", "API_TOKENS": "nocolon"}
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    message = str(raised.value)
    assert all(name in message for name in ("PORT", "CORS_ORIGINS", "API_TOKENS"))


def test_production_without_s3_warns_that_web_cannot_serve_what_the_worker_stores(
    caplog: pytest.LogCaptureFixture, tmp_path: object
) -> None:
    tokens = {"WEBHOOK_TOKEN": "w", "API_TOKENS": "a:*", "ADMIN_TOKEN": "x"}
    local = Settings.from_env({"MEDIA_DIR": str(tmp_path)})
    railway = Settings.from_env(
        {**tokens, "MEDIA_DIR": str(tmp_path), "RAILWAY_DEPLOYMENT_ID": "d"}
    )

    assert isinstance(storage_from(local), LocalStorage) and not caplog.records
    assert isinstance(storage_from(railway), LocalStorage)
    assert "set S3_BUCKET" in caplog.text
