"""The driver client: guest commands for one scenario, cma_test processes, and the model of live blocks.

Every cma_test record it reads is absorbed the same way, whichever step kind sent it: a
successful allocation (single, batched in a repeat, inside a fragment) is placed against the
CMA reservation and the live blocks, and waits for its dump_mem record at the end of the step.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.errors import GuestSetupError
from harness.guest.kernel_log import KernelLog
from harness.guest.shell import MODULE, UPTIME_MARKER, wait_gone
from harness.guest.transport.base import CommandResult, Transport
from harness.oracles.checks import Extent, dump_mem_problems, overlap_problems, placement_problems
from harness.oracles.cmatest import CmaRecord, parse_records
from harness.oracles.dmesg import CmaReservation, DumpMemRecord
from harness.oracles.symbolize import Symbol, parse_section_bases, symbolize
from harness.scenario.model import Block, CommandRecord, StepResult, StepStatus

if TYPE_CHECKING:
    # Imported when a kmemleak report is read: loading scenarios (before boot) need not pay
    # for compiling the fault title rules.
    from harness.oracles.faults import KernelEvent


# A batch of this many cma_test operations has its records (~90 bytes each) gzip-compressed on
# the way out (Transport.run's bulky): a stress repeat's 300 records a command are 27 KB framed
# and ~3 KB compressed, and every byte the UART does not carry is guest time under TCG, and
# host CPU that a second guest of -j 2 would otherwise lose. Two more guest processes a command
# (gzip, base64) cost less than ~4 KB of console from 40 records up, even on the debug kernel.
BULKY_OPS = 40


# The guest's CMA reservation, or where to get it the first time a check needs it: a booted
# guest asks for its kernel log's boot facts only then (one command; Guest.read_facts).
ReservationSource = Callable[[], "CmaReservation | None"]


@dataclass
class RunState:
    reservation_source: ReservationSource
    blocks: dict[tuple[str, str], Block] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)  # name -> pid
    capacity_baseline: int | None = None
    capacity_check: int | None = None
    cma_used_baseline: int | None = None  # CMA debugfs pages in use, where the kernel has it
    heap_baseline: int | None = None  # the same measure through the kernel's CMA heap (the witness)
    heap_check: int | None = None
    allocated: list[Block] = field(default_factory=list)  # every allocation, freed or not (for the report)
    resolved: bool = False
    known_reservation: CmaReservation | None = None

    @property
    def reservation(self) -> CmaReservation | None:
        """Asked of the source once, when first needed: a scenario that never touches the driver
        never costs the guest a command for it."""
        if not self.resolved:
            self.known_reservation, self.resolved = self.reservation_source(), True
        return self.known_reservation


@dataclass
class LeakCheck:
    """A capacity step and the guest's uptime when it probed: the kmemleak sweep's window marks."""

    at: float
    result: StepResult
    check: bool  # mode check (a baseline only opens the window)


def parse_uptime(stdout: str) -> float | None:
    """The guest uptime a command printed after UPTIME_MARKER (guest/shell.py), if any."""
    for line in stdout.splitlines():
        if line.startswith(UPTIME_MARKER):
            try:
                return float(line[len(UPTIME_MARKER) :].split()[0])
            except (ValueError, IndexError):
                return None
    return None


def extent(block: Block) -> Extent:
    return Extent(block.name, block.phys, block.length)


class DriverClient:
    """What step kinds act through: the transport, the cma_test processes and the block model."""

    def __init__(
        self,
        transport: Transport,
        kernel_log: KernelLog,
        reservation: CmaReservation | ReservationSource | None,
        *,
        barrier: Callable[[str], None] = lambda s: None,
        command_timeout: float = 60.0,
        module_symbols: list[Symbol] | None = None,
        userland_bits: int = 64,
        kernel_bits: int = 64,
    ) -> None:
        self.transport = transport
        # Word sizes of cma_test and of the kernel, for the driver model (fuzz)
        self.userland_bits, self.kernel_bits = userland_bits, kernel_bits
        self.kernel_log = kernel_log
        self.state = RunState(reservation if callable(reservation) else lambda: reservation)
        self.barrier = barrier  # waits until the kernel log has caught up
        self.command_timeout = command_timeout
        self.module_symbols = module_symbols or []
        self.module_loads: list[dict[str, int]] = []  # section bases of each insmod, for symbolize()
        self.extra_events: list[KernelEvent] = []  # found outside the console (kmemleak scans)
        self.leak_checks: list[LeakCheck] = []  # capacity steps, for the kmemleak sweep
        self.new_blocks: list[Block] = []  # allocations of the running step, for the dmesg check
        self.step_index = 0

    @property
    def cma_bytes(self) -> int:
        """The size of the CMA area the guest reserved (0 when the boot log did not say)."""
        reservation = self.state.reservation
        return reservation.size_mib << 20 if reservation else 0

    def run(
        self, result: StepResult, command: str, timeout: float | None = None, *, bulky: bool = False
    ) -> CommandResult:
        """One guest command, recorded in the step's result (bulky: a big output, see Transport.run)."""
        out = self.transport.run(command, timeout=timeout or self.command_timeout, bulky=bulky)
        result.commands.append(
            CommandRecord(
                command=command if len(command) < 300 else command[:300] + "…",
                status=out.status,
                stdout=out.stdout[-4000:],
                stderr=out.stderr[-2000:],
                duration=round(out.duration, 4),
            )
        )
        return out

    # --- cma_test processes -------------------------------------------------

    def ensure_process(self, result: StepResult, process: str) -> bool:
        if process in self.state.processes:
            return True
        out = self.run(result, f"cma_test serve {shlex.quote(process)}")
        records = parse_records(out.stdout)
        pid = records[0].int("pid") if records else None
        if out.status != 0 or pid is None:
            # The server touches no driver code before it answers (it opens the device on its
            # first step), so failing to start is the guest environment's doing.
            why = f"{out.stdout.strip()} {out.stderr.strip()}".strip()
            result.status = StepStatus.ERROR
            result.problems.append(f"cannot start process '{process}': {why}")
            raise GuestSetupError(
                f"the guest-side helper `cma_test serve {process}` could not start: {why}",
                hint="the guest kernel may lack what cma_test needs to run its processes (see the README's "
                "guest kernel requirements)",
            )
        self.state.processes[process] = pid
        return True

    def cma(
        self,
        result: StepResult,
        process: str,
        words: str,
        kinds: dict[str, str] | None = None,
        *,
        ops: int = 1,
    ) -> list[CmaRecord]:
        """Run cma_test steps inside a process; absorb every record into the model. `ops`: how many
        operations the words hold; a batch of many has its records sent compressed."""
        if not self.ensure_process(result, process):
            return []
        out = self.run(result, f"cma_test ctl {shlex.quote(process)} {words}", bulky=ops >= BULKY_OPS)
        records = parse_records(out.stdout)
        if not records:
            result.fail(f"cma_test printed no record (exit {out.status}): {out.stderr.strip() or out.stdout.strip()}")
        for record in records:
            self.absorb(result, process, record, kinds or {})
        return records

    def absorb(self, result: StepResult, process: str, record: CmaRecord, kinds: dict[str, str]) -> None:
        if not record.ok:
            result.fail(f"cma_test: {record.describe()}")
            return
        if record.get("errno", "0") != "0" or record.get("proc") == "child":
            return  # an expected failure changes nothing
        if record.get("backend") == "heap":
            return  # a dma-buf from the kernel's CMA heap: no driver block, no dump_mem record
        name = record.get("name")
        if record.op == "alloc":
            block = Block(
                name=name,
                process=process,
                id=record.int("id") or 0,
                phys=record.int("phys") or 0,
                length=record.int("len") or 0,
                user=record.int("user") or 0,
                kind=kinds.get(name, "?"),
            )
            live = [extent(b) for b in self.state.blocks.values()]
            result.fail_all(placement_problems(extent(block), self.state.reservation, live))
            self.state.blocks[(process, name)] = block
            block.step = self.step_index
            self.state.allocated.append(block)
            self.new_blocks.append(block)
        elif record.op == "free":
            freed = self.state.blocks.pop((process, name), None)
            if freed is not None:
                freed.freed_at = self.step_index

    def forget_process(self, process: str) -> None:
        self.state.processes.pop(process, None)
        for key in [k for k in self.state.blocks if k[0] == process]:
            del self.state.blocks[key]

    def wait_gone(self, result: StepResult, pid: int, how: str) -> None:
        out = self.run(result, f"{how}; {wait_gone(str(pid))}")
        if out.status != 0:
            result.fail(f"'{how}' failed ({out.status}): {out.stderr.strip()}")

    # --- the module -----------------------------------------------------------

    def note_module_load(self, stdout: str) -> None:
        bases = parse_section_bases(stdout)
        if bases:
            self.module_loads.append(bases)

    def check_kmemleak(self, result: StepResult, report: str) -> None:
        from harness.oracles.faults import kmemleak_events

        text = symbolize(report, self.module_loads, self.module_symbols, MODULE)
        for event in kmemleak_events(text, step=result.name):
            self.extra_events.append(event)
            result.fail(f"kernel kmemleak: {event.title}")

    # --- invariants after a step ---------------------------------------------

    def check_blocks(self, result: StepResult, dump_mem: list[DumpMemRecord]) -> None:
        """No live blocks overlap; each allocation of this step has a dump_mem record that agrees with the ioctl."""
        result.fail_all(overlap_problems(extent(b) for b in self.state.blocks.values()))
        new, self.new_blocks = self.new_blocks, []
        pending = list(dump_mem)
        for block in new:
            match = next((r for r in pending if r.name == block.name and r.id in (None, block.id)), None)
            if match is None:
                result.fail(f"{block.name}: no dump_mem record in the kernel log for this allocation")
                continue
            pending.remove(match)
            block.dmesg = match
            result.fail_all(
                dump_mem_problems(
                    block.name,
                    match,
                    phys=block.phys,
                    user=block.user,
                    id=block.id,
                    length=block.length,
                    kind=block.kind,
                )
            )
