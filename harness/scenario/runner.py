"""Runs a scenario against a booted guest through any transport, checking invariants after every step.

The loop is kind-agnostic: each step is dispatched to its kind in the registry (steps.py), which
acts through the DriverClient (client.py). After every step, whatever its kind:
- no kernel fault appeared on the console meanwhile;
- no live blocks overlap, and every allocation the step made has a dump_mem record in the
  kernel log that agrees with what the ioctl returned (harness/oracles/checks.py).
After the scenario the driver logged nothing at warning level or worse.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.errors import Cancelled, ConfigError, GuestError
from harness.guest.kernel_log import KernelLog
from harness.guest.shell import DRIVER_WARNINGS_COMMAND
from harness.guest.transport.base import Transport
from harness.oracles.checks import driver_log_problems
from harness.oracles.cmatest import CmaRecord
from harness.oracles.dmesg import ANNOUNCED_AREA, CmaReservation, announced_area_problems, parse_dump_mem
from harness.oracles.faults import KernelEvent
from harness.oracles.symbolize import Symbol, module_functions
from harness.scenario.client import DriverClient, ReservationSource, RunState
from harness.scenario.model import Block, Scenario, StepResult, StepStatus
from harness.scenario.steps import execute

if TYPE_CHECKING:
    from harness.guest.machine import Guest


@dataclass
class ScenarioResult:
    """What one scenario produced: its steps, the blocks it made, the kernel events it caused."""

    name: str
    path: str
    steps: list[StepResult] = field(default_factory=list)
    live_blocks: list[Block] = field(default_factory=list)  # still allocated when it ended
    allocations: list[Block] = field(default_factory=list)  # every successful allocation
    events: list[KernelEvent] = field(default_factory=list)  # console events during it, then extra_events
    extra_events: list[KernelEvent] = field(default_factory=list)  # found outside the console (kmemleak)
    aborted: GuestError | None = None  # the guest stopped answering
    duration: float = 0.0

    @property
    def failed(self) -> bool:
        return any(s.status != StepStatus.PASS for s in self.steps) or bool(self.events) or self.aborted is not None


class ScenarioRunner:
    def __init__(
        self,
        transport: Transport,
        kernel_log: KernelLog,
        events: Callable[[], list[KernelEvent]],
        reservation: CmaReservation | ReservationSource | None,
        *,
        set_step: Callable[[str], None] = lambda s: None,
        barrier: Callable[[str], None] = lambda s: None,
        command_timeout: float = 60.0,
        module_symbols: list[Symbol] | None = None,
        userland_bits: int = 64,
        kernel_bits: int = 64,
    ) -> None:
        self.client = DriverClient(
            transport,
            kernel_log,
            reservation,
            barrier=barrier,
            command_timeout=command_timeout,
            module_symbols=module_symbols,
            userland_bits=userland_bits,
            kernel_bits=kernel_bits,
        )
        self.kernel_log = kernel_log
        self.events = events  # all kernel events so far (live detector)
        self.set_step = set_step
        self.barrier = barrier
        self.results: list[StepResult] = []
        self.aborted: GuestError | None = None  # set when the guest stopped answering
        self.outcome: ScenarioResult | None = None  # run_scenario's, filled in even if it raised
        # False: run_scenario sweeps kmemleak for its capacity checks before it returns. True: the
        # caller sweeps once for all the scenarios a guest ran (kmemleak.sweep), and amends.
        self.defer_kmemleak = False
        # Asked when the check after the scenario runs (not before the scenario: a job sharing a
        # queue learns only then that no other scenario can come its way). True: that check reads
        # the whole kernel log (`dmesg -r`) and keeps it in `kernel_log_raw`, so a caller that
        # saves dmesg next needs no command of its own; `kernel_log_mark` is where the console's
        # kernel lines stood then, so lines printed later (a kmemleak scan's) can be added.
        self.keep_kernel_log: Callable[[], bool] = lambda: False
        self.kernel_log_raw: str | None = None
        self.kernel_log_mark = 0

    @classmethod
    def for_guest(cls, guest: Guest, label: str) -> ScenarioRunner:
        """The one way a front end or the session sets a runner up on a booted guest."""
        assert guest.transport is not None
        return cls(
            guest.transport,
            guest.kernel_log,
            guest.events,
            lambda: guest.read_facts().reservation,  # asked of the guest only if a check needs it
            set_step=lambda step: guest.set_step(f"{label} {step}"),
            barrier=guest.barrier,
            command_timeout=guest.target.timeouts.command,
            module_symbols=module_functions(guest.boot.module),
            userland_bits=guest.target.userland.bits,
            kernel_bits=guest.target.kernel.bits,
        )

    @property
    def state(self) -> RunState:
        return self.client.state

    @property
    def extra_events(self) -> list[KernelEvent]:
        return self.client.extra_events

    def cma(self, result: StepResult, process: str, words: str, kinds: dict[str, str] | None = None) -> list[CmaRecord]:
        """cma_test words inside a process (the pytest plugin's `cma` fixture drives the driver this way)."""
        return self.client.cma(result, process, words, kinds)

    def check_invariants(self, result: StepResult, log_mark: int, events_before: int) -> None:
        for event in self.events()[events_before:]:
            result.fail(f"kernel {event.kind}: {event.title}")
        lines = self.kernel_log.since(log_mark)
        self.client.check_blocks(result, parse_dump_mem(lines))
        if any(ANNOUNCED_AREA.search(line) for line in lines):  # else the reservation is not needed
            result.fail_all(announced_area_problems(lines, self.state.reservation))

    def final_checks(self, result: StepResult, since: float) -> None:
        """After the scenario: the driver logged nothing at warning level or worse."""
        # The whole kernel log is ~60 KB on the Debian kernel: compressed, it crosses the UART in
        # a fifth of the time (the driver's warnings alone are a few lines).
        keep = self.keep_kernel_log()
        if keep:
            out = self.client.run(result, "dmesg -r", bulky=True)
        else:
            out = self.client.run(result, DRIVER_WARNINGS_COMMAND)
        if keep and out.status == 0:
            self.kernel_log_raw, self.kernel_log_mark = out.stdout, self.kernel_log.mark
        result.fail_all(driver_log_problems(out.stdout, since))

    def run(self, scenario: Scenario) -> list[StepResult]:
        for index, step in enumerate(scenario.steps, start=1):
            result = StepResult(index=index, name=step.describe(), line=step.line)
            self.client.step_index = index
            self.results.append(result)
            self.set_step(f"{index}: {result.name}")
            log_mark, events_before = self.kernel_log.mark, len(self.events())
            started = time.monotonic()
            try:
                execute(self.client, step, result)
                self.barrier(f"step {index} done")
            except Cancelled as exc:
                # SIGINT/SIGTERM: the step was cut short by the person or the CI system, not judged.
                result.duration = time.monotonic() - started
                result.status = StepStatus.ERROR
                result.problems.append(f"{exc.message} while this step ran")
                raise
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

    def run_scenario(self, scenario: Scenario) -> ScenarioResult:
        """The scenario, then the checks after it: the epilogue every caller shares.

        Kernel events are those the console delivered during the scenario plus those found
        outside it (kmemleak); the result is complete even if the guest stopped answering."""
        events_before = len(self.events())
        started = time.monotonic()
        since = self.kernel_log.latest_time()
        outcome = self.outcome = ScenarioResult(name=scenario.name, path=str(scenario.path))
        if scenario.relative:
            if not self.client.cma_bytes:
                raise ConfigError(
                    f"{scenario.path}: sizes relative to the CMA area, but the boot log did not say how large it is"
                )
            scenario = scenario.resolved(self.client.cma_bytes)
        try:
            self.run(scenario)
            if self.aborted is None and self.results:
                self.final_checks(self.results[-1], since)
                if not self.defer_kmemleak:
                    from harness.scenario.kmemleak import sweep

                    sweep([self.client], self.client.command_timeout + 30)
        finally:
            outcome.steps = list(self.results)
            outcome.live_blocks = list(self.state.blocks.values())
            outcome.allocations = list(self.state.allocated)
            outcome.extra_events = list(self.extra_events)
            outcome.events = self.events()[events_before:] + outcome.extra_events
            outcome.aborted = self.aborted
            outcome.duration = time.monotonic() - started
        return outcome
