"""A scenario compiled into the guest commands a LAVA job types, by the real runner on a scripting transport.

Which guest commands a step sends is decided in one place, the step-kind registry
(harness/scenario/steps.py) driven by the runner. Export runs that same runner against
`ScriptTransport`: it records every command and answers as a passing run would (a `cma_test
serve` reply with a stand-in pid, one `ok` record for `cma_test ctl`). A run's only dynamic
value a later command uses is a process's pid (`kill -9 PID`, waiting for it to be gone): the
stand-in pid becomes the guest shell variable `${__pid_NAME}`, which the job sets from the real
`cma_test serve` reply. Everything else a step sends is fixed by the scenario file.

What the guest cannot judge (the records against the block model, dump_mem agreement, capacity
comparisons, dmesg assertions, kernel faults) is judged on import (replay.py) by the same runner
over the recorded output; in the job each step gets a cheap guest-side check of its commands'
exit status (`guest_check`), which is what the farm's test case shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.config.targets import Target
from harness.errors import ConfigError
from harness.guest.heapshell import heap_probe_command
from harness.guest.kernel_log import KernelLog
from harness.guest.shell import RESET_COMMAND, RMMOD_COMMAND
from harness.guest.transport.base import CommandResult
from harness.guest.transport.serial import MAX_LINE
from harness.oracles.checks import CAPACITY_CHUNKS
from harness.scenario.model import Scenario, Step
from harness.scenario.runner import ScenarioRunner

# Stand-in pids: far above pid_max's default (4194304 is the ceiling), so never a real one.
SENTINEL_BASE = 987_650_001
SERVE = re.compile(r"^cma_test serve (\S+)$")
REPORT_COMMAND = "dmesg"  # what the local run saves as dmesg.txt after the last scenario


def pid_var(process: str) -> str:
    return "${__pid_" + process.replace("-", "_") + "}"


@dataclass
class GuestCommand:
    id: int  # the framing id (`__h ID`): the output is found in the log by it
    text: str  # as the guest runs it; a process's pid is ${__pid_NAME}
    check: str  # guest-side check of the exit status: a number, n (non-zero), a (any), t (no 'not ok' line)
    timeout: float
    saves_pid: str = ""  # `cma_test serve NAME`: the guest keeps NAME's pid for later commands

    def resolve(self, pids: dict[str, str]) -> str:
        """The command with the real pids of the processes (as the local runner would send it)."""
        text = self.text
        for process, pid in pids.items():
            text = text.replace(pid_var(process), pid)
        return text


@dataclass
class ScriptStep:
    scenario: str
    index: int
    name: str  # Step.describe(), as in result.json
    line: int
    commands: list[GuestCommand] = field(default_factory=list)

    @property
    def case(self) -> str:
        """The LAVA test case name: index and what the step does, in LAVA's safe characters."""
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-")[:60].rstrip("-")
        return f"{self.index:02d}-{slug}"


@dataclass
class ScriptScenario:
    scenario: Scenario
    steps: list[ScriptStep]
    reset: GuestCommand | None = None  # between two scenarios in one boot, as the local run does


@dataclass
class Script:
    target: Target
    scenarios: list[ScriptScenario]
    report: GuestCommand  # dmesg, after the last scenario

    @property
    def commands(self) -> list[GuestCommand]:
        out: list[GuestCommand] = []
        for s in self.scenarios:
            if s.reset is not None:
                out.append(s.reset)
            for step in s.steps:
                out += step.commands
        return [*out, self.report]


