"""Host requirements as data: which Debian package a stage needs, and why.

Each requirement is declared by the thing that needs it (a target's QEMU,
its toolchains and userland architecture, its kernel provider, an optional
extra such as the report browser); `hosttools` only collects and checks them.
Packages, not commands: a cross compiler on PATH can still lack the target's
C library, which only shows when a static link fails.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Requirement:
    package: str  # Debian package, checked with dpkg-query
    why: str  # what it is needed for, shown when it is missing


def cross_gcc_package(cross_compile: str) -> str:
    """Debian names a cross compiler gcc-<triplet>: aarch64-linux-gnu- -> gcc-aarch64-linux-gnu."""
    return "gcc-" + cross_compile.rstrip("-")


# What every run needs on the host, whatever the target.
BASE = (
    Requirement("apt", "download Debian kernel and busybox packages (apt-get download)"),
    Requirement("dpkg", "extract downloaded packages into the cache (dpkg-deb -x)"),
    Requirement("make", "build the kernel module and cma_test"),
)

# Optional extras, installed only when asked for (`cma-harness setup --with NAME`):
# the test suite asks for them in its own set-up (tox.ini), a plain run never does.
EXTRAS: dict[str, tuple[Requirement, ...]] = {
    "browser": (Requirement("chromium", "render HTML reports headless (the report's browser test)"),),
    "ssh-client": (Requirement("openssh-client", "log in to a `boot --transport ssh` guest with the stock client"),),
    "lava": (
        Requirement("lava-dispatcher", "run an exported LAVA job offline with `lava-run` (tests/guest/test_lava.py)"),
    ),
}
