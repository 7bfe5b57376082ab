"""The one small interface every transport implements (labgrid's CommandProtocol in spirit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CommandResult:
    command: str
    status: int
    stdout: str
    stderr: str
    started: float  # seconds since QEMU start
    duration: float  # seconds

    @property
    def ok(self) -> bool:
        return self.status == 0


class Transport(Protocol):
    name: str

    def run(self, command: str, timeout: float | None = None, *, bulky: bool = False) -> CommandResult:
        """Run a shell command in the guest; its real exit status, stdout and stderr apart.
        bulky: the output is expected to be big (kilobytes): a slow link may compress it."""
        ...

    def fits(self, command: str, *, bulky: bool = False) -> bool:
        """Can run() take this command in one go (a console line has a length limit)?"""
        ...

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file in the guest."""
        ...
