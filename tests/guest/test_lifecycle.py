"""QEMU never outlives the harness: hung step, Ctrl-C, SIGKILL; each ends in bounded time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest

# The hanging command announces itself on /dev/console (its stdout is captured until it ends),
# so a test can wait until the hang is really under way before it signals the harness.
HANG_MARK = "hang-under-way"
HANG = (
    "name: hang\nsteps:\n  - insmod: {}\n"
    f"  - shell: {{run: 'echo {HANG_MARK} >/dev/console; sleep 600', timeout: 3}}\n"
)


def qemu_alive(out: Path) -> bool:
    pid = int((out / "qemu.pid").read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    return b"qemu-system" in cmdline and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def start(tmp_path: Path, text: str = HANG) -> tuple[subprocess.Popen[str], Path]:
    scenario = tmp_path / "hang.yaml"
    scenario.write_text(text)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--scenario", str(scenario), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    return proc, out


def wait_for_console(out: Path, mark: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = out / "console.log"
        if log.exists() and mark.encode() in log.read_bytes():
            return
        time.sleep(0.05)
    raise AssertionError(f"{mark!r} never reached the console")


def wait_for_boot(out: Path, timeout: float = 120) -> None:
    wait_for_console(out, "@@ready", timeout)


def test_hung_step_fails_within_timeout_plus_5s_with_console_tail(tmp_path):
    proc, out = start(tmp_path)
    wait_for_boot(out)
    booted = time.monotonic()
    output, _ = proc.communicate(timeout=60)
    assert time.monotonic() - booted < 3 + 5, "hang not reported within timeout + 5 s"
    assert proc.returncode == 1, output
    result = json.loads((out / "result.json").read_text())
    assert result["verdict"] == "fail"
    [hung] = [s for s in result["steps"] if s["status"] != "pass"]
    assert "guest stopped answering" in hung["problems"][0] and "timed out after 3 s" in hung["problems"][0]
    assert result["console_tail"]
    assert not qemu_alive(out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "sigkill"])
def test_qemu_dies_with_the_harness(tmp_path, sig):
    proc, out = start(tmp_path)
    # Signal inside the hanging step (not in the gap between boot and the first step), so the
    # result must show that step cut short.
    wait_for_console(out, HANG_MARK)
    assert qemu_alive(out)
    os.kill(proc.pid, sig)
    output, _ = proc.communicate(timeout=10)
    deadline = time.monotonic() + 5
    while qemu_alive(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not qemu_alive(out), f"QEMU outlived the harness after {sig.name}"
    if sig != signal.SIGKILL:
        # Cancelled, not failed: 128 + the signal, the result kept, no traceback.
        assert proc.returncode == 128 + sig, output
        assert "Traceback" not in output, output
        result = json.loads((out / "result.json").read_text())
        assert result["verdict"] == "error" and result["interrupted_by"] == sig.name
        assert f"cancelled by {sig.name} during stage scenario" in result["error"]
        assert [s["status"] for s in result["steps"]][-1] == "error"


def test_qemu_killed_from_outside_is_an_environment_error_not_a_driver_failure(tmp_path):
    # A long step, so the kill lands inside it: the guest "stops answering", and only the
    # console tells a killed emulator (no panic) from a driver that hung or crashed the kernel.
    proc, out = start(tmp_path, HANG.replace("timeout: 3", "timeout: 60"))
    wait_for_console(out, HANG_MARK)
    os.kill(int((out / "qemu.pid").read_text()), signal.SIGKILL)
    killed = time.monotonic()
    output, _ = proc.communicate(timeout=30)
    assert time.monotonic() - killed < 5, "a dead emulator must be noticed at once, not after the step timeout"
    assert proc.returncode == 3, output
    assert "Traceback" not in output, output
    result = json.loads((out / "result.json").read_text())
    assert result["verdict"] == "error" and result["error_exit"] == 3
    assert "QEMU killed by SIGKILL during step" in result["error"]
    assert "no kernel panic or oops" in result["error"]
    assert "fail" not in [s["status"] for s in result["steps"]]
    assert result["steps"][-1]["status"] == "error"


def test_a_cancelled_repeat_stops_at_once(tmp_path):
    # SIGTERM ends the whole --repeat run (as CI cancelling a job means), not one iteration.
    scenario = tmp_path / "hang.yaml"
    scenario.write_text(HANG.replace("timeout: 3", "timeout: 60"))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--repeat", "3", "--scenario", str(scenario), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    wait_for_console(out / "iter-01", HANG_MARK)
    os.kill(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "2 iteration(s) not run" in output, output
    assert not (out / "iter-02").exists()
    assert not qemu_alive(out / "iter-01")