def guest_check(step: Step, command: str) -> str:
    """What the guest itself can say about one command of a step: the exit status it must have.

    cma_test checks each word's expected errno itself (exit 0 when every word is as expected);
    the rest of the step's meaning is judged on import."""
    if step.kind == "rmmod" and command == RMMOD_COMMAND:
        return "n" if step.args["expect"] == "busy" else "0"
    if step.kind == "shell" and command == step.args["run"]:
        return str(step.args["expect_status"])
    if step.kind == "ktap" and command == step.args["run"]:
        return "t"
    if step.kind == "capacity" and command == heap_probe_command(",".join(map(str, CAPACITY_CHUNKS))):
        # The heap witness exits non-zero where the kernel has no heap: a note, judged on import.
        return "a"
    if step.body:
        checks = {guest_check(inner, command) for inner in step.body}
        return checks.pop() if len(checks) == 1 else "a"
    return "0"


class ScriptTransport:
    """Records the commands the runner sends; answers each as a passing run would."""

    name = "lava-script"

    def __init__(self, default_timeout: float, first_id: int = 1) -> None:
        self.default_timeout = default_timeout
        self.next_id = first_id
        self.sentinels: dict[str, str] = {}  # stand-in pid -> process
        self.step: Step | None = None
        self.sent: list[GuestCommand] = []

    def fits(self, command: str, *, bulky: bool = False) -> bool:
        return True

    def run(self, command: str, timeout: float | None = None, *, bulky: bool = False) -> CommandResult:
        text = command
        for sentinel, process in self.sentinels.items():
            text = re.sub(rf"\b{sentinel}\b", pid_var(process), text)
        stdout, saves = "", ""
        serve = SERVE.match(command)
        if serve:
            saves = serve.group(1)
            sentinel = str(SENTINEL_BASE + len(self.sentinels))
            self.sentinels[sentinel] = saves
            stdout = f"@cma op=serve status=ok name={saves} pid={sentinel}\n"
        elif command.startswith("cma_test ctl "):
            stdout = "@cma op=lava-export status=ok\n"
        check = guest_check(self.step, command) if self.step is not None else "0"
        self.sent.append(GuestCommand(self.next_id, text, check, timeout or self.default_timeout, saves))
        self.next_id += 1
        return CommandResult(command, 0, stdout, "", 0.0, 0.0)

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        raise ConfigError("a LAVA job cannot write files into the guest (no step kind does)")


def compile_script(target: Target, scenarios: list[Scenario]) -> Script:
    """Every guest command of the scenarios, in order, grouped by step (ConfigError if one cannot be typed)."""
    transport = ScriptTransport(target.timeouts.command)
    compiled: list[ScriptScenario] = []
    for number, scenario in enumerate(scenarios):
        reset = None
        if number:
            transport.step = None
            transport.run(RESET_COMMAND, timeout=target.timeouts.command)
            reset = transport.sent.pop()
        steps = [ScriptStep(scenario.name, i, s.describe(), s.line) for i, s in enumerate(scenario.steps, start=1)]

        def enter(label: str, scenario: Scenario = scenario) -> None:
            index = int(label.split(":", 1)[0])
            transport.step = scenario.steps[index - 1]

        runner = ScenarioRunner(
            transport, KernelLog(), lambda: [], None, set_step=enter, command_timeout=target.timeouts.command
        )
        # kmemleak's sweep waits for the guest's uptime the capacity checks printed: a value the
        # export cannot know, so a farm job carries no sweep (import does the same; README).
        runner.defer_kmemleak = True
        before = len(transport.sent)
        runner.run_scenario(scenario)
        # Which step sent what: the runner's own record of each step's commands, in order.
        sent = iter(transport.sent[before:])
        for step, result in zip(steps, runner.results, strict=False):
            step.commands = [next(sent) for _ in result.commands]
            for command in step.commands:
                if len(command.text) > MAX_LINE:
                    raise ConfigError(
                        f"{scenario.path}:{step.line}: step '{step.name}': a guest command of "
                        f"{len(command.text)} bytes does not fit a console line ({MAX_LINE}); "
                        "it cannot be typed by LAVA either"
                    )
        compiled.append(ScriptScenario(scenario, steps, reset))
    transport.step = None
    transport.run(REPORT_COMMAND, timeout=target.timeouts.command)
    return Script(target, compiled, transport.sent.pop())
