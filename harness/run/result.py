"""The run result: the only thing written to and read from result.json (schema: docs/result.schema.json).

A dataclass tree with `to_json()` / `from_json()`. Field names and JSON keys are those
result.json always had; `schema_version` is new (a file without it is version 1). Enums are
StrEnums, so the JSON holds the same plain strings as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.errors import EXIT_FAIL, EXIT_INFRA, EXIT_PASS, Cancelled, ConfigError, GuestDied, HarnessError
from harness.scenario.model import StepResult

SCHEMA_VERSION = 1


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"  # infrastructure: the harness could not reach a verdict on the driver


class TransportKind(StrEnum):
    SERIAL = "serial"
    SSH = "ssh"


def error_verdict(exc: HarnessError, kernel_reported: bool) -> tuple[Verdict, int]:
    """The verdict and exit status of a run that ended in `exc`.

    Only the driver's behaviour and the kernel's reports about it make exit 1: a run the
    environment ended (a dead emulator, a missing tool, a guest helper that cannot start) is
    an error (3), a bad configuration 2, a cancelled run 130/143. One exception: when the
    kernel had already reported a fault (panic, oops, warning, leak), the machinery failing
    after it does not hide it; that run fails (1).
    """
    if isinstance(exc, Cancelled | ConfigError | GuestDied) or not kernel_reported:
        return Verdict.ERROR, exc.exit_code
    return Verdict.FAIL, EXIT_FAIL


def aborted_by_environment(qemu_alive: bool, kernel_reported: bool) -> bool:
    """A guest that stopped answering during a step: the environment's failure when QEMU is
    gone and the kernel said nothing (killed from outside); the driver's when the kernel
    reported (a panic ends QEMU: panic=-1 with -no-reboot) or the guest hung with QEMU alive."""
    return not qemu_alive and not kernel_reported


class ResultError(Exception):
    """A run directory or result.json that cannot be read as a run result."""


@dataclass
class ScenarioSummary:
    name: str
    path: str
    verdict: Verdict
    steps: int
    duration: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "verdict": str(self.verdict),
            "steps": self.steps,
            "duration": self.duration,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScenarioSummary:
        return cls(data["name"], data.get("path", ""), Verdict(data["verdict"]), data["steps"], data["duration"])


STOPPED_EARLY = "the run stopped early"


@dataclass
class RunResult:
    """What result.json holds. Blocks, allocations and kernel events stay plain JSON objects
    (their shapes are in docs/result.schema.json); scenarios and steps are typed."""

    verdict: Verdict = Verdict.ERROR
    target: str = ""
    scenario: str = ""
    kmod: str = ""
    transport: TransportKind = TransportKind.SERIAL
    kernel: dict[str, Any] = field(default_factory=dict)
    cma: dict[str, Any] = field(default_factory=dict)
    scenarios: list[ScenarioSummary] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)  # live at the end of each scenario
    allocations: list[dict[str, Any]] = field(default_factory=list)  # every successful allocation
    kernel_events: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""
    started: str = ""
    problems: list[str] = field(default_factory=list)
    console_tail: str = ""  # set when the guest died or hung
    extra_events: list[dict[str, Any]] = field(default_factory=list)  # kernel events not from the console
    # Verdict error only: the exit status the error calls for (2 configuration, 3 infrastructure,
    # 130/143 cancelled by SIGINT/SIGTERM) and, for a cancelled run, the signal's name.
    error_exit: int = EXIT_INFRA
    interrupted_by: str = ""
    schema_version: int = SCHEMA_VERSION
    # Optional (absent in older files): the effective configuration after command-line overrides
    # (qemu argv, kernel command line, CMA, memory, smp, timeouts, files put into the guest) and
    # the provenance (sha256 of what was booted and loaded, versions, commit, host).
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    # Optional: scenarios not run because an earlier one failed and the run stopped (-x), or
    # because -j stopped every job after one ended in an infrastructure error (a problem then
    # starts with STOPPED_EARLY and says which job).
    not_run: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": str(self.verdict),
            "target": self.target,
            "scenario": self.scenario,
            "kmod": self.kmod,
            "transport": str(self.transport),
            "kernel": self.kernel,
            "cma": self.cma,
            "scenarios": [s.to_json() for s in self.scenarios],
            "steps": [s.to_json() for s in self.steps],
            "blocks": self.blocks,
            "allocations": self.allocations,
            "kernel_events": self.kernel_events,
            "timings": self.timings,
            "error": self.error,
            "started": self.started,
            "problems": self.problems,
            "console_tail": self.console_tail,
            "extra_events": self.extra_events,
            "error_exit": self.error_exit,
            "interrupted_by": self.interrupted_by,
            "schema_version": self.schema_version,
            "config": self.config,
            "provenance": self.provenance,
            "not_run": self.not_run,
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "result.json") -> RunResult:
        if not isinstance(data, dict) or "verdict" not in data:
            raise ResultError(f"{source}: not a cma-harness result.json (no 'verdict')")
        version = data.get("schema_version", 1)  # files from before the version field are version 1
        if version != SCHEMA_VERSION:
            raise ResultError(f"{source}: result schema version {version}; this harness reads {SCHEMA_VERSION}")
        try:
            return cls(
                verdict=Verdict(data["verdict"]),
                target=data.get("target", ""),
                scenario=data.get("scenario", ""),
                kmod=data.get("kmod", ""),
                transport=TransportKind(data.get("transport", "serial")),
                kernel=dict(data.get("kernel", {})),
                cma=dict(data.get("cma", {})),
                scenarios=[ScenarioSummary.from_json(s) for s in data.get("scenarios", [])],
                steps=[StepResult.from_json(s) for s in data.get("steps", [])],
                blocks=list(data.get("blocks", [])),
                allocations=list(data.get("allocations", [])),
                kernel_events=list(data.get("kernel_events", [])),
                timings=dict(data.get("timings", {})),
                error=data.get("error", ""),
                started=data.get("started", ""),
                problems=list(data.get("problems", [])),
                console_tail=data.get("console_tail", ""),
                extra_events=list(data.get("extra_events", [])),
                error_exit=int(data.get("error_exit", EXIT_INFRA)),
                interrupted_by=data.get("interrupted_by", ""),
                config=dict(data.get("config", {})),
                provenance=dict(data.get("provenance", {})),
                not_run=list(data.get("not_run", [])),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ResultError(f"{source}: not a valid run result ({exc!r})") from None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> RunResult:
        path = run_dir / "result.json" if run_dir.is_dir() else run_dir
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ResultError(f"{path}: cannot read a run result ({exc})") from exc
        return cls.from_json(data, str(path))

    @property
    def exit_code(self) -> int:
        if self.verdict == Verdict.PASS:
            return EXIT_PASS
        if self.verdict == Verdict.FAIL:
            return EXIT_FAIL
        return self.error_exit
