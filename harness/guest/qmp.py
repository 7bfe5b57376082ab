"""A minimal synchronous QMP client: what saving a snapshot needs, and nothing else.

QMP is JSON lines over a Unix socket: a greeting, `qmp_capabilities`, then one command at a
time, each answered by `return` or `error` (asynchronous `event`s may come in between and are
skipped). File descriptors (the migration's target file) travel with `getfd` as SCM_RIGHTS.
The qemu.qmp library does the same over asyncio; this client needs no event loop, imports in
about a millisecond and is only used on the (rare) snapshot-saving path.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from harness.errors import GuestError


class QmpError(GuestError):
    """QEMU refused a command or the monitor went away."""


class Qmp:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buf = b""

    def connect(self) -> Qmp:
        """Connect (QEMU creates the socket as it starts: retried until the timeout) and negotiate."""
        deadline = time.monotonic() + self.timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise QmpError(f"cannot reach QEMU's monitor at {self.path}: {exc}") from None
                time.sleep(0.01)
        sock.settimeout(self.timeout)
        self.sock = sock
        self._read()  # the greeting
        self.command("qmp_capabilities")
        return self

    def _read(self) -> dict[str, Any]:
        assert self.sock is not None
        while b"\n" not in self._buf:
            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                raise QmpError(f"QEMU's monitor: {exc}") from None
            if not data:
                raise QmpError("QEMU's monitor closed (QEMU exited?)")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def command(self, name: str, arguments: dict[str, Any] | None = None, fds: list[int] | None = None) -> Any:
        assert self.sock is not None
        request: dict[str, Any] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        data = json.dumps(request).encode() + b"\n"
        try:
            if fds:
                socket.send_fds(self.sock, [data], fds)
            else:
                self.sock.sendall(data)
        except OSError as exc:
            raise QmpError(f"QEMU's monitor: {exc}") from None
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise QmpError(f"QEMU refused {name}: {reply['error'].get('desc', reply['error'])}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Qmp:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
