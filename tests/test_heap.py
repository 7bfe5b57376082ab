"""The heap backend without QEMU: scenario validation, the words it sends, the capacity witness, the comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.oracles.checks import CAPACITY_CHUNKS, CAPACITY_GRANULE
from harness.oracles.cmatest import parse_records
from harness.oracles.heap import NO_HEAPS, compare_rows, heap_unavailable, largest
from harness.report.heapcompare import render_html, render_markdown
from harness.scenario.loader import load_scenario, resolve_scenarios
from harness.scenario.model import StepStatus
from tests.fake_guest import Reply, runner_for
from tests.test_runner_replay import NO_HEAP, SERVE, probe, scenario_of

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "configs" / "scenarios"
# Shipped scenarios that make sense on the heap: no driver-only steps (info, ioctl, mmap, raw words, rmmod busy).
HEAP_SCENARIOS = ["exhaustion", "fragmentation", "stress"]


def heap(total: int, name: str = "reserved") -> Reply:
    out = f"@cma step=1 op=heapinfo status=ok errno=0 heaps={name} heap={name}\n"
    out += f"@cma step=2 op=exhaust status=ok errno=0 chunk=16M,1M backend=heap heap={name} total={total} count=8\n"
    chunks = ",".join(str(chunk) for chunk in CAPACITY_CHUNKS)
    return Reply(f"cma_test heapinfo exhaust {chunks} backend=heap", 0, out)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_driver_only_steps_are_refused_on_the_heap_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "backend: heap\nsteps:\n  - alloc: {name: a, size: 4K}\n  - info: {name: a}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml:4: step 'info' needs the driver \(CMEM_GET_PHYS\)"):
        load_scenario(path)
    busy = write(tmp_path, "steps:\n  - insmod: {}\n  - rmmod: {expect: busy}\n")
    load_scenario(busy)  # fine on the driver
    with pytest.raises(ConfigError, match=r"s\.yaml:3: step 'rmmod' needs the driver"):
        load_scenario(busy, "heap")
    for kind in ("ioctl: {cmd: CMEM_ALLOCATE}", "mmap: {offset: 0, len: 4096}", "cma: {run: 'total'}"):
        path = write(tmp_path, f"steps:\n  - {kind}\n")
        with pytest.raises(ConfigError, match=r"s\.yaml:2: .*not available with backend heap"):
            load_scenario(path, "heap")
    refused = [p.stem for p in sorted(SCENARIOS.glob("*.yaml")) if p.stem not in HEAP_SCENARIOS]
    for name in refused:
        with pytest.raises(ConfigError, match="not available with backend heap"):
            resolve_scenarios([name], "heap")


def test_a_block_is_used_through_the_backend_that_allocated_it(tmp_path: Path) -> None:
    path = write(tmp_path, "steps:\n  - alloc: {name: a, size: 4K, backend: heap}\n  - verify: [a]\n")
    with pytest.raises(ConfigError, match=r"s\.yaml:3: step 'verify' \(backend driver\): block 'a' was allocated "):
        load_scenario(path)


def test_heap_runs_send_backend_heap_and_make_no_driver_blocks(tmp_path: Path) -> None:
    scenario = scenario_of(tmp_path, "  - alloc: {name: a, size: 1M}\n  - verify: [a]\n  - write: {name: a, seed: 3}\n")
    scenario = load_scenario(scenario.path, "heap")
    assert scenario.name == "t@heap"
    alloc = "@cma step=1 op=alloc status=ok errno=0 name=a backend=heap heap=reserved fd=4 len=1048576 user=0x7f00\n"
    replies = [
        SERVE,
        Reply("cma_test ctl main alloc a 1048576 wc backend=heap", 0, alloc),
        Reply("cma_test ctl main verify a backend=heap", 0, "@cma step=1 op=verify status=ok errno=0 name=a\n"),
        Reply("cma_test ctl main write a 3 backend=heap", 0, "@cma step=1 op=write status=ok errno=0 name=a\n"),
    ]
    runner, transport = runner_for(replies)
    results = runner.run(scenario)
    assert [r.status for r in results] == [StepStatus.PASS] * 3, [r.problems for r in results]
    assert runner.state.blocks == {}  # no placement, no dump_mem expected: not the driver's
    assert transport.replies == []


def test_the_heap_witness_agrees_disagrees_and_catches_a_leak_alone(tmp_path: Path) -> None:
    total = 120 << 20
    both = "  - capacity: baseline\n  - capacity: check\n"
    ok = runner_for([probe(total, 0), heap(total), probe(total, 0), heap(total)])[0].run(scenario_of(tmp_path, both))
    assert [r.status for r in ok] == [StepStatus.PASS] * 2
    assert ok[0].notes == [f"heap witness (/dev/dma_heap/reserved): {total} bytes allocatable, the driver {total}"]
    runner, _ = runner_for([probe(total, 0), heap(total - 2 * CAPACITY_GRANULE)])
    [disagree] = runner.run(scenario_of(tmp_path, "  - capacity: baseline\n"))
    assert disagree.problems == [
        f"heap witness disagrees: the driver can allocate {total} bytes, the CMA heap /dev/dma_heap/reserved "
        f"{total - 2 * CAPACITY_GRANULE} bytes (difference -{2 * CAPACITY_GRANULE})"
    ]
    alone = "  - capacity: {mode: baseline, probe: heap}\n  - capacity: {mode: check, probe: heap}\n"
    runner, transport = runner_for([heap(total), heap(total - CAPACITY_GRANULE)])
    leak = runner.run(scenario_of(tmp_path, alone))[1]
    assert leak.problems[0].startswith(
        f"CMA capacity leak seen by the heap witness: {CAPACITY_GRANULE} bytes fewer allocatable through "
        "/dev/dma_heap/reserved"
    )
    assert transport.sent == [heap(0).command] * 2  # the driver's probe never ran


def test_no_heap_is_a_note_never_a_failure(tmp_path: Path) -> None:
    steps = "  - capacity: {mode: baseline, probe: heap}\n  - capacity: {mode: check, probe: heap}\n"
    results = runner_for([NO_HEAP, NO_HEAP])[0].run(scenario_of(tmp_path, steps))
    assert [r.status for r in results] == [StepStatus.PASS] * 2
    assert results[1].notes == [f"heap witness {NO_HEAPS}"]
    assert NO_HEAPS == "unavailable: CONFIG_DMABUF_HEAPS_CMA not set (no /dev/dma_heap)"
    other = parse_records("@cma step=1 op=heapinfo status=fail errno=ENODEV heaps=system msg=no CMA heap\n")
    assert heap_unavailable(other) == "unavailable: no CMA heap in /dev/dma_heap (heaps: system)"


COMPARE = """\
@cma step=1 op=exhaust status=ok errno=0 chunk=1048576 total=133169152 count=127
@cma step=2 op=fragtest status=ok errno=0 chunk=1048576 backend=driver count=127 freed=64 large=ENOMEM small=0
@cma step=3 op=bench status=ok errno=0 size=1048576 backend=driver count=200 alloc_ns=1215736 map_ns=424 free_ns=160272
@cma step=1 op=exhaust status=ok errno=0 chunk=1048576 backend=heap heap=reserved total=133169152 count=127
@cma step=2 op=fragtest status=ok errno=0 chunk=1048576 backend=heap count=127 freed=64 large=ENOMEM small=0
@cma step=3 op=bench status=fail errno=ENOMEM size=1048576 backend=heap count=3 alloc_ns=1 map_ns=2 free_ns=3
@cma step=1 op=largest status=ok errno=0 backend=driver largest=133169152 probes=14
"""


def test_comparison_rows_and_reports() -> None:
    records = parse_records(COMPARE)
    driver, heap_row = compare_rows(records, [1 << 20], ["driver", "heap"])
    assert driver["total"] == 133169152 and driver["alloc_ns"] == 1215736 and driver["errors"] == []
    assert driver["fragmentation"] == {"filled": 127, "freed": 64, "double": "ENOMEM", "single": "0"}
    assert heap_row["alloc_ns"] is None and heap_row["errors"][0].startswith("bench: ")
    assert largest(records, "driver") == 133169152 and largest(records, "heap") is None
    data = {
        "target": "arm64-fast",
        "heap": {"available": True, "name": "reserved"},
        "rows": [driver, heap_row],
        "largest": {"driver": 133169152, "heap": None},
        "calls": 200,
    }
    md = render_markdown(data)
    assert "| 1 MiB | cma_mem | 127.0 MiB | 127 | 127 filled, 64 freed: 2×size ENOMEM, 1×size ok | 1216 µs |" in md
    assert "## Problems" in md and "1 MiB heap: bench: " in md
    assert "<td>CMA heap</td>" in render_html(data)
    gone = render_markdown({"target": "arm64-virt", "heap": {"available": False, "reason": NO_HEAPS}, "rows": []})
    assert f"**Comparison {NO_HEAPS}**" in gone
