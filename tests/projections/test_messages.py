"""Messages projection: out-of-order merging, held operations and idempotency."""

from __future__ import annotations

import copy
import json
import random

import pytest

from events.event import Event
from projections import messages
from projections.messages import MessageState
from tests.projections.conftest import (
    CHAT,
    GROUP,
    INSTANCE,
    ME,
    MEMBER,
    T0,
    delete,
    edit,
    envelope,
    fixture_event,
    fixture_names,
    message_of,
    reaction,
    revoke,
    run,
    status_update,
    upsert,
)

# --- statuses --------------------------------------------------------------------------


def targets(event: Event) -> list[str]:
    """The key ids an event reads or writes, as the runner loads them."""
    operation = messages.read(event)
    return [operation[0]] if operation is not None else []


def test_late_delivery_ack_never_undoes_read() -> None:
    states, changes = run(
        [
            upsert("K1", from_me=True, status="SERVER_ACK"),
            status_update("K1", "READ"),
            status_update("K1", "DELIVERY_ACK"),
        ]
    )

    assert message_of(states, "K1")["status"] == "read"
    assert [c.message["status"] for c in changes] == ["server_ack", "read"]


def test_statuses_only_move_forward_in_any_arrival_order() -> None:
    names = ["PENDING", "ERROR", "SERVER_ACK", "DELIVERY_ACK", "READ", "PLAYED"]
    for seed in range(20):
        order = names[:]
        random.Random(seed).shuffle(order)
        states, changes = run(
            [upsert("K1", from_me=True, status=None, event_type="send.message")]
            + [status_update("K1", name) for name in order]
        )

        assert message_of(states, "K1")["status"] == "played"
        ranks = [messages.STATUS_RANK[c.message["status"]] for c in changes]
        assert ranks == sorted(set(ranks))


def test_error_ranks_above_pending_and_below_server_ack() -> None:
    states, _ = run([upsert("K1", from_me=True, status="PENDING"), status_update("K1", "ERROR")])
    assert message_of(states, "K1")["status"] == "error"

    run([status_update("K1", "SERVER_ACK"), status_update("K1", "ERROR")], states)
    assert message_of(states, "K1")["status"] == "server_ack"


def test_v1_numeric_statuses_map_like_their_names() -> None:
    v1_update = envelope(
        "messages.update",
        {"remoteJid": CHAT, "fromMe": True, "id": "K1", "status": 4, "datetime": 1, "owner": "x"},
    )
    states, _ = run([upsert("K1", from_me=True, status=None), v1_update])

    assert message_of(states, "K1")["status"] == "read"


def test_deleted_status_is_ignored() -> None:
    deleted = status_update("K1", "DELETED")
    states, _ = run([upsert("K1", from_me=True, status="SERVER_ACK")])
    before = dict(states)

    assert targets(deleted) == []
    assert messages.apply(states, deleted) == []
    assert states == before
    # and before its message: nothing is held for it either
    empty: dict = {}
    assert messages.apply(empty, status_update("K2", "DELETED")) == []
    assert empty == {}


def test_real_delivery_ack_fixture_targets_its_key_id() -> None:
    update = fixture_event("messages.update__DELIVERY_ACK__1.json")
    assert targets(update) == ["3EB06664456CEB540ACCEB31333296464363194A"]


# --- operations before their message -----------------------------------------------------


def test_update_before_its_message_is_held_then_applied_in_one_created_change() -> None:
    update = fixture_event("messages.update__DELIVERY_ACK__1.json")
    key_id = "3EB06664456CEB540ACCEB31333296464363194A"
    echo = upsert(key_id, "hi", from_me=True, status="PENDING", event_type="send.message")
    echo.payload["instance"] = "xpayment"
    echo = type(echo)(echo.position, "xpayment", echo.type, echo.payload)
    states: dict = {}

    # given the update arrives first
    assert messages.apply(states, update) == []
    held = states[("xpayment", key_id)]
    assert held.message is None
    assert [op["pos"] for op in held.held] == [update.position]

    # when the message arrives
    changes = messages.apply(states, echo)

    # then it is born with the status folded in, and nothing stays held
    assert [(c.kind, c.message["status"]) for c in changes] == [("message.created", "delivered")]
    assert states[("xpayment", key_id)].held == ()


