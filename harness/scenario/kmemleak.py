"""kmemleak, swept once instead of at every capacity check.

kmemleak reports an object only when it is at least 5 s old and its contents did not change
between two scans; on the debug kernel under TCG one scan takes about 4 s. Scanning twice and
waiting at every capacity check cost about 20 s per check (most of arm64-debug's suite time).

Instead every capacity step (baseline or check) records the guest's uptime, and one sweep (two
scans, the second at least 5 s after the last check) reads the report at the end: once per
guest for `cma-harness run` (after its last scenario), once per scenario for callers that need a
scenario's verdict at once (the pytest plugin). Each reported object's allocation time (uptime
at the read minus its age) places it in a scenario's window, from 5 s before its first capacity
step (older leaks were cleared by the old baseline's scan; younger ones were not) to its last
check, and the leak fails the first check at or after the allocation: the check that used to
find it. What is caught is what the per-check scans caught; only where it is written is later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.guest.shell import KMEMLEAK_MARKER, KMEMLEAK_MIN_AGE, MODULE, kmemleak_sweep_command
from harness.oracles.symbolize import symbolize
from harness.scenario.client import DriverClient, LeakCheck, parse_uptime
from harness.scenario.model import StepResult

if TYPE_CHECKING:
    from harness.oracles.faults import KernelEvent

AGE = re.compile(r"\(age (\d+(?:\.\d+)?)s\)")


@dataclass
class Leak:
    client: DriverClient
    result: StepResult
    event: KernelEvent


def windows(clients: list[DriverClient]) -> list[tuple[float, float, DriverClient, list[LeakCheck]]]:
    """(start, end, client, its checks) for each scenario with a capacity check, in run order."""
    out = []
    for client in clients:
        checks = [c for c in client.leak_checks if c.check]
        if checks:
            out.append((client.leak_checks[0].at - KMEMLEAK_MIN_AGE, checks[-1].at, client, checks))
    return out


def attribute(report: str, now: float, clients: list[DriverClient]) -> list[Leak]:
    """The leaks of a kmemleak report (read at guest uptime `now`) that fall in the scenarios' windows."""
    from harness.oracles.faults import kmemleak_events

    leaks = []
    spans = windows(clients)
    for block in re.split(r"\n(?=unreferenced object )", report.strip()):
        m = AGE.search(block)
        if not block.startswith("unreferenced object") or not m:
            continue
        born = now - float(m.group(1))
        for start, end, client, checks in spans:
            if start <= born <= end:
                result = next(c.result for c in checks if c.at >= born)
                text = symbolize(block, client.module_loads, client.module_symbols, MODULE)
                leaks += [Leak(client, result, event) for event in kmemleak_events(text, step=result.name)]
                break
    return leaks


def needs_sweep(clients: list[DriverClient]) -> bool:
    """Whether sweep() will run a guest command for these scenarios."""
    return bool(windows(clients))


def sweep(clients: list[DriverClient], timeout: float) -> list[Leak]:
    """Scan twice and read the report once for the capacity checks of these scenarios (run on one
    guest); each leak fails its check step. [] without a check, or without kmemleak."""
    spans = windows(clients)
    if not spans:
        return []
    last = max(end for _, end, _, _ in spans)
    result = spans[-1][3][-1].result  # the command is recorded with the last check
    out = spans[-1][2].run(result, kmemleak_sweep_command(last + KMEMLEAK_MIN_AGE), timeout=timeout)
    now = parse_uptime(out.stdout)
    if now is None:
        return []  # no kmemleak in this kernel (or it is off)
    lines = out.stdout.splitlines()
    report = "\n".join(line[len(KMEMLEAK_MARKER) :] for line in lines if line.startswith(KMEMLEAK_MARKER))
    leaks = attribute(report, now, clients)
    for leak in leaks:
        leak.client.extra_events.append(leak.event)
        leak.result.fail(f"kernel kmemleak: {leak.event.title}")
    return leaks
