"""The project's exception tree: everything we raise on purpose derives from ZaplineError."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a driver's runs on with detail and hints), or
    its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class ZaplineError(Exception):
    """Base of every error Zapline raises on purpose."""


class ConfigError(ZaplineError):
    """The environment is missing or has malformed variables."""


class BadWebhook(ZaplineError):
    """A webhook body that is not a JSON object with a string `event`."""


class StoreUnavailable(ZaplineError):
    """The database could not take or answer the request; the caller may retry."""


class StoreRejected(ZaplineError):
    """The database refused the data itself (not a connectivity problem)."""


class MediaUnavailable(ZaplineError):
    """The media source or store did not answer or failed for now; the caller may retry."""


class MediaRejected(ZaplineError):
    """The media source refused for good (the message is gone, the key refused): no retry."""
