"""Snapshot boot end to end (arm64-virt, Debian's kernel): restoring is invisible to results.

The shipped suite gives the same verdicts, step for step, restored as booted cold; the kernel
log still carries the boot lines the oracles read; the driver under test is this build's; a
snapshot that will not restore falls back to a cold boot and says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guest.broken import VARIANTS
from tests.guest.test_run import run_cli as run_any

pytestmark = [pytest.mark.guest, pytest.mark.xdist_group("snapshot-arm64-virt")]
ROOT = Path(__file__).resolve().parents[2]
ONE = str(ROOT / "benchmarks" / "one-command.yaml")


def run_cli(*args: str, out: Path) -> tuple[int, str, dict]:
    return run_any("--target", "arm64-virt", *args, out=out)


def snapshot_dir(result: dict) -> Path:
    from harness import paths

    return paths.cache_dir() / "snapshots" / f"arm64-virt-{result['kernel']['boot']['snapshot']}"


def restored(tmp_path: Path, *args: str) -> tuple[int, str, dict, Path]:
    """A run restored from the snapshot (made by a first run if there is none yet), and its folder."""
    for attempt in ("save", "restored"):
        out = tmp_path / attempt
        code, output, result = run_cli("--snapshot", "auto", *args, out=out)
        if result.get("kernel", {}).get("boot", {}).get("mode") == "restored":
            return code, output, result, out
    raise AssertionError(f"not restored: {result.get('kernel', {}).get('boot')}\n{output}")


def snapshot_facts(result: dict) -> dict:
    """kernel.boot without `prespawned`: whether an earlier identical run's plan started QEMU early
    depends on what the cache holds (plans outlive runs, keyed by arguments and working directory),
    not on snapshots."""
    return {k: v for k, v in result["kernel"]["boot"].items() if k != "prespawned"}


def verdicts(result: dict) -> list[tuple]:
    return [(s["scenario"], s["index"], s["name"], s["status"], s["problems"]) for s in result["steps"]]


def test_the_restored_suite_gives_the_cold_verdicts_step_for_step(tmp_path):
    code, output, cold = run_cli("--scenario", "configs/scenarios", "--snapshot", "off", out=tmp_path / "cold")
    assert code == 0, output
    assert snapshot_facts(cold) == {"mode": "cold"}
    code, output, warm, out = restored(tmp_path, "--scenario", "configs/scenarios")
    assert code == 0, output
    assert verdicts(warm) == verdicts(cold)
    assert [(s["name"], s["verdict"]) for s in warm["scenarios"]] == [
        (s["name"], s["verdict"]) for s in cold["scenarios"]
    ]
    for key in ("booted_release", "checkers"):
        assert warm["kernel"][key] == cold["kernel"][key]
    assert warm["cma"] == cold["cma"]
    # The boot messages the oracles need: in the console (replayed) and in dmesg (the restored memory).
    assert "cma: Reserved 128 MiB" in (out / "console.log").read_text(errors="replace")
    # (The suite's dump_mem records overflow the kernel's log buffer: dmesg.txt keeps the boot
    # lines or loses them alike, booted or restored.)
    cold_dmesg = (tmp_path / "cold" / "dmesg.txt").read_text(errors="replace")
    warm_dmesg = (out / "dmesg.txt").read_text(errors="replace")
    assert ("cma: Reserved" in warm_dmesg) == ("cma: Reserved" in cold_dmesg)
    assert (snapshot_dir(warm) / "state").is_file()


def test_a_restored_guests_dmesg_has_the_boot_messages(tmp_path):
    code, output, _, out = restored(tmp_path, "--scenario", ONE)
    assert code == 0, output
    dmesg = (out / "dmesg.txt").read_text(errors="replace")
    assert "cma: Reserved 128 MiB" in dmesg and "Linux version" in dmesg


def test_a_restored_guest_runs_this_builds_driver(tmp_path):
    restored(tmp_path, "--scenario", ONE)  # the snapshot exists
    variant = next(v for v in VARIANTS if v.name == "warn-on-free")
    kmod = variant.make(tmp_path)
    code, output, result = run_cli(
        "--snapshot", "auto", "--scenario", variant.scenario, "--kmod", str(kmod), out=tmp_path / "b"
    )
    assert result["kernel"]["boot"]["mode"] == "restored", output
    assert code == 1, output
    problems = "\n".join(p for step in result["steps"] for p in step["problems"])
    assert "WARNING in cma_mem_ioc" in problems


def test_a_snapshot_that_will_not_restore_falls_back_to_a_cold_boot(tmp_path):
    _, _, result, _ = restored(tmp_path, "--scenario", ONE)
    state = snapshot_dir(result) / "state"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])  # cut short: QEMU cannot load it
    code, output, result = run_cli("--snapshot", "auto", "--scenario", ONE, out=tmp_path / "fallback")
    assert code == 0, output
    boot = result["kernel"]["boot"]
    assert boot["mode"] == "cold" and "failed" in boot["note"] and "booted instead" in boot["note"], boot
    assert result["cma"]["size_mib"] == 128
    code, output, result = run_cli("--snapshot", "auto", "--scenario", ONE, out=tmp_path / "remade")
    assert code == 0 and result["kernel"]["boot"].get("saved"), result["kernel"]["boot"]  # made anew


def test_snapshots_off_and_kernels_without_virtio_blk_boot(tmp_path):
    code, output, result = run_cli("--snapshot", "off", "--scenario", ONE, out=tmp_path / "off")
    assert code == 0 and snapshot_facts(result) == {"mode": "cold"}, output
    out = tmp_path / "fast"
    argv = [sys.executable, "-m", "harness", "run", "--target", "arm64-fast", "--scenario", ONE, "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    boot = json.loads((out / "result.json").read_text())["kernel"]["boot"]
    assert boot["mode"] == "cold" and "CONFIG_VIRTIO" in boot["note"], boot
