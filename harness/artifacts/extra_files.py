"""The user's own files in the initramfs: checked, content-keyed, placed (`files:` and `--add`).

Every file is copied into the cache under the sha256 of its content and mode
(cache/guestfiles/<hash>/<name>), so the initramfs key, which identifies extra files by
path, size and mtime, changes exactly when the content does. An ELF program must be static
and built for the target's architecture: the guest has busybox and nothing else, no C
library and no loader, so a dynamic program would fail there with a bare "not found".
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.artifacts.cachelock import write_atomic
from harness.config.guestfiles import RESERVED, FileSpec
from harness.config.targets import Target
from harness.errors import ConfigError

PT_INTERP = 3
# ELF e_machine and class per userland architecture (Debian names).
ELF_MACHINES = {"arm64": (183, 2, "AArch64"), "armhf": (40, 1, "32-bit ARM")}
ELF_NAMES = {3: "x86", 40: "32-bit ARM", 62: "x86-64", 183: "AArch64", 243: "RISC-V"}


@dataclass(frozen=True)
class StagedFile:
    dest: str  # path in the archive, no leading slash
    host: Path  # the content-keyed copy in the cache
    sha256: str
    size: int
    origin: str
    what: str  # the source: a host path or "kselftest DIR/PROGRAM"

    def to_json(self) -> dict[str, Any]:
        return {
            "dest": "/" + self.dest,
            "source": self.what,
            "origin": self.origin,
            "sha256": self.sha256,
            "size": self.size,
        }


def elf_problem(data: bytes, arch: str) -> str:
    """Why this ELF file cannot run in the guest ("" if it can, or if it is not ELF)."""
    if data[:4] != b"\x7fELF" or len(data) < 52:
        return ""
    ei_class, ei_data = data[4], data[5]
    endian = "<" if ei_data == 1 else ">"
    machine = struct.unpack_from(endian + "H", data, 18)[0]
    want_machine, want_class, want_name = ELF_MACHINES[arch]
    if machine != want_machine or ei_class != want_class:
        found = ELF_NAMES.get(machine, f"machine {machine}")
        return f"is a {found} program; the guest is {want_name} ({arch}): build it with the target's cross compiler"
    if ei_class == 2:
        (phoff,) = struct.unpack_from(endian + "Q", data, 32)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 54)
    else:
        (phoff,) = struct.unpack_from(endian + "I", data, 28)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 42)
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + 4 > len(data):
            break
        (p_type,) = struct.unpack_from(endian + "I", data, at)
        if p_type == PT_INTERP:
            # p_offset and p_filesz (Elf64_Phdr: type, flags, offset, vaddr, paddr, filesz; Elf32: no flags there)
            if ei_class == 2:
                off, size = (
                    struct.unpack_from(endian + "Q", data, at + 8)[0],
                    struct.unpack_from(endian + "Q", data, at + 32)[0],
                )
            else:
                off, size = (
                    struct.unpack_from(endian + "I", data, at + 4)[0],
                    struct.unpack_from(endian + "I", data, at + 16)[0],
                )
            interp = data[off : off + size].split(b"\0")[0].decode(errors="replace")
            return (
                f"is dynamically linked (it needs {interp}); the guest has no C library or loader: link it with -static"
            )
    return ""


def _stage_one(cache_root: Path, name: str, host: Path) -> tuple[Path, str, int]:
    data = host.read_bytes()
    executable = os.access(host, os.X_OK)
    digest = hashlib.sha256(data).hexdigest()
    key = hashlib.sha256(f"{digest}:{int(executable)}".encode()).hexdigest()[:20]
    staged = cache_root / "guestfiles" / key / name
    if not staged.exists():
        write_atomic(staged, data)
        if executable:
            staged.chmod(0o755)
    return staged, digest, len(data)


def _host_files(spec: FileSpec, src: Path) -> list[tuple[str, Path]]:
    """(archive path, host file) for a file or every file under a folder."""
    if src.is_file():
        if not spec.dest:
            dest = f"/usr/bin/{src.name}"
        elif spec.dest.endswith("/"):
            dest = spec.dest + src.name
        else:
            dest = spec.dest
        return [(dest.lstrip("/"), src)]
    if not src.is_dir():
        raise ConfigError(f"{spec.origin}: files: {src} is neither a file nor a folder")
    root = spec.dest.rstrip("/") if spec.dest else f"/opt/{src.name}"
    out = []
    for path in sorted(src.rglob("*")):
        if path.is_file():
            out.append((posixpath.join(root, path.relative_to(src).as_posix()).lstrip("/"), path))
    if not out:
        raise ConfigError(f"{spec.origin}: files: folder {src} holds no files")
    return out


def check_files(specs: list[FileSpec], target: Target) -> None:
    """The host files among `specs` can run in the guest (kselftests are checked once built): before anything runs."""
    for spec in specs:
        if spec.src is None:
            continue
        for dest, host in _host_files(spec, spec.src):
            if dest in RESERVED:
                raise ConfigError(f"{spec.origin}: files: /{dest} is the harness's own; choose another destination")
            problem = elf_problem(host.read_bytes()[:65536], target.userland.deb_arch)
            if problem:
                raise ConfigError(f"{spec.origin}: files: {host} {problem}")


def stage_files(
    specs: list[FileSpec],
    target: Target,
    cache_root: Path,
    build_kselftest: Callable[[FileSpec], Path],
) -> list[StagedFile]:
    """Check and stage every file; later entries for the same destination must agree with earlier ones."""
    staged: dict[str, StagedFile] = {}
    for spec in specs:
        if spec.kselftest:
            src = build_kselftest(spec)
            what = f"kselftest {spec.kselftest} ({spec.source_package})"
            dest = spec.dest + src.name if spec.dest.endswith("/") else spec.dest or f"/usr/bin/{src.name}"
            entries = [(dest.lstrip("/"), src)]
        else:
            assert spec.src is not None
            what = str(spec.src)
            entries = _host_files(spec, spec.src)
        for dest, host in entries:
            if dest in RESERVED:
                raise ConfigError(f"{spec.origin}: files: /{dest} is the harness's own; choose another destination")
            problem = elf_problem(host.read_bytes()[:65536], target.userland.deb_arch)
            if problem:
                raise ConfigError(f"{spec.origin}: files: {host} {problem}")
            path, digest, size = _stage_one(cache_root, posixpath.basename(dest), host)
            shown = what if host == spec.src or spec.kselftest else str(host)
            item = StagedFile(dest, path, digest, size, spec.origin, shown)
            before = staged.get(dest)
            if before is not None and before.sha256 != digest:
                raise ConfigError(f"{spec.origin}: files: /{dest} is also given by {before.origin} with other content")
            staged[dest] = item
    return list(staged.values())
