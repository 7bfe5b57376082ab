"""A booted guest: QEMU + console listeners + boot facts + a transport. Used by `run` and tests.

Only what starting QEMU needs is imported with this module: the transports and the fault
detector (its title rules take ~50 ms to compile) are imported after QEMU has been spawned,
while the guest boots (`spawn()` then `wait_ready()`).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from harness.config.targets import Target
from harness.errors import GuestError
from harness.guest import guestinit, prespawn
from harness.guest.console import Console, ConsoleClosed, ConsoleLine, ConsoleTimeout
from harness.guest.kernel_log import KernelLog
from harness.guest.qemu import BootFiles, qemu_command, ssh_netdev_args
from harness.guest.qemu_process import QemuProcess

if TYPE_CHECKING:
    from harness.guest.transport.base import Transport
    from harness.guest.transport.serial import SerialTransport
    from harness.guest.transport.ssh import ClientKey
    from harness.oracles.dmesg import CmaReservation
    from harness.oracles.faults import FaultDetector, KernelEvent

KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\]")
# The SSH transport's /dev/kmsg barrier marker (harness.guest.transport.ssh.BARRIER, asserted
# equal in the tests), here so that reading the console does not import the SSH client.
BARRIER = "cma-harness: barrier"


@dataclass
class BootFacts:
    release: str = ""
    reservation: CmaReservation | None = None
    checkers: list[str] = field(default_factory=list)  # kasan, kmemleak, lockdep, dma-debug: what ran
    # Whether reservation and checkers are known: the kernel log's facts are printed at boot only
    # by a snapshot's base image; otherwise the first check that needs them asks (read_facts), or
    # they are found in the whole kernel log read at the end (learn_facts).
    from_log: bool = False
    asked: bool = False  # read_facts asked the guest (once: a log that wrapped stays unknown)
    boot_lines: list[str] = field(default_factory=list)
    ready_after: float = 0.0  # seconds from QEMU start to the shell
    ssh_after: float = 0.0  # seconds from QEMU start to an authenticated SSH session


@dataclass
class SshSetup:
    """What an SSH-transport guest needs from the host: a loopback port and a fresh client key."""

    port: int
    key: ClientKey
    known_hosts: Path  # written once the guest's host key is known (for the stock OpenSSH client)


class Guest:
    """Boot with `start()`, use `.transport`, always `stop()` (or use as a context manager)."""

    def __init__(
        self,
        target: Target,
        boot: BootFiles,
        console_log: IO[bytes] | None = None,
        ssh: SshSetup | None = None,
        *,
        extra_args: list[str] | None = None,
        replay: list[str] | None = None,
        ready_marker: str = guestinit.READY_MARKER,
        repeatable: bool | None = None,
    ) -> None:
        """extra_args: more QEMU arguments (a snapshot's -incoming, -fw_cfg, -qmp). replay: the
        console lines of the boot this guest is restored from, handed to the console as if they
        had just arrived (a restored guest prints no boot of its own)."""
        self.target = target
        self.boot = boot
        self.ssh = ssh
        more = (ssh_netdev_args(ssh.port) if ssh else []) + list(extra_args or [])
        append = [ssh.key.cmdline_arg] if ssh else []
        self.qemu = QemuProcess(qemu_command(target, boot, append, more))
        # Whether the next identical run may start this command line early (prespawn): not
        # with a per-run SSH port and key, nor a snapshot's QMP socket (extra_args say).
        self.repeatable = (ssh is None and not extra_args) if repeatable is None else repeatable
        self.prespawned = False  # adopted from the CLI's early start
        self.replay = replay
        self.ready_marker = ready_marker  # what /init prints at its ready point (a snapshot base's own)
        self.boot_transcript: list[str] = []  # every console line up to the ready marker
        self.console_log = console_log
        self.console: Console | None = None
        self.transport: Transport | None = None
        self.serial: SerialTransport | None = None
        self.facts = BootFacts()
        self.kernel_log = KernelLog()
        self.detector: FaultDetector | None = None  # made by spawn(), once QEMU runs
        self.step = "boot"
        self.on_spawn: Callable[[int], None] | None = None  # told QEMU's pid as soon as it exists
        self._barriers: set[str] = set()
        self._barrier_seen = threading.Condition()
        self._pump: threading.Thread | None = None
        self._pump_stop = threading.Event()

    def _on_line(self, line: ConsoleLine) -> None:
        if self.step == "boot":
            self.boot_transcript.append(line.text)
        if KERNEL_LINE.match(line.text):
            if BARRIER in line.text:
                with self._barrier_seen:
                    self._barriers.add(line.text[line.text.index(BARRIER) :].strip())
                    self._barrier_seen.notify_all()
                return  # step bookkeeping, not the kernel's words
            self.kernel_log.lines.append((self.step, line.text))
        assert self.detector is not None
        self.detector.feed(line.text, self.step)
        if line.text.startswith(guestinit.BOOT_PREFIX):
            self.facts.boot_lines.append(line.text[len(guestinit.BOOT_PREFIX) :])

    def events(self) -> list[KernelEvent]:
        # Includes an event whose report is still arriving: a hang or panic may never close it.
        return self.detector.snapshot() if self.detector is not None else []

    def start(self) -> Guest:
        """Spawn QEMU and wait for the guest's shell."""
        self.spawn()
        return self.wait_ready()

    def spawn(self) -> Guest:
        """Start QEMU and return at once: the guest boots while the caller does other work.
        Its console output waits in the pty until `wait_ready()` reads it. The CLI may have
        started this very command line already (harness/guest/prespawn.py): then that QEMU is it."""
        early = prespawn.adopt(self.qemu.argv)
        if early is not None:
            self.qemu, self.prespawned = early, True
        else:
            self.qemu.start()
        prespawn.spawned(self.qemu.argv, self.repeatable)
        try:
            if self.on_spawn is not None and self.qemu.pid is not None:
                self.on_spawn(self.qemu.pid)
            from harness.oracles.faults import FaultDetector  # while QEMU starts

            self.detector = FaultDetector()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> Guest:
        """Read the console until the guest's /init says it is ready; the boot facts, the transport."""
        from harness.guest.transport.serial import SerialTransport

        self.console = Console(self.qemu.child, self.console_log, self.qemu.started_at)
        self.console.add_listener(self._on_line)
        if self.replay is not None:
            self.console.replay(self.replay)
        try:
            self.console.wait_for(self.ready_marker.__eq__, self.target.timeouts.boot, "the guest shell")
        except GuestError as exc:
            self.stop()  # __exit__ does not run when __enter__ raises
            self._say_how_qemu_ended(exc, "guest did not boot")
            raise
        except BaseException:
            self.stop()
            raise
        if self.replay is not None:
            try:
                self._resync()
            except GuestError as exc:
                self.stop()
                self._say_how_qemu_ended(exc, "restored guest did not resume")
                raise
            except BaseException:
                self.stop()
                raise
        self.facts.ready_after = time.monotonic() - self.qemu.started_at
        text = "\n".join(self.facts.boot_lines)
        m = re.search(r"release=(\S+)", text)
        self.facts.release = m.group(1) if m else ""
        # The kernel log's lines (__bf's `dmesg` boot lines): printed at boot by a snapshot's base
        # image, else asked for later. Not the banner line: it would pass for a log of the boot.
        self.learn_facts("\n".join(line for line in self.facts.boot_lines if line.startswith("dmesg ")))
        self.step = "ready"
        detector = self.detector
        assert detector is not None
        self.serial = SerialTransport(
            self.console, self.target.timeouts.command, fatal_count=lambda: detector.fatal_count
        )
        self.transport = self.serial
        if self.ssh is not None:
            try:
                self._start_ssh(self.ssh)
            except BaseException:
                self.stop()
                raise
        return self

    def read_facts(self) -> BootFacts:
        """The boot facts with the kernel log's part (the CMA reservation, the checkers) known:
        asked of the guest by one command the first time a check needs them."""
        facts = self.facts
        if not facts.from_log and not facts.asked:
            from harness.guest.shell import BOOT_FACTS_COMMAND

            assert self.transport is not None
            facts.asked = True
            self.learn_facts(self.transport.run(BOOT_FACTS_COMMAND, timeout=self.target.timeouts.command).stdout)
        return facts

    def learn_facts(self, kernel_log: str) -> bool:
        """Take the kernel log's boot facts from text the host already has (boot lines, the whole
        log a last check read); False if that text does not reach back to the boot."""
        from harness.oracles.dmesg import parse_boot_facts

        if not self.facts.from_log:
            found = parse_boot_facts(kernel_log)
            if found is not None:
                self.facts.reservation, self.facts.checkers = found.reservation, found.checkers
                self.facts.from_log = True
        return self.facts.from_log

    def announce_ready(self) -> None:
        """Have the guest print the ready marker (a snapshot base prints its own at boot): once
        it has the code under test, console.log says so as after a cold boot."""
        assert self.console is not None
        self.console.send_line(f"echo '{guestinit.READY_MARKER}'")
        self.console.wait_for(guestinit.READY_MARKER.__eq__, self.target.timeouts.command, "the guest shell")

    def _say_how_qemu_ended(self, exc: GuestError, what: str) -> None:
        """Prefix the error with what failed and, when QEMU ended without the harness stopping it,
        how: a signal from outside, or QEMU's own error exit, is the evidence."""
        if not self.qemu.alive() and not self.qemu.stopped_by_us:
            exc.message = f"{exc.message} ({self.qemu.describe_exit()})"
        exc.message = f"{what}: {exc.message}"
        exc.args = (exc.message,)

    def _resync(self) -> None:
        """A restored guest's shell, reached over a console that is new to it: a byte sent while
        QEMU is still loading the state is lost (the UART is reset, then overwritten), so each try
        starts with a newline of its own and waits for its own echo. Returns once the guest runs."""
        assert self.console is not None
        deadline = time.monotonic() + self.target.timeouts.boot
        for attempt in range(1, 1000):
            marker = f"@@sync {attempt}"
            self.console.send_line(f"\necho '{marker}'")
            try:
                self.console.wait_for(marker.__eq__, min(2.0, max(deadline - time.monotonic(), 0.1)), marker)
                return
            except ConsoleTimeout as exc:
                if time.monotonic() >= deadline:
                    exc.message = "the restored guest did not answer on its console"
                    exc.args = (exc.message,)
                    raise

    def _start_ssh(self, ssh: SshSetup) -> None:
        from harness.guest.transport.ssh import SshTransport, connect, pinned_host_key, write_known_hosts

        text = "\n".join(self.facts.boot_lines)
        errors = re.findall(r"^ssh-error (.*)$", text, re.M)
        if errors:
            raise GuestError("the guest could not start its SSH server: " + "; ".join(errors), detail=self.tail())
        m = re.search(r"^sshd-hostkey (.+)$", text, re.M)
        if not m:
            raise GuestError("the guest printed no SSH host key", detail=self.tail())
        host_key = pinned_host_key(m.group(1))
        write_known_hosts(ssh.known_hosts, ssh.port, host_key)
        self.start_console_pump()  # from here on a thread reads the console
        try:
            client = connect(ssh.port, host_key, ssh.key, time.monotonic() + self.target.timeouts.ssh)
        except GuestError as exc:
            exc.detail = self.tail()
            raise
        self.facts.ssh_after = time.monotonic() - self.qemu.started_at
        self.transport = SshTransport(client, self.wait_barrier, self.tail, self.target.timeouts.command)

    def start_console_pump(self) -> None:
        """Read the console on a thread (faults, the log) while nobody waits on it; no-op if running."""
        if self._pump is not None:
            return
        self._pump_stop.clear()

        def pump() -> None:
            assert self.console is not None
            while not self._pump_stop.is_set():
                try:
                    self.console.read_lines(0.05)
                    self.console.discard_pending()  # nobody waits on console lines in SSH mode
                except GuestError:
                    with self._barrier_seen:
                        self._barrier_seen.notify_all()
                    return

        self._pump = threading.Thread(target=pump, name="console-pump", daemon=True)
        self._pump.start()

    def stop_console_pump(self) -> None:
        """Stop the console thread, e.g. before a person takes the console over."""
        if self._pump is not None:
            self._pump_stop.set()
            self._pump.join(timeout=2)
            self._pump = None

    def wait_barrier(self, marker: str, timeout: float) -> bool:
        """Wait until the console has shown a barrier line the guest wrote to /dev/kmsg."""
        deadline = time.monotonic() + timeout
        with self._barrier_seen:
            while marker not in self._barriers:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.console is not None and self.console.closed):
                    return False
                self._barrier_seen.wait(remaining)
            self._barriers.discard(marker)
        return True

    def kernel_time(self) -> float:
        """The printk timestamp of the newest kernel line seen (0 if none)."""
        return self.kernel_log.latest_time()

    def set_step(self, name: str) -> None:
        self.step = name

    def barrier(self, _marker: str) -> None:
        # Serial, -smp 1: printk reaches the console before the command that caused it returns,
        # so what has arrived is complete; just consume what is pending. SSH commands wait for
        # their own /dev/kmsg barrier in the transport.
        if self.console is not None and self._pump is None:
            self.console.drain(0)

    def poweroff(self) -> bool:
        """Ask the guest to power off; True if QEMU exited by itself within the shutdown timeout."""
        self._close_ssh()
        if self.console is None or not self.qemu.alive():
            return not self.qemu.alive()
        with contextlib.suppress(OSError, ConsoleClosed):
            self.console.send_line("poweroff -f")
        deadline = time.monotonic() + self.target.timeouts.shutdown
        with contextlib.suppress(ConsoleClosed, GuestError):
            while self.qemu.alive() and time.monotonic() < deadline:
                self.console.read_lines(0.05)
        # The console closes a moment before QEMU can be reaped.
        return self.qemu.wait_exit(max(0.0, deadline - time.monotonic()))

    def _close_ssh(self) -> None:
        if self.ssh is not None:  # only then is the SSH client imported
            from harness.guest.transport.ssh import SshTransport

            if isinstance(self.transport, SshTransport):
                self.transport.close()
        self.stop_console_pump()  # the main thread owns the console again

    def stop(self) -> None:
        # Cleanup runs after anything, a signal or a dead QEMU included: what is left of the
        # console is read if it can be, and QEMU is stopped whatever happened before.
        with contextlib.suppress(GuestError, OSError, ValueError):
            self._close_ssh()
        if self.console is not None:
            with contextlib.suppress(GuestError, OSError, ValueError):
                self.console.drain(0)
        self.qemu.stop()
        if self.detector is not None:
            self.detector.finish()

    def tail(self, n: int = 40) -> str:
        return self.console.tail(n) if self.console else ""

    def __enter__(self) -> Guest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def save_console(path: Path) -> IO[bytes]:
    return path.open("wb", buffering=0)
