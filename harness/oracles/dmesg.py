"""The CMA reservation line and the driver's dump_mem: records."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

STAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
RESERVED = re.compile(r"cma: Reserved (\d+) MiB at (0x[0-9a-fA-F]+)")
RELEASE = re.compile(r"Linux version (\S+)")
# The banner each runtime checker prints once at boot (Linux 6.1). A debug kernel whose
# checker is compiled in but failed to start prints nothing, so this is what actually ran.
CHECKER_BANNERS = {
    "kasan": "KernelAddressSanitizer initialized",
    "kmemleak": "kmemleak: Kernel memory leak detector initialized",
    "lockdep": "Lock dependency validator",
    "dma-debug": "DMA-API: debugging enabled",
}
# The boot-log lines the guest's /init reports (an extended regex: sed -E).
BOOT_FACT_PATTERN = "|".join(["cma: Reserved", "cma: Failed", "Linux version", *CHECKER_BANNERS.values()])


def strip_stamp(line: str) -> str:
    """'[   1.234567] text' -> 'text' (also accepts lines without a timestamp)."""
    return STAMP.sub("", line, count=1)


@dataclass(frozen=True)
class CmaReservation:
    size_mib: int
    base: int

    @property
    def end(self) -> int:
        return self.base + (self.size_mib << 20)

    def contains(self, start: int, length: int) -> bool:
        return self.base <= start and start + length <= self.end


def parse_reservation(text: str) -> CmaReservation | None:
    m = RESERVED.search(text)
    return CmaReservation(int(m.group(1)), int(m.group(2), 16)) if m else None


def parse_checkers(text: str) -> list[str]:
    """The runtime checkers (KASAN, kmemleak, lockdep, DMA API debug) whose boot banner is in text."""
    return [name for name, banner in CHECKER_BANNERS.items() if banner in text]


def parse_release(text: str) -> str | None:
    m = RELEASE.search(text)
    return m.group(1) if m else None


@dataclass(frozen=True)
class DumpMemRecord:
    """One allocation as the driver logged it (the seed's field names)."""

    name: str
    id: int | None = None
    usebuf: int | None = None
    phys: int | None = None
    kernel: str | None = None  # hashed, only ever compared for presence
    user: int | None = None
    size: int | None = None  # newer drivers only


_FIELDS = {
    "CMA id": "id",
    "Is usebuf": "usebuf",
    "PHY Base": "phys",
    "KER Base": "kernel",
    "USR Base": "user",
    "Size": "size",
}


def _number(text: str) -> int | None:
    text = text.strip()
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None


def parse_dump_mem(lines: Iterable[str]) -> list[DumpMemRecord]:
    """dump_mem: records in order; a record starts at 'dump_mem:CMA name:'.

    Old seed dumps (32-bit %08x addresses, no Size line) parse too.
    """
    records: list[DumpMemRecord] = []
    current: dict[str, object] | None = None
    for raw in lines:
        line = strip_stamp(raw.rstrip())
        if not line.startswith("dump_mem:"):
            continue
        key, _, value = line[len("dump_mem:") :].partition(":")
        if key == "CMA name":
            if current is not None:
                records.append(DumpMemRecord(**current))  # type: ignore[arg-type]
            current = {"name": value.strip()}
        elif current is not None and key in _FIELDS:
            field = _FIELDS[key]
            current[field] = value.strip() if field == "kernel" else _number(value)
    if current is not None:
        records.append(DumpMemRecord(**current))  # type: ignore[arg-type]
    return records
