"""Facts of the ioctl ABI, read from the one uapi header (kmod/include/uapi/linux/cma_mem.h)."""

from __future__ import annotations

import re
from functools import cache

from harness import paths

_DEFINE = re.compile(r"^#define\s+(\w+)\s+(.+?)\s*(?:/\*.*)?$", re.M)


@cache
def defines() -> dict[str, str]:
    """Every #define of the header, name -> raw value text."""
    return {m.group(1): m.group(2).strip() for m in _DEFINE.finditer(paths.uapi_header().read_text())}


def name_len() -> int:
    """CMA_MEM_NAME_LEN: bytes of the name field, NUL included."""
    return int(defines()["CMA_MEM_NAME_LEN"])


def command_names() -> list[str]:
    return [name for name, value in defines().items() if name.startswith("CMEM_") and value.startswith("_IO")]
