"""The cyclic garbage collector, paused around bulk work.

A 100,000-exit run builds hundreds of thousands of small objects (exit records, trace
values, round-trip windows). None of them can form a cycle, yet each few hundred
allocations start a collection that walks all of them again: with the collector running,
building a run's results takes several times as long. :func:`paused` holds it off for a
block. Pauses nest and may overlap across threads (the trace drain thread pauses too): the
collector comes back, if it was on before the first pause, when the last one ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
