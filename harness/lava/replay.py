"""A LAVA job log into an ordinary run directory, judged by the same runner and oracles as a local run.

Design: the farm run is replayed, not re-interpreted. `RecordedTransport` is a Transport whose
commands were already run: it answers each command the runner sends with the output the job
recorded for it (found in the console text by its framing id, rebuilt and checked against the
guest's md5 sums exactly as the serial transport does), and hands the console lines up to that
point to the kernel log and the fault detector, tagged with the running step. So the runner
makes the same decisions, the step kinds the same judgements (expected errno, records against
the block model, dump_mem agreement, capacity, dmesg assertions) and the detector the same
kernel events as in a local run; result.json, console.log and dmesg.txt come out the same.

A command the runner wants that the job did not type (the scenario changed since export, or a
step chose a command from output the export could not foresee), or whose output the log does not
hold (the job timed out or the guest died), stops the scenario there with the step failed and
the log's ending named, as a guest that stopped answering does locally.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

from harness.config.targets import Target, resolve_target
from harness.errors import ConfigError, GuestError
from harness.guest.guestinit import BOOT_PREFIX, READY_MARKER
from harness.guest.kernel_log import KernelLog
from harness.guest.machine import KERNEL_LINE
from harness.guest.shell import RESET_COMMAND
from harness.guest.transport.base import CommandResult
from harness.guest.transport.serial import END, foreign, rebuild
from harness.lava.job import block_name, guest_line, parse_declaration
from harness.lava.logfile import LavaLog, LogLine, parse_log
from harness.lava.script import GuestCommand, Script, compile_script
from harness.oracles.cmatest import parse_records
from harness.oracles.dmesg import parse_checkers, parse_reservation
from harness.oracles.faults import FaultDetector
from harness.run.result import RunResult, TransportKind, Verdict
from harness.run.session import add_scenario
from harness.scenario.loader import resolve_scenarios
from harness.scenario.model import StepResult, StepStatus
from harness.scenario.runner import ScenarioResult, ScenarioRunner

BEGIN = re.compile(r"^@@(\d+) B$")
TYPED = re.compile(r"^__lc (\d+) ")


@dataclass(frozen=True)
class Frame:
    """One command's framed reply in the console text."""

    id: int
    begin: int  # index of its '@@ID B' line
    end: int  # index of its '@@ID X ...' line
    status: int
    stdout: str | None  # None: the lines do not match the md5 the guest printed
    stderr: str | None
    t_begin: float
    t_end: float


def find_frames(lines: list[LogLine]) -> dict[int, Frame]:
    frames: dict[int, Frame] = {}
    open_id, begin, clean = -1, 0, True
    framed: list[str] = []
    for index, line in enumerate(lines):
        m = BEGIN.match(line.text)
        if m:
            open_id, begin, framed, clean = int(m.group(1)), index, [], True
            continue
        if open_id < 0:
            continue
        end = END.match(line.text)
        if end and int(end.group(1)) == open_id:
            frames[open_id] = Frame(
                open_id,
                begin,
                index,
                int(end.group(2)),
                rebuild(framed, f"@{open_id}o|", end.group(3), clean),
                rebuild(framed, f"@{open_id}e|", end.group(4), clean),
                lines[begin].t,
                line.t,
            )
            open_id = -1
            continue
        clean = clean and not foreign(line.text, open_id)
        if line.text.startswith((f"@{open_id}o|", f"@{open_id}e|")):
            framed.append(line.text)
    return frames


