"""The small board kernel (arm64-tiny: hard requirements only, no networking, 32 MiB of CMA).

Issue 18: on such a kernel every failure must be the driver's, never the environment's.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.guest.test_run import run_cli

pytestmark = pytest.mark.guest

SHIPPED = sorted(p.stem for p in Path("configs/scenarios").glob("*.yaml"))


def test_the_whole_shipped_suite_passes_on_a_32_mib_board_without_networking(tmp_path):
    # exhaustion and fragmentation size themselves by the area (50%, count: fill): they mean
    # the same on 32 MiB as on 128.
    code, output, result = run_cli("--target", "arm64-tiny", "--scenario", "configs/scenarios", out=tmp_path)
    assert code == 0, output
    assert [(s["name"], s["verdict"]) for s in result["scenarios"]] == [(name, "pass") for name in SHIPPED]
    assert result["kernel_events"] == []
    assert re.fullmatch(r"6\.1\.\d+-cmah-tiny", result["kernel"]["booted_release"])
    assert result["cma"]["size_mib"] == 32
    assert "ssh" in {a["feature"] for a in result["kernel"]["features"]["absent"]}  # said, not hidden


def test_fifo_servers_refuse_a_second_serve_and_report_a_dead_server_at_once(tmp_path):
    scenario = Path(__file__).parent / "scenarios" / "fifo-servers.yaml"
    code, output, result = run_cli("--target", "arm64-tiny", "--scenario", str(scenario), out=tmp_path)
    assert code == 0, output
    assert all(step["status"] == "pass" for step in result["steps"]), output
    # The server killed in the middle of a 30 s request is reported in well under a second.
    [killed] = [s for s in result["steps"] if "sleep 30000" in s["name"]]
    assert killed["duration"] < 5
