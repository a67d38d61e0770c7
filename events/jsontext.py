"""JSON text in and out at orjson's speed, with the standard library's reach.

orjson handles integers of at most 64 bits: it refuses bigger ones when writing and silently
reads them as floats. A payload may carry such numbers, so those cases take the standard
library's slower path instead.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import psycopg2.extras

# 19 digits in a row may be a number beyond 64 bits (or just a long id inside a string).
# Mapping every digit to "0" and the rest to " " finds such a run several times faster than
# a regular expression.
_DIGITS_AS_ZERO = bytes(ord("0") if ord("0") <= i <= ord("9") else ord(" ") for i in range(256))
_LONG_RUN = b"0" * 19


def loads(text: str | bytes) -> Any:
    """Decode JSON text; numbers of any size stay exact integers."""
    raw = text.encode() if isinstance(text, str) else text
    if _LONG_RUN in raw.translate(_DIGITS_AS_ZERO):
        return json.loads(raw)
    return orjson.loads(raw)


def dumps(value: Any) -> str:
    """Encode a value as compact JSON text."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def register() -> None:
    """Decode jsonb columns with `loads` on every psycopg2 connection of this process."""
    psycopg2.extras.register_default_jsonb(globally=True, loads=loads)