def test_every_kind_of_early_operation_is_folded_into_the_created_message() -> None:
    states, changes = run(
        [
            status_update("K1", "READ"),
            edit("K1", "fixed", ts_ms=str(T0 * 1000 + 10)),
            reaction("K1", "👍", ts_ms=T0 * 1000 + 20),
            delete("K1"),
            upsert("K1", "typo", from_me=True, status="SERVER_ACK"),
        ]
    )

    assert len(changes) == 1 and changes[0].kind == "message.created"
    message = changes[0].message
    assert (message["status"], message["text"], message["edited"], message["deleted"]) == (
        "read",
        "fixed",
        True,
        True,
    )
    assert message["reactions"] == {"👍": [CHAT]}
    assert message_of(states, "K1") == message


def test_a_held_operation_redelivered_with_the_same_position_is_held_once() -> None:
    update = status_update("K1", "READ")
    states, _ = run([update, update])

    assert len(states[(INSTANCE, "K1")].held) == 1


# --- edits and deletes -------------------------------------------------------------------


def test_edit_replaces_text_and_marks_edited() -> None:
    states, changes = run([upsert("K1", "helo"), edit("K1", "hello", ts_ms=str(T0 * 1000 + 1))])

    assert [c.kind for c in changes] == ["message.created", "message.updated"]
    message = message_of(states, "K1")
    assert (message["text"], message["edited"]) == ("hello", True)


def test_edit_of_a_media_message_replaces_its_caption() -> None:
    image = upsert("K1", message={"imageMessage": {"mimetype": "image/jpeg", "caption": "old"}})
    states, _ = run([image, edit("K1", "new", ts_ms=T0 * 1000 + 1, caption=True)])

    message = message_of(states, "K1")
    assert (message["type"], message["text"], message["caption"], message["edited"]) == (
        "image",
        None,
        "new",
        True,
    )


def test_out_of_order_edits_keep_the_latest_by_timestamp() -> None:
    second = edit("K1", "second", ts_ms={"low": 2000, "high": 0, "unsigned": False})
    first = edit("K1", "first", ts_ms="1000")
    states, changes = run([upsert("K1", "original"), second, first])

    assert message_of(states, "K1")["text"] == "second"
    assert [c.message["text"] for c in changes] == ["original", "second"]


def test_a_late_upsert_does_not_overwrite_an_edited_text() -> None:
    states, _ = run(
        [
            upsert("K1", "original", from_me=True, status="PENDING", event_type="send.message"),
            edit("K1", "edited", ts_ms=T0 * 1000 + 1),
            upsert("K1", "original", from_me=True, status="SERVER_ACK"),
        ]
    )

    message = message_of(states, "K1")
    assert (message["text"], message["edited"], message["status"]) == ("edited", True, "server_ack")


def test_revoke_marks_deleted_and_keeps_the_text() -> None:
    states, changes = run([upsert("K1", "oops"), revoke("K1")])

    message = message_of(states, "K1")
    assert (message["deleted"], message["text"]) == (True, "oops")
    assert [c.kind for c in changes] == ["message.created", "message.updated"]


def test_a_revoke_without_its_type_is_understood() -> None:
    # REVOKE is enum 0, the protobuf default: an encoder may leave `type` out altogether.
    bare = revoke("K1")
    del bare.payload["data"]["type"]
    states, changes = run([upsert("K1", "oops"), bare])

    assert message_of(states, "K1")["deleted"] is True
    assert [c.kind for c in changes] == ["message.created", "message.updated"]


def test_numeric_revoke_and_edit_types_are_understood() -> None:
    numeric_edit = edit("K1", "new", ts_ms=1)
    numeric_edit.payload["data"]["type"] = 14
    numeric_revoke = revoke("K1")
    numeric_revoke.payload["data"]["type"] = 0
    states, _ = run([upsert("K1", "old"), numeric_edit, numeric_revoke])

    message = message_of(states, "K1")
    assert (message["text"], message["edited"], message["deleted"]) == ("new", True, True)


@pytest.mark.parametrize(
    "data",
    [
        {"remoteJid": CHAT, "fromMe": False, "id": "K1"},  # remote revoke: the Baileys key
        {"id": "clx0db0cuid", "key": {"remoteJid": CHAT, "id": "K1"}, "status": "DELETED"},  # API
    ],
)
def test_messages_delete_marks_the_target_deleted(data: dict) -> None:
    removal = envelope("messages.delete", data)
    assert targets(removal) == ["K1"]

    states, _ = run([upsert("K1", "bye"), removal])
    assert message_of(states, "K1")["deleted"] is True


