"""Kernel and userland images from Debian packages, resolved once, locked, cached.

Flow: resolve package names and versions with apt-cache (the archive index
gives each .deb's sha256), record them in images/debian.lock.json (committed),
download with `apt-get download`, check the sha256, extract with
`dpkg-deb -x` into the cache. An extracted tree carries a stamp naming the
sha256 it came from, so a warm run checks stamps against the lock without
re-hashing megabytes of packages.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import paths
from harness.artifacts.cachelock import entry_lock, write_atomic
from harness.config.hostreq import Requirement
from harness.config.targets import Target
from harness.errors import ConfigError, InfraError

LOCK_NAME = "debian.lock.json"
STAMP = ".cma-harness-stamp"


@dataclass(frozen=True)
class LockedPackage:
    name: str
    arch: str
    version: str
    sha256: str
    filename: str  # path in the archive, for the record

    @property
    def deb_name(self) -> str:
        version = self.version.replace(":", "%3a")
        return f"{self.name}_{version}_{self.arch}.deb"


@dataclass(frozen=True)
class KernelImage:
    release: str  # uname -r, e.g. 6.1.0-50-arm64
    version: str  # Debian package version, e.g. 6.1.176-1
    package: str
    image: Path  # vmlinuz
    modules: Path  # lib/modules/<release>
    kdir: Path  # out-of-tree build tree
    dtb: Path | None = None  # a device tree to pass to QEMU (local kernels); None: QEMU's own


@dataclass(frozen=True)
class Userspace:
    busybox: Path
    version: str


# --- lock file ------------------------------------------------------------


def lock_path() -> Path:
    return paths.lock_dir() / LOCK_NAME


def read_lock(path: Path | None = None) -> dict[str, list[LockedPackage]]:
    path = path or lock_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {key: [LockedPackage(**pkg) for pkg in pkgs] for key, pkgs in data["sets"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a valid lock file ({exc})", hint="re-resolve with --update") from None


def write_lock(sets: dict[str, list[LockedPackage]], path: Path | None = None) -> None:
    path = path or lock_path()
    data = {
        "comment": "Resolved Debian packages (cma-harness images). Re-resolve with `cma-harness run --update`.",
        "sets": {key: [asdict(p) for p in sets[key]] for key in sorted(sets)},
    }
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def kernel_set_key(target: Target) -> str:
    return f"kernel/debian/{target.kernel.flavour}/{target.kernel.deb_arch}"


def busybox_set_key(target: Target) -> str:
    return f"busybox/{target.userland.deb_arch}"


# --- apt ------------------------------------------------------------------


def _apt(args: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise InfraError(
            f"{' '.join(args)} failed ({proc.returncode})",
            hint="check the package lists: apt-get update (see `cma-harness setup`)",
            detail=proc.stderr.strip()[-2000:],
        )
    return proc.stdout


def parse_stanza(text: str) -> dict[str, str]:
    """The first RFC 822 stanza of apt-cache show output as a dict."""
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0].isspace() and last:
            fields[last] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        last = key.strip()
        fields[last] = value.strip()
    return fields


def apt_show(spec: str) -> LockedPackage:
    """Resolve NAME:ARCH (or NAME:ARCH=VERSION) to the candidate's version and sha256."""
    stanza = parse_stanza(_apt(["apt-cache", "show", "--no-all-versions", spec]))
    try:
        return LockedPackage(
            name=stanza["Package"],
            arch=stanza["Architecture"],
            version=stanza["Version"],
            sha256=stanza["SHA256"],
            filename=stanza["Filename"],
        )
    except KeyError as exc:
        raise InfraError(f"apt-cache show {spec}: no {exc} field") from None


def meta_target(meta: str) -> str:
    """The concrete package a kernel meta package (linux-image-arm64) depends on."""
    out = _apt(["apt-cache", "depends", meta])
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-(?:image|headers)-\d[\w.+-]*?)(?::\w+)?\s*$", line)
        if m:
            return m.group(1)
    raise InfraError(f"cannot find the kernel package behind {meta}", detail=out)


