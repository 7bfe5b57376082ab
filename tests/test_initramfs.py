import stat

from harness.artifacts import initramfs
from harness.guest import guestinit


def test_newc_round_trip():
    arc = initramfs.Archive()
    arc.dir("bin")
    arc.file("bin/x", b"hello", 0o755)
    arc.symlink("bin/sh", "busybox")
    arc.chardev("dev/console", 5, 1)
    entries = initramfs.decode_newc(arc.to_bytes())
    assert [e.path for e in entries] == ["bin", "bin/x", "bin/sh", "dev/console"]
    assert entries[1].data == b"hello" and stat.S_IMODE(entries[1].mode) == 0o755
    assert stat.S_ISCHR(entries[3].mode) and entries[3].rdev == (5, 1)
    assert len(arc.to_bytes()) % 4 == 0


def test_archive_is_reproducible(tmp_path):
    for name in ("busybox", "cma_test", "cma_mem.ko"):
        (tmp_path / name).write_bytes(name.encode())
    files = initramfs.GuestFiles(tmp_path / "busybox", tmp_path / "cma_test", tmp_path / "cma_mem.ko")
    first = initramfs.cached_initramfs(tmp_path / "c1", files, guestinit.init_script(), guestinit.FORMAT_VERSION)
    second = initramfs.cached_initramfs(tmp_path / "c2", files, guestinit.init_script(), guestinit.FORMAT_VERSION)
    assert first.read_bytes() == second.read_bytes()
    names = {e.path for e in initramfs.decode_newc(first.read_bytes())}
    assert {"init", "bin/busybox", "bin/cma_test", "lib/modules/cma_mem.ko", "dev/console"} <= names
