"""Filling the shared artifact cache safely when several runs share it.

Two runs side by side (CI workers, a developer's second terminal) often need
the same entry at the same moment on a cold cache. Each entry is filled
under an exclusive flock next to it, checked again once the lock is held,
and published by an atomic rename: a reader sees a whole entry or none.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def entry_lock(entry: Path, log: Callable[[str], None] = lambda s: None, what: str = "") -> Iterator[None]:
    """One writer per cache entry: a second process waits for the first instead of racing it."""
    lock = entry.with_name(entry.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another cma-harness to finish {what or entry.name}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to path by rename from a uniquely named file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
