"""The collector pause around batches: cycles a batch leaves are still freed after it."""

from __future__ import annotations

import gc
import weakref

from projections.catchup import collector_paused


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_a_cycle_made_during_a_batch_is_freed_when_it_ends_and_collection_resumes() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        node = _Node()
        gone = weakref.ref(node)
        del node
        assert gone() is not None, "collected during the batch"
    assert gc.isenabled()
    assert gone() is None


def test_a_nested_pause_leaves_the_collector_to_the_outer_one() -> None:
    with collector_paused():
        with collector_paused():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_the_collector_comes_back_when_a_batch_raises() -> None:
    try:
        with collector_paused():
            raise RuntimeError("batch failed")
    except RuntimeError:
        pass
    assert gc.isenabled()
