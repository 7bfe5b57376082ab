"""A fake transport that replays recorded guest replies: the runner and oracles without QEMU.

`ReplayTransport` answers each command with the next recorded reply (result.json keeps every
guest command of a run with its status and output) and checks the command is the one recorded,
so a replay also proves the runner still sends the same commands. The kernel log a real console
would carry is synthesised where the runner needs it: each successful allocation gets the
driver's dump_mem record, as cma_mem prints it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.guest.kernel_log import KernelLog
from harness.guest.transport.base import CommandResult
from harness.oracles.cmatest import parse_records
from harness.oracles.dmesg import CmaReservation
from harness.oracles.faults import KernelEvent
from harness.scenario.runner import ScenarioRunner

RESERVATION = CmaReservation(128, 0x76C00000)


@dataclass
class Reply:
    command: str  # as recorded (result.json cuts commands at 300 characters with "…")
    status: int = 0
    stdout: str = ""
    stderr: str = ""
    kernel: list[str] = field(default_factory=list)  # kernel lines the command makes appear


def dump_mem_lines(stdout: str, kinds: dict[str, str] | None = None, **override: object) -> list[str]:
    """What the driver logs for each successful allocation in cma_test output."""
    lines: list[str] = []
    for r in parse_records(stdout):
        if r.op != "alloc" or not r.ok or r.get("errno", "0") != "0" or r.get("proc") == "child":
            continue
        kind = (kinds or {}).get(r.get("name"), "wc" if kinds is None else None)
        values: dict[str, object] = {
            "CMA name": r.get("name"),
            "CMA id": r.get("id"),
            # Unknown (the command was cut at 300 characters in result.json): no line, nothing compared.
            "Is usebuf": {"wc": 1, "coherent": 0}.get(kind or ""),
            "PHY Base": f"{r.int('phys') or 0:#018x}",
            "KER Base": "0x000000009fe864d5",
            "USR Base": f"{r.int('user') or 0:#018x}",
            "Size": r.get("len"),
        } | override
        lines += [f"[    1.000000] dump_mem:{key}:{value}" for key, value in values.items() if value is not None]
    return lines


class ReplayTransport:
    name = "replay"

    def __init__(self, replies: list[Reply], kernel_log: KernelLog, strict: bool = True) -> None:
        self.replies = list(replies)
        self.kernel_log = kernel_log
        self.strict = strict
        self.sent: list[str] = []
        self.bulky: list[bool] = []  # per command sent: asked for a compressed reply

    def fits(self, command: str, *, bulky: bool = False) -> bool:
        return True

    def run(self, command: str, timeout: float | None = None, *, bulky: bool = False) -> CommandResult:
        self.sent.append(command)
        self.bulky.append(bulky)
        assert self.replies, f"no recorded reply left for {command!r}"
        reply = self.replies.pop(0)
        if self.strict:
            recorded = reply.command.removesuffix("…")
            assert command.startswith(recorded), f"sent {command!r}, recorded {reply.command!r}"
        self.kernel_log.lines += [("replay", line) for line in reply.kernel]
        return CommandResult(command, reply.status, reply.stdout, reply.stderr, 0.0, 0.001)

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        raise AssertionError("the runner never writes files")


def runner_for(
    replies: list[Reply], events: Callable[[], list[KernelEvent]] | None = None, strict: bool = True
) -> tuple[ScenarioRunner, ReplayTransport]:
    log = KernelLog()
    transport = ReplayTransport(replies, log, strict)
    runner = ScenarioRunner(transport, log, events or (lambda: []), RESERVATION)
    return runner, transport


def recorded_replies(result_json: Path, scenario: str) -> list[Reply]:
    """A scenario's guest commands and replies from a recorded result.json, with dump_mem lines."""
    data = json.loads(result_json.read_text())
    replies: list[Reply] = []
    for step in data["steps"]:
        if step["scenario"] != scenario:
            continue
        for c in step["commands"]:
            # The memory type of each block, from the words that allocated it.
            kinds = dict(re.findall(r"alloc (\S+) \S+ (wc|coherent)", c["command"]))
            kernel = dump_mem_lines(c["stdout"], kinds) if c["command"].startswith("cma_test ctl") else []
            replies.append(Reply(c["command"], c["status"], c["stdout"], c["stderr"], kernel))
    return replies
