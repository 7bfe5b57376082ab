"""Issue 15 without a guest: overrides, files into the guest, -k, the -j split and merge, --repeat's flake
summary, the Totals cross-check, provenance differences and compare's HTML and JSON."""

from __future__ import annotations

import argparse
import copy
import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.artifacts.extra_files import check_files, elf_problem, stage_files
from harness.config.guestfiles import FileSpec, parse_add, parse_files
from harness.config.overrides import parse_overrides
from harness.config.targets import resolve_target
from harness.config.yamlconf import load_text
from harness.errors import ConfigError
from harness.frontends import cli_reports
from harness.frontends.run_cli import select
from harness.guest.qemu import qemu_command
from harness.oracles.ktap import parse_ktap, totals_problems
from harness.report.compare import compare
from harness.report.provenance_diff import diff
from harness.run.parallel import ClaimBoard, Job, Pool, flake_summary, longest_first, merge
from harness.run.resolve import effective_config
from harness.run.result import STOPPED_EARLY, RunResult, ScenarioSummary, Verdict
from harness.scenario.loader import resolve_scenarios, scenario_paths
from harness.scenario.model import StepResult

RUNS = Path(__file__).parent / "fixtures" / "runs"


# --- overrides ---------------------------------------------------------------------------


def test_overrides_reach_the_qemu_argv_and_the_kernel_command_line():
    target = resolve_target("arm64-fast")
    o = parse_overrides(["loglevel=8 foo=bar"], ["-d guest_errors"], "64M", "2G", 2, ["boot=300,command=90"])
    t = o.apply(target)
    assert (t.cma_mib, t.qemu.memory_mib, t.qemu.smp) == (64, 2048, 2)
    assert (t.timeouts.boot, t.timeouts.command, t.timeouts.shutdown) == (300, 90, target.timeouts.shutdown)
    cmdline = t.kernel_cmdline()
    assert "cma=64M" in cmdline and cmdline.endswith("loglevel=8 foo=bar")
    argv = qemu_command(t, effective_boot())
    assert argv[argv.index("-m") + 1] == "2048M" and argv[argv.index("-smp") + 1] == "2"
    assert argv[-2:] == ["-d", "guest_errors"]
    config = effective_config(t, None, o)
    assert config["overrides"] == {
        "kernel_args": ["loglevel=8", "foo=bar"],
        "qemu_args": ["-d", "guest_errors"],
        "cma_mib": 64,
        "memory_mib": 2048,
        "smp": 2,
        "timeouts": {"boot": 300.0, "command": 90.0},
    }
    assert config["cma_mib"] == 64 and config["kernel_cmdline"] == cmdline
    # The child processes of -j get the same overrides back.
    again = parse_overrides(*_split_argv(o.to_argv()))
    assert again == o


def effective_boot():  # type: ignore[no-untyped-def]
    from harness.guest.qemu import BootFiles

    return BootFiles(Path("/k"), Path("/i"))


def _split_argv(argv: list[str]) -> tuple:
    parser = argparse.ArgumentParser()
    from harness.frontends.run_cli import add_run_arguments

    add_run_arguments(parser)
    a = parser.parse_args(argv)
    return a.kernel_arg, a.qemu_arg, a.cma, a.memory, a.smp, a.timeout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"cma": "1G"}, "does not fit"),
        ({"cma": "1500K"}, "whole number of MiB"),
        ({"timeouts": ["reboot=3"]}, "unknown timeout 'reboot'"),
        ({"timeouts": ["-3"]}, "seconds > 0"),
        ({"smp": 0}, "at least 1"),
    ],
)
def test_bad_overrides_are_usage_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides(**args).apply(resolve_target("arm64-fast"))


# --- files into the guest -----------------------------------------------------------------


def elf(machine: int = 183, klass: int = 2, interp: bytes | None = None) -> bytes:
    """A minimal little-endian ELF header with one program header (PT_INTERP if `interp`)."""
    if klass == 2:
        head = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
        head += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
        data_off = 64 + 56
        ph = struct.pack("<IIQQQQQQ", 3 if interp else 1, 0, data_off, 0, 0, len(interp or b""), 0, 1)
    else:
        head = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
        head += struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, 0, 52, 0, 0, 52, 32, 1, 0, 0, 0)
        data_off = 52 + 32
        ph = struct.pack("<IIIIIIII", 3 if interp else 1, data_off, 0, 0, len(interp or b""), 0, 0, 1)
    return head + ph + (interp or b"") + bytes(64)


