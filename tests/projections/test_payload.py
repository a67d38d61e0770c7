"""Decoding the value shapes Evolution sends across versions."""

from __future__ import annotations

import pytest

from projections import payload
from tests.projections.conftest import load


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1749766101, 1749766101),
        ("1749766101", 1749766101),
        ({"low": 87154, "high": 0, "unsigned": True}, 87154),
        ({"low": 1781351126, "high": 0, "unsigned": False}, 1781351126),
        # 2**32 + 5 and an unsigned value whose low half reads negative in Long.js
        ({"low": 5, "high": 1, "unsigned": False}, 4294967301),
        ({"low": -1, "high": 0, "unsigned": True}, 4294967295),
        ({"low": 0, "high": -1, "unsigned": False}, -4294967296),
        ("not a number", None),
        (None, None),
        ({"0": 1}, None),
        # beyond bigint: no real size or time, and no column could store it
        (10**30, None),
        (str(2**63), None),
        (2**63 - 1, 2**63 - 1),
    ],
)
def test_to_int_reads_ints_strings_and_long_objects(value: object, expected: int | None) -> None:
    assert payload.to_int(value) == expected


def test_to_bytes_reads_2_3_6_index_keyed_objects_from_a_real_capture() -> None:
    image = load("messages.upsert__imageMessage__5.json")["data"]["message"]["imageMessage"]
    assert payload.to_bytes(image["firstScanSidecar"]) == bytes(
        [149, 84, 77, 1, 209, 43, 201, 166, 54, 181]
    )


def test_to_bytes_reads_base64_strings_sent_before_2_3_6() -> None:
    assert payload.to_bytes("AQID") == b"\x01\x02\x03"
    assert payload.to_bytes({"0": 1, "2": 3}) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1749766101, "2025-06-12T22:08:21Z"),
        ("1705684429", "2024-01-19T17:13:49Z"),
        ({"low": 1781459144, "high": 0, "unsigned": False}, "2026-06-14T17:45:44Z"),
        (1749766101123, "2025-06-12T22:08:21Z"),  # milliseconds
        (None, None),
        ("yesterday", None),
    ],
)
def test_iso_utc_formats_unix_seconds_as_utc(value: object, expected: str | None) -> None:
    assert payload.iso_utc(value) == expected


@pytest.mark.parametrize(
    ("jid", "expected"),
    [
        ("551699123456:90@s.whatsapp.net", "551699123456@s.whatsapp.net"),
        ("551699123456@s.whatsapp.net", "551699123456@s.whatsapp.net"),
        ("5200000000000:3@lid", "5200000000000@lid"),
        ("120363141381952108@g.us", "120363141381952108@g.us"),
        ("", None),
        (None, None),
    ],
)
def test_normalize_jid_strips_the_device_suffix(jid: object, expected: str | None) -> None:
    assert payload.normalize_jid(jid) == expected


def test_chat_jid_prefers_the_phone_jid_when_addressed_by_lid() -> None:
    key = {"remoteJid": "5200000000000@lid", "remoteJidAlt": "77000000000@s.whatsapp.net"}
    assert payload.chat_jid({**key, "addressingMode": "lid"}) == "77000000000@s.whatsapp.net"
    # Whatever the addressing mode says, a phone JID beats a LID.
    assert payload.chat_jid({**key, "addressingMode": "pn"}) == "77000000000@s.whatsapp.net"
    # 2.3.6+ swaps them: the phone JID first, the LID as the alternative.
    swapped = {"remoteJid": "77000000000@s.whatsapp.net", "remoteJidAlt": "5200000000000@lid"}
    assert payload.chat_jid({**swapped, "addressingMode": "pn"}) == "77000000000@s.whatsapp.net"
    assert payload.chat_jid({"remoteJid": "5200000000000@lid"}) == "5200000000000@lid"


def test_chat_jid_takes_the_sender_pn_of_2_3_0_on_incoming_messages_only() -> None:
    key = {"remoteJid": "5200000000000@lid", "senderPn": "77000000000@s.whatsapp.net"}
    assert payload.chat_jid({**key, "fromMe": False}) == "77000000000@s.whatsapp.net"
    # On our own messages senderPn may be our own number: the chat stays the LID.
    assert payload.chat_jid({**key, "fromMe": True}) == "5200000000000@lid"


@pytest.mark.parametrize(
    ("message", "key"),
    [
        ({"messageContextInfo": {}, "conversation": "hi"}, "conversation"),
        ({"senderKeyDistributionMessage": {}, "conversation": "hi"}, "conversation"),
        (
            {"ephemeralMessage": {"message": {"extendedTextMessage": {"text": "hi"}}}},
            "extendedTextMessage",
        ),
        ({"viewOnceMessageV2": {"message": {"imageMessage": {"caption": "c"}}}}, "imageMessage"),
        ({"viewOnceMessage": {"message": {"videoMessage": {}}}}, "videoMessage"),
        (
            {"documentWithCaptionMessage": {"message": {"documentMessage": {"caption": "c"}}}},
            "documentMessage",
        ),
        ({"messageContextInfo": {}}, None),
    ],
)
def test_content_unwraps_wrappers_and_skips_context_keys(message: dict, key: str | None) -> None:
    assert payload.content(message)[0] == key


def test_message_type_names_known_contents_and_keeps_unknown_keys_raw() -> None:
    assert payload.message_type("extendedTextMessage") == "text"
    assert payload.message_type("listResponseMessage") == "list_response"
    assert payload.message_type("buttonsResponseMessage") == "buttons_response"
    assert payload.message_type("someFutureMessage") == "someFutureMessage"
    assert payload.message_type(None) == "unknown"