class RecordedTransport:
    """Replays what a LAVA job recorded (see the module docstring)."""

    name = "lava"

    def __init__(
        self, log: LavaLog, commands: list[GuestCommand], kernel_log: KernelLog, detector: FaultDetector, pos: int
    ) -> None:
        self.log = log
        self.lines = log.console
        self.frames = find_frames(self.lines)
        self.pending = list(commands)
        self.kernel_log = kernel_log
        self.detector = detector
        self.pos = pos  # console lines before this one have been handed on
        self.step = "ready"
        self.pids: dict[str, str] = {}  # process -> its real pid, from the recorded `cma_test serve`
        self.sent_at = {int(m.group(1)): s.t for s in log.sent if (m := TYPED.match(s.text))}
        self.problems: list[str] = []

    def set_step(self, step: str) -> None:
        self.step = step

    def feed_until(self, index: int) -> None:
        for line in self.lines[self.pos : index]:
            if KERNEL_LINE.match(line.text):
                self.kernel_log.lines.append((self.step, line.text))
            self.detector.feed(line.text, self.step)
        self.pos = max(self.pos, index)

    def barrier(self, _marker: str = "") -> None:
        """What the console showed until the dispatcher typed the next line belongs to the step that just ran
        (kernel messages a command causes arrive before its framed output, which the guest prints at its end)."""
        self.feed_until(min((s.at for s in self.log.sent if s.at >= self.pos), default=len(self.lines)))

    def fits(self, command: str, *, bulky: bool = False) -> bool:
        return True

    def run(self, command: str, timeout: float | None = None, *, bulky: bool = False) -> CommandResult:
        found = next((k for k, c in enumerate(self.pending) if c.resolve(self.pids) == command), None)
        if found is None:
            self.feed_until(len(self.lines))
            raise GuestError(
                f"the LAVA job did not type this command (re-export the job for this scenario): {command}",
                detail=self.log.tail(),
            )
        typed = self.pending[found]
        del self.pending[: found + 1]
        frame = self.frames.get(typed.id)
        if frame is None:
            self.feed_until(len(self.lines))
            raise GuestError(f"the LAVA log has no output of '{command}': {self.log.ending()}", detail=self.log.tail())
        self.feed_until(frame.end + 1)
        stdout, stderr = frame.stdout, frame.stderr
        if stdout is None or stderr is None:
            self.problems.append(f"the output of '{command}' in the LAVA log does not match the md5 the guest printed")
            stdout = stdout if stdout is not None else self._raw(frame, "o")
            stderr = stderr if stderr is not None else self._raw(frame, "e")
        if typed.saves_pid:
            records = parse_records(stdout)
            if records and records[0].get("pid"):
                self.pids[typed.saves_pid] = records[0].get("pid")
        started = self.sent_at.get(typed.id, frame.t_begin)
        return CommandResult(command, frame.status, stdout, stderr, started, max(frame.t_end - started, 0.0))

    def _raw(self, frame: Frame, stream: str) -> str:
        prefix = f"@{frame.id}{stream}|"
        body = [
            line.text[len(prefix) :] for line in self.lines[frame.begin : frame.end] if line.text.startswith(prefix)
        ]
        return "\n".join(body) + ("\n" if body else "")

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        raise GuestError("a recorded LAVA run cannot write files into the guest")


def check_typed(log: LavaLog, script: Script, source: str) -> None:
    """Refuse to judge a job by a scenario it was not exported from: every typed line must be the compiled one."""
    expected = {c.id: guest_line(c) for c in script.commands}
    for sent in log.sent:
        m = TYPED.match(sent.text)
        if not m:
            continue
        want = expected.get(int(m.group(1)))
        if want is None or not sent.text.startswith(want):
            raise ConfigError(
                f"{source}: the job typed\n  {sent.text[:200]}\nwhere the scenarios as compiled here give\n"
                f"  {(want or '(no such command)')[:200]}\nRe-export the job, or pass --scenario/--target "
                "with the files it was exported from"
            )


