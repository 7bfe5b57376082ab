"""kmemleak swept once (harness/scenario/kmemleak.py): leaks placed by allocation time, no QEMU."""

from __future__ import annotations

import re
from pathlib import Path

from harness.guest.shell import DRIVER_WARNINGS_COMMAND, KMEMLEAK, kmemleak_sweep_command
from harness.oracles.symbolize import module_functions
from harness.scenario.kmemleak import sweep
from harness.scenario.loader import load_scenario
from harness.scenario.model import StepStatus
from tests.fake_guest import Reply, runner_for
from tests.test_runner_replay import NO_HEAP

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "kmemleak-after-rmmod"
STEPS = "steps:\n  - capacity: baseline\n  - capacity: check\n"
SWEEP = f"[ -e {KMEMLEAK} ] || exit 0; echo scan > {KMEMLEAK}; "


def probe(at: float, total: int = 128 << 20) -> list[Reply]:
    """A capacity step's replies: the driver's probe, then the heap witness (no heap in this kernel)."""
    out = f"@cma step=1 op=exhaust status=ok errno=0 total={total} count=8\n@uptime {at:.2f} 1.00\n"
    return [Reply("if grep -q '^cma_mem ' /proc/modules", 0, out), NO_HEAP]


def report(born: float, now: float) -> str:
    """The captured report, its one object allocated at guest uptime `born`, read at `now`."""
    text = (FIXTURE / "kmemleak.txt").read_text().split("\nunreferenced object ")[0]  # the first object
    return re.sub(r"\(age [\d.]+s\)", f"(age {now - born:.3f}s)", text)


def sweep_reply(now: float, leaks: str) -> Reply:
    return Reply(SWEEP, 0, f"@uptime {now:.2f} 1.00\n" + "".join(f"@kmemleak {line}\n" for line in leaks.splitlines()))


def scenario(tmp_path: Path, name: str = "t"):  # type: ignore[no-untyped-def]
    path = tmp_path / f"{name}.yaml"
    path.write_text(STEPS)
    return load_scenario(path)


def symbolized(runner):  # type: ignore[no-untyped-def]
    runner.client.note_module_load((FIXTURE / "insmod-stdout.txt").read_text())
    runner.client.module_symbols = module_functions(FIXTURE / "cma_mem.ko")
    return runner


def test_sweep_waits_for_the_minimum_age_after_the_last_check() -> None:
    command = kmemleak_sweep_command(25.3)
    assert command.count("echo scan >") == 2
    assert "-lt 26 ]" in command  # the second scan starts at uptime 26 or later, not before 25.3


def test_a_leak_in_the_scenario_fails_its_check_once_per_scenario(tmp_path: Path) -> None:
    replies = [*probe(10.0), *probe(20.0), Reply(DRIVER_WARNINGS_COMMAND), sweep_reply(30.0, report(15.0, 30.0))]
    runner, transport = runner_for(replies)
    outcome = symbolized(runner).run_scenario(scenario(tmp_path))
    baseline, check = outcome.steps
    assert baseline.status == StepStatus.PASS
    assert check.problems == ["kernel kmemleak: memory leak in cma_mem_ioctl"]
    assert [e.kind for e in outcome.events] == ["kmemleak"]
    assert transport.replies == []


def test_leaks_outside_the_window_are_not_this_scenarios(tmp_path: Path) -> None:
    # Older than 5 s before the baseline (the old baseline's scan cleared those): not reported.
    replies = [*probe(10.0), *probe(20.0), Reply(DRIVER_WARNINGS_COMMAND), sweep_reply(30.0, report(4.0, 30.0))]
    runner, _ = runner_for(replies)
    outcome = symbolized(runner).run_scenario(scenario(tmp_path))
    assert not outcome.failed


def test_one_sweep_for_several_scenarios_places_each_leak(tmp_path: Path) -> None:
    first, _ = runner_for([*probe(10.0), *probe(20.0), Reply(DRIVER_WARNINGS_COMMAND)])
    second, transport = runner_for([*probe(40.0), *probe(50.0), Reply(DRIVER_WARNINGS_COMMAND)])
    for runner in (first, second):
        runner.defer_kmemleak = True
        symbolized(runner)
    a = first.run_scenario(scenario(tmp_path, "a"))
    b = second.run_scenario(scenario(tmp_path, "b"))
    assert not a.failed and not b.failed  # nothing read yet
    transport.replies.append(sweep_reply(60.0, report(45.0, 60.0)))
    leaks = sweep([first.client, second.client], 60)
    assert [leak.result is b.steps[1] for leak in leaks] == [True]
    assert a.steps[1].status == StepStatus.PASS
    assert b.steps[1].problems == ["kernel kmemleak: memory leak in cma_mem_ioctl"]


def test_no_sweep_without_a_capacity_check_or_without_kmemleak(tmp_path: Path) -> None:
    runner, transport = runner_for([*probe(10.0), *probe(20.0), Reply(DRIVER_WARNINGS_COMMAND), Reply(SWEEP, 0, "")])
    assert not runner.run_scenario(scenario(tmp_path)).failed  # the kernel has no kmemleak: prints nothing
    assert transport.replies == []
    assert sweep([], 60) == []
