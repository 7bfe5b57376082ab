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


def test_applet_links_come_from_the_binarys_name_table(tmp_path):
    table = b"\0".join([b"[", b"[[", b"ash", b"busybox", b"ls", b"modprobe", b"sh"]) + b"\0\0"
    binary = b"\x7fELF" + b"\x00junk[ not it\x00" + table + b"\x01\x02more rodata"
    assert initramfs.busybox_applets(binary) == ["[", "[[", "ash", "busybox", "ls", "modprobe", "sh"]
    # Something that only looks like the start of the table is refused: /init installs instead.
    assert initramfs.busybox_applets(b"x[\0[[\0zz\0aa\0\0") == []
    assert initramfs.busybox_applets(b"no table here") == []
    (tmp_path / "busybox").write_bytes(binary)
    (tmp_path / "plain").write_bytes(b"no table here")
    for busybox, linked in (("busybox", True), ("plain", False)):
        mine = (("usr/bin/mine", tmp_path / "plain"),)
        files = initramfs.GuestFiles(tmp_path / busybox, None, None, extra_files=mine)
        entries = {e.path: e for e in initramfs.build_archive(files, guestinit.init_script()).entries}
        assert ("bin/modprobe" in entries) == linked and stat.S_ISLNK(entries["bin/sh"].mode)
        # /sbin/modprobe and /usr/bin/env resolve whichever directory the build meant.
        assert stat.S_ISLNK(entries["sbin"].mode) == linked and stat.S_ISLNK(entries["usr/bin"].mode) == linked
        assert "usr/bin/mine" in entries
    assert "[ -e /bin/ls ] || /bin/busybox --install -s" in guestinit.init_script()
