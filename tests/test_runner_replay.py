"""The runner against recorded guest replies (no QEMU): every shipped scenario, every step kind, every oracle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.oracles.checks import CAPACITY_GRANULE
from harness.oracles.faults import find_faults
from harness.oracles.symbolize import module_functions
from harness.scenario.client import BULKY_OPS
from harness.scenario.kmemleak import sweep
from harness.scenario.loader import load_scenario
from harness.scenario.model import StepStatus
from harness.scenario.steps import REGISTRY
from tests.fake_guest import Reply, dump_mem_lines, recorded_replies, runner_for

ROOT = Path(__file__).resolve().parent.parent
# Recorded by `cma-harness run --target arm64-virt --scenario configs/scenarios` on this branch.
SUITE = ROOT / "tests" / "fixtures" / "replay" / "arm64-virt-suite.result.json"
SHIPPED = sorted((ROOT / "configs" / "scenarios").glob("*.yaml"))
# fuzz.yaml is the one shipped scenario not replayed here: its thousand operations are checked by
# the driver model against the guest's records, and the replay fixture keeps only each command's
# first 300 characters. tests/test_model.py checks that loop against a simulated driver (and
# broken ones), tests/guest/test_fuzz.py runs it in guests.
SCENARIOS = [p for p in SHIPPED if p.stem != "fuzz"]


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenarios_replay_to_the_recorded_verdicts(path: Path) -> None:
    scenario = load_scenario(path)
    recorded = [s for s in json.loads(SUITE.read_text())["steps"] if s["scenario"] == scenario.name]
    runner, transport = runner_for(recorded_replies(SUITE, scenario.name))
    # As the session runs them in one guest: kmemleak swept once after the last scenario, whose
    # final check reads the whole kernel log (dmesg.txt).
    last = path == SCENARIOS[-1]
    runner.defer_kmemleak, runner.keep_kernel_log = True, lambda: last
    outcome = runner.run_scenario(scenario)
    if last:
        sweep([runner.client], 60)
    assert [s.problems for s in outcome.steps] == [s["problems"] for s in recorded]
    assert [s.name for s in outcome.steps] == [s["name"] for s in recorded]
    assert not outcome.failed
    assert transport.replies == []  # the same commands, all of them


def test_only_batches_of_many_operations_ask_for_a_compressed_reply() -> None:
    # stress: 500 iterations of alloc/verify/free go out in batches of ~100 (300 records, ~27 KB
    # framed); its single steps (insmod, capacity, exit) do not pay for gzip.
    runner, transport = runner_for(recorded_replies(SUITE, "stress"))
    runner.run_scenario(load_scenario(ROOT / "configs" / "scenarios" / "stress.yaml"))
    batches = [c.count(" alloc ") >= BULKY_OPS // 3 for c in transport.sent]
    assert any(batches) and transport.bulky == batches


def test_the_replayed_suite_covers_every_step_kind() -> None:
    kinds = {step.kind for p in SCENARIOS for step in load_scenario(p).steps}
    kinds |= {inner.kind for p in SCENARIOS for step in load_scenario(p).steps for inner in step.body}
    assert set(REGISTRY) - kinds == {"fuzz"}
    assert any(step.kind == "fuzz" for p in SHIPPED for step in load_scenario(p).steps)


def scenario_of(tmp_path: Path, steps: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "t.yaml"
    path.write_text("steps:\n" + steps)
    return load_scenario(path)


SERVE = Reply("cma_test serve main", 0, "@cma op=serve status=ok name=main pid=7\n")


def alloc_reply(name: str, phys: int, length: int = 4096, **dump: object) -> Reply:
    out = f"@cma step=1 op=alloc status=ok errno=0 name={name} id=1 len={length} phys={phys:#x} user=0xffff0000\n"
    return Reply(f"cma_test ctl main alloc {name}", 0, out, "", dump_mem_lines(out, **dump))


def run(tmp_path: Path, steps: str, replies: list[Reply], events=None):  # type: ignore[no-untyped-def]
    runner, _ = runner_for(replies, events=events)
    return runner.run(scenario_of(tmp_path, steps))


def test_alloc_outside_the_reservation_and_overlapping_fail(tmp_path: Path) -> None:
    steps = "  - alloc: {name: a, size: 4096}\n  - alloc: {name: b, size: 4096}\n  - alloc: {name: c, size: 4096}\n"
    results = run(
        tmp_path, steps, [SERVE, alloc_reply("a", 0x1000), alloc_reply("b", 0x76D00000), alloc_reply("c", 0x76D00800)]
    )
    assert "outside the CMA reservation" in results[0].problems[0]
    assert results[1].status == StepStatus.PASS
    assert any("overlap" in p for p in results[2].problems)


def test_dump_mem_disagreement_missing_record_and_raw_pointer_fail(tmp_path: Path) -> None:
    steps = "  - alloc: {name: a, size: 4096}\n  - alloc: {name: b, size: 4096}\n  - alloc: {name: c, size: 4096}\n"
    no_dump = alloc_reply("b", 0x76E00000)
    no_dump.kernel = []
    replies = [
        SERVE,
        alloc_reply("a", 0x76D00000, **{"PHY Base": "0x0000000076d01000"}),
        no_dump,
        alloc_reply("c", 0x76F00000, **{"KER Base": "0xffff000012345678"}),
    ]
    a, b, c = run(tmp_path, steps, replies)
    assert a.problems == ["a: physical address in dmesg (0x76d01000) differs from the ioctl's (0x76d00000)"]
    assert b.problems == ["b: no dump_mem record in the kernel log for this allocation"]
    assert "raw kernel address" in c.problems[0]


def test_cma_test_failure_and_missing_record_fail(tmp_path: Path) -> None:
    steps = "  - free: {name: a, expect: ENOENT}\n  - cma: {run: info a}\n"
    replies = [
        SERVE,
        Reply("cma_test ctl main free a expect=ENOENT", 1, "@cma step=1 op=free status=fail errno=0 msg=freed\n"),
        Reply("cma_test ctl main info a", 2, "", "Segmentation fault"),
    ]
    first, second = run(tmp_path, steps, replies)
    assert first.problems == ["cma_test: step=1 op=free status=fail errno=0 msg=freed"]
    assert second.problems == ["cma_test printed no record (exit 2): Segmentation fault"]


def test_kernel_events_during_a_step_fail_it(tmp_path: Path) -> None:
    log = (ROOT / "tests" / "fixtures" / "console-arm64-warn-in-driver.log").read_text(errors="replace").splitlines()
    events = find_faults(log)
    assert events
    seen: list = []
    runner, transport = runner_for([Reply("true"), Reply("false", 1)], events=lambda: seen)
    replay = transport.run

    def run_and_warn(command: str, timeout: float | None = None, bulky: bool = False):  # type: ignore[no-untyped-def]
        if command == "false":
            seen.extend(events)  # the console delivered the WARN while this command ran
        return replay(command, timeout)

    transport.run = run_and_warn  # type: ignore[method-assign]
    quiet, warned = runner.run(
        scenario_of(tmp_path, "  - shell: {run: 'true'}\n  - shell: {run: 'false', expect_status: 1}\n")
    )
    assert quiet.status == StepStatus.PASS
    assert warned.problems == list(dict.fromkeys(f"kernel {e.kind}: {e.title}" for e in events))


def test_rmmod_expectations(tmp_path: Path) -> None:
    steps = "  - rmmod: {expect: busy}\n  - rmmod: {expect: busy}\n  - rmmod\n"
    replies = [
        Reply("rmmod cma_mem", 0),
        Reply("rmmod cma_mem", 1, "", "rmmod: can't unload 'cma_mem': No such file or directory"),
        Reply("rmmod cma_mem", 1, "", "rmmod: can't unload 'cma_mem': Resource temporarily unavailable"),
    ]
    busy_ok, other_reason, failed = run(tmp_path, steps.replace("  - rmmod\n", "  - rmmod: {}\n"), replies)
    assert "succeeded while blocks were mapped" in busy_ok.problems[0]
    assert "another reason" in other_reason.problems[0]
    assert failed.problems[0].startswith("rmmod failed (1)")


def probe(total: int, used: int | None = None, leaks: str = "", status: int = 0) -> Reply:
    out = f"@cma step=1 op=exhaust status=ok errno=0 total={total} count=8\n"
    out += f"@cmaused {used}\n" if used is not None else ""
    out += "".join(f"@kmemleak {line}\n" for line in leaks.splitlines())
    return Reply("if grep -q '^cma_mem ' /proc/modules", status, out)


# The heap witness's reply on a kernel without /dev/dma_heap (tests/test_heap.py covers the heap).
NO_HEAP = Reply(
    "cma_test heapinfo",
    1,
    "@cma step=1 op=heapinfo status=fail errno=ENOENT heaps=- msg=no /dev/dma_heap\n",
)


def test_capacity_leak_debugfs_pages_and_kmemleak_fail(tmp_path: Path) -> None:
    steps = "  - capacity: baseline\n  - capacity: check\n"
    total = 128 << 20
    ok = run(tmp_path, steps, [probe(total, 0), NO_HEAP, probe(total - CAPACITY_GRANULE + 1, 0), NO_HEAP])
    assert [r.status for r in ok] == [StepStatus.PASS, StepStatus.PASS]
    assert ok[0].notes == ["heap witness unavailable: CONFIG_DMABUF_HEAPS_CMA not set (no /dev/dma_heap)"]
    leak = run(tmp_path, steps, [probe(total, 0), NO_HEAP, probe(total - CAPACITY_GRANULE, 3), NO_HEAP])[1]
    assert leak.problems[0].startswith(f"CMA capacity leak: {CAPACITY_GRANULE} bytes")
    assert leak.problems[1].startswith("CMA debugfs: 3 pages still in use")
    fixture = ROOT / "tests" / "fixtures" / "kmemleak-after-rmmod"
    kmemleak = (fixture / "kmemleak.txt").read_text()
    runner, _ = runner_for([probe(total), NO_HEAP, probe(total, leaks=kmemleak), NO_HEAP])
    runner.client.note_module_load((fixture / "insmod-stdout.txt").read_text())
    runner.client.module_symbols = module_functions(fixture / "cma_mem.ko")
    leaked = runner.run(scenario_of(tmp_path, steps))[1]
    assert leaked.problems[0] == "kernel kmemleak: memory leak in cma_mem_ioctl"
    assert runner.extra_events and runner.extra_events[0].kind == "kmemleak"
    assert leaked.problems and leaked.problems[0].startswith("kernel kmemleak: memory leak in")
    insmod_failed = run(tmp_path, "  - capacity: check\n", [probe(0, status=99), NO_HEAP])[0]
    assert insmod_failed.problems[0].startswith("capacity probe: insmod failed")


def test_shell_ktap_and_dmesg_steps(tmp_path: Path) -> None:
    ktap = "KTAP version 1\n1..2\nok 1 first\nnot ok 2 second\n"
    steps = (
        "  - shell: {run: 'false', expect_status: 0}\n"
        "  - ktap: {run: /bin/t}\n"
        "  - ktap: {run: /bin/none}\n"
        "  - dmesg: {contains: 'hello', absent: 'oops'}\n"
    )
    replies = [
        Reply("false", 1),
        Reply("/bin/t", 1, ktap),
        Reply("/bin/none", 0, "nothing"),
    ]
    runner, _ = runner_for(replies)
    runner.kernel_log.lines += [("boot", "[    0.1] hello"), ("boot", "[    0.2] oops here")]
    shell, ktap_result, no_ktap, dmesg = runner.run(scenario_of(tmp_path, steps))
    assert shell.problems == ["'false' exited 1, expected 0"]
    assert ktap_result.problems == ["not ok 2 second"] and len(ktap_result.subtests) == 2
    assert "printed no KTAP/TAP result" in no_ktap.problems[0]
    assert dmesg.problems == ["kernel log has a line matching /oops/: [    0.2] oops here"]


def test_driver_warnings_after_the_scenario_fail_its_last_step(tmp_path: Path) -> None:
    replies = [
        Reply("true"),
        Reply("dmesg -r", 0, "<3>[    5.000000] cma_mem: something bad\n<4>[    5.1] cma_mem: module taints kernel\n"),
    ]
    runner, _ = runner_for(replies)
    outcome = runner.run_scenario(scenario_of(tmp_path, "  - shell: {run: 'true'}\n"))
    assert outcome.steps[-1].problems == ["driver logged at err level: cma_mem: something bad"]
    assert outcome.failed


def test_kill_exit_spawn_and_fragment_steps(tmp_path: Path) -> None:
    steps = (
        "  - spawn: other\n  - kill: other\n  - kill: main\n"
        "  - fragment: {count: 2, size: 4096, large: 8192}\n  - exit: main\n"
    )
    frag_out = (
        "@cma op=alloc status=ok errno=0 name=frag.0 id=1 len=4096 phys=0x76d00000 user=0x1000\n"
        "@cma op=alloc status=ok errno=0 name=frag.1 id=2 len=4096 phys=0x76d01000 user=0x2000\n"
        "@cma op=free status=ok errno=0 name=frag.0\n"
        "@cma op=alloc status=ok errno=0 name=frag.large id=3 len=8192 phys=0x76d02000 user=0x3000\n"
    )
    replies = [
        Reply("cma_test serve other", 0, "@cma op=serve status=ok name=other pid=9\n"),
        Reply("kill -9 9; while"),
        SERVE,
        Reply(
            "cma_test ctl main alloc frag.0 4096 coherent alloc frag.1",
            0,
            frag_out,
            "",
            dump_mem_lines(frag_out, dict.fromkeys(["frag.0", "frag.1", "frag.large"], "coherent")),
        ),
        Reply("cma_test ctl main exit", 0, "@cma op=exit status=ok errno=0\n"),
        Reply(":; while"),
    ]
    # kill main: a static check error would stop the file loading; main only runs from the fragment on.
    steps = steps.replace("  - kill: main\n", "")
    runner, _ = runner_for(replies)
    results = runner.run(scenario_of(tmp_path, steps))
    assert [r.problems for r in results] == [[], [], [], []]
    assert runner.state.processes == {} and runner.state.blocks == {}
    assert [b.freed_at for b in runner.state.allocated] == [3, None, None]
