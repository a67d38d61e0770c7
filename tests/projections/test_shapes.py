"""Shapes no fixture has: every field of every real webhook, changed to another kind of value.

Real senders send shapes the fixtures lack (a null push name, a timestamp as text, a list
where an object was). A message must still be projected from what is usable, and only an
event that does not say which message it is about may be refused, with a ValueError naming
it (the runner parks it with that reason). Any other exception would park a message a person
expects to read, with a reason that says nothing to the operator.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from events.event import Event
from projections import chats, messages
from tests.projections.conftest import fixture_event, fixture_names

# One of each JSON kind, with the awkward cases of each: numbers past 64 bits, empty ones.
OTHER_VALUES = [None, True, 0, -1, 1.5, 2**70, "", "x", "1749766101", [], [1], {}, {"a": 1}]
# The fields that say which message an event is about; without them nothing can be applied.
IDENTIFYING = {"data", "key", "id", "keyId"}


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every field below `value`: keys of objects, and the first items of lists."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value[:2])
    else:
        return
    for key, item in items:
        yield (*path, key)
        yield from _paths(item, (*path, key))


def _changed(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    """`tree` with the field at `path` set to `value`: the objects and lists on the path are
    copied, the rest shared (a projection never changes what it is given)."""
    if not path:
        return value
    changed = dict(tree) if isinstance(tree, dict) else list(tree)
    changed[path[0]] = _changed(tree[path[0]], path[1:], value)
    return changed


def _project(event: Event) -> None:
    states: dict[Any, Any] = {}
    chat_states: dict[Any, Any] = {}
    changes = messages.apply(states, event)
    if event.type in chats.NAMING_EVENTS:
        chats.apply_event(chat_states, event)
    for change in changes:
        chats.apply_message(chat_states, change)


def test_any_field_changed_to_any_other_kind_of_value_projects_or_is_refused_by_name() -> None:
    cases, refused = 0, set()
    for name in fixture_names(""):
        original = fixture_event(name, position=7)
        for path in _paths(original.payload):
            for value in OTHER_VALUES:
                event = original._replace(payload=_changed(original.payload, path, value))
                cases += 1
                try:
                    _project(event)
                except ValueError as error:
                    assert f"at {event.position}" in str(error), (name, path, value, error)
                    refused.add(path[-1])
                except Exception as error:
                    raise AssertionError(f"{name}: {path} = {value!r}: {error!r}") from error
    assert cases > 10_000
    assert refused <= IDENTIFYING, f"refused for a field that does not identify: {refused}"