def test_elf_checks_name_the_problem():
    assert elf_problem(elf(), "arm64") == ""
    assert elf_problem(b"#!/bin/sh\necho hi\n", "arm64") == ""
    dynamic = elf_problem(elf(interp=b"/lib/ld-linux-aarch64.so.1\0"), "arm64")
    assert "dynamically linked" in dynamic and "/lib/ld-linux-aarch64.so.1" in dynamic and "-static" in dynamic
    assert "x86-64 program" in elf_problem(elf(machine=62), "arm64")
    assert elf_problem(elf(machine=40, klass=1), "armhf") == ""
    assert "ld-linux-armhf" in elf_problem(elf(40, 1, b"/lib/ld-linux-armhf.so.3\0"), "armhf")


def test_add_and_files_entries(tmp_path):
    prog = tmp_path / "prog"
    prog.write_bytes(elf())
    prog.chmod(0o755)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    assert parse_add(str(prog), Path("/"), "--add").dest == ""
    assert parse_add(f"{prog}:/root/p", Path("/"), "--add").dest == "/root/p"
    with pytest.raises(ConfigError, match="does not exist"):
        parse_add("nope", tmp_path, "--add")
    with pytest.raises(ConfigError, match="harness's own"):
        parse_add(f"{prog}:/bin/cma_test", tmp_path, "--add")
    raw = load_text(
        "files:\n  - prog\n  - {src: data, dest: /srv/d}\n  - {kselftest: vDSO/vdso_test_abi, dest: /root/}\n",
        str(tmp_path / "s.yaml"),
    )["files"]
    specs = parse_files(raw, str(tmp_path / "s.yaml"), 1)
    assert [s.src for s in specs[:2]] == [prog, tmp_path / "data"]
    assert specs[2].kselftest == "vDSO/vdso_test_abi" and specs[2].origin.endswith("s.yaml:4")
    bad = load_text("files:\n  - {src: prog, kselftest: a/b}\n", str(tmp_path / "s.yaml"))["files"]
    with pytest.raises(ConfigError, match=r"s.yaml:2: files entry: give exactly one"):
        parse_files(bad, str(tmp_path / "s.yaml"), 1)

    target = resolve_target("arm64-fast")
    built = tmp_path / "vdso_test_abi"
    built.write_bytes(elf())
    staged = stage_files(list(specs), target, tmp_path / "cache", lambda spec: built)
    dests = {s.dest: s for s in staged}
    assert set(dests) == {"usr/bin/prog", "srv/d/a.txt", "root/vdso_test_abi"}
    assert dests["usr/bin/prog"].host.stat().st_mode & 0o111  # executable stays executable
    assert "cache/guestfiles/" in str(dests["usr/bin/prog"].host)
    # Content-keyed: new content, new cache path (the initramfs key follows it).
    prog.write_bytes(elf() + b"x")
    again = stage_files([specs[0]], target, tmp_path / "cache", lambda spec: built)
    assert again[0].host != dests["usr/bin/prog"].host
    other = tmp_path / "other"
    other.write_bytes(b"other")
    with pytest.raises(ConfigError, match="also given by"):
        stage_files([specs[0], FileSpec("/usr/bin/prog", "--add", other)], target, tmp_path / "c2", lambda s: built)
    dyn = tmp_path / "dyn"
    dyn.write_bytes(elf(interp=b"/lib/ld-linux-aarch64.so.1\0"))
    with pytest.raises(ConfigError, match=r"--add: files: .*dyn is dynamically linked"):
        check_files([parse_add(str(dyn), tmp_path, "--add")], target)


# --- -k --------------------------------------------------------------------------------------


def test_k_selects_by_substring_glob_and_exclusion():
    suite = resolve_scenarios([str(scenario_paths()[0].parent)])
    names = lambda picked: [s.name for s in picked]  # noqa: E731
    assert names(select(suite, ["frag"])) == ["fragmentation"]
    assert names(select(suite, ["multi*"])) == ["multi-block", "multi-process"]
    assert "stress" not in names(select(suite, ["!stress"])) and len(select(suite, ["!stress"])) == len(suite) - 1
    with pytest.raises(ConfigError, match="no scenario matches"):
        select(suite, ["nothing-like-this"])


# --- -j: split and merge --------------------------------------------------------------------


