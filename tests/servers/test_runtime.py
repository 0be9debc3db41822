"""The garbage-collector tuning of the server and its delivery process (mailkeep.runtime)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from mailkeep import runtime


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_startup_objects_are_frozen_and_young_collections_are_rarer(restore_gc: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    runtime.tune_gc()
    # What exists at start-up (this test's modules included) is out of the collector's
    # reach, and the youngest generation waits for 10,000 allocations.
    assert gc.get_freeze_count() > 1000
    assert gc.get_threshold() == runtime.GC_THRESHOLDS
    assert runtime.GC_THRESHOLDS[0] > 700


def test_cycles_made_after_tuning_are_still_collected(restore_gc: None) -> None:
    runtime.tune_gc()

    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    collected = []
    first, second = Node(), Node()
    first.other, second.other = second, first
    weakref.finalize(first, collected.append, "first")
    del first, second
    # No explicit gc.collect(): allocating past the young generation's threshold makes the
    # collector run by itself (it would not if tuning had disabled it).
    junk = [[] for _ in range(runtime.GC_THRESHOLDS[0] * 3)]
    del junk
    assert collected == ["first"]
