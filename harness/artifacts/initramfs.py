"""The guest's initramfs: busybox, cma_test, cma_mem.ko and a small /init.

Written as a newc cpio archive directly from Python: no root needed for the
/dev/console node, byte-for-byte reproducible (fixed mtimes and inode
numbers), and cached under a hash of everything that goes in. It is left
uncompressed: decompressing under TCG would cost more than copying.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from harness.artifacts.cachelock import entry_lock, write_atomic

NEWC_MAGIC = b"070701"


@dataclass(frozen=True)
class Entry:
    path: str  # inside the archive, no leading slash
    mode: int  # full st_mode (type and permissions)
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


@dataclass
class Archive:
    entries: list[Entry] = field(default_factory=list)

    def dir(self, path: str, perm: int = 0o755) -> None:
        self.entries.append(Entry(path, stat.S_IFDIR | perm))

    def file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        self.entries.append(Entry(path, stat.S_IFREG | perm, data))

    def symlink(self, path: str, target: str) -> None:
        self.entries.append(Entry(path, stat.S_IFLNK | 0o777, target.encode()))

    def chardev(self, path: str, major: int, minor: int, perm: int = 0o600) -> None:
        self.entries.append(Entry(path, stat.S_IFCHR | perm, rdev=(major, minor)))

    def to_bytes(self) -> bytes:
        return encode_newc(self.entries)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, name: bytes) -> bytes:
    fields = [
        ino,
        entry.mode,
        0,  # uid
        0,  # gid
        2 if stat.S_ISDIR(entry.mode) else 1,
        0,  # mtime: fixed for reproducible archives
        len(entry.data),
        0,  # devmajor
        0,  # devminor
        entry.rdev[0],
        entry.rdev[1],
        len(name) + 1,
        0,  # check
    ]
    return NEWC_MAGIC + b"".join(b"%08X" % v for v in fields)


def encode_newc(entries: list[Entry]) -> bytes:
    """Encode entries as a newc ("070701") cpio archive, as the kernel's initramfs unpacker reads it."""
    out = bytearray()
    trailer = Entry("TRAILER!!!", 0)
    for ino, entry in enumerate([*entries, trailer], start=1):
        name = entry.path.encode()
        head = _header(0 if entry is trailer else ino, entry, name)
        out += head + name + b"\0"
        out += _pad4(len(head) + len(name) + 1)
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)


def decode_newc(blob: bytes) -> list[Entry]:
    """Inverse of encode_newc (used by tests and by `cma-harness` debugging)."""
    entries: list[Entry] = []
    pos = 0
    while True:
        if blob[pos : pos + 6] != NEWC_MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}")
        values = [int(blob[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = values[1], values[6], values[9], values[10], values[11]
        name_start = pos + 110
        name = blob[name_start : name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        data = blob[data_start : data_start + size]
        pos = data_start + size + (-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries.append(Entry(name, mode, data, (rmaj, rmin)))


@dataclass(frozen=True)
class GuestFiles:
    busybox: Path
    cma_test: Path | None  # None: a base image without the code under test (snapshots)
    kmod: Path | None  # cma_mem.ko
    extra_modules: tuple[Path, ...] = ()  # into lib/modules/
    extra_files: tuple[tuple[str, Path], ...] = ()  # (path in the archive, host file)
    extra_links: tuple[tuple[str, str], ...] = ()  # (path in the archive, link target)


def busybox_applets(binary: bytes) -> list[str]:
    """The applet names compiled into a busybox binary, from its `applet_names` table ("[", "[[",
    "acpid", ... each NUL-terminated, sorted, ending in an empty name); [] when not found.

    Their links then come in the archive, made on the host: `busybox --install -s` in /init
    costs an exec and 270 symlink calls under TCG on every boot."""
    start = binary.find(b"[\0[[\0")
    if start < 0:
        start = binary.find(b"[\0a")  # a build without the [[ applet
    if start < 0:
        return []
    end = binary.find(b"\0\0", start)
    names = [n.decode("ascii", "replace") for n in binary[start:end].split(b"\0")]
    if len(names) < 2 or names != sorted(names) or not all(n and "/" not in n and n.isprintable() for n in names):
        return []  # not the table after all: /init installs the links itself
    return names


# One directory for every applet, the others links to it: `busybox --install -s` would spread
# them over the four by each applet's compiled-in place, which the binary keeps in a packed
# table of nibbles that cannot be found reliably; this way /sbin/modprobe, /usr/bin/env and
# /bin/sh all resolve, whichever the build intended.
MERGED_DIRS = {"sbin": "bin", "usr/bin": "../bin", "usr/sbin": "../bin"}


def build_archive(files: GuestFiles, init_script: str) -> Archive:
    arc = Archive()
    busybox = files.busybox.read_bytes()
    applets = busybox_applets(busybox)
    for d in (
        "bin",
        "usr",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "etc",
        "lib",
        "lib/modules",
        "root",
    ):
        arc.dir(d)
    for link, target in MERGED_DIRS.items():
        if applets:
            arc.symlink(link, target)
        else:
            arc.dir(link)  # /init runs `busybox --install -s`, which wants real directories
    arc.chardev("dev/console", 5, 1)
    arc.chardev("dev/null", 1, 3, 0o666)
    arc.file("bin/busybox", busybox, 0o755)
    arc.symlink("bin/sh", "busybox")
    for name in applets:
        if name not in ("busybox", "sh"):
            arc.symlink(f"bin/{name}", "busybox")
    if files.cma_test is not None:
        arc.file("bin/cma_test", files.cma_test.read_bytes(), 0o755)
    if files.kmod is not None:
        arc.file("lib/modules/cma_mem.ko", files.kmod.read_bytes())
    for module in files.extra_modules:
        arc.file(f"lib/modules/{module.name}", module.read_bytes())
    made = {e.path for e in arc.entries}
    for path, _ in [*files.extra_files, *files.extra_links]:
        # The kernel's unpacker creates no missing parent directories.
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            if parent not in made:
                arc.dir(parent)
                made.add(parent)
    for path, host in files.extra_files:
        arc.file(path, host.read_bytes(), 0o755 if os.access(host, os.X_OK) else 0o644)
    for path, target in files.extra_links:
        arc.symlink(path, target)
    arc.file("init", init_script.encode(), 0o755)
    return arc


def cached_initramfs(cache_root: Path, files: GuestFiles, init_script: str, init_version: str) -> Path:
    """Build the archive unless one with exactly these inputs is cached; return its path.

    `init_version` is the guest protocol's version (guestinit.FORMAT_VERSION), part of the key.
    """
    digest = hashlib.sha256()
    for path in (files.busybox, files.cma_test, files.kmod, *files.extra_modules):
        if path is not None:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for name, host in files.extra_files:
        # Package files are immutable per locked version: name, size and mtime identify them cheaply.
        st = host.stat()
        digest.update(f"{name}\0{host}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    for name, target in files.extra_links:
        digest.update(f"{name}->{target}".encode())
    digest.update(init_script.encode())
    digest.update(init_version.encode())
    out = cache_root / "initramfs" / f"{digest.hexdigest()[:20]}.cpio"
    if out.exists():
        return out
    with entry_lock(out, what="writing the initramfs"):
        if not out.exists():
            write_atomic(out, build_archive(files, init_script).to_bytes())
    return out
