"""Throughput of `run -j 2` against `run -j 1` on the whole shipped suite (README: "Parallel guests").

    .venv/bin/python benchmarks/parallel.py --target arm64-fast --rounds 3

Each round runs the suite once with -j 1 (one guest, every scenario) and once with -j 2 (the
scenarios split across two guests), alternating which goes first so load drifts hit both alike.
Wall time is the whole command (process start, prepare, guests, merge). Prints per-run times,
the medians, the throughput ratio median(-j 1) / median(-j 2), the host's CPUs and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one(target: str, jobs: int, out: Path) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--target", target, "--scenario", str(ROOT / "configs" / "scenarios"),
         "-j", str(jobs), "--out", str(out), "--json"],
        capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    wall = time.monotonic() - started
    data = json.loads(proc.stdout) if proc.stdout.strip() else {}
    verdict = data.get("verdict", f"exit {proc.returncode}")
    failing = [s["name"] for s in data.get("scenarios", []) if s["verdict"] != "pass"]
    return wall, verdict + (f" ({', '.join(failing)}; {out})" if failing else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="arm64-fast")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", help="keep the run directories here (default: a temporary folder)")
    args = ap.parse_args()
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="cma-parallel-") as scratch:
        tmp = args.keep or scratch
        one(args.target, 1, Path(tmp) / "warm")  # warm cache and the durations the split uses
        for r in range(args.rounds):
            for jobs in (1, 2) if r % 2 == 0 else (2, 1):
                wall, verdict = one(args.target, jobs, Path(tmp) / f"r{r}-j{jobs}")
                times[jobs].append(wall)
                print(f"round {r + 1} -j {jobs}: {wall:6.2f} s  {verdict}  (load {os.getloadavg()[0]:.2f})", flush=True)
    m1, m2 = statistics.median(times[1]), statistics.median(times[2])
    print(f"median -j 1: {m1:.2f} s   median -j 2: {m2:.2f} s   throughput -j 2 / -j 1: {m1 / m2:.2f}x")
    print(f"host: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
