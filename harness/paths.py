"""Where things live: the project tree, the artifact cache, the run directories."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CMA_HARNESS_CACHE"


def project_root() -> Path:
    # The harness runs from a checkout (pip install -e .): configs/, kmod/, userland/
    # and images/ sit next to the package.
    return Path(__file__).resolve().parent.parent


def configs_dir() -> Path:
    return project_root() / "configs"


def targets_dir() -> Path:
    return configs_dir() / "targets"


def scenarios_dir() -> Path:
    return configs_dir() / "scenarios"


def kmod_dir() -> Path:
    return project_root() / "kmod"


def userland_dir() -> Path:
    return project_root() / "userland"


def uapi_header() -> Path:
    return kmod_dir() / "include" / "uapi" / "linux" / "cma_mem.h"


def lock_dir() -> Path:
    return project_root() / "images"


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The artifact cache: --cache-dir, then $CMA_HARNESS_CACHE, then ~/.cache/cma-harness."""
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "cma-harness").resolve()
