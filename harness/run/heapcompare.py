"""`cma-harness heap-compare`: the same workload on the driver and on the kernel's CMA heap, in one boot.

Per allocation size and backend, measured inside the guest by cma_test: the total that can be
allocated (exhaust), a fragmentation pattern (fill, free every other buffer, try twice the size),
and the median latency of allocate / map / free over many calls (CLOCK_MONOTONIC around each
call). Once per backend: the largest single allocation. Where the kernel has no heap, the
comparison says it is unavailable and why, and the driver's figures stand alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from harness.errors import GuestError
from harness.guest.heapshell import (
    LOUD_CONSOLE_COMMAND,
    QUIET_CONSOLE_COMMAND,
    largest_command,
    measure_command,
    pattern_off_command,
)
from harness.guest.shell import RMMOD_COMMAND, insmod_command
from harness.oracles.cmatest import CmaRecord, parse_records
from harness.oracles.heap import compare_rows, heap_name, heap_unavailable, largest
from harness.run.result import RunResult
from harness.run.session import RunOptions, Stages, boot_guest, note_boot_facts, prepare

SIZES = (4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20)
CALLS = 200  # latency: the median over this many allocate / free calls per size and backend
GRANULE = 1 << 20  # the largest single allocation is searched to this
MEASURE_TIMEOUT = 900.0  # one size on one backend (4 KiB: tens of thousands of buffers under TCG)


def measure(
    opts: RunOptions,
    sizes: tuple[int, ...] = SIZES,
    calls: int = CALLS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Boot the target once, measure both backends, return the comparison (compare.json's content)."""
    opts.out.mkdir(parents=True, exist_ok=True)
    record = RunResult(target=opts.target.name)
    stages = Stages(record, lambda name, event, s: log(f"{name}: {s:.2f} s") if event == "done" else None)
    started = time.monotonic()
    boot = prepare(opts, stages, record, log)
    data: dict[str, Any] = {
        "target": opts.target.name,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "kernel": record.kernel,
        "sizes": list(sizes),
        "calls": calls,
        "commands": [],
    }
    with (opts.out / "console.log").open("wb", buffering=0) as console_log:
        guest = boot_guest(opts, stages, boot, console_log, record)
        try:
            note_boot_facts(record, guest)  # asked of the guest: the comparison names the area
            data["kernel"] = record.kernel
            data["cma"] = record.cma
            _measure_in_guest(guest, data, sizes, calls, log)
            assert guest.transport is not None
            (opts.out / "dmesg.txt").write_text(guest.transport.run("dmesg", timeout=60, bulky=True).stdout)
            guest.poweroff()
        finally:
            guest.stop()
            data["kernel_events"] = [e.as_dict() for e in guest.events()]
    data["duration"] = round(time.monotonic() - started, 1)
    return data


def _measure_in_guest(
    guest: Any, data: dict[str, Any], sizes: tuple[int, ...], calls: int, log: Callable[[str], None]
) -> None:
    transport = guest.transport
    records: list[CmaRecord] = []

    def run(command: str, timeout: float = 120.0) -> list[CmaRecord]:
        out = transport.run(command, timeout=timeout)
        data["commands"].append(
            {"command": command, "status": out.status, "stdout": out.stdout[-4000:], "stderr": out.stderr[-2000:],
             "duration": round(out.duration, 3)}
        )  # fmt: skip
        got = parse_records(out.stdout)
        records.extend(got)
        return got

    loaded = transport.run(insmod_command("test_pattern=0"), timeout=60)
    if not loaded.ok:
        raise GuestError(f"heap-compare: insmod failed: {loaded.stderr.strip()}")
    run(pattern_off_command())
    run(QUIET_CONSOLE_COMMAND)
    data["console_loglevel"] = 5
    unavailable = heap_unavailable(run("cma_test heapinfo"))
    backends = ["driver"] if unavailable else ["driver", "heap"]
    data["heap"] = {"available": unavailable is None, "name": None if unavailable else heap_name(records)}
    if unavailable:
        data["heap"]["reason"] = unavailable
        log(f"heap {unavailable}: the driver is measured alone")
    for size in sizes:
        for backend in backends:
            log(f"measuring {backend}, {size} bytes ({calls} calls)")
            run(measure_command(backend, size, calls), timeout=MEASURE_TIMEOUT)
    for backend in backends:
        run(largest_command(backend, GRANULE), timeout=MEASURE_TIMEOUT)
    run(LOUD_CONSOLE_COMMAND)
    transport.run(RMMOD_COMMAND, timeout=60)
    data["rows"] = compare_rows(records, list(sizes), backends)
    data["largest"] = {backend: largest(records, backend) for backend in backends}
    data["granule"] = GRANULE