def test_older_upserts_carrying_a_protocol_message_edit_or_revoke_are_understood() -> None:
    legacy_edit = upsert(
        "P1",
        message={
            "protocolMessage": {
                "key": {"remoteJid": CHAT, "fromMe": False, "id": "K1"},
                "type": "MESSAGE_EDIT",
                "editedMessage": {"extendedTextMessage": {"text": "via protocol"}},
                "timestampMs": "1000",
            }
        },
    )
    wrapped_edit = upsert(
        "P2",
        message={
            "editedMessage": {
                "message": {
                    "protocolMessage": {
                        "key": {"id": "K1"},
                        "type": 14,
                        "editedMessage": {"conversation": "via editedMessage"},
                        "timestampMs": "2000",
                    }
                }
            }
        },
    )
    legacy_revoke = upsert(
        "P3", message={"protocolMessage": {"key": {"id": "K1"}, "type": "REVOKE"}}
    )

    states, _ = run([upsert("K1", "original"), legacy_edit, wrapped_edit, legacy_revoke])

    assert targets(legacy_edit) == ["K1"]
    message = message_of(states, "K1")
    assert (message["text"], message["edited"], message["deleted"]) == (
        "via editedMessage",
        True,
        True,
    )
    assert set(states) == {(INSTANCE, "K1")}


def test_protocol_messages_that_are_not_edits_or_revokes_change_nothing() -> None:
    setting = upsert("P1", message={"protocolMessage": {"type": "EPHEMERAL_SETTING"}})

    assert targets(setting) == []
    assert run([setting]) == ({}, [])


# --- reactions ---------------------------------------------------------------------------


def test_reaction_is_added_changed_and_removed_per_sender() -> None:
    other = "3@lid"
    states, changes = run(
        [
            upsert("K1", "hi", chat=GROUP, participant="1@lid"),
            reaction("K1", "❤️", ts_ms=1000, chat=GROUP, participant=other),
            reaction("K1", "❤️", ts_ms=1001, chat=GROUP, participant=MEMBER),
            reaction("K1", "😂", ts_ms=1002, chat=GROUP, participant=other),
            reaction("K1", "", ts_ms=1003, chat=GROUP, participant=MEMBER),
        ]
    )

    assert [c.message["reactions"] for c in changes] == [
        {},
        {"❤️": [other]},
        {"❤️": [MEMBER, other]},  # senders sorted
        {"❤️": [MEMBER], "😂": [other]},
        {"😂": [other]},
    ]
    assert set(states) == {(INSTANCE, "K1")}  # a reaction is not a message of its own


def test_an_older_reaction_arriving_late_does_not_resurrect_a_removal() -> None:
    states, changes = run(
        [
            upsert("K1", "hi"),
            reaction("K1", "", ts_ms=2000),
            reaction("K1", "👍", ts_ms=1000),
        ]
    )

    assert message_of(states, "K1")["reactions"] == {}
    assert len(changes) == 1


def test_a_removal_without_text_removes_the_reaction() -> None:
    removal = reaction("K1", "", ts_ms=2000)
    del removal.payload["data"]["message"]["reactionMessage"]["text"]

    states, _ = run([upsert("K1", "hi"), reaction("K1", "👍", ts_ms=1000), removal])

    assert message_of(states, "K1")["reactions"] == {}


def test_our_own_reaction_is_recorded_under_the_instance_number() -> None:
    states, _ = run([upsert("K1", "hi"), reaction("K1", "🙏", ts_ms=1000, from_me=True)])

    assert message_of(states, "K1")["reactions"] == {"🙏": [ME]}


# --- send.message and messages.upsert of one message -----------------------------------


@pytest.mark.parametrize("echo_first", [True, False])
def test_send_message_and_upsert_of_one_key_are_one_message(echo_first: bool) -> None:
    echo = upsert(
        "K1", "hi", from_me=True, status="PENDING", push_name="Você", event_type="send.message"
    )
    phone = upsert("K1", "hi", from_me=True, status="SERVER_ACK", push_name=None)
    phone.payload["data"]["contextInfo"] = {"stanzaId": "Q1"}

    states, changes = run([echo, phone] if echo_first else [phone, echo])

    assert [c.kind for c in changes] == ["message.created", "message.updated"]
    message = message_of(states, "K1")
    assert (message["status"], message["push_name"], message["quoted_key_id"]) == (
        "server_ack",
        "Você",
        "Q1",
    )


