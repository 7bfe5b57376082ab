"""QEMU: the command line (a pure function of the target) and a process that cannot outlive us.

Guarantees, whatever happens (pass, fail, timeout, exception, Ctrl-C,
SIGTERM, even SIGKILL of the harness):
- the child gets PR_SET_PDEATHSIG=SIGKILL, so the kernel kills QEMU when the
  harness dies, however it dies;
- `QemuProcess` is a context manager whose exit stops and reaps QEMU;
- every live QemuProcess is also stopped from an atexit hook and on SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import select
import signal
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.config.targets import Target

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path
    dtb: Path | None = None
    module: Path | None = None  # the cma_mem.ko inside the initrd: its symbols name frames after rmmod


def ssh_netdev_args(port: int) -> list[str]:
    """virtio-net (MMIO: no option ROM needed) on QEMU's user network; guest port 22 forwarded
    to 127.0.0.1:port only, never to other host addresses."""
    return [
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-device,netdev=net0",
    ]  # fmt: skip


def qemu_command(
    target: Target, boot: BootFiles, append_extra: list[str] | None = None, extra_args: list[str] | None = None
) -> list[str]:
    """The full QEMU argv for a target. No I/O: unit-tested as data."""
    q = target.qemu
    argv = [
        q.binary,
        "-M", q.machine,
        "-cpu", q.cpu,
        "-smp", str(q.smp),
        "-m", f"{q.memory_mib}M",
        # No default devices: no NIC needing an option ROM, no monitor on stdio.
        "-nodefaults",
        "-no-reboot",  # with panic=-1 a kernel panic ends QEMU at once
        "-display", "none",
        # The serial console on our pty; signal=off so a stray ^C byte does not kill QEMU.
        "-chardev", "stdio,id=console,signal=off",
        "-serial", "chardev:console",
        "-kernel", str(boot.kernel),
        "-initrd", str(boot.initrd),
        "-append", target.kernel_cmdline(append_extra),
    ]  # fmt: skip
    if boot.dtb:
        argv += ["-dtb", str(boot.dtb)]
    return argv + list(q.extra_args) + list(extra_args or [])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


_live: weakref.WeakSet[QemuProcess] = weakref.WeakSet()


def _stop_all() -> None:
    for proc in list(_live):
        proc.stop()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _stop_all()
    raise SystemExit(128 + signum)


_handlers_installed = False


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_stop_all)
    with contextlib.suppress(ValueError):  # not in the main thread: atexit + PDEATHSIG still hold
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)


class QemuProcess:
    """A QEMU process with its serial console on a pty (via pexpect)."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.env = env
        self.child: Any = None  # pexpect.spawn
        self.started_at = 0.0
        self.exit_status: int | None = None  # QEMU's own exit status, once reaped
        self.exit_signal: int | None = None  # or the signal that killed it
        self.stopped_by_us = False  # we sent the signal (stop()), not someone else
        self.signals_sent: set[int] = set()  # by stop()

    def start(self) -> QemuProcess:
        import pexpect  # lazy: keeps `cma-harness --help` and unit tests fast

        _install_handlers()
        self.started_at = time.monotonic()
        self.child = pexpect.spawn(
            self.argv[0],
            self.argv[1:],
            env=self.env,
            echo=False,
            preexec_fn=_die_with_parent,
            dimensions=(24, 512),
        )
        # pexpect sleeps 50 ms before every send and 100 ms in close by default: fixed
        # sleeps are what makes other harnesses slow.
        self.child.delaybeforesend = None
        self.child.delayafterclose = 0
        self.child.delayafterterminate = 0
        # ...and ptyprocess underneath has its own copies of the close/terminate sleeps.
        self.child.ptyproc.delayafterclose = 0
        self.child.ptyproc.delayafterterminate = 0
        _live.add(self)
        return self

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    def alive(self) -> bool:
        return self.child is not None and self.child.isalive()

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to timeout for QEMU to exit by itself (guest poweroff, or killed from outside
        and not reaped yet: its console closes before it becomes a zombie). True if it did.
        Waits on a pidfd, so it returns the moment QEMU exits."""
        child = self.child
        if child is None or not child.isalive():
            return True
        if timeout <= 0:
            return False
        try:
            fd = os.pidfd_open(child.pid)
        except OSError:
            return not child.isalive()  # already reaped
        try:
            select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        return not child.isalive()

    def stop(self, grace: float = 2.0) -> None:
        """Stop and reap QEMU: SIGTERM, then SIGKILL after `grace` seconds. Idempotent."""
        child = self.child
        if child is None:
            return
        if child.isalive():
            self.stopped_by_us = True
            self.signals_sent.add(signal.SIGTERM)
            with contextlib.suppress(OSError):
                os.kill(child.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while child.isalive() and time.monotonic() < deadline:
                time.sleep(0.005)
            if child.isalive():
                self.signals_sent.add(signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.kill(child.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    child.wait()
        with contextlib.suppress(Exception):
            child.close(force=True)
        self.exit_status, self.exit_signal = child.exitstatus, child.signalstatus
        # A QEMU killed from outside closes its console a moment before it can be reaped: stop()
        # may find it still alive and send SIGTERM too. Only the signal that ended it says whose
        # doing it was (faults.sh: a SIGKILL during a snapshot restore was read as ours).
        if self.exit_signal is not None and self.exit_signal not in self.signals_sent:
            self.stopped_by_us = False
        _live.discard(self)

    def describe_exit(self) -> str:
        """How QEMU ended, for messages: 'killed by SIGKILL', 'exited with status 1'."""
        if self.exit_signal is not None:
            how = f"killed by {signal.Signals(self.exit_signal).name}"
            return how + (" (stopped by the harness)" if self.stopped_by_us else "")
        if self.exit_status is not None:
            return f"exited with status {self.exit_status}"
        return "still running" if self.alive() else "exited"

    def __enter__(self) -> QemuProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
