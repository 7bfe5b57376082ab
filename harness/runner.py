"""Runs a scenario against a booted guest through any transport and checks invariants after every step.

After each step:
- the step's own expectation (status, errno, pattern) held;
- no kernel fault appeared on the console while it ran;
- every live block lies inside the CMA reservation, and no two overlap;
- each allocation's dump_mem record agrees with what the ioctl returned.
"""

from __future__ import annotations

import itertools
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.errors import GuestError
from harness.parsers.cmatest import CmaRecord, parse_records
from harness.parsers.dmesg import CmaReservation, DumpMemRecord, parse_dump_mem
from harness.parsers.faults import KernelEvent
from harness.scenario import Scenario, Step
from harness.transport.base import CommandResult, Transport

MODULE_PATH = "/lib/modules/cma_mem.ko"
PATTERN_PARAM = "/sys/module/cma_mem/parameters/test_pattern"
# delete_module() refuses a module with users: EWOULDBLOCK under busybox rmmod (O_NONBLOCK), EBUSY otherwise.
MODULE_IN_USE = ("Resource temporarily unavailable", "Device or resource busy", "is in use")
# The capacity probe allocates in this granule; baseline and check must agree within one granule.
CAPACITY_GRANULE = 1 << 20


@dataclass
class Block:
    name: str
    process: str
    id: int
    phys: int
    length: int
    user: int
    kind: str
    dmesg: DumpMemRecord | None = None

    def as_dict(self) -> dict[str, Any]:
        d = self.dmesg
        return {
            "name": self.name,
            "process": self.process,
            "type": self.kind,
            "ioctl": {"id": self.id, "phys": hex(self.phys), "len": self.length, "user": hex(self.user)},
            "dmesg": None
            if d is None
            else {"id": d.id, "phys": _hex(d.phys), "len": d.size, "user": _hex(d.user), "usebuf": d.usebuf},
        }


def _hex(value: int | None) -> str | None:
    return None if value is None else hex(value)


@dataclass
class StepResult:
    index: int
    name: str
    status: str = "pass"  # pass | fail | error
    duration: float = 0.0
    problems: list[str] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.status = "fail"
        self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "status": self.status,
            "duration": round(self.duration, 4),
            "problems": self.problems,
            "commands": self.commands,
        }


