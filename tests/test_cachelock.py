"""Two runs filling the same cache entry: the second waits, and never sees half an entry."""

import multiprocessing
import time
from pathlib import Path

from harness.artifacts.cachelock import entry_lock, write_atomic


def _hold(entry: str, held: "multiprocessing.synchronize.Event", release: "multiprocessing.synchronize.Event") -> None:
    with entry_lock(Path(entry)):
        held.set()
        release.wait(10)


def test_a_second_writer_waits_for_the_first_and_says_so(tmp_path):
    entry = tmp_path / "kernels" / "fast"
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(str(entry), held, release))
    other.start()
    assert held.wait(10)
    said: list[str] = []
    started = time.monotonic()
    ctx.Process(target=lambda: (time.sleep(0.3), release.set())).start()
    with entry_lock(entry, said.append, "building the fast kernel"):
        waited = time.monotonic() - started
    other.join(10)
    assert said == ["waiting for another cma-harness to finish building the fast kernel"]
    assert waited >= 0.25


def test_atomic_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "initramfs" / "x.cpio"
    write_atomic(path, b"whole")
    assert path.read_bytes() == b"whole"
    assert [p.name for p in path.parent.iterdir()] == ["x.cpio"]
