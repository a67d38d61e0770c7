"""Every real messages.upsert / send.message capture projects to the message a person reads in it.

The table below was written by reading each fixture; timestamps were converted from
`data.messageTimestamp` by hand (`date -u -d @<seconds>`) and agree with `date_time` + 3 h.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from projections import messages
from tests.projections.conftest import fixture_event, fixture_names


class Expected(NamedTuple):
    type: str
    text: str | None
    caption: str | None
    chat_jid: str
    sender: str | None
    from_me: bool
    timestamp: str
    status: str


FINCHAT = "5519998467194@s.whatsapp.net"
PERCY = "59171146267@s.whatsapp.net"
TIGO1 = "59169375664@s.whatsapp.net"  # the instance's own number (envelope `sender`)
LEILA = "553191819932@s.whatsapp.net"
TEST_CONTACT = "77000000000@s.whatsapp.net"
LEANDRO_BAILEYS = "5491131376731@s.whatsapp.net"
LEANDRO_META = "541131376731@s.whatsapp.net"
OZ = "23781250756724@lid"

# A text starting with "…" marks a long text checked by its start only.
EXPECTED = {
    "messages.upsert__audioMessage__1.json": Expected(
        "audio", None, None, FINCHAT, FINCHAT, False, "2025-06-12T22:08:54Z", "delivered"
    ),
    "messages.upsert__audioMessage__2.json": Expected(
        "audio", None, None, LEANDRO_META, LEANDRO_META, False, "2026-02-28T18:18:19Z", "delivered"
    ),
    "messages.upsert__audioMessage__3.json": Expected(
        "audio",
        None,
        None,
        LEANDRO_BAILEYS,
        LEANDRO_BAILEYS,
        False,
        "2026-02-28T18:23:54Z",
        "delivered",
    ),
    "messages.upsert__conversation__1.json": Expected(
        "text",
        "gastei 25,78 com Uber",
        None,
        FINCHAT,
        FINCHAT,
        False,
        "2025-06-12T22:08:21Z",
        "delivered",
    ),
    "messages.upsert__conversation__2.json": Expected(
        "text",
        "Pode falar",
        None,
        "5511932473951@s.whatsapp.net",
        "5511932473951@s.whatsapp.net",
        False,
        "2025-06-21T19:36:37Z",
        "delivered",
    ),
    "messages.upsert__conversation__3.json": Expected(
        "text", "hola - text", None, PERCY, PERCY, False, "2025-05-01T20:51:13Z", "delivered"
    ),
    # v1 fromMe typed on the phone: no status in the payload, so it was at least server-acked
    "messages.upsert__conversation__4.json": Expected(
        "text",
        "menasje saliente solo texto",
        None,
        PERCY,
        TIGO1,
        True,
        "2025-05-01T21:10:21Z",
        "server_ack",
    ),
    "messages.upsert__conversation__5.json": Expected(
        "text", "Eu te amo", None, LEILA, LEILA, False, "2024-01-19T17:13:49Z", "delivered"
    ),
    "messages.upsert__conversation__6.json": Expected(
        "text",
        "[snapshot] webhook capture - text",
        None,
        TEST_CONTACT,
        TEST_CONTACT,
        False,
        "2026-06-14T17:45:44Z",
        "delivered",
    ),
    "messages.upsert__conversation__7.json": Expected(
        "text",
        "Hola, que venden?",
        None,
        LEANDRO_BAILEYS,
        LEANDRO_BAILEYS,
        False,
        "2026-02-18T00:09:47Z",
        "delivered",
    ),
    "messages.upsert__conversation__8.json": Expected(
        "text",
        "hola!",
        None,
        LEANDRO_META,
        LEANDRO_META,
        False,
        "2026-02-18T02:52:19Z",
        "delivered",
    ),
    "messages.upsert__conversation_group__1.json": Expected(
        "text",
        "test 001  hola",
        None,
        "120363141381952108@g.us",
        "24666483777619@lid",
        False,
        "2025-05-07T21:02:54Z",
        "delivered",
    ),
    "messages.upsert__conversation_group__2.json": Expected(
        "text",
        "…Source: Master Air Duct Cleaning NY\nID: #87EGX9L\n",
        None,
        "120363418663151479@g.us",
        OZ,
        False,
        "2025-10-09T21:00:38Z",
        "delivered",
    ),
    "messages.upsert__conversation_group__3.json": Expected(
        "text",
        "Done",
        None,
        "120363420497664775@g.us",
        OZ,
        False,
        "2025-10-13T06:55:10Z",
        "delivered",
    ),
    "messages.upsert__extendedTextMessage_group__1.json": Expected(
        "text",
        "Perfumes de 35 ML de mujer y hombre a 1 a 16 Bs y 2 en 30 bs",
        None,
        "120363332108137298@g.us",
        "156985366458569@lid",
        False,
        "2025-05-08T23:08:00Z",
        "delivered",
    ),
    "messages.upsert__imageMessage__1.json": Expected(
        "image", None, None, FINCHAT, FINCHAT, False, "2025-06-12T22:09:31Z", "delivered"
    ),
    "messages.upsert__imageMessage__2.json": Expected(
        "image",
        None,
        "hola - text con multimedia (imagen)",
        PERCY,
        PERCY,
        False,
        "2025-05-01T20:53:16Z",
        "delivered",
    ),
    "messages.upsert__imageMessage__3.json": Expected(
        "image",
        None,
        "mensaje saliente con multimedia (imagen)",
        PERCY,
        TIGO1,
        True,
        "2025-05-01T21:11:43Z",
        "server_ack",
    ),
    "messages.upsert__imageMessage__4.json": Expected(
        "image", None, None, LEILA, LEILA, False, "2024-01-19T17:14:08Z", "delivered"
    ),
    "messages.upsert__imageMessage__5.json": Expected(
        "image", None, None, TEST_CONTACT, TEST_CONTACT, False, "2026-06-14T17:45:56Z", "delivered"
    ),
    "messages.upsert__imageMessage__6.json": Expected(
        "image",
        None,
        "This is for test. Media + text",
        TEST_CONTACT,
        TEST_CONTACT,
        False,
        "2026-06-14T17:46:07Z",
        "delivered",
    ),
    "messages.upsert__listResponseMessage__1.json": Expected(
        "list_response", None, None, FINCHAT, FINCHAT, False, "2025-06-12T22:07:13Z", "delivered"
    ),
    "messages.upsert__stickerMessage__1.json": Expected(
        "sticker", None, None, LEILA, LEILA, False, "2024-01-19T17:13:29Z", "delivered"
    ),
    "messages.upsert__videoMessage__1.json": Expected(
        "video",
        None,
        "hola - text con multimea (video)",
        PERCY,
        PERCY,
        False,
        "2025-05-01T20:57:16Z",
        "delivered",
    ),
    "messages.upsert__videoMessage__2.json": Expected(
        "video", None, "texto con video", PERCY, TIGO1, True, "2025-05-01T21:14:25Z", "server_ack"
    ),
    "send.message__conversation__1.json": Expected(
        "text",
        "[snapshot] webhook capture - text",
        None,
        TEST_CONTACT,
        "77011111111@s.whatsapp.net",
        True,
        "2026-06-13T17:33:43Z",
        "pending",
    ),
}

# size from fileLength (a string before 2.3.6, a Long object from 2.3.6), mimetype as sent
EXPECTED_MEDIA = {
    "messages.upsert__audioMessage__1.json": ("audio/ogg; codecs=opus", 7397),
    "messages.upsert__audioMessage__2.json": ("audio/ogg; codecs=opus", None),  # Meta: no length
    "messages.upsert__audioMessage__3.json": ("audio/ogg; codecs=opus", 1921),
    "messages.upsert__imageMessage__1.json": ("image/jpeg", 226806),
    "messages.upsert__imageMessage__2.json": ("image/jpeg", 52046),
    "messages.upsert__imageMessage__3.json": ("image/jpeg", 68236),
    "messages.upsert__imageMessage__4.json": ("image/jpeg", 255244),
    "messages.upsert__imageMessage__5.json": ("image/jpeg", 87154),
    "messages.upsert__imageMessage__6.json": ("image/jpeg", 297167),
    "messages.upsert__stickerMessage__1.json": ("image/webp", 35216),
    "messages.upsert__videoMessage__1.json": ("video/mp4", 2797968),
    "messages.upsert__videoMessage__2.json": ("video/mp4", 15741525),
}

QUOTED = {
    "messages.upsert__conversation_group__3.json": "3BE214A91FDE9677D58F",
    "messages.upsert__listResponseMessage__1.json": "3EB060F42B56D9F572036DD7DFD58C58F81A96DB",
}


def _created(name: str) -> dict[str, Any]:
    states: dict = {}
    changes = messages.apply(states, fixture_event(name))
    assert [change.kind for change in changes] == ["message.created"]
    return changes[0].message


def test_the_table_covers_every_message_fixture() -> None:
    assert sorted(EXPECTED) == fixture_names("messages.upsert__", "send.message__")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_projects_to_the_expected_message(name: str) -> None:
    expected = EXPECTED[name]
    message = _created(name)

    got = Expected(*(message[field] for field in Expected._fields))
    if expected.text is not None and expected.text.startswith("…"):
        assert got.text is not None and got.text.startswith(expected.text[1:])
        got = got._replace(text=expected.text)
    assert got == expected
    assert message["quoted_key_id"] == QUOTED.get(name)
    assert (message["edited"], message["deleted"], message["reactions"]) == (False, False, {})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_media_carries_type_and_size_but_no_bytes_or_urls(name: str) -> None:
    message = _created(name)

    if name not in EXPECTED_MEDIA:
        assert message["media"] is None
        return
    mimetype, size = EXPECTED_MEDIA[name]
    # the fixtures' inline base64 is a (truncated) string that ingest could not decode
    assert message["media"] == {
        "status": "pending",
        "mimetype": mimetype,
        "size": size,
        "sha256": None,
    }


def test_message_has_exactly_the_public_keys() -> None:
    message = _created("messages.upsert__conversation__1.json")

    assert set(message) == {
        "instance",
        "chat_jid",
        "key_id",
        "from_me",
        "sender",
        "push_name",
        "type",
        "text",
        "caption",
        "timestamp",
        "status",
        "edited",
        "deleted",
        "reactions",
        "quoted_key_id",
        "media",
    }
    assert (message["instance"], message["key_id"], message["push_name"]) == (
        "Finchat",
        "3EB0062835B784532CE8B8",
        "Mariana M. Macêdo",
    )
