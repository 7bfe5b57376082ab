"""Host packages a run needs: check them with dpkg, prove the toolchains link, install what is missing.

What is needed is declared by what needs it (`hostreq`: a target's QEMU,
toolchains and userland C library, its kernel provider, optional extras);
this module collects, checks and installs. Nothing is ever skipped silently:
a missing package is either installed or stops the run with the exact
command that fixes it (exit 3).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.artifacts.kernels.registry import provider_requirements
from harness.config.hostreq import BASE, EXTRAS, Requirement
from harness.config.targets import Target
from harness.errors import ConfigError, MissingHostTools

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
# apt/dpkg locks held by another apt run: wait for them instead of failing at once.
APT_LOCK_WAIT = ["-o", "DPkg::Lock::Timeout=300"]
DPKG_STATUS = Path("/var/lib/dpkg/status")
_APT_SUMMARY = re.compile(r"^\d+ upgraded, \d+ newly installed|^Need to get |^After this operation")
# A program every C toolchain must compile and link; stdio.h and a static libc are what broke before.
PROBE_SOURCE = '#include <stdio.h>\nint main(void) { return puts("") < 0; }\n'


@dataclass(frozen=True)
class HostStatus:
    missing: list[Requirement]
    missing_foreign_archs: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.missing_foreign_archs


@dataclass(frozen=True)
class ToolchainProbe:
    """One compiler to try: `link` builds a static executable, otherwise an object file is enough."""

    compiler: str  # e.g. aarch64-linux-gnu-gcc, or gcc for the host
    link: bool
    why: str


def requirements(targets: Iterable[Target], extras: Iterable[str] = ()) -> list[Requirement]:
    """Every package the targets (and the named extras) need, one entry per package, sorted."""
    reqs: dict[str, Requirement] = {}
    declared: list[Requirement] = list(BASE)
    for target in targets:
        declared += target.qemu.requirements(target.name)
        declared += target.kernel.toolchain_requirements(target.name)
        declared += target.userland.requirements(target.name)
        declared += provider_requirements(target)
    for extra in extras:
        if extra not in EXTRAS:
            raise ConfigError(f"unknown extra '{extra}'; known: {', '.join(sorted(EXTRAS))}")
        declared += EXTRAS[extra]
    for req in declared:
        reqs.setdefault(req.package, req)
    return sorted(reqs.values())


def probes(targets: Iterable[Target]) -> list[ToolchainProbe]:
    """The compilers to prove: each userland toolchain links statically, kernel-only ones compile."""
    found: dict[str, ToolchainProbe] = {}
    for target in targets:
        user = f"{target.userland.cross_compile}gcc"
        found[user] = ToolchainProbe(user, True, f"static cma_test for {target.name} ({target.userland.deb_arch})")
        kernel = f"{target.kernel.cross_compile}gcc"
        found.setdefault(kernel, ToolchainProbe(kernel, False, f"kernel module for {target.name}"))
        if target.kernel.provider == "source":
            found.setdefault("gcc", ToolchainProbe("gcc", True, "the kernel's host programs"))
    return list(found.values())


def foreign_archs_needed(targets: Iterable[Target]) -> list[str]:
    host = _dpkg_arch()
    archs = {t.kernel.deb_arch for t in targets} | {t.userland.deb_arch for t in targets}
    return sorted(a for a in archs if a != host)


def installed_packages(packages: Iterable[str]) -> set[str]:
    """The subset of `packages` dpkg reports as installed (one dpkg-query call)."""
    names = sorted(set(packages))
    if not names or shutil.which("dpkg-query") is None:
        return set()
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *names], capture_output=True, text=True
    )
    # dpkg-query exits 1 when some names are unknown, and still prints the known ones.
    return {line.split()[0] for line in proc.stdout.splitlines() if line.endswith(" installed")}


def check(
    targets: list[Target],
    extras: Iterable[str] = (),
    installed: Callable[[Iterable[str]], set[str]] = installed_packages,
) -> HostStatus:
    reqs = requirements(targets, extras)
    have = installed(r.package for r in reqs)
    archs_have = _foreign_archs()
    archs = [a for a in foreign_archs_needed(targets) if a not in archs_have]
    return HostStatus([r for r in reqs if r.package not in have], archs)


def fix_commands(status: HostStatus) -> list[str]:
    """The exact shell commands that would fix the host."""
    cmds = [f"dpkg --add-architecture {arch}" for arch in status.missing_foreign_archs]
    packages = sorted({r.package for r in status.missing})
    if cmds or packages:
        cmds.append("apt-get update")
    if packages:
        cmds.append("apt-get install -y --no-install-recommends " + " ".join(packages))
    return cmds


def describe(status: HostStatus) -> str:
    lines = ["host packages missing:"]
    lines += [f"  {r.package}: needed to {r.why}" for r in status.missing]
    lines += [f"  dpkg foreign architecture {a}: needed to download {a} packages" for a in status.missing_foreign_archs]
    return "\n".join(lines)


def can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def ensure(
    targets: list[Target],
    *,
    install: bool = True,
    extras: Iterable[str] = (),
    log: Callable[[str], None] = print,
    cache: Path | None = None,
) -> bool:
    """Make sure every requirement is met, installing with apt-get when allowed; else raise.

    Returns True when something was installed; then the toolchains are proved again.
    With `cache`, a host that passed once is not asked again until dpkg's database changes:
    the check costs a dpkg-query per run otherwise, and runs are meant to be cheap.
    """
    extras = list(extras)
    stamp = _stamp_path(cache, targets, extras)
    if stamp is not None and _stamp_valid(stamp):
        return False
    status = check(targets, extras)
    installed_now = False
    if not status.ok:
        if not (install and can_install()):
            raise MissingHostTools(describe(status), hint="run as root:\n  " + "\n  ".join(fix_commands(status)))
        for arch in status.missing_foreign_archs:
            log(f"adding foreign architecture {arch}")
            _run(["dpkg", "--add-architecture", arch])
        apt_update(log)
        packages = sorted({r.package for r in status.missing})
        if packages:
            log("installing " + " ".join(packages))
            out = _run(["apt-get", *APT_LOCK_WAIT, "install", "-y", "--no-install-recommends", *packages])
            # apt's own summary ("N newly installed", "Need to get X MB"): what this set-up cost.
            log("; ".join(line.strip() for line in out.splitlines() if _APT_SUMMARY.match(line)))
        after = check(targets, extras)
        if not after.ok:
            raise MissingHostTools(describe(after), hint="\n  ".join(fix_commands(after)))
        installed_now = True
        prove_toolchains(targets)
    if stamp is not None:
        _write_stamp(stamp)
    return installed_now


def prove_toolchains(targets: Iterable[Target]) -> list[ToolchainProbe]:
    """Compile (and statically link, where the userland needs it) a one-line program with each compiler.

    A toolchain that cannot link is found here, with the fix, not at the build stage.
    """
    done: list[ToolchainProbe] = []
    with tempfile.TemporaryDirectory(prefix="cma-harness-probe-") as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(PROBE_SOURCE)
        for probe in probes(targets):
            out = Path(tmp) / f"probe-{len(done)}"
            cmd = [probe.compiler, *(["-static"] if probe.link else ["-c"]), "-o", str(out), str(src)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True)
            except FileNotFoundError:
                raise MissingHostTools(
                    f"{probe.compiler} not found (needed for the {probe.why})", hint="run `cma-harness setup`"
                ) from None
            if proc.returncode != 0 or not out.exists():
                what = "statically link" if probe.link else "compile"
                raise MissingHostTools(
                    f"{probe.compiler} cannot {what} a one-line C program (needed for the {probe.why})",
                    hint="run `cma-harness setup` as root; it installs the compiler and its C library "
                    "(libc6-dev-<arch>-cross for cross compilers)",
                    detail=proc.stderr.strip()[-1500:],
                )
            done.append(probe)
    return done


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


def _stamp_path(cache: Path | None, targets: list[Target], extras: list[str]) -> Path | None:
    if cache is None or not DPKG_STATUS.exists():
        return None
    key = "\n".join(sorted(r.package for r in requirements(targets, extras)) + foreign_archs_needed(targets))
    return cache / "hostcheck" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _dpkg_state() -> str:
    st = DPKG_STATUS.stat()
    arch_file = Path("/var/lib/dpkg/arch")
    archs = arch_file.stat().st_mtime_ns if arch_file.exists() else 0
    return f"{st.st_mtime_ns}:{st.st_size}:{archs}"


def _stamp_valid(stamp: Path) -> bool:
    try:
        return stamp.read_text() == _dpkg_state()
    except OSError:
        return False


def _write_stamp(stamp: Path) -> None:
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_suffix(f".{os.getpid()}")
    tmp.write_text(_dpkg_state())
    tmp.replace(stamp)


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


def _last_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("E: ")] or stderr.splitlines()
    return lines[-1] if lines else "?"


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **APT_ENV})
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise MissingHostTools(f"command failed ({proc.returncode}): {' '.join(cmd)}", detail=tail)
    return proc.stdout
