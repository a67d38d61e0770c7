"""JSON text: orjson's speed without losing numbers bigger than 64 bits."""

from __future__ import annotations

import json

from events.jsontext import dumps, loads


def test_numbers_beyond_64_bits_read_back_as_exact_integers() -> None:
    text = '{"low": 18446744073709551616, "neg": -9223372036854775809, "id": "1234567890123456789"}'
    value = loads(text)
    assert value == {"low": 2**64, "neg": -(2**63) - 1, "id": "1234567890123456789"}
    assert isinstance(value["low"], int) and isinstance(value["neg"], int)


def test_ordinary_json_reads_the_same_as_the_standard_library() -> None:
    text = '{"a": [1, 2.5, -3, true, null], "s": "ação \\u00e9 \\n", "n": 9223372036854775807}'
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)


def test_numbers_beyond_64_bits_are_written_exactly() -> None:
    assert dumps({"n": 2**70, "s": "é"}) == '{"n":1180591620717411303424,"s":"é"}'
    assert dumps({"n": 1}) == '{"n":1}'
