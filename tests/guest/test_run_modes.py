"""`run`'s modes on a real guest: overrides recorded, --dry-run boots nothing, -j merges, --repeat summarises."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", "run", "--target", "arm64-fast", *args],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )


def test_overrides_reach_the_guest_and_result_json(tmp_path):
    proc = run("-k", "smoke", "--cma", "64M", "--kernel-arg", "loglevel=7", "--timeout", "command=45", "--json",
               "--out", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["cma"]["size_mib"] == 64  # the kernel reserved what the command line asked for
    config = result["config"]
    assert config["overrides"] == {"kernel_args": ["loglevel=7"], "cma_mib": 64, "timeouts": {"command": 45.0}}
    assert "cma=64M" in config["kernel_cmdline"] and config["kernel_cmdline"].endswith("loglevel=7")
    assert config["qemu_argv"][config["qemu_argv"].index("-append") + 1] == config["kernel_cmdline"]
    prov = result["provenance"]
    assert set(prov["artifacts"]) >= {"kernel", "initramfs", "module"}
    assert prov["initramfs_files"]["/lib/modules/cma_mem.ko"] == prov["artifacts"]["module"]["sha256"]
    assert prov["qemu"]["version"].startswith("QEMU emulator version")
    assert prov["driver_source"] and prov["host"]["cpus"] >= 1


def test_dry_run_prints_the_plan_and_boots_nothing(tmp_path):
    proc = run("-k", "frag", "--smp", "2", "--dry-run", "--json", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["smp"] == 2 and plan["qemu_argv"][plan["qemu_argv"].index("-smp") + 1] == "2"
    [scenario] = plan["scenarios"]
    assert scenario["name"] == "fragmentation" and scenario["steps"][0]["step"] == "insmod"
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_parallel_jobs_merge_into_one_result_and_repeat_summarises(tmp_path):
    proc = run("-k", "smoke", "-k", "lifecycle", "-j", "2", "--repeat", "2", "--json", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["verdict"] == "pass" and summary["flaky"] == []
    assert summary["scenarios"] == {
        "arm64-fast/lifecycle": {"pass": 2, "fail": 0, "error": 0},
        "arm64-fast/smoke": {"pass": 2, "fail": 0, "error": 0},
    }
    merged = json.loads((tmp_path / "iter-01" / "result.json").read_text())
    assert [s["name"] for s in merged["scenarios"]] == ["lifecycle", "smoke"]
    # The two jobs shared one queue: each scenario ran in exactly one of them.
    jobs = merged["config"]["jobs"]
    assert len(jobs) == 2 and sorted(name for j in jobs for name in j["scenarios"]) == ["lifecycle", "smoke"]
    claims = tmp_path / "iter-01" / "jobs" / "claims"
    assert sorted(p.name for p in claims.iterdir()) == ["lifecycle", "smoke"]
    for job in merged["config"]["jobs"]:
        assert json.loads((tmp_path / "iter-01" / "jobs" / job["job"].split("/")[1] / "result.json").read_text())
    assert "flake summary over 2 iterations" in proc.stderr


def test_a_second_parallel_run_into_the_same_out_runs_every_scenario_again(tmp_path):
    # CI jobs often reuse one --out: the first run's claims must not leave the second with
    # nothing to run (it once passed in 0.8 s having run no scenario).
    for _ in range(2):
        proc = run("-k", "smoke", "-k", "multi-process", "-j", "2", "--json", "--out", str(tmp_path))
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert [s["name"] for s in result["scenarios"]] == ["multi-process", "smoke"]
        assert all(s["verdict"] == "pass" and s["steps"] > 1 for s in result["scenarios"]), result["scenarios"]


def test_a_run_into_a_used_out_never_shows_the_previous_runs_files(tmp_path):
    # The second run's kernel panics at boot (no initramfs /init): its folder must not keep the
    # first run's dmesg.txt beside its own console.log and verdict.
    assert run("-k", "smoke", "--out", str(tmp_path)).returncode == 0
    first = (tmp_path / "dmesg.txt").read_text()
    proc = run("-k", "smoke", "--kernel-arg", "rdinit=/nonexistent", "--json", "--out", str(tmp_path))
    assert proc.returncode == 3, proc.stderr  # the environment (a bad command line), not the driver
    assert "Kernel panic" in (tmp_path / "console.log").read_text()
    assert not (tmp_path / "dmesg.txt").exists() or (tmp_path / "dmesg.txt").read_text() != first
    assert json.loads((tmp_path / "result.json").read_text())["verdict"] == "error"


def test_an_identical_run_adopts_the_early_qemu_and_an_edited_driver_never_does(tmp_path):
    # The CLI starts the last identical run's QEMU command line before planning
    # (harness/guest/prespawn.py). The next identical run must adopt it; after a driver edit the
    # initramfs is another content-keyed file, so the guess is stopped and this build's driver boots.
    kmod = tmp_path / "kmod"
    shutil.copytree(Path(__file__).resolve().parents[2] / "kmod", kmod)
    args = ("-k", "smoke", "--kmod", str(kmod), "--snapshot", "off", "--json", "--out", str(tmp_path / "out"))

    def once() -> dict:
        proc = run(*args)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    first, second = once(), once()
    assert "prespawned" not in first["kernel"]["boot"]
    assert second["kernel"]["boot"].get("prespawned") is True
    assert second["verdict"] == "pass" and second["config"]["qemu_argv"] == first["config"]["qemu_argv"]

    source = kmod / "cma_mem.c"
    source.write_text(source.read_text() + 'MODULE_INFO(cmah_edit, "prespawn test");\n')
    third = once()
    assert "prespawned" not in third["kernel"]["boot"]
    assert third["verdict"] == "pass"
    module = "/lib/modules/cma_mem.ko"
    assert third["provenance"]["initramfs_files"][module] != second["provenance"]["initramfs_files"][module]
    assert third["config"]["qemu_argv"] != second["config"]["qemu_argv"]