@pytest.mark.parametrize("echo_first", [True, False])
def test_where_the_copies_differ_the_upserts_values_win_in_either_order(echo_first: bool) -> None:
    echo = upsert(
        "K1", "draft", from_me=True, status="PENDING", push_name="Você", event_type="send.message"
    )
    lid = "5200000000000@lid"
    phone = upsert("K1", "sent", from_me=True, status=None, push_name="Loja", ts=T0 + 1, chat=lid)
    phone.payload["data"]["key"]["addressingMode"] = "lid"

    states, _ = run([echo, phone] if echo_first else [phone, echo])

    message = message_of(states, "K1")
    assert (message["text"], message["push_name"], message["timestamp"]) == (
        "sent",
        "Loja",
        "2025-06-15T15:06:41Z",
    )
    assert message["chat_jid"] == CHAT, "the phone chat, not the LID one"
    assert message["status"] == "server_ack"


@pytest.mark.parametrize("upsert_last", [True, False])
def test_an_edit_outranks_either_copys_text(upsert_last: bool) -> None:
    echo = upsert("K1", "draft", from_me=True, status="PENDING", event_type="send.message")
    phone = upsert("K1", "sent", from_me=True, status="SERVER_ACK")
    first, last = (echo, phone) if upsert_last else (phone, echo)

    states, _ = run([first, edit("K1", "edited", ts_ms=T0 * 1000 + 1), last])

    assert message_of(states, "K1")["text"] == "edited"


def test_a_second_copy_that_adds_nothing_emits_no_change() -> None:
    states, changes = run(
        [
            upsert("K1", "hi", from_me=True, status="SERVER_ACK"),
            upsert("K1", "hi", from_me=True, status="PENDING", event_type="send.message"),
        ]
    )

    assert [c.kind for c in changes] == ["message.created"]
    assert message_of(states, "K1")["status"] == "server_ack"


# --- payload shapes ----------------------------------------------------------------------


def test_2_3_6_payload_with_byte_and_long_objects_projects() -> None:
    event = fixture_event("messages.upsert__audioMessage__3.json")
    event.payload["data"]["messageTimestamp"] = {"low": 1772303034, "high": 0, "unsigned": False}
    states: dict = {}

    [change] = messages.apply(states, event)

    assert change.message["timestamp"] == "2026-02-28T18:23:54Z"
    assert change.message["media"]["size"] == 1921  # fileLength {"low": 1921, ...}
    assert change.message["chat_jid"] == "5491131376731@s.whatsapp.net"


def test_inline_attachment_reference_gives_media_size_mimetype_and_sha256() -> None:
    event = fixture_event("messages.upsert__imageMessage__6.json")
    digest = "9f" * 32
    event.payload["data"]["message"]["base64"] = {
        "sha256": digest,
        "size": 297167,
        "mimetype": "image/png",
    }

    [change] = messages.apply({}, event)

    assert change.message["media"] == {
        "status": "pending",
        "mimetype": "image/png",
        "size": 297167,
        "sha256": digest,
    }


def test_lid_addressed_messages_use_the_phone_jid_and_drop_device_suffixes() -> None:
    event = upsert("K1", chat="5200000000000@lid")
    event.payload["data"]["key"].update(
        {"remoteJidAlt": "551699123456:90@s.whatsapp.net", "addressingMode": "lid"}
    )

    [change] = messages.apply({}, event)

    assert change.message["chat_jid"] == "551699123456@s.whatsapp.net"
    assert change.message["sender"] == "551699123456@s.whatsapp.net"


def test_lid_messages_of_2_3_0_take_the_phone_jids_of_sender_pn_and_participant_pn() -> None:
    direct = upsert("K1", chat="5200000000000@lid")
    direct.payload["data"]["key"]["senderPn"] = "551699123456@s.whatsapp.net"
    group = upsert("K2", chat=GROUP, participant="5200000000000@lid")
    group.payload["data"]["key"]["participantPn"] = "551699123456@s.whatsapp.net"

    states, _ = run([direct, group])

    assert message_of(states, "K1")["chat_jid"] == "551699123456@s.whatsapp.net"
    assert message_of(states, "K1")["sender"] == "551699123456@s.whatsapp.net"
    assert message_of(states, "K2")["chat_jid"] == GROUP
    assert message_of(states, "K2")["sender"] == "551699123456@s.whatsapp.net"