def test_the_queue_is_longest_first_by_known_durations_else_by_steps():
    suite = resolve_scenarios([str(scenario_paths()[0].parent)])
    known = {s.name: 1.0 for s in suite} | {"stress": 6.0, "exhaustion": 5.0}
    queue = longest_first(suite, known)
    assert [s.name for s in queue[:2]] == ["stress", "exhaustion"] and sorted(queue, key=suite.index) == suite
    # Never run here: estimated from the steps, a repeat of 500 weighing more than a few steps.
    assert longest_first(suite, {})[0].name == "stress"


def test_each_scenario_is_claimed_once_across_processes(tmp_path):
    """Two processes race for 200 claims: every name goes to exactly one of them."""
    # Two fresh interpreters, not a fork()ed multiprocessing pool: a fork from pytest (which may
    # hold threads from earlier tests) can deadlock the child on a lock copied mid-use.
    names = [f"s{i}" for i in range(200)]
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from harness.run.parallel import ClaimBoard\n"
        "board = ClaimBoard(Path(sys.argv[1]))\n"
        "print(json.dumps([n for n in sys.argv[2:] if board.claim(n)]))\n"
    )
    racers = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), *names], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    won = [json.loads(p.communicate(timeout=120)[0]) for p in racers]
    assert sorted(won[0] + won[1]) == sorted(names)
    board = ClaimBoard(tmp_path)
    assert not board.claim("s0") and board.taken("s0") and not board.taken("new")
    board.close()  # -x: a failed job stops the others taking more
    assert not board.claim("new") and board.taken("new")


def record(target: str, verdicts: dict[str, str]) -> RunResult:
    r = RunResult(target=target, scenario=",".join(verdicts))
    for name, v in verdicts.items():
        r.scenarios.append(ScenarioSummary(name, f"{name}.yaml", Verdict(v), 1, 1.0))
        r.steps.append(StepResult(index=1, name="insmod", scenario=name))
    r.verdict = Verdict.FAIL if "fail" in verdicts.values() else Verdict.PASS
    r.timings = {"boot": 1.0, "total": 3.0}
    return r


def test_merge_keeps_the_asked_order_and_the_worst_verdict(tmp_path):
    a = Job("t/1", "t", [], tmp_path / "1", result=record("t", {"stress": "pass"}))
    b = Job("t/2", "t", [], tmp_path / "2", result=record("t", {"smoke": "fail", "lifecycle": "pass"}))
    lost = Job("t/3", "t", [], tmp_path / "3", exit_status=-9)
    merged = merge("t", [a, b], ["smoke", "lifecycle", "stress"], 4.5)
    assert [s.name for s in merged.scenarios] == ["smoke", "lifecycle", "stress"]
    assert merged.verdict == Verdict.FAIL and merged.timings == {"boot": 2.0, "total": 4.5}
    assert [j["job"] for j in merged.config["jobs"]] == ["t/1", "t/2"]
    assert RunResult.from_json(merged.to_json()).to_json() == merged.to_json()
    assert merged.not_run == []
    b.result.not_run = ["stress"]  # -x in one job: whatever no job ran is listed as not run
    assert merge("t", [b], ["smoke", "lifecycle", "stress"], 4.5).not_run == ["stress"]
    # Every job ended and none ran "smoke" (a stale claim, a job that skipped it): no pass.
    unclaimed = merge("t", [a], ["smoke", "stress"], 1.0)
    assert unclaimed.verdict == Verdict.ERROR and unclaimed.problems[0].startswith("no job ran smoke")
    broken = merge("t", [a, lost], ["stress"], 1.0)
    assert broken.verdict == Verdict.ERROR and "job t/3 left no result.json" in broken.problems[0]


