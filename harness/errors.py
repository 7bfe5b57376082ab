"""Error types, each tied to the exit status the CLI returns for it.

Exit statuses are a contract with CI scripts:
0 pass, 1 test failure, 2 bad usage or configuration, 3 infrastructure failure.
"""

from __future__ import annotations

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INFRA = 3


class HarnessError(Exception):
    """Base class: an error the CLI reports in one message, without a traceback."""

    exit_code = EXIT_INFRA

    def __init__(self, message: str, *, hint: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint  # how to fix it, shown under the message
        self.detail = detail  # e.g. a console tail or the last lines of a build log

    def render(self) -> str:
        parts = [self.message]
        if self.hint:
            parts.append(f"fix: {self.hint}")
        if self.detail:
            parts.append(self.detail.rstrip())
        return "\n".join(parts)


class ConfigError(HarnessError):
    """A target, scenario or command line that cannot be used as written."""

    exit_code = EXIT_USAGE


class InfraError(HarnessError):
    """The machinery failed: a missing tool, a failed download or build, a guest that never booted."""

    exit_code = EXIT_INFRA


class MissingHostTools(InfraError):
    """Host tools are missing and were not (or could not be) installed."""


class GuestError(InfraError):
    """The guest stopped answering, died or did not boot; carries the console tail in detail."""


class GuestDied(GuestError):
    """QEMU exited with no kernel report on the console: the emulator died, not the driver's doing."""


class Cancelled(HarnessError):
    """The run was stopped by a signal (SIGINT from a person, SIGTERM from a CI system cancelling a job).

    Exit status 128 + the signal number, as shells report a process killed by it (130, 143).
    """

    def __init__(self, signum: int, message: str = "") -> None:
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(message or f"cancelled by {self.signal_name}")
        self.exit_code = 128 + signum


class GuestSetupError(InfraError):
    """A guest-side helper of the harness could not start (a kernel lacking a feature, a missing
    tool in the guest): the environment, not the driver."""
