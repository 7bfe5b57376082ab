"""Live progress of a run: what runs now, with counts and the console's last lines.

On a terminal (stderr is a tty): a rich Live panel under the stage lines, refreshed a few
times a second: target, scenario i/n, step j/m and its name, elapsed time, and the last
console lines. Without a terminal (CI logs): plain lines, one per scenario start and one per
finished step, so a log shows where a long run is and stays readable after the fact.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from harness.run.observe import RunObserver

if TYPE_CHECKING:
    from harness.guest.machine import Guest
    from harness.scenario.model import Scenario, StepResult
    from harness.scenario.runner import ScenarioResult

TAIL_LINES = 4
# The serial protocol's framing (guestinit.py): '@@ID B/X ...' lines are bookkeeping, '@IDo|' prefixes output.
_FRAME = re.compile(r"^@@\S+( |$)")
_PREFIX = re.compile(r"^@\d+[oe]\|")


def readable_tail(text: str, n: int = TAIL_LINES) -> list[str]:
    """The console's last lines as a person would read them: output and kernel lines, no protocol framing."""
    lines = [_PREFIX.sub("", line.replace("\\x5b", "[")) for line in text.splitlines() if not _FRAME.match(line)]
    return [line for line in lines if line.strip()][-n:]


COLOURS = {"pass": "green", "fail": "red", "error": "magenta"}


class Progress(RunObserver):
    """The stage callback, the log callback and the step observer of one run, for one console."""

    def __init__(self, console: Any, target: str, *, live: bool | None = None) -> None:
        self.console = console
        self.target = target
        self.live_mode = console.is_terminal if live is None else live
        self.guest: Guest | None = None
        self.stage = ""
        self.scenario = ""
        self.scenario_at = (0, 0)
        self.step_at = (0, 0)
        self.step_name = ""
        self.started = time.monotonic()
        self.step_clock = time.monotonic()
        self.passed = self.failed = 0
        self._live: Any = None

    # --- the run's callbacks ---------------------------------------------------

    def on_stage(self, name: str, event: str, seconds: float) -> None:
        self.stage = name if event == "start" else ""
        if event == "start":
            if self.live_mode and self._live is None:
                self.console.print(f"[dim]… {name}[/dim]")
            return
        mark = "[green]✓[/green]" if event == "done" else "[red]✗[/red]"
        self.console.print(f"{mark} {name:<15} {seconds:7.2f} s")

    def log(self, message: str) -> None:
        self.console.print(f"  [dim]{message}[/dim]", markup=True, highlight=False)

    def __enter__(self) -> Progress:
        if self.live_mode:
            from rich.live import Live

            self._live = Live(self, console=self.console, refresh_per_second=6, transient=True)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # --- RunObserver -----------------------------------------------------------

    def guest_started(self, guest: Guest) -> None:
        self.guest = guest

    def guest_stopped(self) -> None:
        self.guest = None

    def scenario_started(self, scenario: Scenario, index: int, total: int) -> None:
        self.scenario, self.scenario_at = scenario.name, (index, total)
        self.step_at, self.step_name = (0, len(scenario.steps)), ""
        if not self.live_mode:
            self.console.print(f"  scenario {index}/{total} {scenario.name} ({len(scenario.steps)} steps)")

    def step_started(self, scenario: Scenario, index: int, name: str) -> None:
        self.step_at, self.step_name = (index, len(scenario.steps)), name
        self.step_clock = time.monotonic()

    def step_done(self, scenario: Scenario, result: StepResult) -> None:
        if result.status == "pass":
            self.passed += 1
        else:
            self.failed += 1
        if not self.live_mode:
            total = len(scenario.steps)
            self.console.print(
                f"    {scenario.name} {result.index}/{total} {result.status:<4} {result.duration:7.3f} s"
                f"  {result.name}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    def scenario_done(self, outcome: ScenarioResult) -> None:
        verdict = "fail" if outcome.failed else "pass"
        if not self.live_mode:
            self.console.print(f"  scenario {outcome.name}: {verdict} ({outcome.duration:.2f} s)")

    # --- the live panel (rich calls this on every refresh) -----------------------

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        now = time.monotonic()
        head = Text.assemble(("▶ ", "bold cyan"), (self.target, "bold"))
        if self.scenario:
            i, n = self.scenario_at
            head.append(f"  scenario {i}/{n} ")
            head.append(self.scenario, style="bold")
            j, m = self.step_at
            head.append(f"  step {j}/{m} ")
            head.append(self.step_name[:60], style="cyan")
            head.append(f"  {now - self.step_clock:5.1f} s")
        elif self.stage:
            head.append(f"  {self.stage} …")
        counts = Text(f"  steps: {self.passed} passed", style="green")
        if self.failed:
            counts.append(f", {self.failed} failed", style="red")
        counts.append(f"   elapsed {now - self.started:6.1f} s", style="dim")
        parts: list[Any] = [head, counts]
        if self.guest is not None:
            for line in readable_tail(self.guest.tail(3 * TAIL_LINES)):
                parts.append(Text("  │ " + line[:150], style="dim"))
        return Group(*parts)
