"""Chats projection: last message, unread count and names, from message changes and events."""

from __future__ import annotations

import copy

import pytest

from events.event import Event
from projections import chats, messages
from projections.chats import ChatChange, ChatState
from tests.projections.conftest import (
    CHAT,
    GROUP,
    INSTANCE,
    MEMBER,
    T0,
    delete,
    edit,
    envelope,
    fixture_event,
    fixture_names,
    load,
    status_update,
    upsert,
)

Chats = dict[tuple[str, str], ChatState]


def project(
    events: list[Event], chat_states: Chats | None = None, message_states: dict | None = None
) -> tuple[Chats, list[ChatChange]]:
    """Run events through the messages projection and feed every change to the chats one."""
    message_states = {} if message_states is None else message_states
    chat_states = {} if chat_states is None else chat_states
    changes: list[ChatChange] = []
    for item in events:
        changes.extend(chats.apply_event(chat_states, item))
        for change in messages.apply(message_states, item):
            changes.extend(chats.apply_message(chat_states, change))
    return chat_states, changes


def chat_of(states: Chats, jid: str = CHAT, instance: str = INSTANCE) -> dict:
    return states[(instance, jid)].chat


# --- last message ------------------------------------------------------------------------


def test_preview_and_time_follow_the_newest_message() -> None:
    states, changes = project([upsert("K1", "first", ts=T0), upsert("K2", "second", ts=T0 + 60)])

    chat = chat_of(states)
    assert (chat["last_message_preview"], chat["last_message_key_id"]) == ("second", "K2")
    assert chat["last_message_at"] == "2025-06-15T15:07:40Z"
    assert [c.kind for c in changes] == ["chat.updated", "chat.updated"]
    assert set(chat) == {
        "instance",
        "chat_jid",
        "name",
        "is_group",
        "last_message_at",
        "last_message_preview",
        "last_message_key_id",
        "unread_count",
    }


def test_a_late_older_message_does_not_replace_the_preview() -> None:
    states, _ = project([upsert("K2", "newer", ts=T0 + 60), upsert("K1", "older", ts=T0)])

    chat = chat_of(states)
    assert (chat["last_message_preview"], chat["last_message_at"]) == (
        "newer",
        "2025-06-15T15:07:40Z",
    )


def test_an_edit_of_the_last_message_updates_the_preview() -> None:
    states, _ = project([upsert("K1", "helo"), edit("K1", "hello", ts_ms=T0 * 1000 + 1)])

    assert chat_of(states)["last_message_preview"] == "hello"


def test_a_delete_of_the_last_message_shows_deleted() -> None:
    states, _ = project([upsert("K1", "oops"), delete("K1")])

    assert chat_of(states)["last_message_preview"] == "[deleted]"


def test_changes_to_an_older_message_leave_the_preview_alone() -> None:
    states, changes = project(
        [
            upsert("K1", "old", ts=T0),
            upsert("K2", "new", ts=T0 + 60),
            edit("K1", "old, edited", ts_ms=T0 * 1000 + 90_000),
            delete("K1"),
        ]
    )

    assert chat_of(states)["last_message_preview"] == "new"
    assert len(changes) == 2


def test_media_previews_use_the_caption_else_the_type() -> None:
    with_caption = upsert("K1", ts=T0, message={"imageMessage": {"caption": "look"}})
    without = upsert("K2", ts=T0 + 1, message={"audioMessage": {"ptt": True}})

    states, changes = project([with_caption, without])

    assert [c.chat["last_message_preview"] for c in changes] == ["look", "[audio]"]
    assert chat_of(states)["last_message_preview"] == "[audio]"


def test_the_preview_is_at_most_100_characters() -> None:
    states, _ = project([upsert("K1", "x" * 500)])

    preview = chat_of(states)["last_message_preview"]
    assert len(preview) == 100 and preview.startswith("x" * 99)


# --- unread ------------------------------------------------------------------------------


