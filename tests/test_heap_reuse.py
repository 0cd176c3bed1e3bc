"""reused_heap: a freed large CPU block is reused without page faults inside, and released after."""

from __future__ import annotations

import resource

import pytest
import torch

from fedpriv.attacks import heap_reuse

pytestmark = pytest.mark.skipif(heap_reuse._LIBC is None, reason="the setting is glibc's")

SIZE = 64 << 20  # bytes: over glibc's largest mmap threshold (32 MiB), like a batched engine's blocks


def _faults_of_second_block() -> int:
    """Minor page faults while a block of SIZE bytes is allocated and written, after one twice as large is freed.

    (Twice: the freed block may not border the heap's top, and the aligned request must fit in it.)
    """
    first = torch.empty(SIZE // 2).fill_(1.0)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.empty(SIZE // 4).fill_(2.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert float(second[-1]) == 2.0
    return faults


def test_a_freed_large_block_is_reused_inside_and_released_after() -> None:
    pages = SIZE // 4096
    with heap_reuse.reused_heap() as applied, heap_reuse.reused_heap():  # nested: the outer one restores
        assert applied
        inside = _faults_of_second_block()
    after = _faults_of_second_block()
    assert inside < pages // 10, f"{inside} faults for {pages} pages inside reused_heap"
    assert after > pages // 2, f"{after} faults for {pages} pages after it: the kept memory is not released"