def resolve_kernel_set(target: Target) -> list[LockedPackage]:
    arch, flavour = target.kernel.deb_arch, target.kernel.flavour
    image = apt_show(f"{meta_target(f'linux-image-{flavour}:{arch}')}:{arch}")
    headers = apt_show(f"{meta_target(f'linux-headers-{flavour}:{arch}')}:{arch}")
    abi = image.name.removeprefix("linux-image-").removesuffix(f"-{flavour}")
    common = apt_show(f"linux-headers-{abi}-common:all")
    major_minor = ".".join(image.version.split(".")[:2])  # 6.1.176-1 -> 6.1
    kbuild = apt_show(f"linux-kbuild-{major_minor}:{_host_arch()}")
    return [image, headers, common, kbuild]


def resolve_busybox_set(target: Target) -> list[LockedPackage]:
    return [apt_show(f"busybox-static:{target.userland.deb_arch}")]


def _host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()


# --- cache ----------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ImageCache:
    def __init__(self, root: Path, log: Callable[[str], None] = lambda s: None) -> None:
        self.root = root
        self.log = log

    def deb(self, pkg: LockedPackage) -> Path:
        """The .deb file, downloaded and checked against the lock if not cached."""
        path = self.root / "debs" / pkg.deb_name
        if path.exists():
            return path
        with entry_lock(path, self.log, f"downloading {pkg.name}"):
            if not path.exists():
                self._download(pkg, path)
        return path

    def _download(self, pkg: LockedPackage, path: Path) -> None:
        self.log(f"downloading {pkg.name} {pkg.version} ({pkg.arch})")
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            spec = f"{pkg.name}:{pkg.arch}={pkg.version}"
            proc = subprocess.run(["apt-get", "download", spec], capture_output=True, text=True, cwd=tmp)
            if proc.returncode != 0:
                raise InfraError(
                    f"cannot download {spec}: {_last_line(proc.stderr)}",
                    hint="the locked version may have left the mirror: re-resolve with "
                    "`cma-harness run --update` (and commit images/debian.lock.json)",
                )
            [downloaded] = Path(tmp).glob("*.deb")
            actual = sha256_of(downloaded)
            if actual != pkg.sha256:
                raise InfraError(
                    f"{downloaded.name}: sha256 {actual} does not match the lock ({pkg.sha256})",
                    hint="re-resolve with `cma-harness run --update` if the archive changed",
                )
            downloaded.replace(path)

    def extracted(self, pkg: LockedPackage) -> Path:
        """The package's files, extracted once; the stamp ties the tree to the locked sha256."""
        tree = self.root / "trees" / f"{pkg.name}_{pkg.arch}_{pkg.sha256[:16]}"
        if _stamp_ok(tree, pkg.sha256):
            return tree
        deb = self.deb(pkg)
        with entry_lock(tree, self.log, f"extracting {deb.name}"):
            if not _stamp_ok(tree, pkg.sha256):
                self.log(f"extracting {deb.name}")
                _fresh_dir(tree)
                _dpkg_extract(deb, tree)
                (tree / STAMP).write_text(pkg.sha256 + "\n")
        return tree

    def kbuild_tree(self, headers: LockedPackage, common: LockedPackage, kbuild: LockedPackage) -> Path:
        """One folder holding arch headers, common headers and linux-kbuild: a working KDIR.

        Debian's arch headers Makefile includes the common headers by an absolute
        /usr/src path; rewriting that one path makes the tree relocatable without
        installing anything system-wide.
        """
        key = hashlib.sha256((headers.sha256 + common.sha256 + kbuild.sha256).encode()).hexdigest()
        root = self.root / "kbuild" / key[:16]
        kdir = root / "usr" / "src" / headers.name
        if _stamp_ok(root, key):
            return kdir
        with entry_lock(root, self.log, "making the kernel build tree"):
            if not _stamp_ok(root, key):
                self._make_kbuild_tree(root, kdir, key, (headers, common, kbuild))
        return kdir

    def _make_kbuild_tree(self, root: Path, kdir: Path, key: str, packages: tuple[LockedPackage, ...]) -> None:
        _fresh_dir(root)
        for pkg in packages:
            self.log(f"extracting {pkg.name} into the build tree")
            _dpkg_extract(self.deb(pkg), root)
        makefile = kdir / "Makefile"
        text = makefile.read_text()
        fixed = text.replace("/usr/src/", f"{root}/usr/src/")
        if fixed == text:
            raise InfraError(f"{makefile}: no /usr/src path to relocate; Debian's layout changed?")
        makefile.write_text(fixed)
        (root / STAMP).write_text(key + "\n")


