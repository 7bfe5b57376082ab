"""Builds of the kernel module and cma_test, cached by the content of their inputs.

Sources are copied into a build folder in the cache, keyed by a hash of
every source file, the kernel build tree and the cross compiler: a warm run
hashes a few kilobytes and builds nothing, and a user's --kmod folder is
never written to.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from harness.artifacts.cachelock import entry_lock, write_atomic
from harness.errors import ConfigError, InfraError

# Build products and editor litter never count as sources.
_IGNORED_SUFFIXES = {".o", ".ko", ".mod", ".cmd", ".order", ".symvers", ".swp"}


def source_files(src: Path) -> list[Path]:
    files = []
    for path in sorted(src.rglob("*")):
        if not path.is_file() or path.suffix in _IGNORED_SUFFIXES or path.name.startswith("."):
            continue
        if path.name.endswith(".mod.c"):
            continue
        files.append(path)
    return files


def tree_hash(src: Path, extra: list[str]) -> str:
    digest = hashlib.sha256()
    for part in extra:
        digest.update(part.encode() + b"\0")
    for path in source_files(src):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def tool_identity(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise InfraError(f"{tool} not found", hint="run `cma-harness setup`")
    st = os.stat(os.path.realpath(found))
    return f"{os.path.realpath(found)}:{st.st_size}:{int(st.st_mtime)}"


def run_build(cmd: list[str], cwd: Path, log: Path, what: str) -> None:
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise InfraError(f"{what} failed (exit {proc.returncode}); full log: {log}", detail=tail)


def build_kmod(src: Path, kdir: Path, make_arch: str, cross_compile: str, cache_root: Path) -> Path:
    """Build the out-of-tree module in src against kdir; return the path of cma_mem.ko."""
    if not (src / "Makefile").exists() and not (src / "Kbuild").exists():
        raise ConfigError(f"{src}: not a kernel module source folder (no Makefile or Kbuild)")
    key = tree_hash(src, [str(kdir), make_arch, cross_compile, tool_identity(f"{cross_compile}gcc")])
    out_dir = cache_root / "build" / "kmod" / key
    product = out_dir / "cma_mem.ko"
    if product.exists():
        return product
    with entry_lock(out_dir, what="building cma_mem.ko"):
        if not product.exists():
            _build_kmod(src, kdir, make_arch, cross_compile, out_dir, key)
    return product


def _build_kmod(src: Path, kdir: Path, make_arch: str, cross_compile: str, out_dir: Path, key: str) -> None:
    work = out_dir.with_name(key + ".work")
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*.cmd", "*.mod*", ".tmp*"))
    cmd = ["make", "-C", str(kdir), f"M={work}", f"ARCH={make_arch}", f"CROSS_COMPILE={cross_compile}", "modules"]
    run_build(cmd, work, out_dir.with_name(key + ".log"), f"kernel module build in {src}")
    built = work / "cma_mem.ko"
    if not built.exists():
        raise InfraError(f"kernel module build in {src} produced no cma_mem.ko")
    write_atomic(out_dir / "cma_mem.ko", built.read_bytes())
    shutil.rmtree(work)


def build_cma_test(src: Path, uapi_include: Path, cross_compile: str, cache_root: Path) -> Path:
    """Build the static cma_test for one architecture; return its path."""
    key = tree_hash(src, [cross_compile, tool_identity(f"{cross_compile}gcc"), uapi_include.read_text()])
    product = cache_root / "build" / "cma_test" / key / "cma_test"
    if product.exists():
        return product
    with entry_lock(product.parent, what="building cma_test"):
        if not product.exists():
            product.parent.mkdir(parents=True, exist_ok=True)
            building = product.with_name("cma_test.building")  # renamed once whole
            cmd = ["make", "-s", "-B", "-C", str(src), f"CROSS_COMPILE={cross_compile}", f"OUT={building}"]
            run_build(cmd, src, product.parent / "build.log", "cma_test build")
            if not building.exists():
                raise InfraError(f"cma_test build produced no {building}")
            building.replace(product)
    return product
