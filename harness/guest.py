"""A booted guest: QEMU + console listeners + boot facts + a transport. Used by `run` and tests."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from harness import guestinit
from harness.console import Console, ConsoleClosed, ConsoleLine
from harness.errors import GuestError
from harness.parsers.dmesg import CmaReservation, parse_reservation
from harness.parsers.faults import FaultDetector, KernelEvent
from harness.qemu import BootFiles, QemuProcess, qemu_command
from harness.runner import KernelLog
from harness.targets import Target
from harness.transport.serial import SerialTransport

KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\]")


@dataclass
class BootFacts:
    release: str = ""
    reservation: CmaReservation | None = None
    boot_lines: list[str] = field(default_factory=list)
    ready_after: float = 0.0  # seconds from QEMU start to the shell


class Guest:
    """Boot with `start()`, use `.transport`, always `stop()` (or use as a context manager)."""

    def __init__(self, target: Target, boot: BootFiles, console_log: IO[bytes] | None = None) -> None:
        self.target = target
        self.qemu = QemuProcess(qemu_command(target, boot))
        self.console_log = console_log
        self.console: Console | None = None
        self.transport: SerialTransport | None = None
        self.facts = BootFacts()
        self.kernel_log = KernelLog()
        self.detector = FaultDetector()
        self.step = "boot"
        self.on_spawn: Callable[[int], None] | None = None  # told QEMU's pid as soon as it exists

    def _on_line(self, line: ConsoleLine) -> None:
        if KERNEL_LINE.match(line.text):
            self.kernel_log.lines.append((self.step, line.text))
        self.detector.feed(line.text, self.step)
        if line.text.startswith(guestinit.BOOT_PREFIX):
            self.facts.boot_lines.append(line.text[len(guestinit.BOOT_PREFIX) :])

    def events(self) -> list[KernelEvent]:
        # Includes an event whose report is still arriving: a hang or panic may never close it.
        return self.detector.snapshot()

    def start(self) -> Guest:
        self.qemu.start()
        if self.on_spawn is not None and self.qemu.pid is not None:
            self.on_spawn(self.qemu.pid)
        self.console = Console(self.qemu.child, self.console_log, self.qemu.started_at)
        self.console.add_listener(self._on_line)
        try:
            self.console.wait_for(lambda s: s == guestinit.READY_MARKER, self.target.timeouts.boot, "the guest shell")
        except GuestError as exc:
            self.stop()  # __exit__ does not run when __enter__ raises
            exc.message = f"guest did not boot: {exc.message}"
            exc.args = (exc.message,)
            raise
        except BaseException:
            self.stop()
            raise
        self.facts.ready_after = time.monotonic() - self.qemu.started_at
        text = "\n".join(self.facts.boot_lines)
        m = re.search(r"release=(\S+)", text)
        self.facts.release = m.group(1) if m else ""
        self.facts.reservation = parse_reservation(text)
        self.step = "ready"
        self.transport = SerialTransport(
            self.console, self.target.timeouts.command, fatal_count=lambda: self.detector.fatal_count
        )
        return self

    def kernel_time(self) -> float:
        """The printk timestamp of the newest kernel line seen (0 if none)."""
        for _, line in reversed(self.kernel_log.lines):
            m = re.match(r"^\[\s*(\d+\.\d+)\]", line)
            if m:
                return float(m.group(1))
        return 0.0

    def set_step(self, name: str) -> None:
        self.step = name

    def barrier(self, _marker: str) -> None:
        # -smp 1: printk reaches the console before the command that caused it returns,
        # so what has arrived is complete; just consume what is pending.
        if self.console is not None:
            self.console.drain(0)

    def poweroff(self) -> bool:
        """Ask the guest to power off; True if QEMU exited by itself within the shutdown timeout."""
        if self.console is None or not self.qemu.alive():
            return not self.qemu.alive()
        with contextlib.suppress(OSError, ConsoleClosed):
            self.console.send_line("poweroff -f")
        deadline = time.monotonic() + self.target.timeouts.shutdown
        with contextlib.suppress(ConsoleClosed, GuestError):
            while self.qemu.alive() and time.monotonic() < deadline:
                self.console.read_lines(0.05)
        return not self.qemu.alive()

    def stop(self) -> None:
        if self.console is not None:
            self.console.drain(0)
        self.qemu.stop()
        self.detector.finish()

    def tail(self, n: int = 40) -> str:
        return self.console.tail(n) if self.console else ""

    def __enter__(self) -> Guest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def save_console(path: Path) -> IO[bytes]:
    return path.open("wb", buffering=0)
