"""An upstream kselftest, cross-built from linux-source-6.1, in the guest: per-test results match its Totals line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "examples" / "kselftest.yaml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", "run", *args],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )


def test_the_kselftest_example_passes_and_its_counts_match_its_totals_line(tmp_path):
    proc = run("--target", "arm64-fast", "--scenario", str(EXAMPLE), "--out", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # --json: the result on stdout, nothing else there
    assert result == json.loads((tmp_path / "result.json").read_text())
    assert result["verdict"] == "pass"
    [step] = result["steps"]
    out = step["commands"][0]["stdout"]
    m = re.search(r"^# Totals: pass:(\d+) fail:(\d+) xfail:(\d+) xpass:(\d+) skip:(\d+) error:(\d+)", out, re.M)
    assert m, out
    passed, failed, xfail, xpass, skipped, error = map(int, m.groups())
    statuses = [p["status"] for p in step["subtests"]]
    assert statuses.count("pass") == passed + xfail
    assert statuses.count("skip") == skipped
    assert statuses.count("fail") == failed + error + xpass == 0
    assert skipped >= 1, "the example shows a skip counted as a skip"  # arm64's vDSO has no clock_getres
    assert len(statuses) == int(re.search(r"^1\.\.(\d+)", out, re.M).group(1))
    # The program came from the cached build stage, static, into /usr/bin, and is in the provenance.
    [placed] = result["config"]["files"]
    assert placed["dest"] == "/usr/bin/vdso_test_abi" and placed["source"].startswith("kselftest vDSO/vdso_test_abi")
    assert result["provenance"]["initramfs_files"]["/usr/bin/vdso_test_abi"] == placed["sha256"]
    assert any(p["name"] == "linux-source-6.1" for p in result["provenance"]["packages"])


def test_a_dynamic_program_is_refused_before_boot(tmp_path):
    dynamic = tmp_path / "dyn"
    src = tmp_path / "dyn.c"
    src.write_text("int main(void) { return 0; }\n")
    subprocess.run(["aarch64-linux-gnu-gcc", "-o", str(dynamic), str(src)], check=True)
    proc = run("--target", "arm64-fast", "--add", f"{dynamic}:/root/dyn", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert "dynamically linked" in proc.stderr and "-static" in proc.stderr
    assert not (tmp_path / "run" / "qemu.pid").exists()