def test_incoming_messages_are_unread_until_an_outgoing_message_resets_the_count() -> None:
    message_states: dict = {}
    states, _ = project(
        [upsert("I1", ts=T0), upsert("I2", ts=T0 + 1), upsert("I3", ts=T0 + 2)],
        None,
        message_states,
    )
    assert chat_of(states)["unread_count"] == 3

    project([upsert("O1", from_me=True, ts=T0 + 3)], states, message_states)
    assert chat_of(states)["unread_count"] == 0


def test_an_incoming_message_older_than_the_latest_reply_is_not_unread() -> None:
    states, _ = project([upsert("O1", from_me=True, ts=T0 + 10), upsert("I1", ts=T0)])

    chat = chat_of(states)
    assert chat["unread_count"] == 0
    assert chat["last_message_key_id"] == "O1"


def test_a_late_reply_leaves_the_incoming_messages_newer_than_itself_unread() -> None:
    states, _ = project(
        [
            upsert("I1", ts=T0),
            upsert("I2", ts=T0 + 20),
            upsert("O1", from_me=True, ts=T0 + 10),
            upsert("O0", from_me=True, ts=T0 + 5),  # older than O1: decides nothing
        ]
    )

    assert chat_of(states)["unread_count"] == 1


def test_message_updates_never_increment_the_unread_count() -> None:
    states, _ = project(
        [
            upsert("I1", "hi", status=None),
            status_update("I1", "READ"),
            edit("I1", "hi!", ts_ms=T0 * 1000 + 1),
            upsert("I1", "hi", status="DELIVERY_ACK"),
        ]
    )

    assert chat_of(states)["unread_count"] == 1


def test_message_updates_never_increment_the_unread_count_past_the_dedupe_window() -> None:
    message_states: dict = {}
    states, _ = project([upsert(f"I{n}", ts=T0 + n) for n in range(60)], None, message_states)
    assert chat_of(states)["unread_count"] == 60

    _, changes = project([status_update("I0", "READ")], states, message_states)
    assert changes == []
    assert chat_of(states)["unread_count"] == 60


def test_a_created_change_applied_twice_counts_once() -> None:
    [created] = messages.apply({}, upsert("I1"))
    states: Chats = {}

    assert len(chats.apply_message(states, created)) == 1
    snapshot = copy.deepcopy(states)
    assert chats.apply_message(states, created) == []
    assert states == snapshot
    assert chat_of(states)["unread_count"] == 1


def test_a_late_reply_after_more_than_the_window_of_newer_messages_leaves_the_window() -> None:
    states, _ = project(
        [upsert("I0", ts=T0)]
        + [upsert(f"I{n}", ts=T0 + 100 + n) for n in range(1, 61)]
        + [upsert("O1", from_me=True, ts=T0 + 50)]
    )

    assert chat_of(states)["unread_count"] == 50


def test_messages_counted_out_of_order_and_again_count_once() -> None:
    message_states: dict = {}
    states, _ = project(
        [upsert("I3", ts=T0 + 30), upsert("I1", ts=T0 + 10), upsert("I2", ts=T0 + 20)],
        None,
        message_states,
    )
    created = [
        messages.MessageChange("message.created", INSTANCE, k, m.message)
        for (_, k), m in message_states.items()
    ]
    for change in created:
        assert chats.apply_message(states, change) == []
    assert chat_of(states)["unread_count"] == 3

    project([upsert("O1", from_me=True, ts=T0 + 15)], states, message_states)
    assert chat_of(states)["unread_count"] == 2


