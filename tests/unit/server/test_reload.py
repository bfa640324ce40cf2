"""Start-up objects are frozen out of the collector; a reload's leftovers are not kept forever."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from gateway.server.reload import freeze_long_lived


class Node:
    """A self-referencing object: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def unfrozen_afterwards() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session collects as usual


def test_what_is_alive_is_frozen() -> None:
    keep = Node()
    freeze_long_lived()
    assert gc.get_freeze_count() > 0
    assert not gc.is_tracked(keep) or keep not in gc.get_objects()  # out of every generation


def test_a_frozen_cycle_dropped_later_is_freed_by_the_next_freeze() -> None:
    old_runtime = Node()
    gone = weakref.ref(old_runtime)
    freeze_long_lived()
    del old_runtime
    gc.collect()
    assert gone() is not None  # frozen: a plain collection does not see it
    freeze_long_lived()  # what a reload does once the old runtime has drained
    assert gone() is None
