"""The serial console as a stream of lines.

Everything the guest prints passes through one `Console`: it is written to
console.log as it arrives, split into lines, and every line is handed to
the listeners (the kernel-log collector, the live fault detector) before
anyone waits on it. Kernel messages can land in the middle of a line of
command output; `split_kernel_lines` cuts them out so both halves are seen
for what they are.
"""

from __future__ import annotations

import errno
import os
import re
import select
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from harness.errors import GuestError

# "[   12.345678] text": printk with CONFIG_PRINTK_TIME (Debian's kernels and ours have it).
KERNEL_STAMP = re.compile(r"\[\s*\d+\.\d{6}\] ")


def split_kernel_lines(line: str) -> list[str]:
    """Split a console line where a kernel message starts in its middle.

    'abc[    1.000000] WARNING: x' -> ['abc', '[    1.000000] WARNING: x']
    """
    parts = []
    start = 0
    for m in KERNEL_STAMP.finditer(line):
        if m.start() > start:
            parts.append(line[start : m.start()])
            start = m.start()
    parts.append(line[start:])
    return [p for p in parts if p] or [line]


@dataclass(frozen=True)
class ConsoleLine:
    text: str
    t: float  # seconds since QEMU start


Listener = Callable[[ConsoleLine], None]


class ConsoleClosed(GuestError):
    """QEMU exited (or closed the console) while we were waiting."""


class ConsoleTimeout(GuestError):
    """Nothing we waited for arrived in time."""


class Console:
    def __init__(self, child: Any, log: IO[bytes] | None = None, started_at: float | None = None) -> None:
        self.child = child  # pexpect.spawn of QEMU
        self.log = log
        self.started_at = started_at if started_at is not None else time.monotonic()
        self.listeners: list[Listener] = []
        self.tail_lines: deque[str] = deque(maxlen=200)
        self._partial = ""
        self._closed = False
        self._pending: deque[ConsoleLine] = deque()  # read but not yet consumed by a waiter
        self._poller: select.poll | None = None

    def add_listener(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def tail(self, n: int = 40) -> str:
        lines = list(self.tail_lines)[-n:]
        if self._partial:
            lines.append(self._partial)
        return "\n".join(lines)

    def send_line(self, text: str) -> None:
        self.child.send(text + "\n")

    def _feed(self, data: bytes) -> list[ConsoleLine]:
        if self.log is not None and not self.log.closed:
            self.log.write(data)
        text = self._partial + data.decode("utf-8", "replace").replace("\r", "")
        *complete, self._partial = text.split("\n")
        now = time.monotonic() - self.started_at
        out = []
        for raw in complete:
            for piece in split_kernel_lines(raw):
                line = ConsoleLine(piece, now)
                self.tail_lines.append(piece)
                for listener in self.listeners:
                    listener(line)
                out.append(line)
        self._pending.extend(out)
        return out

    def replay(self, lines: list[str]) -> None:
        """Lines recorded from an earlier run of this same guest state (a restored snapshot's
        boot): logged, listened to and waited on as if they had just arrived."""
        self._feed("".join(line + "\n" for line in lines).encode())

    def read_lines(self, timeout: float) -> list[ConsoleLine]:
        """Read whatever arrives within timeout (at least one chunk if any); [] on timeout."""
        if self._closed:
            raise ConsoleClosed("the guest console is closed (QEMU exited)", detail=self.tail())
        try:
            data = self._read(max(timeout, 0.0))
        except EOFError:
            self._closed = True
            if self._partial:
                self._feed(b"\n")
            raise ConsoleClosed("QEMU exited", detail=self.tail()) from None
        return self._feed(data) if data else []

    def _read(self, timeout: float) -> bytes:
        """One select and one read on the pty, b"" on timeout, EOFError once QEMU is gone.

        Straight on the file descriptor rather than pexpect's read_nonblocking, which costs
        three selects and a waitpid per chunk: the UART delivers ~20 bytes a wakeup, so on a
        busy suite that was a few seconds of host CPU per run, taken from the other guest
        under -j."""
        fd = self.child.child_fd
        if self._poller is None:
            self._poller = select.poll()  # not select(): no FD_SETSIZE limit
            self._poller.register(fd, select.POLLIN)
        try:
            if not self._poller.poll(min(timeout, 3600.0) * 1000):
                return b""
            data = os.read(fd, 65536)
        except InterruptedError:
            return b""
        except OSError as exc:  # EIO: the pty's other side (QEMU) closed
            if exc.errno in (errno.EIO, errno.EBADF):
                raise EOFError from None
            raise
        if not data:
            raise EOFError
        return data

    def next_line(self, deadline: float, what: str) -> ConsoleLine:
        """The next unconsumed line; raise ConsoleTimeout (with the tail) at the deadline."""
        while not self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConsoleTimeout(f"timed out waiting for {what}", detail=self.tail())
            self.read_lines(remaining)
        return self._pending.popleft()

    def wait_for(self, match: Callable[[str], bool], timeout: float, what: str) -> ConsoleLine:
        """Consume lines until one satisfies match."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.next_line(deadline, what)
            except ConsoleTimeout as exc:
                exc.message = f"timed out after {timeout:.0f} s waiting for {what}"
                exc.args = (exc.message,)
                raise
            if match(line.text):
                return line

    def discard_pending(self) -> None:
        self._pending.clear()

    def drain(self, timeout: float = 0.0) -> None:
        """Read what is pending (e.g. the last lines before QEMU exits), ignoring closure."""
        try:
            while self.read_lines(timeout):
                pass
        except ConsoleClosed:
            pass

    @property
    def closed(self) -> bool:
        return self._closed


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))
