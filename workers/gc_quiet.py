"""Fewer cyclic garbage collections while a sync stores pages.

A page is thousands of freshly parsed dicts and lists that live until the page is committed. Each of
Python's young-generation collections, and every full one, walks them and everything the process has built
up (SQLAlchemy, pydantic, validators): measured at 10k Encounters, that was ~50 µs a resource, more than
parsing it. JSON data has no reference cycles, so refcounting frees it anyway. While any sync stores pages,
the objects that existed before are frozen (gc.freeze: the collector skips them) and unfrozen afterwards,
so nothing is kept from collection for longer than the load.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_loads = 0


@contextmanager
def quiet_gc() -> Iterator[None]:
    global _loads
    with _lock:
        _loads += 1
        if _loads == 1:
            gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _loads -= 1
            if _loads == 0:
                gc.unfreeze()