def test_an_infrastructure_error_in_one_job_stops_the_others_at_once(tmp_path):
    """Job 1's guest dies (exit 3): job 2, mid-run, is stopped instead of running the rest of the
    queue, job 3 never starts, the boards close, and the merged run is an error listing what no
    job ran. Without the stop this pool would wait a minute for job 2."""

    def argv(job: Job) -> list[str]:
        code = "import sys; sys.exit(3)" if job.key == "t/1" else "import time; time.sleep(60)"
        return [sys.executable, "-c", code]

    claims = tmp_path / "claims"
    claims.mkdir()
    jobs = [Job(f"t/{k}", "t", [], tmp_path / str(k), estimate=10.0 - k, claims=claims) for k in (1, 2, 3)]
    pool = Pool(jobs, 2, argv)
    started = time.monotonic()
    pool.run()
    assert time.monotonic() - started < 15
    assert pool.stopped is not None and pool.stopped.startswith("job t/1 ended in an infrastructure error (exit 3)")
    assert jobs[1].exit_status == -signal.SIGTERM and jobs[2].skipped and jobs[2].proc is None
    assert not ClaimBoard(claims).claim("smoke")
    merged = merge("t", jobs, ["smoke", "stress"], 1.0, pool.stopped)
    assert merged.verdict == Verdict.ERROR and merged.not_run == ["smoke", "stress"]
    assert merged.problems[0].startswith(f"{STOPPED_EARLY}: job t/1") and len(merged.config["jobs"]) == 2
    # The console tail shown is the failed job's, not that of one the pool stopped.
    stopped, dead = record("t", {"smoke": "error"}), record("t", {"stress": "error"})
    stopped.console_tail, stopped.interrupted_by, dead.console_tail = "sh: SIGTERM", "SIGTERM", "QEMU exited"
    pair = [Job("t/1", "t", [], tmp_path / "1", result=r) for r in (stopped, dead)]
    assert merge("t", pair, ["smoke", "stress"], 1.0, pool.stopped).console_tail == "QEMU exited"
    # A failing job (exit 1 with its result) is the driver's verdict, not a reason to stop.
    passing = Job("t/4", "t", [], tmp_path / "4", result=record("t", {"smoke": "fail"}))
    assert merge("t", [passing], ["smoke"], 1.0).not_run == []


def test_flake_summary_counts_every_iteration():
    iterations = [[record("t", {"smoke": "pass", "stress": "pass"})] for _ in range(3)]
    iterations.append([record("t", {"smoke": "fail", "stress": "pass"})])
    s = flake_summary(iterations)
    assert s["scenarios"]["t/smoke"] == {"pass": 3, "fail": 1, "error": 0}
    assert s["scenarios"]["t/stress"] == {"pass": 4, "fail": 0, "error": 0}
    assert s["flaky"] == ["t/smoke"]
    # An iteration cancelled by SIGTERM (a person or CI stopping the run) is no flake.
    cancelled = record("t", {"smoke": "error"})
    cancelled.interrupted_by = "SIGTERM"
    s = flake_summary([*iterations, [cancelled]])
    assert s["scenarios"]["t/smoke"] == {"pass": 3, "fail": 1, "error": 0}


# --- KTAP Totals --------------------------------------------------------------------------------

VDSO = """TAP version 13
1..3
ok 1 clock_gettime
ok 2 # SKIP clock_getres not in the vDSO
ok 3 time
# Totals: pass:2 fail:0 xfail:0 xpass:0 skip:1 error:0
"""


def test_totals_line_must_agree_with_the_test_points():
    assert totals_problems(parse_ktap(VDSO), VDSO) == []
    lying = VDSO.replace("skip:1", "skip:0").replace("pass:2", "pass:3")
    assert totals_problems(parse_ktap(lying), lying) == [
        "the program's Totals line says 3 pass, its test points say 2",
        "the program's Totals line says 0 skip, its test points say 1",
    ]
    assert totals_problems(parse_ktap("1..1\nok 1 x\n"), "1..1\nok 1 x\n") == []  # no Totals line: nothing to check


# --- provenance in compare ----------------------------------------------------------------------

PROV = {
    "artifacts": {
        "kernel": {"path": "/k", "size": 1, "sha256": "a" * 64},
        "module": {"path": "/m", "size": 1, "sha256": "b" * 64},
    },
    "initramfs_files": {"/bin/busybox": "c" * 64, "/lib/modules/cma_mem.ko": "b" * 64},
    "driver_source": "d" * 20,
    "packages": [{"set": "busybox/arm64", "name": "busybox-static", "version": "1", "arch": "arm64", "sha256": "e"}],
    "qemu": {"binary": "qemu-system-aarch64", "version": "QEMU 7.2"},
    "compilers": {"aarch64-linux-gnu-gcc": "gcc 12"},
    "harness": {"version": "0.1.0", "source": "f" * 20, "commit": "1" * 40},
    "host": {"machine": "x86_64", "release": "6.1", "cpus": 2},
}


def with_prov(base: dict, **changes) -> dict:
    out = copy.deepcopy(base) | {"provenance": copy.deepcopy(PROV), "config": {"cma_mib": 128}}
    for path, value in changes.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return out


