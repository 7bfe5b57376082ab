"""The kernel's CMA heap end to end on arm64-fast (CONFIG_DMABUF_HEAPS_CMA): the witness catches a driver
that leaks at rmmod on its own, the shipped scenarios that make sense on the heap pass on it, and the
side-by-side comparison runs; on the stock Debian kernel (no heaps) both say why they are unavailable."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.oracles.heap import NO_HEAPS
from tests.guest.broken import VARIANTS
from tests.guest.test_run import run_cli
from tests.test_heap import HEAP_SCENARIOS

pytestmark = pytest.mark.guest

# smoke's allocations and unload, with the driver's own capacity probe switched off: only the heap measures.
WITNESS_ONLY = """\
name: heap-witness-only
description: allocate, exit, unload; capacity measured through the kernel's CMA heap only
steps:
  - insmod: {}
  - capacity: {mode: baseline, probe: heap}
  - alloc: {name: mem1, size: 800*480*4, type: wc}
  - alloc: {name: mem2, size: 800*480*4, type: wc}
  - alloc: {name: buf, size: 1M, type: coherent}
  - exit: main
  - rmmod: {}
  - capacity: {mode: check, probe: heap}
"""
DRIVER_PROBE = "if grep -q '^cma_mem ' /proc/modules"  # the start of the driver's capacity probe command


def problems_of(result: dict) -> list[str]:
    return [p for step in result["steps"] for p in step["problems"]]


def commands_of(result: dict) -> list[str]:
    return [c["command"] for step in result["steps"] for c in step["commands"]]


def test_a_driver_that_leaks_at_rmmod_is_caught_by_the_heap_witness_alone(tmp_path):
    scenario = tmp_path / "heap-witness-only.yaml"
    scenario.write_text(WITNESS_ONLY)
    variant = next(v for v in VARIANTS if v.name == "leak-one-at-rmmod")
    kmod = variant.make(tmp_path)
    code, output, result = run_cli(
        "--target", "arm64-fast", "--scenario", str(scenario), "--kmod", str(kmod), out=tmp_path / "broken"
    )
    assert code == 1, output
    problems = problems_of(result)
    assert any(re.match(r"CMA capacity leak seen by the heap witness: \d+ bytes fewer", p) for p in problems), problems
    assert not any(p.startswith("CMA capacity leak:") for p in problems)  # the driver's probe never ran
    assert not any(c.startswith(DRIVER_PROBE) for c in commands_of(result))
    # The project's driver passes the same scenario: the finding is the leak, not the witness.
    code, output, result = run_cli("--target", "arm64-fast", "--scenario", str(scenario), out=tmp_path / "good")
    assert code == 0, output
    check = result["steps"][-1]
    assert check["notes"] and check["notes"][0].startswith("heap witness (/dev/dma_heap/reserved): ")


def test_the_shipped_scenarios_that_make_sense_pass_on_the_heap(tmp_path):
    specs = [a for name in HEAP_SCENARIOS for a in ("--scenario", name)]
    code, output, result = run_cli("--target", "arm64-fast", "--backend", "heap", *specs, out=tmp_path)
    assert code == 0, output
    assert [(s["name"], s["verdict"]) for s in result["scenarios"]] == [(f"{n}@heap", "pass") for n in HEAP_SCENARIOS]
    assert result["allocations"] == []  # nothing went through the driver
    heap_words = [c for c in commands_of(result) if c.startswith("cma_test ctl main alloc")]
    assert heap_words and all("backend=heap" in c for c in heap_words)
    notes = [n for step in result["steps"] for n in step.get("notes", [])]
    # capacity: both measures agree (else the step would have failed), and the figures are kept
    assert notes and all(
        re.match(r"heap witness \(/dev/dma_heap/reserved\): \d+ bytes allocatable, the driver", n) for n in notes
    )


def heap_compare(*args: str, out: Path) -> tuple[int, str, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "heap-compare", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=1800,
        stdin=subprocess.DEVNULL,
    )
    data = json.loads((out / "compare.json").read_text()) if (out / "compare.json").exists() else {}
    return proc.returncode, proc.stdout + proc.stderr, data


def test_heap_compare_measures_both_backends_on_arm64_fast(tmp_path):
    code, output, data = heap_compare("--target", "arm64-fast", "--sizes", "64K,4M", "--calls", "20", out=tmp_path)
    assert code == 0, output
    assert data["heap"] == {"available": True, "name": "reserved"}
    assert [(r["size"], r["backend"]) for r in data["rows"]] == [
        (65536, "driver"), (65536, "heap"), (4 << 20, "driver"), (4 << 20, "heap")
    ]  # fmt: skip
    for row in data["rows"]:
        assert row["errors"] == [] and row["calls"] == 20 and row["alloc_ns"] > 0 and row["free_ns"] > 0
        assert row["total"] > 100 << 20 and row["fragmentation"]["double"] == "ENOMEM"
    driver, heap = (r for r in data["rows"] if r["size"] == 4 << 20)
    assert abs(driver["total"] - heap["total"]) < 1 << 20  # the same area, measured two ways
    assert data["largest"]["driver"] > 100 << 20 and data["largest"]["heap"] > 100 << 20
    md = (tmp_path / "heap-compare.md").read_text()
    assert "| 64 KiB | CMA heap | " in md and "| 4 MiB | cma_mem | " in md
    assert "<table>" in (tmp_path / "heap-compare.html").read_text()


def test_without_heaps_the_witness_and_the_comparison_say_why(tmp_path):
    code, output, data = heap_compare("--target", "arm64-virt", "--sizes", "1M", "--calls", "5", out=tmp_path / "cmp")
    assert code == 0, output
    assert data["heap"] == {"available": False, "name": None, "reason": NO_HEAPS}
    assert [r["backend"] for r in data["rows"]] == ["driver"]
    assert f"Comparison {NO_HEAPS}" in (tmp_path / "cmp" / "heap-compare.md").read_text()
    code, output, result = run_cli("--target", "arm64-virt", "--scenario", "exhaustion", out=tmp_path / "run")
    assert code == 0, output
    capacity = [s for s in result["steps"] if s["name"].startswith("capacity")]
    assert [s["notes"] for s in capacity] == [[f"heap witness {NO_HEAPS}"]] * 2
