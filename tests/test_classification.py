"""Who is to blame: exit 1 only for the driver and the kernel's reports about it.

Each kind of guest-side error is pinned here, without QEMU: a cancelled run, a dead emulator,
a hung guest, a kernel report, a guest helper that cannot start, a bad configuration.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from harness.errors import (
    Cancelled,
    ConfigError,
    GuestDied,
    GuestError,
    GuestSetupError,
    HarnessError,
    InfraError,
    MissingHostTools,
)
from harness.guest.console import ConsoleClosed, ConsoleTimeout
from harness.run.result import RunResult, Verdict, aborted_by_environment, error_verdict
from harness.scenario.model import StepStatus
from tests.fake_guest import Reply, runner_for
from tests.test_runner_replay import scenario_of

ERROR, FAIL = Verdict.ERROR, Verdict.FAIL

CASES: list[tuple[str, HarnessError, bool, Verdict, int]] = [
    ("SIGTERM: a CI system cancelled the job", Cancelled(signal.SIGTERM), False, ERROR, 143),
    ("SIGTERM after a kernel report is still a cancel", Cancelled(signal.SIGTERM), True, ERROR, 143),
    ("SIGINT: a person pressed Ctrl-C", Cancelled(signal.SIGINT), False, ERROR, 130),
    ("a bad target or scenario", ConfigError("bad key"), False, ERROR, 2),
    ("a missing host package", MissingHostTools("no qemu"), False, ERROR, 3),
    ("a failed download or build", InfraError("make failed"), False, ERROR, 3),
    ("QEMU exited with no kernel report", GuestDied("QEMU killed by SIGKILL"), False, ERROR, 3),
    ("QEMU exited before the shell: did not boot", ConsoleClosed("QEMU exited"), False, ERROR, 3),
    ("the guest stopped answering, nothing reported", ConsoleTimeout("timed out"), False, ERROR, 3),
    ("the guest stopped answering after an oops", GuestError("stopped answering"), True, FAIL, 1),
    ("a guest helper that cannot start", GuestSetupError("cma_test serve: ENOSYS"), False, ERROR, 3),
]


@pytest.mark.parametrize(("exc", "reported", "verdict", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_verdicts(exc: HarnessError, reported: bool, verdict: Verdict, code: int) -> None:
    assert error_verdict(exc, reported) == (verdict, code)
    record = RunResult(verdict=verdict, error_exit=code if verdict == ERROR else 3)
    assert record.exit_code == code
    assert RunResult.from_json(record.to_json()).exit_code == code


@pytest.mark.parametrize(
    ("qemu_alive", "reported", "environment"),
    [
        (False, False, True),  # killed from outside: no panic on the console
        (False, True, False),  # a panic ends QEMU (panic=-1, -no-reboot): the driver's doing
        (True, False, False),  # a step that hangs the guest: the driver's doing (or the scenario's)
        (True, True, False),
    ],
)
def test_a_guest_that_stopped_answering(qemu_alive: bool, reported: bool, environment: bool) -> None:
    assert aborted_by_environment(qemu_alive, reported) is environment


def test_cancelled_names_the_signal() -> None:
    exc = Cancelled(signal.SIGTERM)
    assert (exc.signal_name, exc.exit_code, exc.message) == ("SIGTERM", 143, "cancelled by SIGTERM")


@pytest.mark.parametrize(
    "reply",
    [
        # The seed's AF_UNIX server on a kernel without CONFIG_NET/CONFIG_UNIX.
        "@cma op=serve status=fail errno=ENOSYS name=main msg=socket failed: Function not implemented\n",
        "@cma op=serve status=fail errno=ECHILD name=main msg=server died before listening\n",
    ],
)
def test_a_guest_helper_that_cannot_start_is_the_environment(tmp_path: Path, reply: str) -> None:
    runner, _ = runner_for([Reply("cma_test serve main", 1, reply)])
    with pytest.raises(GuestSetupError, match="`cma_test serve main` could not start") as info:
        runner.run(scenario_of(tmp_path, "  - alloc: {name: a, size: 4096}\n"))
    assert "guest kernel requirements" in info.value.render()
    [step] = runner.results
    assert step.status == StepStatus.ERROR  # not a failure of the driver
    assert "cannot start process 'main'" in step.problems[0]


def test_a_cancelled_step_is_marked_interrupted_not_failed(tmp_path: Path) -> None:
    def cancel(command: str, timeout: float | None = None, bulky: bool = False):  # type: ignore[no-untyped-def]
        raise Cancelled(signal.SIGTERM)

    runner, transport = runner_for([])
    transport.run = cancel  # type: ignore[method-assign]
    with pytest.raises(Cancelled):
        runner.run(scenario_of(tmp_path, "  - shell: {run: 'true'}\n"))
    [step] = runner.results
    assert step.status == StepStatus.ERROR
    assert step.problems == ["cancelled by SIGTERM while this step ran"]
