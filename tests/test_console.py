"""The console reader on a real pty: lines as they arrive, kernel lines cut out, EOF seen."""

from __future__ import annotations

import io
import sys

import pexpect
import pytest

from harness.guest.console import Console, ConsoleClosed, ConsoleTimeout

# Output in three bursts, the last line without a newline, then exit: what QEMU's pty gives.
PROGRAM = (
    "import sys, time\n"
    "w = sys.stdout.write\n"
    "w('@@1 B\\nhalf'); sys.stdout.flush(); time.sleep(0.05)\n"
    "w(' line[    1.000000] WARNING: x\\n'); sys.stdout.flush(); time.sleep(0.05)\n"
    "w('tail'); sys.stdout.flush()\n"
)


def spawn(program: str) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, ["-c", program], echo=False)


def test_lines_arrive_split_and_logged_then_eof() -> None:
    log = io.BytesIO()
    console = Console(spawn(PROGRAM), log)
    seen: list[str] = []
    console.add_listener(lambda line: seen.append(line.text))
    got = [console.next_line(float("inf"), "x").text for _ in range(3)]
    assert got == ["@@1 B", "half line", "[    1.000000] WARNING: x"]
    with pytest.raises(ConsoleClosed):
        console.next_line(float("inf"), "more")
    # The unterminated last line is still seen once the other side is gone.
    assert seen == [*got, "tail"]
    assert log.getvalue().replace(b"\r", b"") == b"@@1 B\nhalf line[    1.000000] WARNING: x\ntail\n"
    assert console.closed


def test_nothing_arrives_times_out_with_the_tail() -> None:
    import time

    console = Console(spawn("import sys, time; print('booting'); sys.stdout.flush(); time.sleep(30)"))
    try:
        with pytest.raises(ConsoleTimeout) as exc:
            console.wait_for(lambda text: text == "@@ready", 0.3, "the ready marker")
        assert "booting" in (exc.value.detail or "")
        started = time.monotonic()
        assert console.read_lines(0.0) == []
        assert time.monotonic() - started < 0.1
    finally:
        console.child.terminate(force=True)


def test_a_closed_console_is_followed_by_the_exit_it_announces() -> None:
    # A QEMU killed from outside closes its pty a moment before it can be reaped: right after
    # the console's EOF it may still look alive. wait_exit bridges that gap (on a pidfd), and
    # still says "alive" for a process that keeps running with its console closed.
    import time

    from harness.guest.qemu_process import QemuProcess

    closing = QemuProcess(["sh", "-c", "exec 0<&- 1>&- 2>&-; sleep 0.3"]).start()
    console = Console(closing.child, io.BytesIO())
    with pytest.raises(ConsoleClosed):
        console.next_line(time.monotonic() + 10, "x")
    assert closing.alive(), "the test needs the gap: EOF while the process still runs"
    began = time.monotonic()
    assert closing.wait_exit(10.0)
    assert time.monotonic() - began < 5
    closing.stop()
    assert closing.exit_status == 0

    lingering = QemuProcess(["sh", "-c", "exec 0<&- 1>&- 2>&-; sleep 30"]).start()
    try:
        assert not lingering.wait_exit(0.0)
        assert not lingering.wait_exit(0.2)
    finally:
        lingering.stop()
    assert lingering.stopped_by_us


def test_a_qemu_killed_from_outside_while_stop_runs_is_not_counted_as_ours():
    import signal

    from harness.guest.qemu_process import QemuProcess

    # faults.sh: a QEMU SIGKILLed from outside closes its console before it can be reaped, so
    # stop() still found it alive and sent SIGTERM; only the signal that ended it says whose it was.
    dying = QemuProcess(["sh", "-c", "trap '' TERM; echo armed; sleep 0.3; kill -KILL $$"]).start()
    dying.child.expect_exact("armed", timeout=10)  # SIGTERM before the trap would end it at once
    dying.stop(grace=5.0)
    assert dying.exit_signal == signal.SIGKILL and not dying.stopped_by_us
    assert dying.describe_exit() == "killed by SIGKILL"
    dying.stop()  # idempotent: a second stop changes nothing
    assert not dying.stopped_by_us
