"""Keep freed CPU memory in the process's heap while a reconstruction runs (glibc's malloc).

PyTorch's CPU allocator is plain ``malloc``. glibc serves blocks over its mmap threshold
(at most 32 MiB) with a fresh ``mmap`` and unmaps them on ``free``. So a batched engine's
per-problem gradients pay a new page fault per 4 KiB on every use. On ResNet20-4 with 16 problems
each (16, 589,824) block is 38 MB, and a product writing one took 15 ms instead of 2.7 ms in
reused memory; the grouped step took 1.37x as long (benchmarks/RESULTS.md). Inside
:func:`reused_heap`, large blocks come from the heap and stay there when freed, so the next
iteration reuses them. On exit, mmap is allowed again, and the thresholds are set to those
glibc's own dynamic rule ends at after large frees (32 MiB mmap, 64 MiB trim). The kept memory
goes back to the system with ``malloc_trim``. Elsewhere than glibc this is a no-op.
"""

from __future__ import annotations

import ctypes
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # mallopt parameters, <malloc.h>
_GLIBC_MMAP_MAX = 65536  # glibc's default M_MMAP_MAX
_MMAP_THRESHOLD_MAX = 32 << 20  # the ceiling of glibc's dynamic mmap threshold on 64-bit systems
_KEPT_TRIM = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of free heap while reusing
_lock = threading.Lock()
_depth = 0


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


@contextmanager
def reused_heap() -> Iterator[bool]:
    """Within the block, freed large CPU blocks stay in the heap for reuse; nests, thread-safe.

    Yields
    ------
    bool
        Whether the setting applies (glibc found); without it the block runs unchanged.
    """
    global _depth
    if _LIBC is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            _LIBC.mallopt(_M_MMAP_MAX, 0)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _KEPT_TRIM)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _LIBC.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
                _LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                _LIBC.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)
                _LIBC.malloc_trim(0)
