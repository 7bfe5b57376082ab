"""The kernel provider registry: a target's `kernel.provider` names one of these."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from harness.artifacts.debian import DebianProvider, ImageCache, KernelImage
from harness.artifacts.kernels.local import LocalProvider
from harness.artifacts.kernels.source import SourceProvider
from harness.config.hostreq import Requirement
from harness.config.targets import Target
from harness.errors import ConfigError


class KernelProvider(Protocol):
    def kernel(self, target: Target) -> KernelImage: ...


def kernel_provider(
    target: Target, cache: ImageCache, *, update: bool = False, install: bool = True, lock_file: Path | None = None
) -> KernelProvider:
    """The provider named by the target's kernel section (debian, source or local)."""
    provider = target.kernel.provider
    if provider == "debian":
        return DebianProvider(cache, update=update, lock_file=lock_file)
    if provider == "source":
        return SourceProvider(cache, update=update, lock_file=lock_file, install=install)
    if provider == "local":
        return LocalProvider()
    raise ConfigError(f"{target.path}: unknown kernel provider '{provider}'")


def provider_requirements(target: Target) -> tuple[Requirement, ...]:
    """The host packages the target's kernel provider declares it needs."""
    provider = target.kernel.provider
    if provider == "debian":
        return DebianProvider.HOST_PACKAGES
    if provider == "source":
        return SourceProvider.HOST_PACKAGES
    if provider == "local":
        return LocalProvider.HOST_PACKAGES
    raise ConfigError(f"{target.path}: unknown kernel provider '{provider}'")