def test_a_group_sender_alternative_is_taken_without_an_addressing_mode() -> None:
    event = upsert("K1", chat=GROUP, participant=MEMBER)
    event.payload["data"]["key"]["participantAlt"] = "551699123456:4@s.whatsapp.net"

    [change] = messages.apply({}, event)

    assert change.message["sender"] == "551699123456@s.whatsapp.net"


def test_wrapped_view_once_content_is_unwrapped() -> None:
    event = upsert(
        "K1",
        message={"viewOnceMessageV2": {"message": {"imageMessage": {"caption": "secret"}}}},
    )

    [change] = messages.apply({}, event)

    assert (change.message["type"], change.message["caption"]) == ("image", "secret")


@pytest.mark.parametrize(
    "data",
    [
        None,
        "not an object",
        [],
        {"message": {"conversation": "no key"}},
        {"key": {"remoteJid": CHAT}, "message": {"conversation": "no id"}},
        {"key": {"id": ""}, "message": {"conversation": "empty id"}},
    ],
)
def test_a_structurally_broken_upsert_raises_value_error(data: object) -> None:
    broken = envelope("messages.upsert", data)
    states: dict = {}

    with pytest.raises(ValueError):
        messages.read(broken)
    with pytest.raises(ValueError):
        messages.apply(states, broken)
    assert states == {}


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("messages.update", {"status": "READ"}),
        ("messages.update", ["READ"]),
        ("messages.edited", {"type": "MESSAGE_EDIT", "editedMessage": {"conversation": "x"}}),
        ("messages.delete", {"remoteJid": CHAT}),
        ("messages.upsert", {"key": {"id": "R"}, "message": {"reactionMessage": {"text": "x"}}}),
    ],
)
def test_other_broken_message_events_raise_value_error(event_type: str, data: object) -> None:
    with pytest.raises(ValueError):
        messages.apply({}, envelope(event_type, data))


@pytest.mark.parametrize(
    "name", fixture_names("connection.update", "qrcode", "presence", "chats.", "contacts.")
)
def test_events_this_projection_does_not_handle_return_no_change(name: str) -> None:
    event = fixture_event(name)
    states: dict = {}

    assert targets(event) == []
    assert messages.apply(states, event) == []
    assert states == {}


@pytest.mark.parametrize("wrapper", ["associatedChildMessage", "lottieStickerMessage"])
def test_an_album_photo_and_an_animated_sticker_are_unwrapped_to_their_media(
    wrapper: str,
) -> None:
    inner = {
        "messageContextInfo": {"messageAssociation": {"associationType": "MEDIA_ALBUM"}},
        "imageMessage": {"mimetype": "image/jpeg", "caption": "foto 1", "fileLength": "1000"},
    }
    [change] = messages.apply({}, upsert("K1", message={wrapper: {"message": inner}}))

    message = change.message
    assert (message["type"], message["caption"]) == ("image", "foto 1")
    assert message["media"] == {
        "status": "pending",
        "mimetype": "image/jpeg",
        "size": 1000,
        "sha256": None,
    }


@pytest.mark.parametrize(
    "content",
    [
        {"pinInChatMessage": {"key": {"id": "X0"}, "type": 1, "senderTimestampMs": "1"}},
        {"keepInChatMessage": {"key": {"id": "X0"}, "keepType": 1}},
        {"albumMessage": {"expectedImageCount": 3}},
        {"encReactionMessage": {"targetMessageKey": {"id": "X0"}, "encPayload": "AA=="}},
        {"secretEncryptedMessage": {"targetMessageKey": {"id": "X0"}, "encPayload": "AA=="}},
    ],
)
def test_pins_album_parents_and_encrypted_side_messages_are_not_messages(content: dict) -> None:
    assert run([upsert("K1", message=content)]) == ({}, [])


def test_an_unknown_event_type_returns_no_change() -> None:
    assert messages.apply({}, envelope("labels.edit", {"id": "1"})) == []


def test_an_upsert_without_message_content_changes_nothing() -> None:
    stub = upsert("K1")
    del stub.payload["data"]["message"]

    assert run([stub]) == ({}, [])


# --- idempotency and order --------------------------------------------------------------


