"""A LAVA job log read back: the device's console text, what the dispatcher typed, the test results.

Accepts what `lava-run` prints (one JSON object a line: {"dt", "lvl", "msg"}) and what a LAVA
server serves as a job's log (`lavacli jobs logs --raw ID`: the same objects as a YAML list,
`- {...}` a line). The dispatcher logs the console as `target` lines with `"` escaped as `\\"`,
carriage returns and ESC characters dropped and doubled newlines merged; the harness's framed
output (harness/guest/guestinit.py) survives that unchanged, and its md5 sums prove it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml

from harness.errors import ConfigError
from harness.guest.console import split_kernel_lines

SENDING = re.compile(r"^Sending '(.*)'$", re.S)
ACTION = re.compile(r"^start: (\d+) (\S+)")  # a top-level action of the job (deploy, boot, test)


@dataclass(frozen=True)
class LogLine:
    text: str
    t: float  # seconds since the job's first log line


@dataclass(frozen=True)
class Typed:
    text: str  # a line the dispatcher typed on the console
    t: float
    at: int  # how many console lines had arrived when it was typed


@dataclass
class LavaLog:
    console: list[LogLine] = field(default_factory=list)  # the device's console, split like a local console
    sent: list[Typed] = field(default_factory=list)  # each line the dispatcher typed, in order
    results: list[dict[str, Any]] = field(default_factory=list)  # every `results` entry, in order
    actions: list[Typed] = field(default_factory=list)  # each top-level action's start (text: its name)
    started: str = ""  # the first line's time (ISO)
    duration: float = 0.0  # first to last log line

    @property
    def job_result(self) -> dict[str, Any]:
        """The dispatcher's own verdict on the job: {"result": pass|fail, "error_msg", "error_type"}."""
        return next((r for r in reversed(self.results) if r.get("definition") == "lava" and r.get("case") == "job"), {})

    def cases(self, block: str) -> dict[str, str]:
        """Test case -> pass|fail, for the cases of one interactive test block (definition 'N_<block>')."""
        return {
            str(r["case"]): str(r.get("result"))
            for r in self.results
            if re.fullmatch(rf"\d+_{re.escape(block)}", str(r.get("definition", "")))
        }

    def ending(self) -> str:
        job = self.job_result
        if not job:
            return "the log ends without the job's result (truncated, or the job still running)"
        if job.get("result") == "pass":
            return "the job finished correctly"
        return f"the job ended with {job.get('error_type', 'an')} error: {job.get('error_msg', '?')}"

    def tail(self, n: int = 40) -> str:
        return "\n".join(line.text for line in self.console[-n:])


def _entries(text: str, source: str) -> list[dict[str, Any]]:
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line == "---":
            continue
        if line.startswith("- "):
            line = line[2:]
        try:
            entry = json.loads(line)
        except ValueError:
            try:
                entry = yaml.safe_load(line)
            except yaml.YAMLError:
                entry = None
        if not isinstance(entry, dict) or "lvl" not in entry or "msg" not in entry:
            raise ConfigError(
                f'{source}:{number}: not a LAVA log line (expected {{"dt", "lvl", "msg"}}, '
                "as `lava-run` prints or `lavacli jobs logs --raw` fetches)"
            )
        entries.append(entry)
    if not entries:
        raise ConfigError(f"{source}: an empty LAVA log")
    return entries


def _time(entry: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(entry.get("dt")))
    except ValueError:
        return None


def parse_log(text: str, source: str = "LAVA log") -> LavaLog:
    entries = _entries(text, source)
    times = [_time(e) for e in entries]
    first = next((t for t in times if t is not None), None)
    last = next((t for t in reversed(times) if t is not None), None)
    log = LavaLog(started=first.isoformat() if first else "")
    if first and last:
        log.duration = (last - first).total_seconds()
    now = 0.0
    for entry, when in zip(entries, times, strict=True):
        if when is not None and first is not None:
            now = (when - first).total_seconds()
        lvl, msg = entry["lvl"], entry["msg"]
        # After the test action the dispatcher logs what the console still prints as `feedback`.
        if lvl in ("target", "feedback") and isinstance(msg, str):
            # The dispatcher's logger wrote every '"' as '\"'.
            for piece in split_kernel_lines(msg.replace('\\"', '"')):
                log.console.append(LogLine(piece, now))
        elif lvl == "info" and isinstance(msg, str):
            m = SENDING.match(msg)
            if m:
                log.sent.append(Typed(m.group(1), now, len(log.console)))
            action = ACTION.match(msg)
            if action:
                log.actions.append(Typed(action.group(2), now, len(log.console)))
        elif lvl == "results" and isinstance(msg, dict):
            log.results.append(msg)
    return log
