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
# The boot-log lines that hold the boot facts (an extended regex: sed -E, grep -E).
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


# What this project's driver announces at load: "cma_mem: CMA: 128 MiB in [0x..-0x..)".
ANNOUNCED_AREA = re.compile(r"cma_mem: CMA: (\d+) MiB in \[(0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)\)")


def announced_area_problems(lines: Iterable[str], reservation: CmaReservation | None) -> list[str]:
    """The area the driver says it found at load must be the one the kernel reserved. Only an
    announcement of the reserved size is compared (a board with several CMA areas announces
    their sum: the totals' own checks judge that); a driver that announces nothing is not judged."""
    if reservation is None:
        return []
    problems = []
    for line in lines:
        m = ANNOUNCED_AREA.search(line)
        if not m or int(m[1]) != reservation.size_mib:
            continue
        lo, hi = int(m[2], 16), int(m[3], 16)
        if (lo, hi) != (reservation.base, reservation.end):
            problems.append(
                f"the driver announced its CMA area as [{lo:#x}-{hi:#x}); the kernel reserved "
                f"[{reservation.base:#x}-{reservation.end:#x}) ({reservation.size_mib} MiB)"
            )
    return problems


@dataclass(frozen=True)
class KernelLogFacts:
    """What the boot's kernel log says about the guest: its CMA area and the checkers that ran."""

    reservation: CmaReservation | None
    checkers: list[str]


def parse_boot_facts(text: str) -> KernelLogFacts | None:
    """The reservation and the checkers from kernel log text that reaches back to the boot (its
    `Linux version` banner, the first line a kernel prints); None when it does not (a ring buffer
    that wrapped, a log cut short): then a missing reservation line says nothing of the kernel."""
    if not RELEASE.search(text):
        return None
    return KernelLogFacts(parse_reservation(text), parse_checkers(text))


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