def test_a_window_stored_as_time_and_key_pairs_is_still_read() -> None:
    """Chats written before the window became one string keep their counts and dedupe."""
    message_states: dict = {}
    states, _ = project([upsert(f"I{n}", ts=T0 + 10 * n) for n in range(3)], None, message_states)
    key = (INSTANCE, CHAT)
    old_window = [[m.message["timestamp"], k] for (_, k), m in sorted(message_states.items())]
    states[key] = ChatState(states[key].chat, {**states[key].meta, "unread": old_window})
    again = messages.MessageChange(
        "message.created", INSTANCE, "I1", message_states[(INSTANCE, "I1")].message
    )

    assert chats.apply_message(states, again) == []
    project(
        [upsert("I3", ts=T0 + 30), upsert("O1", from_me=True, ts=T0 + 15)], states, message_states
    )
    assert chat_of(states)["unread_count"] == 2


# --- names -------------------------------------------------------------------------------


def test_a_direct_chat_takes_the_newest_incoming_push_name() -> None:
    states, _ = project(
        [
            upsert("I2", push_name="Ana Maria", ts=T0 + 10),
            upsert("I1", push_name="Ana", ts=T0),  # older: does not rename
            upsert("O1", push_name="Você", from_me=True, ts=T0 + 20),  # ours: never a name
        ]
    )

    assert chat_of(states)["name"] == "Ana Maria"


def test_stories_never_name_the_status_broadcast_chat_after_their_poster() -> None:
    story = upsert("S1", chat="status@broadcast", participant=CHAT, push_name="Joao")

    states, _ = project([story])

    assert chat_of(states, "status@broadcast")["name"] is None


def test_a_naming_event_for_a_lid_makes_no_chat_but_names_one_that_exists() -> None:
    lid = "123456789012345@lid"
    name = envelope("contacts.upsert", [{"remoteJid": lid, "pushName": "Maria Silva"}])

    assert project([name]) == ({}, [])
    states, _ = project([upsert("K1", chat=lid, push_name=None), name])
    assert chat_of(states, lid)["name"] == "Maria Silva"


def test_a_group_never_takes_push_names() -> None:
    states, _ = project([upsert("G1", chat=GROUP, participant=MEMBER, push_name="Oz")])

    chat = chat_of(states, GROUP)
    assert (chat["name"], chat["is_group"]) == (None, True)


def test_the_chats_upsert_fixture_with_an_empty_name_names_nothing() -> None:
    event = fixture_event("chats.upsert__na__1.json")

    assert chats.targets(event) == []
    assert project([event]) == ({}, [])


def test_a_chats_upsert_name_names_the_chat_and_outranks_later_push_names() -> None:
    [entry] = load("chats.upsert__na__1.json")["data"]
    event = envelope("chats.upsert", [{**entry, "remoteJid": CHAT, "name": "Ana (customer)"}])

    states, changes = project([event, upsert("I1", push_name="Ana")])

    assert chats.targets(event) == [CHAT]
    assert changes[0].chat["name"] == "Ana (customer)"
    assert chat_of(states)["name"] == "Ana (customer)"


def test_the_contacts_upsert_fixture_names_the_contact_chat() -> None:
    event = fixture_event("contacts.upsert__na__1.json")

    states, changes = project([event])

    jid = "558187885943@s.whatsapp.net"
    assert chats.targets(event) == [jid]
    assert [c.chat_jid for c in changes] == [jid]
    chat = chat_of(states, jid, "nome-da-instancia")
    assert (chat["name"], chat["is_group"], chat["unread_count"]) == ("Nome do Contato", False, 0)


def test_the_contacts_update_fixtures_name_a_group_and_skip_an_empty_push_name() -> None:
    group = fixture_event("contacts.update__na__1.json")  # an array
    single = fixture_event("contacts.update__na__2.json")  # a single object, pushName ""

    states, _ = project([group, single])

    assert chats.targets(single) == []
    assert (
        chat_of(states, "120363041967849074@g.us", "nome-da-instancia")["name"] == "Nome do Grupo"
    )
    assert list(states) == [("nome-da-instancia", "120363041967849074@g.us")]


def test_a_contacts_update_single_object_with_a_name_names_the_chat() -> None:
    event = fixture_event("contacts.update__na__2.json")
    event.payload["data"]["pushName"] = "Maria"

    states, _ = project([event])

    assert chat_of(states, "558197088404@s.whatsapp.net", "nome-da-instancia")["name"] == "Maria"


