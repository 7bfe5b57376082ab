"""The guest's SSH server: Debian's dropbear-bin and the shared libraries it needs, locked like the kernel.

Only SSH runs put these into the initramfs; serial runs keep the small one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.artifacts.debian import DebianProvider, LockedPackage, apt_show
from harness.config.targets import Target
from harness.errors import InfraError

# dropbear-bin and its run-time closure in bookworm (apt-cache depends, followed by hand and
# checked at boot: a missing library makes dropbear fail loudly, not silently).
SSH_PACKAGES = ("dropbear-bin", "libc6", "libgcc-s1", "libcrypt1", "libtomcrypt1", "libtommath1", "libgmp10", "zlib1g")
# Kernel modules for virtio-net on the virt machine, in load order (Debian builds them as modules).
NET_MODULES = ("failover", "net_failover", "virtio_mmio", "virtio_net")


@dataclass(frozen=True)
class SshFiles:
    files: tuple[tuple[str, Path], ...]  # (path in the archive, file on the host)
    symlinks: tuple[tuple[str, str], ...]  # (path in the archive, link target)
    modules: tuple[Path, ...]  # .ko files, loaded in this order


def ssh_set_key(target: Target) -> str:
    return f"ssh/{target.userland.deb_arch}"


def _resolve(target: Target) -> list[LockedPackage]:
    return [apt_show(f"{name}:{target.userland.deb_arch}") for name in SSH_PACKAGES]


def ssh_files(provider: DebianProvider, target: Target, modules_dir: Path) -> SshFiles:
    packages = provider.locked(ssh_set_key(target), lambda: _resolve(target))
    files: list[tuple[str, Path]] = []
    links: list[tuple[str, str]] = []
    for pkg in packages:
        tree = provider.cache.extracted(pkg)
        for path in sorted(tree.rglob("*")):
            rel = path.relative_to(tree).as_posix()
            wanted = ".so" in path.name or rel in ("usr/sbin/dropbear", "usr/bin/dropbearkey")
            if not wanted or rel.startswith("usr/share/") or "/gconv/" in rel:
                continue
            if path.is_symlink():
                links.append((rel, os.readlink(path)))
            elif path.is_file():
                files.append((rel, path))
    modules = []
    for name in NET_MODULES:
        found = sorted(modules_dir.rglob(f"{name}.ko"))
        if not found:
            raise InfraError(f"kernel module {name}.ko not found under {modules_dir}: SSH needs virtio-net")
        modules.append(found[0])
    return SshFiles(tuple(files), tuple(links), tuple(modules))
