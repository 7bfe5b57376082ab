"""Host tools a run needs: check them, and install what is missing on Debian as root.

Nothing is ever skipped silently: a missing tool either gets installed or
stops the run with the exact command that fixes it (exit 3).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from harness.config.targets import Target
from harness.errors import MissingHostTools

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
# apt/dpkg locks held by another apt run: wait for them instead of failing at once.
APT_LOCK_WAIT = ["-o", "DPkg::Lock::Timeout=300"]


@dataclass(frozen=True)
class Requirement:
    command: str  # what must be on PATH
    package: str  # the Debian package that provides it
    why: str


@dataclass(frozen=True)
class HostStatus:
    missing: list[Requirement]
    missing_foreign_archs: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.missing_foreign_archs


def requirements(targets: Iterable[Target]) -> list[Requirement]:
    reqs: dict[str, Requirement] = {}

    def add(command: str, package: str, why: str) -> None:
        reqs.setdefault(command, Requirement(command, package, why))

    add("apt-get", "apt", "download Debian kernel and busybox packages")
    add("dpkg-deb", "dpkg", "extract downloaded packages into the cache")
    add("make", "make", "build the kernel module and cma_test")
    for target in targets:
        add(target.qemu.binary, target.qemu.package, f"boot the {target.name} guest")
        for cross in {target.kernel.cross_compile, target.userland.cross_compile}:
            # Debian names cross compilers gcc-<triplet>.
            add(f"{cross}gcc", "gcc-" + cross.rstrip("-"), f"cross-compile for {target.name}")
    return list(reqs.values())


def foreign_archs_needed(targets: Iterable[Target]) -> list[str]:
    host = _dpkg_arch()
    archs = {t.kernel.deb_arch for t in targets} | {t.userland.deb_arch for t in targets}
    return sorted(a for a in archs if a != host)


def _dpkg_arch() -> str:
    try:
        return subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "amd64"


def _foreign_archs() -> set[str]:
    try:
        out = subprocess.run(
            ["dpkg", "--print-foreign-architectures"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    return set(out.split())


def check(targets: list[Target], which: Callable[[str], str | None] = shutil.which) -> HostStatus:
    missing = [r for r in requirements(targets) if which(r.command) is None]
    have = _foreign_archs() if which("dpkg") else set()
    archs = [a for a in foreign_archs_needed(targets) if a not in have]
    return HostStatus(missing, archs)


def fix_commands(status: HostStatus) -> list[str]:
    """The exact shell commands that would fix the host."""
    cmds = [f"dpkg --add-architecture {arch}" for arch in status.missing_foreign_archs]
    packages = sorted({r.package for r in status.missing})
    if cmds or packages:
        cmds.append("apt-get update")
    if packages:
        cmds.append("apt-get install -y --no-install-recommends " + " ".join(packages))
    return cmds


def can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def ensure(targets: list[Target], *, install: bool = True, log: Callable[[str], None] = print) -> None:
    """Make sure every requirement is met, installing with apt-get when allowed; else raise."""
    status = check(targets)
    if status.ok:
        return
    if not (install and can_install()):
        raise MissingHostTools(_describe(status), hint="run as root:\n  " + "\n  ".join(fix_commands(status)))
    for arch in status.missing_foreign_archs:
        log(f"adding foreign architecture {arch}")
        _run(["dpkg", "--add-architecture", arch])
    apt_update(log)
    packages = sorted({r.package for r in status.missing})
    if packages:
        log("installing " + " ".join(packages))
        _run(["apt-get", *APT_LOCK_WAIT, "install", "-y", "--no-install-recommends", *packages])
    after = check(targets)
    if not after.ok:
        raise MissingHostTools(_describe(after), hint="\n  ".join(fix_commands(after)))


def apt_update(log: Callable[[str], None] = print, attempts: int = 3) -> None:
    """apt-get update, retried: mirrors in mid-sync fail single index files now and then.

    A partial failure after the last attempt is tolerated (apt keeps the old
    lists); whether the packages we need resolve is checked by their users.
    """
    for attempt in range(1, attempts + 1):
        proc = subprocess.run(
            ["apt-get", *APT_LOCK_WAIT, "update", "-q"],
            capture_output=True,
            text=True,
            env={**os.environ, **APT_ENV},
        )
        if proc.returncode == 0 and "E: " not in proc.stderr:
            return
        log(f"apt-get update attempt {attempt} reported errors: {_last_error(proc.stderr)}")
    log("continuing with the package lists apt has")


def _last_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("E: ")] or stderr.splitlines()
    return lines[-1] if lines else "?"


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **APT_ENV})
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise MissingHostTools(f"command failed ({proc.returncode}): {' '.join(cmd)}", detail=tail)


def _describe(status: HostStatus) -> str:
    lines = ["host tools missing:"]
    lines += [f"  {r.command} (package {r.package}): needed to {r.why}" for r in status.missing]
    lines += [f"  dpkg foreign architecture {a}: needed to download {a} packages" for a in status.missing_foreign_archs]
    return "\n".join(lines)
