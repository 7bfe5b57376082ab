#!/usr/bin/env python3
"""Cold build time of each source-kernel flavour (the `source` provider), from nothing to Image + modules.

Each target's kernel is configured and built into an empty temporary folder
with the same config, toolchain and -j as the harness uses; the unpacked
linux-source tree is shared (unpacking it is a one-off, timed separately
when it is not cached yet). Builds run one after another, so they do not
compete with each other for the CPUs.

    python benchmarks/kernel_build.py [--target arm64-fast --target arm64-debug ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import paths
from harness.artifacts.debian import ImageCache
from harness.artifacts.kernels import kconfig
from harness.artifacts.kernels.source import SourceProvider, build_kernel, kernel_release
from harness.config.targets import resolve_target

DEFAULT = ["arm64-fast", "arm64-debug", "armv7-fast"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", action="append", help=f"default: {' '.join(DEFAULT)}")
    args = parser.parse_args()
    provider = SourceProvider(ImageCache(paths.cache_dir(), log=lambda msg: None))
    jobs = os.cpu_count() or 1
    rows = []
    for name in args.target or DEFAULT:
        target = resolve_target(name)
        pkg = provider.source_package(target)
        started = time.monotonic()
        src = provider.source_tree(pkg)
        unpack = time.monotonic() - started
        if unpack > 5:
            print(f"unpacked {pkg.name} {pkg.version} in {unpack:.0f} s (once per cache)")
        with tempfile.TemporaryDirectory(prefix="kbuild-") as tmp:
            merged = kconfig.merge_files(target.kernel.configs)
            started = time.monotonic()
            build = build_kernel(src, Path(tmp) / "k", merged, target, jobs=jobs, log=lambda msg: None)
            seconds = time.monotonic() - started
            release = kernel_release(build)
        rows.append((name, target.kernel.flavour, release, seconds))
        print(f"{name:<12} {target.kernel.flavour:<6} {release:<24} {seconds:6.0f} s  (-j{jobs})", flush=True)
    print("\n| target | flavour | release | cold build |\n|---|---|---|---|")
    for name, flavour, release, seconds in rows:
        print(f"| {name} | {flavour} | {release} | {seconds // 60:.0f} min {seconds % 60:02.0f} s |")


if __name__ == "__main__":
    main()