def _stamp_ok(tree: Path, expected: str) -> bool:
    try:
        return (tree / STAMP).read_text().strip() == expected
    except OSError:
        return False


def _fresh_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def _dpkg_extract(deb: Path, dest: Path) -> None:
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InfraError(f"dpkg-deb -x {deb.name} failed", detail=proc.stderr)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# --- provider entry points ------------------------------------------------


class DebianProvider:
    # The linux-kbuild host programs (fixdep, modpost) are extracted, not installed, so
    # nothing pulls in the libraries they are linked against: the provider declares them.
    HOST_PACKAGES: tuple[Requirement, ...] = (
        Requirement("libelf1", "run the extracted linux-kbuild host programs (modpost)"),
        Requirement("libssl3", "run the extracted linux-kbuild host programs (sign-file)"),
    )

    """Kernel (image, modules, build tree) and busybox for a target, from Debian packages."""

    def __init__(self, cache: ImageCache, *, update: bool = False, lock_file: Path | None = None) -> None:
        self.cache = cache
        self.update = update
        self.lock_file = lock_file or lock_path()

    def locked(self, key: str, resolve: Callable[[], list[LockedPackage]]) -> list[LockedPackage]:
        lock = read_lock(self.lock_file)
        if key in lock and not self.update:
            return lock[key]
        self.cache.log(f"resolving {key} with apt-cache")
        resolved = resolve()
        # Read-modify-write of the lock file: one run at a time, or one run's new set is lost.
        with entry_lock(self.cache.root / "lock-file-update", self.cache.log, "updating the lock file"):
            lock = read_lock(self.lock_file)
            if lock.get(key) != resolved:
                lock[key] = resolved
                write_lock(lock, self.lock_file)
                packages = ", ".join(f"{p.name} {p.version}" for p in resolved)
                self.cache.log(f"{self.lock_file.name}: {key} -> {packages}")
        return resolved

    def kernel(self, target: Target) -> KernelImage:
        image, headers, common, kbuild = self.locked(kernel_set_key(target), lambda: resolve_kernel_set(target))
        release = image.name.removeprefix("linux-image-")
        tree = self.cache.extracted(image)
        vmlinuz = tree / "boot" / f"vmlinuz-{release}"
        if not vmlinuz.exists():
            raise InfraError(f"{image.name}: no boot/vmlinuz-{release} in the package")
        kdir = self.cache.kbuild_tree(headers, common, kbuild)
        return KernelImage(
            release=release,
            version=image.version,
            package=image.name,
            image=vmlinuz,
            modules=tree / "lib" / "modules" / release,
            kdir=kdir,
        )

    def busybox(self, target: Target) -> Userspace:
        [pkg] = self.locked(busybox_set_key(target), lambda: resolve_busybox_set(target))
        binary = self.cache.extracted(pkg) / "bin" / "busybox"
        if not os.access(binary, os.X_OK):
            raise InfraError(f"{pkg.name}: no executable bin/busybox in the package")
        return Userspace(busybox=binary, version=pkg.version)