def test_groups_upsert_subject_names_the_group() -> None:
    event = envelope("groups.upsert", [{"id": GROUP, "subject": "Sales team", "size": 3}])

    states, _ = project([upsert("G1", chat=GROUP, participant=MEMBER), event])

    assert chats.targets(event) == [GROUP]
    assert chat_of(states, GROUP)["name"] == "Sales team"


def test_a_repeated_naming_event_changes_nothing() -> None:
    event = envelope("chats.upsert", [{"remoteJid": CHAT, "name": "Ana"}])
    states, _ = project([event])
    snapshot = copy.deepcopy(states)

    assert chats.apply_event(states, event) == []
    assert states == snapshot


def test_a_naming_event_skips_a_jid_or_instance_too_long_to_key_a_chat() -> None:
    long_jid = "9" * 250 + "@s.whatsapp.net"
    event = envelope(
        "chats.upsert", [{"remoteJid": long_jid, "name": "X"}, {"remoteJid": CHAT, "name": "Ana"}]
    )
    elsewhere = Event(event.position, "i" * 201, event.type, event.payload)

    assert chats.targets(event) == [CHAT]
    assert chats.targets(elsewhere) == []


@pytest.mark.parametrize("name", fixture_names("connection.", "qrcode.", "presence.", "messages."))
def test_events_that_name_nothing_have_no_chat_targets(name: str) -> None:
    event = fixture_event(name)

    assert chats.targets(event) == []
    assert chats.apply_event({}, event) == []


# --- the real captures end to end -------------------------------------------------------


def test_real_captures_in_file_order_give_each_chat_its_newest_message_and_unread_count() -> None:
    # File order is not time order: it replays late and out-of-order arrival for real.
    states, _ = project(
        [fixture_event(name) for name in fixture_names("messages.upsert__", "send.message__")]
    )

    # tigo1: in 20:51, 20:53, 20:57; out 21:10, 21:11, 21:14 (the video, last)
    percy = chat_of(states, "59171146267@s.whatsapp.net", "tigo1")
    assert percy == {
        "instance": "tigo1",
        "chat_jid": "59171146267@s.whatsapp.net",
        "name": "percy alvarez E1",
        "is_group": False,
        "last_message_at": "2025-05-01T21:14:25Z",
        "last_message_preview": "texto con video",
        "last_message_key_id": "3EB003A2297E288C1E4B17",
        "unread_count": 0,
    }
    # three incoming from Leila; the sticker (17:13:29) arrives after the newer image
    leila = chat_of(states, "553191819932@s.whatsapp.net", "instance_3_553175564133")
    assert (leila["last_message_preview"], leila["last_message_at"], leila["unread_count"]) == (
        "[image]",
        "2024-01-19T17:14:08Z",
        3,
    )
    group = chat_of(states, "120363420497664775@g.us", "My Phone")
    assert (group["name"], group["is_group"], group["last_message_preview"]) == (None, True, "Done")


def test_applying_every_event_twice_gives_the_same_chats_and_no_extra_changes() -> None:
    log = [
        *(fixture_event(name) for name in fixture_names("messages.", "send.", "contacts.")),
        upsert("I1", ts=T0),
        upsert("O1", from_me=True, ts=T0 + 5),
        upsert("I2", ts=T0 + 9),
        edit("I2", "edited", ts_ms=T0 * 1000 + 9_500),
        envelope("chats.upsert", [{"remoteJid": CHAT, "name": "Ana"}]),
    ]
    once, once_changes = project(log)

    twice: Chats = {}
    message_states: dict = {}
    twice_changes = []
    for item in log:
        twice_changes.extend(project([item], twice, message_states)[1])
        assert project([item], twice, message_states)[1] == []

    assert twice == once
    assert twice_changes == once_changes
