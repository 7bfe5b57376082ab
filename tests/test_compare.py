"""Regression compare on real captured runs (tests/fixtures/runs)."""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path

import pytest

from harness.frontends import cli_reports
from harness.report.compare import Noise, compare, measure_noise, render, write

RUNS = Path(__file__).parent / "fixtures" / "runs"


def run(name: str) -> dict:
    return json.loads((RUNS / name / "result.json").read_text())


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli_reports.add_parsers(parser.add_subparsers(dest="command"))
    return cli_reports.cmd_compare(parser.parse_args(["compare", *argv]))


def test_warning_variant_names_the_regressed_steps_and_the_new_signature():
    c = compare(run("clean-smoke"), run("warn-on-free"))
    assert c.regression
    assert [s.ref for s in c.newly_failing] == ["smoke step 2", "smoke step 10", "smoke step 17"]
    assert c.newly_failing_scenarios == ["smoke"]
    assert [(e.signature, e.title, e.cand_count) for e in c.new_events] == [
        ("a90568c6e410", "WARNING in cma_mem_ioctl", 45)
    ]
    text = render(c)
    assert text.splitlines()[2] == (
        "**REGRESSION** (exit 1): verdict pass → fail; 1 scenario(s) newly fail: smoke; "
        "3 step(s) newly fail: smoke step 2, smoke step 10, smoke step 17; "
        "1 new kernel-event signature(s): WARNING in cma_mem_ioctl."
    )
    assert "- **smoke step 10** `free name=mem2`: pass → fail — kernel warning: WARNING in cma_mem_ioctl" in text
    assert "`a90568c6e410` **WARNING in cma_mem_ioctl** (warning, ×0 → ×45" in text
    assert "different driver folders (--kmod)" in text


def test_capacity_leak_variant_is_a_regression_without_kernel_events():
    c = compare(run("clean-smoke"), run("wc-never-freed"))
    assert c.reasons == [
        "verdict pass → fail",
        "1 scenario(s) newly fail: smoke",
        "1 step(s) newly fail: smoke step 17",
    ]
    assert c.newly_failing[0].name == "capacity mode=check"
    assert "CMA capacity leak" in c.newly_failing[0].problems[0]
    assert c.new_events == []


def test_fixing_the_driver_is_not_a_regression():
    c = compare(run("warn-on-free"), run("clean-smoke"))
    assert not c.regression
    assert [s.ref for s in c.newly_passing] == ["smoke step 2", "smoke step 10", "smoke step 17"]
    assert [e.title for e in c.gone_events] == ["WARNING in cma_mem_ioctl"]
    assert render(c).splitlines()[2].startswith("**No regression** (exit 0)")


def test_two_clean_runs_are_no_regression_and_no_timing_noise():
    c = compare(run("clean-smoke"), run("clean-smoke-2"))
    assert not c.regression and not c.slower and not c.faster
    assert "No scenario or step changed beyond noise." in render(c)


def test_a_busy_host_slowing_everything_is_absorbed_by_the_host_factor():
    base = run("clean-suite")
    cand = copy.deepcopy(base)
    for item in cand["steps"] + cand["scenarios"]:
        item["duration"] *= 2.5
    c = compare(base, cand)
    assert c.noise.factor == pytest.approx(2.5)
    assert not c.slower and not c.faster and not c.regression


def test_one_slow_step_stands_out():
    base = run("clean-suite")
    cand = copy.deepcopy(base)
    slow = next(s for s in cand["steps"] if s["scenario"] == "smoke" and s["index"] == 4)
    slow["duration"] += 3.0
    next(s for s in cand["scenarios"] if s["name"] == "smoke")["duration"] += 3.0
    c = compare(base, cand)
    assert [t.what for t in c.slower] == ["scenario smoke", "smoke step 4 (alloc name=mem2 size=1536000 type=wc)"]
    assert not c.regression  # slower is reported, never gated on
    assert "Slower beyond noise (2)" in render(c)


