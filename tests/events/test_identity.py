"""The dedupe identity: which deliveries are "the same webhook" (contract section 3)."""

from __future__ import annotations

import json

import pytest

from events.identity import dedupe_key
from tests.conftest import fixture_bodies


def _upsert(key_id: str, **envelope: str) -> dict:
    return {
        "event": "messages.upsert",
        "instance": "a",
        "data": {"key": {"id": key_id, "remoteJid": "1@s.whatsapp.net"}},
        **envelope,
    }


def _key(body: dict) -> str:
    return dedupe_key(body["instance"], body["event"], body["data"])


def test_envelope_fields_never_take_part_in_the_identity() -> None:
    first = _upsert("ABC", date_time="2025-01-01T00:00:00Z", destination="https://one")
    again = _upsert(
        "ABC",
        date_time="2025-01-01T00:09:00Z",
        destination="https://two",
        server_url="x",
        apikey="y",
        sender="z",
    )
    assert _key(first) == _key(again)


def test_two_different_messages_have_two_identities() -> None:
    assert _key(_upsert("ABC")) != _key(_upsert("ABD"))


def test_a_message_redelivered_with_other_data_is_the_same_webhook() -> None:
    # the global webhook's copy, or a re-emission: its data differs, its key id does not
    first = _upsert("ABC")
    again = _upsert("ABC")
    again["data"] = {
        **again["data"],
        "pushName": "Someone",
        "message": {"imageMessage": {}, "base64": {"attachment": 7}},
    }
    assert _key(first) == _key(again)


def test_an_over_long_key_id_is_keyed_by_its_hash_to_fit_an_index_row() -> None:
    long_id, other = "A" * 3000, "A" * 2999 + "B"
    key = _key(_upsert(long_id))
    assert len(key) < 200 and key == _key(_upsert(long_id)) != _key(_upsert(other))


def test_the_same_message_id_on_two_instances_is_two_webhooks() -> None:
    other = {**_upsert("ABC"), "instance": "b"}
    assert _key(_upsert("ABC")) != _key(other)


def test_send_message_and_upsert_of_one_id_are_separate_events() -> None:
    send = {**_upsert("ABC"), "event": "send.message"}
    assert _key(send) != _key(_upsert("ABC"))


def test_status_updates_differ_by_status_and_participant_only() -> None:
    def update(status: str, participant: str | None = None, when: str = "t1") -> str:
        data = {"keyId": "K1", "status": status, "remoteJid": "x", "datetime": when}
        if participant:
            data["participant"] = participant
        return dedupe_key("a", "messages.update", data)

    assert update("READ", when="t1") == update("READ", when="t2")
    assert update("READ") != update("DELIVERY_ACK")
    assert update("READ", "p1@lid") != update("READ", "p2@lid")


def test_poll_votes_and_edits_reported_as_updates_are_each_a_webhook_of_their_own() -> None:
    def update(**carried: object) -> str:
        data = {"keyId": "P0", "remoteJid": "x", "fromMe": True, "status": "SERVER_ACK"}
        return dedupe_key("a", "messages.update", {**data, **carried})

    def votes(yes: list[str], no: list[str]) -> list[dict]:
        return [{"name": "Yes", "voters": yes}, {"name": "No", "voters": no}]

    receipt = update()
    first, second = update(pollUpdates=votes(["1@s"], [])), update(pollUpdates=votes([], ["2@s"]))
    edit_a, edit_b = update(message={"conversation": "a"}), update(message={"conversation": "b"})
    assert len({receipt, first, second, edit_a, edit_b}) == 5
    # A redelivery is still the same webhook, and a plain receipt keeps its key.
    assert first == update(pollUpdates=votes(["1@s"], []))
    assert receipt == '["a","messages.update","P0","SERVER_ACK",""]'


def test_edits_are_identified_by_target_type_and_timestamp() -> None:
    def edit(kind: str, ts: str) -> str:
        return dedupe_key(
            "a", "messages.edited", {"key": {"id": "K"}, "type": kind, "timestampMs": ts}
        )

    assert edit("MESSAGE_EDIT", "1") == edit("MESSAGE_EDIT", "1")
    assert edit("MESSAGE_EDIT", "1") != edit("MESSAGE_EDIT", "2")
    assert edit("MESSAGE_EDIT", "1") != edit("REVOKE", "1")


def test_edits_without_a_timestamp_are_told_apart_by_the_edit_they_carry() -> None:
    def edit(text: str) -> str:
        data = {"key": {"id": "K"}, "type": "MESSAGE_EDIT", "editedMessage": {"conversation": text}}
        return dedupe_key("a", "messages.edited", data)

    assert edit("first fix") == edit("first fix")
    assert edit("first fix") != edit("second fix")


def test_deletes_accept_both_the_key_and_the_flat_id_shape() -> None:
    from_key = dedupe_key("a", "messages.delete", {"key": {"id": "K"}, "id": "db-cuid"})
    from_flat = dedupe_key("a", "messages.delete", {"id": "K", "remoteJid": "x"})
    assert from_key == from_flat


def test_2_3_6_long_objects_identify_like_their_decimal_strings() -> None:
    long_ts = {"low": 1749766101, "high": 0, "unsigned": True}
    as_object = dedupe_key(
        "a", "messages.edited", {"key": {"id": "K"}, "type": "REVOKE", "timestampMs": long_ts}
    )
    as_string = dedupe_key(
        "a", "messages.edited", {"key": {"id": "K"}, "type": "REVOKE", "timestampMs": "1749766101"}
    )
    assert as_object == as_string


@pytest.mark.parametrize("odd", [{"low": "x", "high": "y"}, {"low": 1, "high": 1e400}, [1]])
def test_a_status_shaped_like_no_long_is_identified_by_its_hash_not_an_error(odd: object) -> None:
    update = {"keyId": "K", "status": odd}
    assert dedupe_key("a", "messages.update", update) == dedupe_key("a", "messages.update", update)
    assert dedupe_key("a", "messages.update", update) != dedupe_key(
        "a", "messages.update", {"keyId": "K", "status": "READ"}
    )


def test_other_events_are_identified_by_their_canonical_data() -> None:
    a = dedupe_key("a", "connection.update", {"state": "open", "statusReason": 200})
    b = dedupe_key("a", "connection.update", {"statusReason": 200, "state": "open"})
    c = dedupe_key("a", "connection.update", {"state": "close", "statusReason": 401})
    assert a == b != c


def test_every_fixture_has_a_distinct_identity() -> None:
    keys = set()
    for body in fixture_bodies().values():
        payload = json.loads(body)
        payload = payload.get("body", payload) if "event" not in payload else payload
        keys.add(dedupe_key(payload.get("instance") or "", payload["event"], payload.get("data")))
    assert len(keys) == len(fixture_bodies())
