"""Provider `local`: the user's own kernel image and its build tree (a board kernel, a bisect step).

The target names the image, the build tree (KDIR: a `make modules_prepare`d
tree, a full build tree, or installed headers), optionally a DTB and extra
QEMU arguments, and optionally the release it expects. Nothing is fetched or
built here; the module is built against KDIR by the usual kmod stage, and
the vermagic check (vermagic.py) runs before boot.
"""

from __future__ import annotations

from pathlib import Path

from harness.artifacts.debian import KernelImage
from harness.config.hostreq import Requirement
from harness.config.targets import Target
from harness.errors import ConfigError

FIX_KDIR = "point kdir at the kernel's build tree (after `make modules_prepare`, or a full build) or its headers"


def _where(target: Target, key: str) -> str:
    return target.kernel.where.get(key, str(target.path))


class LocalProvider:
    # The user's build tree brings its own host programs (built with it): nothing beyond the base.
    HOST_PACKAGES: tuple[Requirement, ...] = ()

    def kernel(self, target: Target) -> KernelImage:
        k = target.kernel
        if k.provider != "local" or k.image is None or k.kdir is None:
            raise ConfigError(f"{target.path}: kernel provider is {k.provider}, not local")
        if not k.image.is_file():
            raise ConfigError(f"{_where(target, 'image')}: kernel: key 'image': no such file {k.image}")
        if not (k.kdir / "Makefile").is_file():
            raise ConfigError(
                f"{_where(target, 'kdir')}: kernel: key 'kdir': {k.kdir} is not a kernel build tree (no Makefile)",
                hint=FIX_KDIR,
            )
        release_file = k.kdir / "include" / "config" / "kernel.release"
        if not release_file.is_file():
            raise ConfigError(
                f"{_where(target, 'kdir')}: kernel: key 'kdir': {k.kdir} is not prepared "
                "(no include/config/kernel.release)",
                hint=FIX_KDIR,
            )
        release = release_file.read_text().strip()
        if k.release and k.release != release:
            raise ConfigError(
                f"{_where(target, 'release')}: kernel: key 'release': the target expects {k.release}, "
                f"but {release_file} says {release}",
                hint="fix `release` or point kdir at the right tree",
            )
        if k.dtb is not None and not k.dtb.is_file():
            raise ConfigError(f"{_where(target, 'dtb')}: kernel: key 'dtb': no such file {k.dtb}")
        return KernelImage(
            release=release,
            version="local",
            package=str(k.image),
            image=k.image,
            modules=k.kdir,
            kdir=Path(k.kdir),
            dtb=k.dtb,
        )
