"""The project's exception tree: everything we raise on purpose derives from ZaplineError."""

from __future__ import annotations


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
