"""The same scenario locally and through LAVA: export smoke, run it under a local `lava-run` (Debian's
lava-dispatcher, offline, file:// artifacts, the rendered qemu device dictionary), import the log, and
compare it with a local run; a broken driver fails the farm run with the failing step named.

lava-dispatcher is installed by the guest tox env's set-up (`cma-harness setup --with lava`); never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.run.result import RunResult
from tests.guest.broken import VARIANTS

pytestmark = [pytest.mark.guest, pytest.mark.xdist_group("lava")]


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def lava_run(job_dir: Path, job_id: int) -> tuple[int, Path]:
    """`lava-run` on the exported job; its log (stderr: one YAML object a line) saved as lava.log."""
    lava = shutil.which("lava-run")
    assert lava, "lava-run is missing: run `cma-harness setup --with lava` (the guest tox env does)"
    log = job_dir / "lava.log"
    with log.open("w") as err:
        proc = subprocess.run(
            [lava, "--device", "device.yaml", "--job-id", str(job_id), "--output-dir", "out", "job.yaml"],
            cwd=job_dir,
            stdout=subprocess.DEVNULL,
            stderr=err,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
    return proc.returncode, log


def export(out: Path, *extra: str) -> Path:
    proc = cli("lava-job", "--target", "arm64-virt", "--scenario", "smoke", "--out", str(out / "job.yaml"), *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "device.yaml").is_file() and (out / "SHA256SUMS").is_file()
    return out


def test_smoke_through_lava_passes_and_compares_equal_to_the_local_run(tmp_path):
    job_dir = export(tmp_path / "job")
    code, log = lava_run(job_dir, job_id=os.getpid())
    assert code == 0, log.read_text()[-3000:]
    assert "Job finished correctly" in log.read_text()

    farm = tmp_path / "farm"
    proc = cli("import-lava", str(log), "--out", str(farm))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    imported = RunResult.load(farm)
    assert imported.verdict == "pass" and len(imported.steps) == 20
    assert imported.allocations and all(a["dmesg"] for a in imported.allocations)
    assert (farm / "dmesg.txt").read_text().count("dump_mem:CMA name:") >= 4

    local = tmp_path / "local"
    proc = cli("run", "--target", "arm64-virt", "--scenario", "smoke", "--out", str(local))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = cli("compare", str(local), str(farm))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(s.index, s.name, s.status) for s in RunResult.load(local).steps] == [
        (s.index, s.name, s.status) for s in imported.steps
    ]
    assert cli("report", str(farm)).returncode == 0


def test_a_broken_driver_fails_the_lava_job_and_the_import_names_the_step(tmp_path):
    variant = next(v for v in VARIANTS if v.name == "no-test-pattern")
    job_dir = export(tmp_path / "job", "--kmod", str(variant.make(tmp_path)))
    code, log = lava_run(job_dir, job_id=os.getpid() + 1)
    text = log.read_text()
    # The farm's own view: the job is complete (exit 0), the step's test case failed.
    assert code == 0, text[-3000:]
    assert '"case": "07-verify-names-mem1-mem2-mem3-buf", "definition": "0_smoke", ' in text
    assert '"result": "fail"' in text
    proc = cli("import-lava", str(log), "--out", str(tmp_path / "farm"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL smoke step 7 (verify names=mem1,mem2,mem3,buf)" in proc.stderr
    imported = RunResult.load(tmp_path / "farm")
    step = imported.steps[6]
    assert step.status == "fail" and any("pattern mismatch" in p for p in step.problems)
