"""End to end: the real CLI builds the real driver, boots a real arm64 guest, runs the smoke scenario."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.scenario.loader import load_scenario
from tests.guest.broken import VARIANTS

pytestmark = pytest.mark.guest


def run_cli(*args: str, out: Path) -> tuple[int, str, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    result_file = out / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return proc.returncode, proc.stdout + proc.stderr, result


def no_qemu_left(out: Path) -> bool:
    pid = int((out / "qemu.pid").read_text())
    return not Path(f"/proc/{pid}").exists() or b"qemu" not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_smoke_passes_with_the_project_driver(tmp_path):
    code, output, result = run_cli("--target", "arm64-virt", "--scenario", "smoke", out=tmp_path)
    assert code == 0, output
    assert result["verdict"] == "pass"
    assert result["target"] == "arm64-virt"
    assert result["kernel"]["release"] == result["kernel"]["booted_release"]
    assert result["cma"]["size_mib"] == 128 and result["cma"]["base"].startswith("0x")
    names = [s["name"].split()[0] for s in result["steps"]]
    assert names.count("alloc") == 4 and all(s["status"] == "pass" for s in result["steps"])
    assert {b["ioctl"]["phys"] for b in result["blocks"]} == set() or result["blocks"] == []  # all freed
    smoke_steps = len(load_scenario(Path("configs/scenarios/smoke.yaml")).steps)
    [summary] = result["scenarios"]
    assert (summary["name"], summary["verdict"], summary["steps"]) == ("smoke", "pass", smoke_steps)
    ktap = next(s for s in result["steps"] if s["name"].startswith("ktap"))
    assert [p["status"] for p in ktap["subtests"]] == ["pass"] * 6  # cma_test --ktap: one point per step
    assert result["kernel_events"] == []
    assert set(result["timings"]) >= {
        "setup",
        "images",
        "build kmod",
        "build userland",
        "initramfs",
        "boot",
        "scenario",
        "report",
        "total",
    }
    console = (tmp_path / "console.log").read_text(errors="replace")
    dmesg = (tmp_path / "dmesg.txt").read_text()
    assert "dump_mem:CMA name:mem1" in dmesg and "cma: Reserved 128 MiB" in dmesg
    assert "@@ready" in console
    assert no_qemu_left(tmp_path)


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_broken_driver_fails_with_a_message_naming_the_problem(tmp_path, variant):
    kmod = variant.make(tmp_path)
    out = tmp_path / "run"
    code, output, result = run_cli("--scenario", variant.scenario, "--kmod", str(kmod), out=out)
    assert code == 1, output
    assert result["verdict"] == "fail"
    problems = "\n".join(p for step in result["steps"] for p in step["problems"])
    assert re.search(variant.expected_message, problems), problems
    assert re.search(variant.expected_message, output), output  # the user sees it too
    assert no_qemu_left(out)


def test_the_whole_shipped_suite_passes_in_one_boot(tmp_path):
    code, output, result = run_cli("--scenario", "configs/scenarios", out=tmp_path)
    assert code == 0, output
    shipped = sorted(p.stem for p in Path("configs/scenarios").glob("*.yaml"))
    assert [s["name"] for s in result["scenarios"]] == shipped
    assert all(s["verdict"] == "pass" for s in result["scenarios"])
    assert len(shipped) >= 8
    assert result["kernel_events"] == []
    stress = next(s for s in result["steps"] if s["scenario"] == "stress" and s["name"].startswith("repeat"))
    assert "(500/500 iterations)" in stress["name"]
    assert no_qemu_left(tmp_path)


def test_the_suite_passes_with_32_bit_cma_test_on_the_arm64_kernel(tmp_path):
    code, output, result = run_cli("--target", "arm64-compat", "--scenario", "configs/scenarios", out=tmp_path)
    assert code == 0, output
    assert all(s["verdict"] == "pass" for s in result["scenarios"])
    users = [
        int(line.split("user=")[1].split()[0], 16) for line in _records(result) if "op=alloc status=ok errno=0" in line
    ]
    assert users and max(users) < 1 << 32  # a 32-bit process really made these calls
    assert no_qemu_left(tmp_path)


def _records(result: dict) -> list[str]:
    return [line for s in result["steps"] for c in s["commands"] for line in c["stdout"].splitlines()]


def test_the_leak_oracle_stays_quiet_on_the_clean_driver_over_20_runs(tmp_path):
    code, output, result = run_cli(*(["--scenario", "smoke"] * 20), out=tmp_path)
    assert code == 0, output
    assert [s["verdict"] for s in result["scenarios"]] == ["pass"] * 20
    checks = [s for s in result["steps"] if s["name"] == "capacity mode=check"]
    assert len(checks) == 20 and all(s["status"] == "pass" for s in checks)


def test_a_failing_ktap_test_point_fails_its_step(tmp_path):
    scenario = tmp_path / "ktap.yaml"
    scenario.write_text(
        "name: ktap\nsteps:\n  - insmod: {}\n"
        "  - ktap: {run: 'cma_test --ktap alloc a 4K wc free nosuch free a'}\n  - rmmod: {}\n"
    )
    code, output, result = run_cli("--scenario", str(scenario), out=tmp_path / "run")
    assert code == 1, output
    step = next(s for s in result["steps"] if s["name"].startswith("ktap"))
    assert [p["status"] for p in step["subtests"]] == ["pass", "fail", "pass"]
    assert step["problems"] == ["not ok 2 free nosuch"]


def test_bad_scenario_is_a_usage_error_before_anything_boots(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - alloc: {name: a, size: 4K, type: wx}\n")
    code, output, _ = run_cli("--scenario", str(bad), out=tmp_path / "run")
    assert code == 2
    assert f"{bad}:3: step 'alloc': key 'type': expected one of wc, coherent" in output


def test_exitfirst_stops_at_the_first_failing_scenario(tmp_path):
    failing = tmp_path / "fails.yaml"
    failing.write_text("name: fails\nsteps:\n  - shell: {run: 'false'}\n")
    code, output, result = run_cli("--scenario", str(failing), "--scenario", "smoke", "-x", out=tmp_path / "run")
    assert code == 1, output
    assert [s["name"] for s in result["scenarios"]] == ["fails"]
    assert result["not_run"] == ["smoke"]
    assert "not run (-x stopped at the first failure): smoke" in output
    # Without -x the rest runs.
    code, output, result = run_cli("--scenario", str(failing), "--scenario", "smoke", out=tmp_path / "all")
    assert code == 1 and [s["name"] for s in result["scenarios"]] == ["fails", "smoke"] and result["not_run"] == []