def read_log(path: Path) -> str:
    """A log as saved (`.gz` too: a long job's log compresses tenfold)."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", "replace")


def _declared(log: LavaLog) -> dict[str, str]:
    for sent in log.sent:
        for part in sent.text.split("; "):
            fields = parse_declaration(part)
            if fields is not None:
                return fields
    return {}


def import_log(
    log_path: Path, out: Path, *, target: Target | None = None, scenario_specs: list[str] | None = None
) -> RunResult:
    """Read a LAVA job log, replay it through the runner, write result.json, console.log and dmesg.txt."""
    text = read_log(log_path)
    log = parse_log(text, str(log_path))
    declared = _declared(log)
    if target is None:
        if "target" not in declared:
            raise ConfigError(
                f"{log_path}: no cma-harness job declaration in this log (not a job from `cma-harness lava-job`?); "
                "pass --target and --scenario"
            )
        target = resolve_target(declared["target"])
    scenarios = resolve_scenarios(scenario_specs or declared.get("scenarios", "").split(","))
    script = compile_script(target, scenarios)
    check_typed(log, script, str(log_path))

    out.mkdir(parents=True, exist_ok=True)
    (out / "console.log").write_text("".join(line.text + "\n" for line in log.console))
    (out / "lava.log").write_text(text)
    record = RunResult(
        target=target.name,
        scenario=",".join(s.name for s in scenarios),
        kmod=f"lava:{log_path.name}",
        transport=TransportKind.SERIAL,
        started=log.started,
    )
    record.kernel = {k: declared[k] for k in ("package", "version", "release") if k in declared}
    kernel_log, detector = KernelLog(), FaultDetector()
    # startswith: a host pty may echo the dispatcher's next line right after the marker, before its newline.
    ready = next((i for i, line in enumerate(log.console) if line.text.startswith(READY_MARKER)), None)
    boot_end = ready if ready is not None else len(log.console)
    boot_lines = [line.text for line in log.console[:boot_end]]
    for text in boot_lines:
        if KERNEL_LINE.match(text):
            kernel_log.lines.append(("boot", text))
        detector.feed(text, "boot")
    # Boot lines come from /init before its ready point and from the job's first line (__bf: the
    # kernel log's facts; a job of format 1 had /init print them at boot). Framed output, echoed
    # typed lines and kernel lines never start with the prefix.
    facts = "\n".join(line.text[len(BOOT_PREFIX) :] for line in log.console if line.text.startswith(BOOT_PREFIX))
    if ready is None:
        detector.finish()
        record.verdict = Verdict.ERROR
        record.error = f"the guest did not reach its shell in the LAVA job: {log.ending()}"
        record.console_tail = log.tail()
        record.kernel_events = [e.as_dict() for e in detector.snapshot()]
        record.timings["total"] = round(log.duration, 4)
        record.write(out / "result.json")
        return record
    m = re.search(r"release=(\S+)", facts)
    record.kernel["booted_release"] = m.group(1) if m else ""
    record.kernel["checkers"] = parse_checkers(facts)
    reservation = parse_reservation(facts)
    record.cma = {"size_mib": reservation.size_mib, "base": hex(reservation.base)} if reservation else {}
    if reservation is None:
        record.problems.append("no 'cma: Reserved' line in the boot log: the reservation is unknown")
    # From the start of the job's boot action to the shell (the console is logged as the dispatcher reads it).
    boot_started = max((a.t for a in log.actions if a.at <= ready), default=0.0)
    record.timings["boot"] = round(log.console[ready].t - boot_started, 4)

    transport = RecordedTransport(log, script.commands, kernel_log, detector, ready + 1)
    aborted = False
    for index, scenario in enumerate(scenarios):
        if aborted:
            record.problems.append(f"scenario {scenario.name} did not run: the LAVA job stopped before it")
            continue
        if index:
            try:
                transport.run(RESET_COMMAND)
            except GuestError as exc:
                record.problems.append(f"scenario {scenario.name} did not run: {exc.message}")
                aborted = True
                continue

        def set_step(step: str, name: str = scenario.name) -> None:
            transport.set_step(f"{name} {step}")

        runner = ScenarioRunner(
            transport,
            kernel_log,
            detector.snapshot,
            reservation,
            set_step=set_step,
            barrier=transport.barrier,
            command_timeout=target.timeouts.command,
        )
        runner.defer_kmemleak = True  # as the export: no kmemleak sweep in a farm job
        try:
            runner.run_scenario(scenario)
        finally:
            if runner.outcome is not None:
                recorded_durations(runner.outcome)
                farm_verdicts(runner.outcome.steps, log, scenario.name)
                add_scenario(record, runner.outcome)
                record.timings["scenario"] = round(record.timings.get("scenario", 0.0) + runner.outcome.duration, 4)
        if runner.aborted is not None:
            record.console_tail = runner.aborted.detail or log.tail()
            aborted = True
    transport.set_step("report")
    dmesg = None
    if not aborted:
        try:
            dmesg = transport.run(script.report.text).stdout
        except GuestError:
            dmesg = None
    transport.feed_until(len(log.console))
    if dmesg is None:
        dmesg = "".join(line + "\n" for _, line in kernel_log.lines)
    (out / "dmesg.txt").write_text(dmesg)
    detector.finish()
    record.kernel_events = [e.as_dict() for e in detector.snapshot()] + record.extra_events
    record.problems += transport.problems
    failed = any(s.verdict != Verdict.PASS for s in record.scenarios) or record.kernel_events or record.problems
    record.verdict = Verdict.FAIL if failed else Verdict.PASS
    record.timings["total"] = round(log.duration, 4)
    record.write(out / "result.json")
    return record


def recorded_durations(outcome: ScenarioResult) -> None:
    """The farm's times, not the replay's: a step took what its commands took on the device."""
    for step in outcome.steps:
        step.duration = round(sum(c.duration for c in step.commands), 4)
    outcome.duration = round(sum(step.duration for step in outcome.steps), 4)


def farm_verdicts(steps: list[StepResult], log: LavaLog, scenario: str) -> None:
    """A step whose test case failed on the farm (the guest-side check) fails here too (said only where the
    host's judgement found nothing: the two checks should agree)."""
    cases = log.cases(block_name(scenario))
    for step in steps:
        if step.status != StepStatus.PASS:
            continue
        prefix = f"{step.index:02d}-"
        failed = [c for c, result in cases.items() if c.startswith(prefix) and result == "fail"]
        for case in failed:
            step.fail(f"LAVA test case {case} failed (the guest-side check of its commands' exit status)")
