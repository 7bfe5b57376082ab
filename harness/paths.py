"""Where things live: the project tree, the artifact cache, the run directories."""

from __future__ import annotations

import os

# pathlib is imported where a Path is made, not with this module: the CLI reads the cache's place
# before it starts QEMU early, and that path imports as little as it can (guest/prespawn.py).
TYPE_CHECKING = False  # mypy reads this name as True
if TYPE_CHECKING:
    from pathlib import Path

CACHE_ENV = "CMA_HARNESS_CACHE"


def project_root() -> Path:
    # The harness runs from a checkout (pip install -e .): configs/, kmod/, userland/
    # and images/ sit next to the package.
    from pathlib import Path

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
    from pathlib import Path

    return Path(cache_root(override))


def cache_root(override: str | os.PathLike[str] | None = None) -> str:
    """cache_dir() as a string, by os.path alone (for the CLI's early start)."""
    if override:
        return os.path.realpath(os.path.expanduser(override))
    env = os.environ.get(CACHE_ENV)
    if env:
        return os.path.realpath(os.path.expanduser(env))
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = os.path.expanduser(xdg) if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.realpath(os.path.join(base, "cma-harness"))
