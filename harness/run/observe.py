"""What a front end may watch while a run goes on: the guest, each scenario and each step.

The session tells an observer (RunOptions.observer) about every scenario and step; the live
progress display (harness/frontends/progress.py) is one. Observers only watch: they never
change the run, and an observer that raises is a bug in the observer, not a test failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.guest.machine import Guest
    from harness.scenario.model import Scenario, StepResult
    from harness.scenario.runner import ScenarioResult, ScenarioRunner


class RunObserver:
    """Every hook is a no-op here; subclass and override what you need."""

    def guest_started(self, guest: Guest) -> None:
        """A guest booted (its console can be tailed from here on)."""

    def guest_stopped(self) -> None:
        """The guest is gone (powered off, or stopped after a hang)."""

    def scenario_started(self, scenario: Scenario, index: int, total: int) -> None:
        """Scenario `index` (1-based) of `total` begins."""

    def step_started(self, scenario: Scenario, index: int, name: str) -> None:
        """Step `index` (1-based) of `len(scenario.steps)` begins."""

    def step_done(self, scenario: Scenario, result: StepResult) -> None:
        """A step finished (its status, duration and problems are final)."""

    def scenario_done(self, outcome: ScenarioResult) -> None:
        """A scenario finished."""


def attach(runner: ScenarioRunner, scenario: Scenario, observer: RunObserver) -> None:
    """Report the runner's steps to the observer: each step's start is the previous one's end."""
    inner = runner.set_step

    def set_step(text: str) -> None:
        if len(runner.results) >= 2:
            observer.step_done(scenario, runner.results[-2])
        index, _, name = text.partition(": ")
        observer.step_started(scenario, int(index) if index.isdigit() else len(runner.results), name)
        inner(text)

    runner.set_step = set_step


def finish(runner: ScenarioRunner, scenario: Scenario, observer: RunObserver) -> None:
    """The last step ended with the scenario."""
    if runner.results:
        observer.step_done(scenario, runner.results[-1])
    if runner.outcome is not None:
        observer.scenario_done(runner.outcome)