def _mixed_log() -> list:
    return [
        *(fixture_event(name) for name in fixture_names("messages.", "send.")),
        status_update("K1", "READ"),
        reaction("K1", "👍", ts_ms=1000),
        upsert("K1", "hi", from_me=True, status="PENDING", event_type="send.message"),
        edit("K1", "hi!", ts_ms=2000),
        upsert("K1", "hi", from_me=True, status="SERVER_ACK"),
        status_update("K1", "DELIVERY_ACK"),
        reaction("K1", "", ts_ms=3000),
        upsert("K2", "group", chat=GROUP, participant=MEMBER),
        revoke("K2"),
        delete("K3"),
        status_update("K4", "DELETED"),
    ]


def test_applying_every_event_twice_gives_the_same_states_and_no_extra_changes() -> None:
    log = _mixed_log()
    once, once_changes = run(log)

    twice: dict = {}
    twice_changes = []
    for item in log:
        twice_changes.extend(messages.apply(twice, item))
        assert messages.apply(twice, item) == []

    assert twice == once
    assert twice_changes == once_changes


def test_replaying_the_whole_log_changes_nothing() -> None:
    log = _mixed_log()
    states, _ = run(log)
    snapshot = copy.deepcopy(states)

    _, replay_changes = run(log, states)

    assert replay_changes == []
    assert states == snapshot


def test_any_arrival_order_gives_the_same_message() -> None:
    log = [
        upsert("K1", "hi", from_me=True, status="PENDING", event_type="send.message"),
        upsert("K1", "hi", from_me=True, status="SERVER_ACK"),
        status_update("K1", "DELIVERY_ACK"),
        status_update("K1", "READ"),
        edit("K1", "first edit", ts_ms=1000),
        edit("K1", "second edit", ts_ms=2000),
        reaction("K1", "👍", ts_ms=1000),
        reaction("K1", "🎉", ts_ms=1500),
        reaction("K1", "❤️", ts_ms=1200, chat=GROUP, participant=MEMBER),
        delete("K1"),
    ]
    expected = message_of(run(log)[0], "K1")

    for seed in range(50):
        shuffled = log[:]
        random.Random(seed).shuffle(shuffled)
        states, changes = run(shuffled)

        assert message_of(states, "K1") == expected
        assert changes[0].kind == "message.created"
        assert all(c.kind == "message.updated" for c in changes[1:])
    assert (expected["text"], expected["status"], expected["reactions"]) == (
        "second edit",
        "read",
        {"❤️": [MEMBER], "🎉": [CHAT]},
    )


def test_apply_never_mutates_the_states_it_was_given() -> None:
    states, _ = run(
        [upsert("K1", "hi"), reaction("K1", "👍", ts_ms=1), status_update("K9", "READ")]
    )
    frozen = {key: copy.deepcopy(state) for key, state in states.items()}
    originals = dict(states)

    run(
        [
            status_update("K1", "READ"),
            edit("K1", "edited", ts_ms=5),
            reaction("K1", "", ts_ms=9),
            delete("K1"),
            status_update("K9", "PLAYED"),
            upsert("K9", "arrives"),
        ],
        states,
    )

    assert all(originals[key] == frozen[key] for key in frozen)
    assert isinstance(states[(INSTANCE, "K9")], MessageState)


def test_states_survive_a_json_round_trip_as_the_runner_stores_them() -> None:
    log = _mixed_log()
    states, _ = run(log[: len(log) // 2])
    stored = {
        key: json.loads(json.dumps([s.message, s.meta, list(s.held)])) for key, s in states.items()
    }
    loaded = {key: MessageState(m, meta, tuple(held)) for key, (m, meta, held) in stored.items()}

    assert loaded == states
    rest = log[len(log) // 2 :]
    assert run(rest, loaded) == run(rest, states)


def test_apply_touches_only_the_key_read_names() -> None:
    states: dict = {}
    for item in _mixed_log():
        before = dict(states)
        messages.apply(states, item)
        touched = {key for key in states if before.get(key) is not states[key]}
        assert touched <= {(item.instance, key_id) for key_id in targets(item)}


def test_messages_keyed_by_an_id_too_long_for_an_index_row_are_refused_for_parking() -> None:
    for event in (
        upsert("K" * 201),
        upsert("K1", chat="9" * 200 + "@s.whatsapp.net"),
        status_update("K" * 201, "READ"),
    ):
        with pytest.raises(ValueError, match="longer than 200"):
            messages.read(event)
