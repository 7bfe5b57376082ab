"""The kernel's CMA heap as a witness and a reference: pure checks and tables over cma_test records.

The heap (/dev/dma_heap/<name>, CONFIG_DMABUF_HEAPS_CMA) draws from the same CMA area as the
driver and shares no code with it. What it can allocate is an independent measure of what the
driver left behind; where the kernel has no heap the witness is unavailable, and says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from harness.oracles.checks import CAPACITY_GRANULE
from harness.oracles.cmatest import CmaRecord

NO_HEAPS = "unavailable: CONFIG_DMABUF_HEAPS_CMA not set (no /dev/dma_heap)"


def heap_unavailable(records: Iterable[CmaRecord]) -> str | None:
    """Why the heap cannot be used, from a `heapinfo` record (None: it can)."""
    for record in records:
        if record.op != "heapinfo":
            continue
        if record.ok:
            return None
        errno = record.get("errno")
        if errno == "ENOENT":
            return NO_HEAPS
        if errno == "ENODEV":
            return f"unavailable: no CMA heap in /dev/dma_heap (heaps: {record.get('heaps', '-')})"
        return f"unavailable: {record.get('msg') or errno}"
    return "unavailable: cma_test printed no heapinfo record"


def heap_name(records: Iterable[CmaRecord]) -> str:
    return next((r.get("heap") for r in records if r.op == "heapinfo" and r.ok), "?")


def witness_problems(driver_total: int, heap_total: int, heap: str) -> list[str]:
    """The driver and the heap measure the same CMA area: they must agree within a granule."""
    if abs(driver_total - heap_total) < CAPACITY_GRANULE:
        return []
    return [
        f"heap witness disagrees: the driver can allocate {driver_total} bytes, "
        f"the CMA heap /dev/dma_heap/{heap} {heap_total} bytes (difference {heap_total - driver_total:+d})"
    ]


def heap_leak_problems(baseline: int | None, total: int, heap: str) -> list[str]:
    """After the scenario the heap can allocate as much as before it (within a granule)."""
    if baseline is None:
        return ["capacity check (heap witness) without a baseline measured through the heap"]
    if baseline - total >= CAPACITY_GRANULE:
        return [
            f"CMA capacity leak seen by the heap witness: {baseline - total} bytes fewer allocatable through "
            f"/dev/dma_heap/{heap} than before the scenario (baseline {baseline}, now {total})"
        ]
    return []


# --- the side-by-side comparison (cma-harness heap-compare) ------------------------------------


def _by(records: Iterable[CmaRecord], op: str, backend: str, key: str, value: str) -> CmaRecord | None:
    return next(
        # The driver's own exhaust predates the heap backend and names no backend.
        (r for r in records if r.op == op and r.get("backend", "driver") == backend and r.get(key) == value),
        None,
    )


def compare_rows(records: list[CmaRecord], sizes: list[int], backends: list[str]) -> list[dict[str, Any]]:
    """One row per allocation size and backend: total allocatable, the fragmentation outcome,
    median alloc / map / free latency (ns). A failed or missing measure is None, with `error`."""
    rows: list[dict[str, Any]] = []
    for size in sizes:
        for backend in backends:
            row: dict[str, Any] = {"size": size, "backend": backend, "errors": []}
            exhaust = _by(records, "exhaust", backend, "chunk", str(size))
            frag = _by(records, "fragtest", backend, "chunk", str(size))
            bench = _by(records, "bench", backend, "size", str(size))
            for label, record in (("exhaust", exhaust), ("fragtest", frag), ("bench", bench)):
                if record is None:
                    row["errors"].append(f"{label}: no record")
                elif not record.ok:
                    row["errors"].append(f"{label}: {record.describe()}")
            exhaust, frag, bench = (r if r is not None and r.ok else None for r in (exhaust, frag, bench))
            row["total"] = exhaust.int("total") if exhaust else None
            row["count"] = exhaust.int("count") if exhaust else None
            row["fragmentation"] = (
                {
                    "filled": frag.int("count"),
                    "freed": frag.int("freed"),
                    "double": frag.get("large"),
                    "single": frag.get("small"),
                }
                if frag
                else None
            )
            for phase in ("alloc", "map", "free"):
                row[f"{phase}_ns"] = bench.int(f"{phase}_ns") if bench else None
            row["calls"] = bench.int("count") if bench else None
            rows.append(row)
    return rows


def largest(records: list[CmaRecord], backend: str) -> int | None:
    record = next((r for r in records if r.op == "largest" and r.get("backend") == backend and r.ok), None)
    return record.int("largest") if record else None
