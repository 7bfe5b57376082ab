"""The small board kernel (arm64-tiny: hard requirements only, no networking, 32 MiB of CMA).

Issue 18: on such a kernel every failure must be the driver's, never the environment's.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.guest.test_run import run_cli

pytestmark = pytest.mark.guest

# Written for 128 MiB of CMA (64M halves, 31 x 4M): they cannot fit in 32 MiB until scenario
# sizes can be relative to the area. Every other shipped scenario must pass.
NEEDS_128M = {"exhaustion", "fragmentation"}
FITS = sorted(p.stem for p in Path("configs/scenarios").glob("*.yaml") if p.stem not in NEEDS_128M)


def test_shipped_scenarios_that_fit_pass_without_networking(tmp_path):
    scenarios = [arg for name in FITS for arg in ("--scenario", name)]
    code, output, result = run_cli("--target", "arm64-tiny", *scenarios, out=tmp_path)
    assert code == 0, output
    assert [(s["name"], s["verdict"]) for s in result["scenarios"]] == [(name, "pass") for name in FITS]
    assert result["kernel_events"] == []
    assert re.fullmatch(r"6\.1\.\d+-cmah-tiny", result["kernel"]["booted_release"])
    assert result["cma"]["size_mib"] == 32


def test_fifo_servers_refuse_a_second_serve_and_report_a_dead_server_at_once(tmp_path):
    scenario = Path(__file__).parent / "scenarios" / "fifo-servers.yaml"
    code, output, result = run_cli("--target", "arm64-tiny", "--scenario", str(scenario), out=tmp_path)
    assert code == 0, output
    assert all(step["status"] == "pass" for step in result["steps"]), output
    # The server killed in the middle of a 30 s request is reported in well under a second.
    [killed] = [s for s in result["steps"] if "sleep 30000" in s["name"]]
    assert killed["duration"] < 5
