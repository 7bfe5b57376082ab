"""Pure checks behind the runner's invariants: each takes what was observed and returns the problems found.

No I/O: the runner gathers the data (ioctl records, dump_mem lines, probe totals, `dmesg -r`
output) and reports these problems against the step that produced it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from harness.oracles.dmesg import CmaReservation, DumpMemRecord

# The capacity probe allocates big chunks, then smaller ones, down to this granule; baseline and
# check must agree within it. Every block the driver hands out holds at least two pages (a one-page
# block takes two), so an 8 KiB granule sees every leaked block, whatever its size: page-exact on
# kernels without CMA debugfs too.
CAPACITY_GRANULE = 8 << 10
# Every power of two from 16 MiB down: what is left below 16 MiB is then taken in about one block
# per size (13 allocations for a 128 MiB area instead of 32 with 16M/1M/64K/8K, for the same
# total). On the debug kernel each allocation costs ~15 ms: 0.24 s less per probe.
CAPACITY_CHUNKS = tuple(16 << 20 >> shift for shift in range(12))
assert CAPACITY_CHUNKS[-1] == CAPACITY_GRANULE
# What the driver prints itself: pr_*() with its pr_fmt prefix, dev_*() on its misc device, dump_mem.
# The driver's own words, and the kernel's words about it: the module loader's complaint that
# its init broke the 0/-E convention ("do_init_module: 'cma_mem'->init suspiciously returned 1"),
# debugfs finding the driver's entries still there at the next load ("debugfs: Directory
# 'cma_mem' with parent '/' already present!": the last unload did not remove them).
DRIVER_MESSAGE = re.compile(
    r"^(?:misc )?cma_mem: |^dump_mem:|^\w+: 'cma_mem'->(?:init|exit) |^debugfs: .*'cma_mem'.* already present"
)
# The kernel's own notes on loading an unsigned out-of-tree module: not the driver's words, not faults.
TAINT_NOTICE = re.compile(r"taints kernel|tainting kernel")
# delete_module() refuses a module with users: EWOULDBLOCK under busybox rmmod (O_NONBLOCK), EBUSY otherwise.
MODULE_IN_USE = ("Resource temporarily unavailable", "Device or resource busy", "is in use")
LEVELS = ["emerg", "alert", "crit", "err", "warning"]


@dataclass(frozen=True)
class Extent:
    """A block as the ioctl returned it: enough to place it."""

    name: str
    phys: int
    length: int


def placement_problems(block: Extent, reservation: CmaReservation | None, live: Iterable[Extent]) -> list[str]:
    """A new block lies inside the CMA reservation and overlaps no live block."""
    problems: list[str] = []
    if reservation and not reservation.contains(block.phys, block.length):
        problems.append(
            f"{block.name}: phys {block.phys:#x}+{block.length:#x} is outside the CMA reservation "
            f"{reservation.base:#x}..{reservation.end:#x}"
        )
    for other in live:
        if block.phys < other.phys + other.length and other.phys < block.phys + block.length:
            problems.append(
                f"blocks {block.name} and {other.name} overlap "
                f"({block.phys:#x}+{block.length:#x} and {other.phys:#x}+{other.length:#x})"
            )
    return problems


def overlap_problems(live: Iterable[Extent]) -> list[str]:
    """No two live blocks overlap (checked after every step)."""
    blocks = sorted(live, key=lambda b: b.phys)
    return [
        f"blocks {a.name} and {b.name} overlap ({a.phys:#x}+{a.length:#x} > {b.phys:#x})"
        for a, b in itertools.pairwise(blocks)
        if a.phys + a.length > b.phys
    ]


def raw_kernel_pointer(text: str) -> bool:
    # %p hashes to 32 bits, zero-extended on 64-bit kernels: set upper bits mean a raw address.
    try:
        return int(text, 16) >= 1 << 32
    except ValueError:
        return False


def show(value: int) -> str:
    return hex(value) if value > 4096 else str(value)


def dump_mem_problems(
    name: str, record: DumpMemRecord, *, phys: int, user: int, id: int, length: int, kind: str
) -> list[str]:
    """A dump_mem record agrees with what the ioctl returned, and prints no raw kernel address."""
    problems: list[str] = []
    if record.kernel and raw_kernel_pointer(record.kernel):
        problems.append(f"{name}: dump_mem prints a raw kernel address ({record.kernel}): use %p")
    for label, logged, returned in (
        ("physical address", record.phys, phys),
        ("user address", record.user, user),
        ("id", record.id, id),
        ("size", record.size, length),
        ("memory type", record.usebuf, {"wc": 1, "coherent": 0}.get(kind, record.usebuf)),
    ):
        if logged is not None and returned is not None and logged != returned:
            problems.append(f"{name}: {label} in dmesg ({show(logged)}) differs from the ioctl's ({show(returned)})")
    return problems


def capacity_problems(baseline: int | None, total: int, used_baseline: int | None, used_pages: int | None) -> list[str]:
    """After a scenario as much can be allocated as before it (within a granule), and CMA debugfs
    (where the kernel has it, `used_pages` not None) counts no more pages in use."""
    problems: list[str] = []
    if baseline is None:
        problems.append("capacity check without a baseline step before it")
    elif baseline - total >= CAPACITY_GRANULE:
        problems.append(
            f"CMA capacity leak: {baseline - total} bytes fewer allocatable than before the scenario "
            f"(baseline {baseline}, now {total}): blocks were not freed"
        )
    if used_pages is not None and used_baseline is not None and used_pages > used_baseline:
        problems.append(
            f"CMA debugfs: {used_pages - used_baseline} pages still in use that were free before the scenario "
            f"({used_baseline} -> {used_pages})"
        )
    return problems


def driver_log_problems(dmesg_raw: str, since: float) -> list[str]:
    """The driver logged nothing at warning level or worse since `since` (seed defect 23 logged every
    ioctl at KERN_ERR; a block left at unload is a warning). Input: `dmesg -r` lines."""
    problems: list[str] = []
    for line in dmesg_raw.splitlines():
        m = re.match(r"^<([0-4])>\[\s*(\d+\.\d+)\]\s*(.*)$", line)  # the kernel's, warning or worse
        # The driver's own words only: a KASAN or WARN report naming its frames is a kernel
        # event, already reported with a title.
        if not m or not DRIVER_MESSAGE.match(m.group(3)):
            continue
        if float(m.group(2)) >= since and not TAINT_NOTICE.search(m.group(3)):
            problems.append(f"driver logged at {LEVELS[int(m.group(1))]} level: {m.group(3)}")
    return problems


def rmmod_problems(expect: str, status: int, stderr: str) -> list[str]:
    """rmmod succeeded (expect 'ok'), or was refused because the module is in use (expect 'busy')."""
    if expect == "ok" and status != 0:
        return [f"rmmod failed ({status}): {stderr.strip()}"]
    if expect == "busy":
        if status == 0:
            return ["rmmod succeeded while blocks were mapped (expected it to be refused)"]
        if not any(reason in stderr for reason in MODULE_IN_USE):
            return [f"rmmod refused for another reason than 'in use': {stderr.strip()}"]
    return []