class KernelLog:
    """Kernel lines from the console, each tagged with the step that was running."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []  # (step, line)

    def since(self, mark: int) -> list[str]:
        return [line for _, line in self.lines[mark:]]

    @property
    def mark(self) -> int:
        return len(self.lines)


@dataclass
class RunState:
    reservation: CmaReservation | None
    blocks: dict[tuple[str, str], Block] = field(default_factory=dict)
    processes: set[str] = field(default_factory=set)
    capacity_baseline: int | None = None
    capacity_check: int | None = None


class ScenarioRunner:
    def __init__(
        self,
        transport: Transport,
        kernel_log: KernelLog,
        events: Callable[[], list[KernelEvent]],
        reservation: CmaReservation | None,
        *,
        set_step: Callable[[str], None] = lambda s: None,
        barrier: Callable[[str], None] = lambda s: None,
        command_timeout: float = 60.0,
    ) -> None:
        self.transport = transport
        self.kernel_log = kernel_log
        self.events = events  # all kernel events so far (live detector)
        self.state = RunState(reservation)
        self.set_step = set_step
        self.barrier = barrier  # waits until the kernel log has caught up with a marker
        self.command_timeout = command_timeout
        self.results: list[StepResult] = []
        self.aborted: GuestError | None = None  # set when the guest stopped answering

    # --- plumbing -------------------------------------------------------

    def _run(self, result: StepResult, command: str, timeout: float | None = None) -> CommandResult:
        out = self.transport.run(command, timeout=timeout or self.command_timeout)
        result.commands.append(
            {
                "command": command,
                "status": out.status,
                "stdout": out.stdout[-4000:],
                "stderr": out.stderr[-2000:],
                "duration": round(out.duration, 4),
            }
        )
        return out

    def _cma(self, result: StepResult, process: str, steps: str) -> list[CmaRecord]:
        if process not in self.state.processes:
            out = self._run(result, f"cma_test serve {shlex.quote(process)}")
            if out.status != 0:
                result.fail(f"cannot start process '{process}': {out.stdout.strip()} {out.stderr.strip()}")
                return []
            self.state.processes.add(process)
        out = self._run(result, f"cma_test ctl {shlex.quote(process)} {steps}")
        records = parse_records(out.stdout)
        if not records:
            result.fail(f"cma_test printed no record (exit {out.status}): {out.stderr.strip() or out.stdout.strip()}")
        for record in records:
            if not record.ok:
                result.fail(f"cma_test: {record.describe()}")
        return records

    # --- steps ----------------------------------------------------------

    def step_insmod(self, step: Step, result: StepResult) -> None:
        out = self._run(result, f"insmod {MODULE_PATH} {step.args['params']}".strip())
        if out.status != 0:
            result.fail(f"insmod failed ({out.status}): {out.stderr.strip()}")

    def step_rmmod(self, step: Step, result: StepResult) -> None:
        out = self._run(result, "rmmod cma_mem")
        if step.args["expect"] == "ok" and out.status != 0:
            result.fail(f"rmmod failed ({out.status}): {out.stderr.strip()}")
        elif step.args["expect"] == "busy":
            if out.status == 0:
                result.fail("rmmod succeeded while blocks were mapped (expected it to be refused)")
            elif not any(reason in out.stderr for reason in MODULE_IN_USE):
                result.fail(f"rmmod refused for another reason than 'in use': {out.stderr.strip()}")

    def step_alloc(self, step: Step, result: StepResult) -> None:
        a = step.args
        records = self._cma(result, a["process"], f"alloc {a['name']} {a['size']} {a['type']}")
        for record in records:
            if record.op == "alloc" and record.ok:
                self.state.blocks[(a["process"], a["name"])] = Block(
                    name=a["name"],
                    process=a["process"],
                    id=record.int("id") or 0,
                    phys=record.int("phys") or 0,
                    length=record.int("len") or 0,
                    user=record.int("user") or 0,
                    kind=a["type"],
                )
                if (record.int("len") or 0) < a["size"]:
                    result.fail(f"{a['name']}: driver returned len {record.get('len')} < requested {a['size']}")

    def _by_process(self, names: list[str]) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for name in names:
            grouped.setdefault(self._owner(name), []).append(name)
        return grouped

    def step_free(self, step: Step, result: StepResult) -> None:
        # One guest command per process, however many blocks: one round trip each.
        for process, names in self._by_process(step.args["names"]).items():
            records = self._cma(result, process, " ".join(f"free {n}" for n in names))
            for name, record in zip(names, records, strict=False):
                if record.ok:
                    self.state.blocks.pop((process, name), None)

    def step_verify(self, step: Step, result: StepResult) -> None:
        for process, names in self._by_process(step.args["names"]).items():
            self._cma(result, process, " ".join(f"verify {n}" for n in names))

    def step_write(self, step: Step, result: StepResult) -> None:
        self._cma(result, step.args["process"], f"write {step.args['name']} {step.args['seed']}")

    def step_check(self, step: Step, result: StepResult) -> None:
        self._cma(result, step.args["process"], f"check {step.args['name']} {step.args['seed']}")

    def step_exit(self, step: Step, result: StepResult) -> None:
        process = step.args["process"]
        self._cma(result, process, "exit")
        self.state.processes.discard(process)
        # The driver frees a file's blocks when it is closed; the process is gone, so are they.
        for key in [k for k in self.state.blocks if k[0] == process]:
            del self.state.blocks[key]

    def step_shell(self, step: Step, result: StepResult) -> None:
        out = self._run(result, step.args["run"], step.args["timeout"])
        if out.status != step.args["expect_status"]:
            result.fail(f"'{step.args['run']}' exited {out.status}, expected {step.args['expect_status']}")

    def step_capacity(self, step: Step, result: StepResult) -> None:
        """The largest total the driver can allocate: an allocator-level leak check.

        CmaFree in /proc/meminfo cannot be used (freed pages linger on per-CPU
        lists); allocating until ENOMEM measures what really came back. In
        'check' mode the module is loaded just for the probe.
        """
        mode = step.args["mode"]
        loaded_here = mode == "check"
        if loaded_here and self._run(result, f"insmod {MODULE_PATH} test_pattern=0").status != 0:
            result.fail("capacity check: insmod failed")
            return
        probe = self._run(
            result,
            f"echo 0 > {PATTERN_PARAM}; cma_test exhaust {CAPACITY_GRANULE}; rc=$?; echo 1 > {PATTERN_PARAM}; exit $rc",
        )
        if loaded_here:
            self._run(result, "rmmod cma_mem")
        records = [r for r in parse_records(probe.stdout) if r.op == "exhaust"]
        total = records[0].int("total") if records else None
        if total is None:
            result.fail(f"capacity probe printed no total: {probe.stdout.strip()} {probe.stderr.strip()}")
            return
        if mode == "baseline":
            self.state.capacity_baseline = total
            return
        self.state.capacity_check = total
        base = self.state.capacity_baseline
        if base is None:
            result.fail("capacity check without a baseline step before it")
        elif base - total >= CAPACITY_GRANULE:
            result.fail(
                f"CMA capacity leak: {base - total} bytes fewer allocatable than before the scenario "
                f"(baseline {base}, now {total}): blocks were not freed"
            )

    # --- invariants -----------------------------------------------------

    def _owner(self, name: str) -> str:
        owners = [p for (p, n) in self.state.blocks if n == name]
        return owners[0] if owners else "main"

    def check_invariants(self, result: StepResult, log_mark: int, events_before: int) -> None:
        for event in self.events()[events_before:]:
            result.fail(f"kernel {event.kind}: {event.title}")
        reservation = self.state.reservation
        blocks = sorted(self.state.blocks.values(), key=lambda b: b.phys)
        for block in blocks:
            if reservation and not reservation.contains(block.phys, block.length):
                result.fail(
                    f"{block.name}: phys {block.phys:#x}+{block.length:#x} is outside the CMA reservation "
                    f"{reservation.base:#x}..{reservation.end:#x}"
                )
        for a, b in itertools.pairwise(blocks):
            if a.phys + a.length > b.phys:
                result.fail(f"blocks {a.name} and {b.name} overlap ({a.phys:#x}+{a.length:#x} > {b.phys:#x})")
        self._check_dump_mem(result, parse_dump_mem(self.kernel_log.since(log_mark)))

    def _check_dump_mem(self, result: StepResult, records: list[DumpMemRecord]) -> None:
        if result.name.split()[0] != "alloc":
            return
        new = [b for b in self.state.blocks.values() if b.dmesg is None]
        if new and not records:
            result.fail("no dump_mem record in the kernel log for this allocation")
            return
        for block in new:
            match = next((r for r in records if r.name == block.name), None)
            if match is None:
                result.fail(f"{block.name}: no dump_mem record names this block")
                continue
            block.dmesg = match
            for label, logged, returned in (
                ("physical address", match.phys, block.phys),
                ("user address", match.user, block.user),
                ("id", match.id, block.id),
                ("size", match.size, block.length),
            ):
                if logged is not None and logged != returned:
                    result.fail(
                        f"{block.name}: {label} in dmesg ({_show(logged)}) differs from the ioctl's ({_show(returned)})"
                    )

    # --- driver ---------------------------------------------------------

    def run(self, scenario: Scenario) -> list[StepResult]:
        for index, step in enumerate(scenario.steps, start=1):
            result = StepResult(index=index, name=step.describe())
            self.results.append(result)
            self.set_step(f"{index}: {result.name}")
            log_mark, events_before = self.kernel_log.mark, len(self.events())
            started = time.monotonic()
            try:
                getattr(self, f"step_{step.kind}")(step, result)
                self.barrier(f"step {index} done")
            except GuestError as exc:
                # The guest hung, died or panicked during this step: nothing after it can run.
                result.duration = time.monotonic() - started
                result.fail(f"guest stopped answering: {exc.message}")
                self.check_invariants(result, log_mark, events_before)
                self.aborted = exc
                break
            result.duration = time.monotonic() - started
            self.check_invariants(result, log_mark, events_before)
        return self.results


def _show(value: int) -> str:
    return hex(value) if value > 4096 else str(value)
