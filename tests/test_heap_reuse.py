"""reused_heap: a freed large CPU block is reused without page faults inside, and released after."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

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


def _measure() -> tuple[int, int]:
    """Faults of the second block inside nested ``reused_heap`` scopes, then after them."""
    with heap_reuse.reused_heap() as applied, heap_reuse.reused_heap():  # nested: the outer one restores
        assert applied
        inside = _faults_of_second_block()
    return inside, _faults_of_second_block()


def test_a_freed_large_block_is_reused_inside_and_released_after() -> None:
    """Measured in a fresh process: the test process's heap, after other tests' threads and mappings,
    may have no room to grow in place (malloc then maps large blocks whatever the thresholds)."""
    pages = SIZE // 4096
    script = "from tests.test_heap_reuse import _measure; print(*_measure())"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    inside, after = map(int, done.stdout.split()[-2:])
    assert inside < pages // 10, f"{inside} faults for {pages} pages inside reused_heap"
    assert after > pages // 2, f"{after} faults for {pages} pages after it: the kept memory is not released"
