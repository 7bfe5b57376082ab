"""The fuzzer finds a bug nobody listed: planted in a temporary copy of the driver, found from a
random seed, shrunk to a short reproducer that fails as a scenario (and passes on the clean driver)."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.guest.test_run import run_cli

pytestmark = pytest.mark.guest

KMOD = Path(__file__).resolve().parents[2] / "kmod"
# By-name lookups match a prefix of the stored name: "ab" finds "abc". No shipped scenario's
# names prefix one another; the fuzzer's do, by design.
EXACT = "if (!strcmp(buf->name, name))"
PREFIX = "if (!strncmp(buf->name, name, strlen(name)))"


def fuzz(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", "fuzz", "--target", "arm64-fast", "--out", str(out), *args],
        capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_planted_bug_is_found_from_a_random_seed_and_shrunk_to_a_reproducer(tmp_path):
    kmod = tmp_path / "kmod"
    shutil.copytree(KMOD, kmod, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*.cmd"))
    source = (kmod / "cma_mem.c").read_text()
    assert source.count(EXACT) == 1
    (kmod / "cma_mem.c").write_text(source.replace(EXACT, PREFIX))
    seed = random.randrange(1 << 20)
    proc = fuzz(tmp_path / "fuzz", "--kmod", str(kmod), "--seed", str(seed), "--ops", "5000")
    assert proc.returncode == 1, f"seed {seed}: {proc.stdout}{proc.stderr}"
    assert "MISMATCH" in proc.stdout
    summary = json.loads((tmp_path / "fuzz" / "fuzz.json").read_text())
    assert summary["mismatches"] and summary["seed"] == seed
    repro = tmp_path / "fuzz" / "repro.yaml"
    shrunk = re.search(r"shrunk to (\d+) steps", proc.stdout)
    assert shrunk and int(shrunk.group(1)) <= 5, proc.stdout
    assert yaml.safe_load(repro.read_text())["steps"]
    # The reproducer fails the same way as a scenario on the broken copy, and passes on the clean driver.
    broken = ("--target", "arm64-fast", "--kmod", str(kmod), "--scenario", str(repro))
    code, output, _ = run_cli(*broken, out=tmp_path / "b")
    assert code == 1, output
    code, output, _ = run_cli("--target", "arm64-fast", "--scenario", str(repro), out=tmp_path / "c")
    assert code == 0, output


def test_the_clean_driver_matches_the_model(tmp_path):
    proc = fuzz(tmp_path / "fuzz", "--seed", "7", "--ops", "3000")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "fuzz" / "fuzz.json").read_text())
    assert summary["ops"] >= 3000 and summary["mismatches"] == [] and summary["events"] == []
