"""`python -m hotpath.milvus_server server --data-dir D --port P`: `milvus-lite server` with its collection opens made atomic.

Why: Milvus Lite 3.2.2 opens a collection lazily on its first request after a start, with no lock, and opening
replays the whole log. Concurrent first requests (two workers, or a worker and the API's search) each build a copy;
the last one replaces the others and the writes the others acknowledged are lost (found by `hotpath loadtest`: 85
index messages). Real Milvus has no such race; `hotpath dev`, `hotpath loadtest` and the tests run Milvus Lite
through this launcher, which serialises `get_collection` / `create_collection` / `drop_collection` with one lock.
"""

from __future__ import annotations

import functools
import sys
import threading

from milvus_lite import db
from milvus_lite.cmdline import main

_LOCK = threading.RLock()
PATCHED = ("get_collection", "create_collection", "drop_collection")


def _locked(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with _LOCK:
            return fn(*args, **kwargs)

    return call


def patch() -> None:
    """Serialise Milvus Lite's collection open, create and drop (idempotent)."""
    for name in PATCHED:
        fn = getattr(db.MilvusLite, name)
        if not getattr(fn, "_hotpath_locked", False):
            wrapped = _locked(fn)
            wrapped._hotpath_locked = True  # type: ignore[attr-defined]
            setattr(db.MilvusLite, name, wrapped)


if __name__ == "__main__":
    patch()
    sys.argv[0] = "milvus-lite"
    sys.exit(main())
