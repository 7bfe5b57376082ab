"""Provider `source`: a kernel built from Debian's linux-source package, cached by what it depends on.

Flow: resolve linux-source-X.Y once (locked in images/debian.lock.json like
every other package), download and check it, extract its tarball into the
cache once, then per (source, merged config, architecture, compiler):

    make O=BUILD KCONFIG_ALLCONFIG=merged.config allnoconfig   # base + fragments, nothing else
    (every requested option must have survived kconfig)
    make O=BUILD -j$(nproc) <image_target> modules            # image + Module.symvers

BUILD is then both the kernel to boot and a KDIR for `make -C BUILD M=...`.
Build output goes to BUILD/../build.log; progress reaches the `log` callback
every ~20 s; a failed build raises InfraError with the log's last lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from harness.artifacts.cachelock import entry_lock
from harness.artifacts.debian import STAMP, DebianProvider, ImageCache, KernelImage, LockedPackage, apt_show
from harness.artifacts.kernels import kconfig
from harness.config.hostreq import Requirement
from harness.config.targets import Target
from harness.errors import ConfigError, InfraError, MissingHostTools

# Bumped when the commands below change in a way that changes the result.
RECIPE = "source-1"
PROGRESS_EVERY = 20.0  # seconds between progress lines

_OBJECT_LINE = re.compile(r"^\s+(CC|AS)\s+(\[M\]\s+)?\S+\.o$")


def source_set_key(target: Target) -> str:
    return f"kernel/source/{target.kernel.source_package}"


def toolchain_identity(cross_compile: str) -> str:
    """The compilers a kernel build depends on: cross gcc and host gcc, by version and binary."""
    parts = []
    for tool in (f"{cross_compile}gcc", "gcc"):
        found = shutil.which(tool)
        if not found:
            raise MissingHostTools(f"{tool} not found", hint="run `cma-harness setup`")
        real = os.path.realpath(found)
        st = os.stat(real)
        version = subprocess.run([real, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
        parts.append(f"{real}:{st.st_size}:{int(st.st_mtime)}:{''.join(version)}")
    return "|".join(parts)


def _stamp_ok(tree: Path, expected: str) -> bool:
    try:
        return (tree / STAMP).read_text().strip() == expected
    except OSError:
        return False


class SourceProvider(DebianProvider):
    """Kernels built from Debian's linux-source package (busybox still comes from Debian packages)."""

    # A kernel build's host side (Documentation/process/changes.rst): the host compiler and
    # C library for scripts/ and tools, the parser generators, and the libraries that
    # options a user's fragment may turn on (module signing, BTF, objtool) link against.
    HOST_PACKAGES: tuple[Requirement, ...] = (
        Requirement("gcc", "compile the kernel's host programs (scripts/)"),
        Requirement("libc6-dev", "link the kernel's host programs"),
        Requirement("make", "run kbuild"),
        Requirement("flex", "generate the Kconfig and dtc lexers"),
        Requirement("bison", "generate the Kconfig and dtc parsers"),
        Requirement("bc", "compute kernel/time constants at build time"),
        Requirement("perl", "run the kernel's build scripts"),
        Requirement("xz-utils", "unpack the linux-source tarball"),
        Requirement("tar", "unpack the linux-source tarball"),
        Requirement("libssl-dev", "build sign-file and extract-cert when a config signs modules"),
        Requirement("libelf-dev", "build objtool and resolve_btfids when a config asks for them"),
    )

    def __init__(
        self,
        cache: ImageCache,
        *,
        update: bool = False,
        lock_file: Path | None = None,
        install: bool = True,
        jobs: int | None = None,
    ) -> None:
        super().__init__(cache, update=update, lock_file=lock_file)
        self.install = install
        self.jobs = jobs or os.cpu_count() or 1

    # --- the source tree ---------------------------------------------------

    def source_package(self, target: Target) -> LockedPackage:
        name = target.kernel.source_package
        [pkg] = self.locked(source_set_key(target), lambda: [apt_show(f"{name}:all")])
        return pkg

    def source_tree(self, pkg: LockedPackage) -> Path:
        """The unpacked kernel source, extracted once per package sha256."""
        root = self.cache.root / "src" / f"{pkg.name}_{pkg.sha256[:16]}"
        if _stamp_ok(root, pkg.sha256):
            return self._top_dir(root)
        with entry_lock(root, self.cache.log, f"unpacking {pkg.name}"):
            if _stamp_ok(root, pkg.sha256):
                return self._top_dir(root)
            tarballs = sorted((self.cache.extracted(pkg) / "usr" / "src").glob("linux-source-*.tar.*"))
            if len(tarballs) != 1:
                raise InfraError(f"{pkg.name}: expected one usr/src/linux-source-*.tar.* in the package")
            if root.exists():
                shutil.rmtree(root)
            work = root.with_name(root.name + ".work")
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
            self.cache.log(f"unpacking {tarballs[0].name} (about a minute, once)")
            started = time.monotonic()
            proc = subprocess.run(["tar", "-xf", str(tarballs[0]), "-C", str(work)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise InfraError(f"unpacking {tarballs[0]} failed", detail=proc.stderr[-2000:])
            (work / STAMP).write_text(pkg.sha256 + "\n")
            work.rename(root)
            self.cache.log(f"unpacked {pkg.name} in {time.monotonic() - started:.0f} s")
        return self._top_dir(root)

    @staticmethod
    def _top_dir(root: Path) -> Path:
        tops = [p for p in root.iterdir() if p.is_dir() and (p / "Makefile").is_file()]
        if len(tops) != 1:
            raise InfraError(f"{root}: expected one kernel source folder, found {[p.name for p in tops]}")
        return tops[0]

    # --- the build ---------------------------------------------------------

    def kernel(self, target: Target) -> KernelImage:
        k = target.kernel
        if k.provider != "source":
            raise ConfigError(f"{target.path}: kernel provider is {k.provider}, not source")
        merged = kconfig.merge_files(k.configs)
        pkg = self.source_package(target)
        key = kconfig.cache_key(pkg.sha256, merged, k.make_arch, toolchain_identity(k.cross_compile), RECIPE)
        root = self.cache.root / "kernels" / f"{k.flavour}-{k.make_arch}-{key[:16]}"
        build = root / "build"
        image = build / "arch" / k.make_arch / "boot" / k.image_target
        if not (_stamp_ok(root, key) and image.is_file()):
            with entry_lock(root, self.cache.log, f"building the {k.flavour} kernel"):
                if not (_stamp_ok(root, key) and image.is_file()):
                    src = self.source_tree(pkg)
                    build_kernel(src, root, merged, target, jobs=self.jobs, log=self.cache.log)
                    (root / STAMP).write_text(key + "\n")
        release = kernel_release(build)
        return KernelImage(
            release=release,
            version=pkg.version,
            package=f"{pkg.name} ({k.flavour}, config {key[:12]})",
            image=image,
            modules=build,
            kdir=build,
        )


def kernel_release(kdir: Path) -> str:
    path = kdir / "include" / "config" / "kernel.release"
    try:
        return path.read_text().strip()
    except OSError:
        raise InfraError(f"{path} missing: {kdir} is not a prepared kernel build tree") from None


def make_command(src: Path, build: Path, target: Target, *goals: str, jobs: int = 1) -> list[str]:
    k = target.kernel
    return [
        "make",
        "-C",
        str(src),
        f"O={build}",
        f"ARCH={k.make_arch}",
        f"CROSS_COMPILE={k.cross_compile}",
        f"-j{jobs}",
        *goals,
    ]


def build_kernel(
    src: Path,
    root: Path,
    merged: dict[str, kconfig.Option],
    target: Target,
    *,
    jobs: int,
    log: Callable[[str], None],
) -> Path:
    """Configure and build into root/build; return the build folder (a KDIR)."""
    k = target.kernel
    if root.exists():
        shutil.rmtree(root)
    build = root / "build"
    build.mkdir(parents=True)
    fragment = root / "merged.config"
    fragment.write_text(kconfig.render(merged))
    logfile = root / "build.log"
    started = time.monotonic()
    what = f"{k.flavour} kernel ({k.make_arch})"
    log(f"building the {what} from {src.name}: {len(merged)} config options, -j{jobs}; log: {logfile}")
    with logfile.open("w", buffering=1) as out:  # line-buffered: the log can be followed live
        # allnoconfig + KCONFIG_ALLCONFIG: exactly what the fragments ask for, everything else off.
        configure = [*make_command(src, build, target, "allnoconfig"), f"KCONFIG_ALLCONFIG={fragment}"]
        stream_build(configure, out, logfile, what, log=log, started=started)
        problems = kconfig.dropped(merged, (build / ".config").read_text())
        if problems:
            raise ConfigError(
                f"kernel config for {target.name}: {len(problems)} requested option(s) did not survive kconfig",
                hint="enable the missing dependencies in the fragment (see `make menuconfig` in "
                f"{build} for what each option depends on)",
                detail="\n".join(problems),
            )
        stream_build(
            make_command(src, build, target, k.image_target, "modules", jobs=jobs),
            out,
            logfile,
            what,
            log=log,
            started=started,
        )
    image = build / "arch" / k.make_arch / "boot" / k.image_target
    for product in (image, build / "Module.symvers", build / "include" / "config" / "kernel.release"):
        if not product.is_file():
            raise InfraError(f"kernel build of {what} produced no {product}; log: {logfile}")
    log(f"built the {what} in {time.monotonic() - started:.0f} s: {kernel_release(build)}")
    return build


def stream_build(
    cmd: list[str],
    out: IO[str],
    logfile: Path,
    what: str,
    *,
    log: Callable[[str], None],
    started: float,
) -> None:
    """Run cmd with its output appended to the log; a progress line every PROGRESS_EVERY seconds."""
    out.write("$ " + " ".join(cmd) + "\n")
    out.flush()
    env = {**os.environ, "LC_ALL": "C", "KBUILD_BUILD_USER": "cma-harness", "KBUILD_BUILD_HOST": "cache"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env,
        start_new_session=True,  # so that stopping us stops every compiler under make
    )  # fmt: skip
    objects = 0
    last = time.monotonic()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if _OBJECT_LINE.match(line):
                objects += 1
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                log(f"building the {what}: {objects} objects compiled, {now - started:.0f} s")
        code = proc.wait()
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
        out.flush()
    if code != 0:
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-30:])
        raise InfraError(f"building the {what} failed (make exit {code}); full log: {logfile}", detail=tail)
