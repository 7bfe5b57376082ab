#!/usr/bin/env python3
"""Model-checked fuzzing on the clean driver: operations per second, mismatches, kernel events.

    .venv/bin/python benchmarks/fuzz_rate.py --target arm64-fast --target arm64-virt --ops 100000 [--runs 1]

Each run is `cma-harness fuzz --target T --seed S --ops N` (seeds 11, 12, ... per run) in a fresh
guest; the rate is fuzz.json's operations over the fuzzing time (after boot and the capacity
measurement, including the closing leak probe). Prints every run and, per target, the median
rate; exits 1 if any run found a mismatch or a kernel event (on the clean driver, a false alarm).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def one(target: str, seed: int, ops: int, out: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "fuzz", "--target", target, "--seed", str(seed), "--ops", str(ops),
         "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    data: dict[str, Any] = {"exit": proc.returncode}
    path = out / "fuzz.json"
    if path.exists():
        data |= json.loads(path.read_text())
    else:
        data["error"] = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", default=[])
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=11, help="the first run's seed (then +1 per run)")
    a = ap.parse_args()
    targets = a.target or ["arm64-fast"]
    bad = False
    with tempfile.TemporaryDirectory(prefix="fuzz-rate-") as tmp:
        for target in targets:
            rates = []
            for k in range(a.runs):
                seed = a.seed + k
                d = one(target, seed, a.ops, Path(tmp) / f"{target}-{seed}")
                ops, secs = int(d.get("ops", 0)), float(d.get("seconds", 0.0))
                mism, events = d.get("mismatches", []), d.get("events", [])
                rate = ops / secs if secs else 0.0
                rates.append(rate)
                bad |= bool(mism) or bool(events) or d["exit"] != 0
                print(
                    f"{target} seed {seed}: {ops} ops in {d.get('commands', '?')} commands, {secs:.1f} s, "
                    f"{rate:.0f} ops/s; {len(mism)} mismatches, {len(events)} kernel events, exit {d['exit']}"
                    + (f"  {d['error']}" if "error" in d else ""),
                    flush=True,
                )
            print(f"{target}: median {statistics.median(rates):.0f} ops/s over {a.runs} run(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
