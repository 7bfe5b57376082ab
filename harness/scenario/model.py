"""What a scenario is (steps parsed from YAML) and what running one produces (step results, blocks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.config.guestfiles import FileSpec
from harness.oracles.dmesg import DumpMemRecord

MAIN = "main"
# The two allocators a step can go through: the driver under test, or the kernel's own CMA heap.
DRIVER = "driver"
HEAP = "heap"


class StepStatus(StrEnum):
    """A StrEnum: it is written to result.json as the plain string."""

    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"  # interrupted by the environment (QEMU died, the run was cancelled): no verdict


PAGE_SIZE = 4096


@dataclass(frozen=True)
class CmaShare:
    """A size written relative to the target's CMA area (`50%`, `cma`, `cma/2`, `cma*3/4`).

    Boards reserve what their device tree or defconfig gives them; a scenario about the area's
    size says so in its own terms, and is resolved against the reservation the guest reports.
    """

    num: int
    den: int
    text: str  # as written, so step names stay the same on every target

    def bytes(self, cma: int) -> int:
        return cma * self.num // self.den // PAGE_SIZE * PAGE_SIZE  # whole pages, rounded down

    def __str__(self) -> str:
        return self.text


FILL = "fill"  # fragment count: as many blocks as the area holds (measured), an even number


@dataclass(frozen=True)
class Step:
    kind: str
    args: dict[str, Any]
    line: int
    body: tuple[Step, ...] = ()  # repeat
    label: str = ""  # the name as written, kept when relative sizes are resolved to bytes

    def resolved(self, cma: int) -> Step:
        """This step with every CMA share turned into bytes for an area of `cma` bytes."""
        args = {k: v.bytes(cma) if isinstance(v, CmaShare) else v for k, v in self.args.items()}
        body = tuple(s.resolved(cma) for s in self.body)
        if args == self.args and body == self.body:
            return self
        return Step(self.kind, args, self.line, body, self.describe())

    @property
    def relative(self) -> bool:
        return any(isinstance(v, CmaShare) for v in self.args.values()) or any(s.relative for s in self.body)

    def describe(self) -> str:
        if self.label:
            return self.label
        defaults = {"process": MAIN, "expect": "0", "ptr": "ok", "steps": None}
        shown = " ".join(
            f"{k}={_short(v)}"
            for k, v in self.args.items()
            if v not in (None, "", [], {}) and (k not in defaults or defaults[k] != v) and k != "steps"
        )
        return f"{self.kind} {shown}".strip()


def _short(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    description: str
    steps: list[Step] = field(default_factory=list)
    files: tuple[FileSpec, ...] = ()  # into the guest (config/guestfiles.py)

    @property
    def relative(self) -> bool:
        """Some size is written relative to the CMA area: it needs the reservation to run."""
        return any(s.relative for s in self.steps)

    def resolved(self, cma: int) -> Scenario:
        return Scenario(self.name, self.path, self.description, [s.resolved(cma) for s in self.steps])


@dataclass
class CommandRecord:
    """One guest command of a step, as result.json keeps it (output truncated)."""

    command: str
    status: int
    stdout: str
    stderr: str
    duration: float

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "status": self.status,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "duration": self.duration,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommandRecord:
        return cls(data["command"], data["status"], data["stdout"], data["stderr"], data["duration"])


@dataclass
class StepResult:
    index: int
    name: str
    line: int = 0
    status: StepStatus = StepStatus.PASS
    duration: float = 0.0
    problems: list[str] = field(default_factory=list)
    commands: list[CommandRecord] = field(default_factory=list)
    subtests: list[dict[str, Any]] = field(default_factory=list)
    scenario: str = ""  # set once the step belongs to a run's result
    # What the step found that is not a failure: a witness's figures, or why a witness was unavailable.
    notes: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.status = StepStatus.FAIL
        if problem not in self.problems:
            self.problems.append(problem)

    def fail_all(self, problems: list[str]) -> None:
        for problem in problems:
            self.fail(problem)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "name": self.name,
            "line": self.line,
            "status": str(self.status),
            "duration": round(self.duration, 4),
            "problems": self.problems,
            "commands": [c.to_json() for c in self.commands],
            "subtests": self.subtests,
        }
        if self.scenario:
            out["scenario"] = self.scenario
        if self.notes:
            out["notes"] = self.notes
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepResult:
        return cls(
            index=data["index"],
            name=data["name"],
            line=data.get("line", 0),
            status=StepStatus(data["status"]),
            duration=data.get("duration", 0.0),
            problems=list(data.get("problems", [])),
            commands=[CommandRecord.from_json(c) for c in data.get("commands", [])],
            subtests=list(data.get("subtests", [])),
            scenario=data.get("scenario", ""),
            notes=list(data.get("notes", [])),
        )


@dataclass
class Block:
    """A live allocation as the runner models it: the ioctl's view, and the dump_mem record matched to it."""

    name: str
    process: str
    id: int
    phys: int
    length: int
    user: int
    kind: str
    dmesg: DumpMemRecord | None = None
    step: int = 0  # index of the step that allocated it
    freed_at: int | None = None  # index of the step that freed it by name (None: process exit, or live)

    def as_dict(self) -> dict[str, Any]:
        d = self.dmesg
        return {
            "name": self.name,
            "process": self.process,
            "type": self.kind,
            "step": self.step,
            "freed_at": self.freed_at,
            "ioctl": {"id": self.id, "phys": hex(self.phys), "len": self.length, "user": hex(self.user)},
            "dmesg": None
            if d is None
            else {"id": d.id, "phys": _hex(d.phys), "len": d.size, "user": _hex(d.user), "usebuf": d.usebuf},
        }


def _hex(value: int | None) -> str | None:
    return None if value is None else hex(value)