def test_compare_warns_when_more_than_the_driver_differs(tmp_path):
    base = json.loads((RUNS / "clean-smoke" / "result.json").read_text())
    driver_only = with_prov(base, **{"provenance.driver_source": "9" * 20, "provenance.harness.commit": "2" * 40})
    driver_only["provenance"]["artifacts"]["module"]["sha256"] = "8" * 64
    driver_only["provenance"]["initramfs_files"]["/lib/modules/cma_mem.ko"] = "8" * 64
    d = diff(with_prov(base), driver_only)
    assert d.other == [] and d.warning() == "" and len(d.driver) == 2
    more = with_prov(base, **{"provenance.qemu.version": "QEMU 8.0", "config.cma_mib": 64})
    more["provenance"]["artifacts"]["kernel"]["sha256"] = "7" * 64
    d = diff(with_prov(base), more)
    assert d.more_than_driver
    assert d.other == ["kernel sha256 aaaaaaaaaaaa → 777777777777", "QEMU QEMU 7.2 → QEMU 8.0", "cma mib 128 → 64"]
    assert "no provenance in the base run" in diff(base, more).warning()
    c = compare(with_prov(base), more)
    assert c.provenance.more_than_driver

    # compare writes Markdown, HTML and JSON; the warning is in all three.
    b, n = tmp_path / "b", tmp_path / "n"
    for folder, data in ((b, with_prov(base)), (n, more)):
        folder.mkdir()
        (folder / "result.json").write_text(json.dumps(data))
    parser = argparse.ArgumentParser()
    cli_reports.add_parsers(parser.add_subparsers(dest="command"))
    assert cli_reports.cmd_compare(parser.parse_args(["compare", str(b), str(n)])) == 0
    md, html, js = (n / f"compare.{ext}" for ext in ("md", "html", "json"))
    assert "**Warning**: the runs differ in more than the driver" in md.read_text()
    assert "<!DOCTYPE html>" in html.read_text() and "differ in more than the driver" in html.read_text()
    data = json.loads(js.read_text())
    assert data["regression"] is False and data["exit_status"] == 0
    [one] = data["comparisons"]
    assert one["provenance"]["other"][0].startswith("kernel sha256") and one["facts"][0]["what"] == "verdict"


# --- progress -------------------------------------------------------------------------------------


def test_progress_without_a_terminal_is_one_line_per_step():
    import io

    from rich.console import Console

    from harness.frontends.progress import Progress, readable_tail
    from harness.scenario.model import Scenario, Step

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    scenario = Scenario("smoke", Path("smoke.yaml"), "", [Step("insmod", {}, 3), Step("rmmod", {}, 4)])
    with Progress(console, "arm64-fast") as p:
        assert not p.live_mode
        p.on_stage("boot", "start", 0)
        p.on_stage("boot", "done", 1.5)
        p.scenario_started(scenario, 1, 1)
        for i, name in enumerate(("insmod", "rmmod"), start=1):
            p.step_started(scenario, i, name)
            p.step_done(scenario, StepResult(index=i, name=name, duration=0.02))
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("✓ boot") and "scenario 1/1 smoke (2 steps)" in lines[1]
    assert lines[2].split() == ["smoke", "1/2", "pass", "0.020", "s", "insmod"]
    assert lines[3].split()[:3] == ["smoke", "2/2", "pass"]
    assert readable_tail("@@5 B\n@5e|rmmod: busy\n@@5 X 1 a b\n[    0.8] dump_mem:Size:1\n") == [
        "rmmod: busy",
        "[    0.8] dump_mem:Size:1",
    ]


def test_the_pool_runs_every_job_at_most_width_at_a_time(tmp_path):
    from harness.run.parallel import Pool

    jobs = [Job(f"t/{k}", "t", [], tmp_path / str(k)) for k in range(1, 4)]
    done = tmp_path / "done.json"  # what each job leaves: a result of its own
    record("t", {"smoke": "pass"}).write(done)
    script = "import shutil, sys, time; shutil.copy(sys.argv[1], sys.argv[2]); time.sleep(0.2)"
    argv = lambda job: [sys.executable, "-c", script, str(done), str(job.out / "result.json")]  # noqa: E731
    seen: list[int] = []
    Pool(
        jobs,
        2,
        argv,
        on_change=lambda job: seen.append(sum(j.proc is not None and j.exit_status is None for j in jobs)),
    ).run()
    assert [j.exit_status for j in jobs] == [0, 0, 0] and all(j.result is not None for j in jobs)
    assert max(seen) <= 2 and all(j.ended >= j.started for j in jobs)
