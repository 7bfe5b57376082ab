"""The pytest plugin fails what it must: a kernel fault fails the test that caused it, a bad scenario fails its item."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.guest.broken import VARIANTS

pytestmark = pytest.mark.guest
ROOT = Path(__file__).resolve().parents[2]


def run_pytest(tmp_path: Path, *args: str) -> tuple[int, str, ET.ElementTree]:
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--cma-out", str(tmp_path / "out"),
         "--junitxml", str(junit), "-o", "junit_logging=all", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=900, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr, ET.parse(junit)


def test_a_kernel_warning_fails_the_test_and_the_scenario_that_caused_it(tmp_path):
    variant = next(v for v in VARIANTS if v.name == "warn-on-free")
    kmod = variant.make(tmp_path)
    code, output, junit = run_pytest(
        tmp_path,
        "--cma-kmod", str(kmod),
        "tests/guest/test_with_fixtures.py::test_two_blocks_are_apart_and_keep_their_patterns",
        "tests/guest/test_with_fixtures.py::test_guest_fixture_runs_commands",
        "configs/scenarios/smoke.yaml",
    )  # fmt: skip
    assert code == 1, output
    cases = {case.get("name"): case for case in junit.iter("testcase")}
    failed = cases["test_two_blocks_are_apart_and_keep_their_patterns"].find("failure")
    assert failed is not None and "WARNING in cma_mem_ioc" in failed.get("message", "") + (failed.text or "")
    props = [p.get("value") for p in cases["test_two_blocks_are_apart_and_keep_their_patterns"].iter("property")]
    assert any(v.startswith("warning: WARNING in cma_mem_ioc") for v in props)
    assert cases["test_guest_fixture_runs_commands"].find("failure") is None  # no free there: no warning
    assert cases["smoke"].find("failure") is not None


def test_a_users_scenario_file_is_a_test_and_fails_with_its_line(tmp_path):
    scenario = tmp_path / "mine.yaml"
    scenario.write_text(
        "name: mine\nsteps:\n  - insmod: {}\n  - alloc: {name: a, size: 4K}\n"
        "  - free: {name: a, expect: ENOENT}\n  - exit: main\n  - rmmod: {}\n"
    )
    code, output, junit = run_pytest(tmp_path, str(scenario))
    assert code == 1, output
    [case] = list(junit.iter("testcase"))
    failure = case.find("failure")
    assert failure is not None
    assert "step 3 (free name=a expect=ENOENT, line 5)" in (failure.text or "") + failure.get("message", "")
