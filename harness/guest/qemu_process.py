"""The QEMU process: a child on a pty (via pexpect) that cannot outlive the harness.

Guarantees, whatever happens (pass, fail, timeout, exception, Ctrl-C,
SIGTERM, even SIGKILL of the harness):
- the child gets PR_SET_PDEATHSIG=SIGKILL, so the kernel kills QEMU when the
  harness dies, however it dies;
- `QemuProcess` is a context manager whose exit stops and reaps QEMU;
- every live QemuProcess is also stopped from an atexit hook and on SIGTERM.

Light to import (no dataclasses, pathlib or typing at run time): the CLI starts a remembered
QEMU command line through it before anything else is imported (harness/guest/prespawn.py).
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

TYPE_CHECKING = False  # typing costs ~4 ms of the CLI's early start; mypy reads this name as True
if TYPE_CHECKING:
    from types import FrameType, TracebackType
    from typing import Any

PR_SET_PDEATHSIG = 1


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
            self.wait_exit(grace)  # on a pidfd: back the moment QEMU has exited (~8 ms after the signal)
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
