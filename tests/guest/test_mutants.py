"""CI's fixed sample of the mutation benchmark (benchmarks/mutants.py; the whole set is in
docs/mutation-score.md): every sampled driver mutant is killed, each by the oracle that should.

The sample (8 mutants, seed 1) holds the two that survived the shipped suite before the fuzzer
checked the driver's debugfs block list and before survivors went on to the debug kernel: a
swapped list_add_tail() on the global list and a removed kfree() of the block node.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest

ROOT = Path(__file__).resolve().parent.parent.parent


def test_a_fixed_sample_of_mutants_is_killed(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mutants.py"), "--sample", "8", "--seed", "1", "--run",
         "--target", "arm64-fast", "--fuzz-ops", "1000", "--then-target", "arm64-debug", "--then-k", "smoke",
         "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    outcomes = {d["id"]: d for d in map(json.loads, (tmp_path / "mutants.jsonl").read_text().splitlines())}
    assert len(outcomes) == 8, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(o["verdict"] == "killed" for o in outcomes.values()), proc.stdout
    # Each of the two former survivors falls to the oracle made for it: the swap to the fuzz
    # scenario's check of the debugfs block list against the model, the leak to kmemleak.
    swap = json.loads((tmp_path / "L513C16-swap" / "result.json").read_text())
    assert any("debugfs cma_mem/blocks" in p for s in swap["steps"] for p in s["problems"]), swap["steps"]
    assert outcomes["L235C2-call"]["by"] == "arm64-debug"
    leak = json.loads((tmp_path / "L235C2-call" / "arm64-debug" / "result.json").read_text())
    assert any(e["kind"] == "kmemleak" for e in leak["kernel_events"]), leak["kernel_events"]
    assert "mutation score: 8/8 non-equivalent mutants killed (100.0 %)" in proc.stdout
