"""Upstream kselftests, cross-built static from Debian's linux-source with their own Makefile.

`{kselftest: mincore/mincore_selftest}` in a `files:` list builds
tools/testing/selftests/mincore/mincore_selftest with the selftest's own Makefile and
lib.mk (`make -C DIR CROSS_COMPILE=... LDFLAGS=-static OUTPUT=...`), into the cache, keyed by
the selftest folder, the shared kselftest headers and lib.mk, the cross compiler and this
recipe's version. The source tree is the one the source kernel provider unpacks (locked in
images/debian.lock.json); nothing is ever written into it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

from harness.artifacts.build import run_build, tool_identity
from harness.artifacts.cachelock import entry_lock
from harness.artifacts.debian import ImageCache
from harness.artifacts.kernels.source import SourceProvider
from harness.config.guestfiles import FileSpec
from harness.config.targets import Target
from harness.errors import ConfigError, InfraError

RECIPE = "kselftest-1"
SHARED = ("kselftest.h", "kselftest_harness.h", "lib.mk")


def selftests_root(target: Target, cache: ImageCache, source_package: str) -> Path:
    """tools/testing/selftests of the locked linux-source package (unpacked once, shared with kernel builds)."""
    kernel = dataclasses.replace(target.kernel, source_package=source_package)
    provider = SourceProvider(cache, install=False)
    pseudo = dataclasses.replace(target, kernel=kernel)
    return provider.source_tree(provider.source_package(pseudo)) / "tools" / "testing" / "selftests"


def recipe_key(root: Path, folder: str, program: str, cross_compile: str) -> str:
    digest = hashlib.sha256(f"{RECIPE}\0{folder}\0{program}\0{cross_compile}\0".encode())
    digest.update(tool_identity(f"{cross_compile}gcc").encode())
    for path in sorted((root / folder).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    for name in SHARED:
        if (root / name).is_file():
            digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    return digest.hexdigest()[:20]


def build_kselftest(spec: FileSpec, target: Target, cache: ImageCache) -> Path:
    """The static program for the target's userland; built once per recipe key."""
    root = selftests_root(target, cache, spec.source_package)
    folder, _, program = spec.kselftest.rpartition("/")
    if not (root / folder / "Makefile").is_file():
        known = sorted(p.parent.name for p in root.glob("*/Makefile"))
        raise ConfigError(
            f"{spec.origin}: kselftest {spec.kselftest}: no selftest folder '{folder}' in {spec.source_package}",
            hint="one of: " + ", ".join(known[:60]),
        )
    cross = target.userland.cross_compile
    key = recipe_key(root, folder, program, cross)
    out_dir = cache.root / "build" / "kselftest" / f"{folder.replace('/', '_')}-{key}"
    product = out_dir / program
    if product.exists():
        return product
    with entry_lock(out_dir, cache.log, f"building kselftest {spec.kselftest}"):
        if product.exists():
            return product
        work = out_dir.with_name(out_dir.name + ".work")
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        cmd = [
            "make", "-C", str(root / folder),
            f"CROSS_COMPILE={cross}", f"ARCH={target.kernel.make_arch}",
            "LDFLAGS=-static", f"OUTPUT={work}", str(work / program),
        ]  # fmt: skip
        cache.log(f"building kselftest {spec.kselftest} ({cross}gcc, static)")
        run_build(cmd, root / folder, out_dir.with_name(out_dir.name + ".log"), f"kselftest {spec.kselftest} build")
        if not (work / program).is_file():
            raise InfraError(f"kselftest {spec.kselftest}: the build made no {program}")
        work.rename(out_dir)
    return product
