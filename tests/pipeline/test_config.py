"""Settings.from_env: defaults, and one message naming every bad variable. Pure."""

from __future__ import annotations

import pytest

from events.errors import ConfigError
from pipeline.config import Settings


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
