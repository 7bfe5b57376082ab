"""What exactly was tested: result.json's `provenance`.

sha256 of every artifact booted or loaded (kernel image, device tree, initramfs, and each file
inside the initramfs: busybox, cma_test, cma_mem.ko, the user's files, /init), the locked Debian
packages the target used, the QEMU and compiler versions, the harness version and git commit,
the driver's source hash, and the host.

Start-up cost matters (every run pays it): what cannot change without its file changing is
cached in cache/provenance.json, keyed by path, size and mtime (a kernel image, a QEMU binary),
or by the content-keyed file name (the initramfs). A warm run hashes only the driver sources.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import paths
from harness.artifacts.build import tree_hash
from harness.artifacts.cachelock import write_atomic
from harness.artifacts.debian import busybox_set_key, kernel_set_key, read_lock, sha256_of
from harness.artifacts.initramfs import decode_newc
from harness.artifacts.kernels.source import source_set_key
from harness.config.targets import Target
from harness.guest.qemu import BootFiles

CACHE_NAME = "provenance.json"
FORMAT = 1


class _Memo:
    """A small JSON memo in the cache: key -> value, for facts that only change with a file."""

    def __init__(self, cache_root: Path) -> None:
        self.path = cache_root / CACHE_NAME
        self.data: dict[str, Any] = {}
        self.dirty = False
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(self.path.read_text())
            if loaded.get("format") == FORMAT:
                self.data = loaded["entries"]

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.data:
            self.data[key] = compute()
            self.dirty = True
        return self.data[key]

    def save(self) -> None:
        if self.dirty:
            # Two runs racing lose an entry at worst; it is recomputed next time.
            with contextlib.suppress(OSError):
                body = {"format": FORMAT, "entries": dict(list(self.data.items())[-500:])}
                write_atomic(self.path, json.dumps(body).encode())


def _stat_key(kind: str, path: Path) -> str:
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"{kind}:{real}:{st.st_size}:{st.st_mtime_ns}"


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr).strip() else "unknown"


def tool_version(memo: _Memo, tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        return "not found"
    return str(memo.get(_stat_key("version", Path(found)), lambda: _first_line([found, "--version"])))


def artifact(memo: _Memo, path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    return {
        "path": str(path),
        "size": path.stat().st_size,
        "sha256": memo.get(_stat_key("sha256", path), lambda: sha256_of(path)),
    }


def initramfs_files(memo: _Memo, initrd: Path) -> dict[str, str]:
    """sha256 of each regular file in the archive (its name is its content key: cached by name)."""

    def compute() -> dict[str, str]:
        out = {}
        for entry in decode_newc(initrd.read_bytes()):
            if entry.mode & 0o170000 == 0o100000:
                out["/" + entry.path] = hashlib.sha256(entry.data).hexdigest()
        return out

    return dict(memo.get(f"cpio:{initrd.name}:{initrd.stat().st_size}", compute))


def git_state(root: Path) -> dict[str, Any]:
    if not (root / ".git").exists():
        return {}
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if head.returncode != 0:
        return {}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def locked_packages(target: Target, extra_sources: list[str]) -> list[dict[str, str]]:
    """The lock entries this target's run used (kernel, busybox, linux-source for a source kernel or kselftests)."""
    sets = read_lock()
    keys = [busybox_set_key(target)]
    if target.kernel.provider == "debian":
        keys.append(kernel_set_key(target))
    sources = set(extra_sources)
    if target.kernel.provider == "source":
        keys.append(source_set_key(target))
    keys += [f"kernel/source/{name}" for name in sorted(sources)]
    out = []
    for key in dict.fromkeys(keys):
        for pkg in sets.get(key, []):
            out.append({"set": key, "name": pkg.name, "version": pkg.version, "arch": pkg.arch, "sha256": pkg.sha256})
    return out


def code_hash(package: Path) -> str:
    """The harness's Python sources (not their bytecode caches), 20 hex."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def host_facts() -> dict[str, Any]:
    u = platform.uname()
    return {
        "system": u.system,
        "release": u.release,
        "machine": u.machine,
        "node": u.node,
        "cpus": os.cpu_count() or 0,
        "python": platform.python_version(),
    }


def harness_version() -> str:
    # The package's own attribute, which pyproject.toml reads too (one place): importlib.metadata
    # would cost ~40 ms of CPU, every run, while the guest boots beside it.
    from harness import __version__

    return __version__


def collect(
    target: Target,
    boot: BootFiles,
    kmod: Path,
    cache_root: Path,
    *,
    kselftest_sources: list[str] | None = None,
) -> dict[str, Any]:
    memo = _Memo(cache_root)
    compilers = dict.fromkeys([target.kernel.cross_compile + "gcc", target.userland.cross_compile + "gcc"])
    out: dict[str, Any] = {
        "artifacts": {
            name: found
            for name, path in (
                ("kernel", boot.kernel),
                ("dtb", boot.dtb),
                ("initramfs", boot.initrd),
                ("module", boot.module),
            )
            if (found := artifact(memo, path)) is not None
        },
        "initramfs_files": initramfs_files(memo, boot.initrd),
        "driver_source": tree_hash(kmod, []),
        "packages": locked_packages(target, kselftest_sources or []),
        "qemu": {"binary": target.qemu.binary, "version": tool_version(memo, target.qemu.binary)},
        "compilers": {cc: tool_version(memo, cc) for cc in compilers},
        # `source`: the harness's own code (a driver change committed in this repository moves the commit, not this).
        "harness": {
            "version": harness_version(),
            "source": code_hash(Path(__file__).resolve().parent.parent),
            **git_state(paths.project_root()),
        },
        "host": host_facts(),
    }
    memo.save()
    return out