def test_noise_limit_widens_with_the_pairs_own_scatter():
    assert Noise().limit == pytest.approx(1.25)
    quiet = measure_noise([(1.0, 1.0), (0.5, 0.52), (2.0, 1.96), (0.3, 0.3)])
    assert quiet.limit == pytest.approx(1.25)
    noisy = measure_noise([(1.0, 1.3), (1.0, 0.77), (1.0, 1.0), (1.0, 1.3), (1.0, 0.77)])
    assert noisy.limit > 2.5
    assert not noisy.beyond(1.0, 2.4) and noisy.beyond(1.0, 4.0)
    assert not quiet.beyond(0.1, 0.5)  # under the absolute floor


def test_other_kernel_is_context_not_a_regression():
    c = compare(run("clean-smoke"), run("armv7-smoke"))
    assert not c.regression
    text = render(c)
    assert "different kernels (6.1.0-50-arm64" in text and "not a regression" in text
    assert "different targets (arm64-virt → armv7-virt)" in text


def test_outcome_suffix_does_not_change_a_steps_identity():
    base = run("clean-suite")
    cand = copy.deepcopy(base)
    step = next(s for s in cand["steps"] if s["name"].startswith("repeat"))
    step["name"] = "repeat times=500 (312/500 iterations)"
    step["status"] = "fail"
    step["problems"] = ["iteration 313: alloc failed"]
    c = compare(base, cand)
    assert [s.name for s in c.newly_failing] == ["repeat times=500 (312/500 iterations)"]
    assert c.only_base == [] and c.only_cand == []


def test_a_failing_step_the_base_never_ran_newly_fails():
    base, cand = run("clean-smoke"), run("wrong-phys")
    base["steps"] = [s for s in base["steps"] if s["index"] != 3]
    c = compare(base, cand)
    assert "smoke step 3" in [s.ref for s in c.newly_failing]
    assert "smoke step 3" in [s.ref for s in c.only_cand]


def test_infrastructure_error_after_a_failure_is_worse():
    cand = {"verdict": "error", "error": "guest did not boot", "steps": [], "scenarios": []}
    c = compare(run("wc-never-freed"), cand)
    assert c.reasons == ["verdict fail → error"]


def test_cli_exit_status_and_default_output(tmp_path, capsys):
    for name in ("clean-smoke", "warn-on-free", "clean-smoke-2"):
        shutil.copytree(RUNS / name, tmp_path / name)
    assert cli(str(tmp_path / "clean-smoke"), str(tmp_path / "warn-on-free")) == 1
    written = (tmp_path / "warn-on-free" / "compare.md").read_text()
    assert written == capsys.readouterr().out
    assert cli(str(tmp_path / "clean-smoke"), str(tmp_path / "clean-smoke-2"), "--out", str(tmp_path / "c.md")) == 0
    assert "No regression" in (tmp_path / "c.md").read_text()


def test_cli_unreadable_input_is_exit_2(tmp_path, capsys):
    assert cli(str(tmp_path / "nope"), str(RUNS / "clean-smoke")) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "result.json").write_text('{"steps": []}')
    assert cli(str(RUNS / "clean-smoke"), str(tmp_path / "bad"), "--out", str(tmp_path / "c.md")) == 2
    err = capsys.readouterr().err
    assert "no result.json here" in err and "no 'verdict'" in err


def test_multi_target_runs_are_compared_target_by_target(tmp_path, capsys):
    for side, name in (("base", "clean-smoke"), ("cand", "warn-on-free")):
        for target in ("arm64-virt", "armv7-virt"):
            shutil.copytree(RUNS / name, tmp_path / side / target)
    assert cli(str(tmp_path / "base"), str(tmp_path / "cand")) == 1
    assert capsys.readouterr().out.count("# Compare:") == 2


def test_write(tmp_path):
    path = write(compare(run("clean-smoke"), run("wrong-phys")), tmp_path / "sub" / "compare.md")
    assert "physical address in dmesg" in path.read_text()


def test_signatures_are_comparable_across_kernels():
    # The same broken driver on armv7 (armmp-lpae kernel): the arm64 run's signature, not a new one.
    on_armv7 = compare(run("armv7-smoke"), run("armv7-warn-on-free"))
    assert [e.signature for e in on_armv7.new_events] == ["a90568c6e410"]
    across = compare(run("warn-on-free"), run("armv7-warn-on-free"))
    assert across.new_events == [] and [e.title for e in across.kept_events] == ["WARNING in cma_mem_ioctl"]
    assert not across.regression
