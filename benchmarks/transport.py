#!/usr/bin/env python3
"""Serial vs SSH: time from QEMU start to the first command, and the per-command round trip.

    python benchmarks/transport.py [--runs 5] [--commands 30] [--target arm64-virt]

Each run boots one guest per transport (alternating), times `true` round trips
on it, and reports medians. Start-up: QEMU spawn to the first command's result
(serial: /init's ready line; SSH: also dropbear, key exchange and auth).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import paths
from harness.config.targets import resolve_target
from harness.guest.machine import Guest
from harness.run.result import RunResult
from harness.run.session import RunOptions, Stages, prepare, ssh_setup


def cycle(opts: RunOptions, commands: int) -> tuple[float, float]:
    record = RunResult()
    boot = prepare(opts, Stages(record, lambda *a: None), record, lambda m: None)
    ssh = ssh_setup(opts.out) if opts.transport == "ssh" else None
    with Guest(opts.target, boot, None, ssh) as guest:
        assert guest.transport is not None
        guest.transport.run("true")
        first = time.monotonic() - guest.qemu.started_at
        times = []
        for _ in range(commands):
            started = time.monotonic()
            guest.transport.run("true")
            times.append(time.monotonic() - started)
        guest.poweroff()
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--commands", type=int, default=30)
    parser.add_argument("--target", default="arm64-virt")
    args = parser.parse_args()
    target = resolve_target(args.target)
    results: dict[str, list[tuple[float, float]]] = {"serial": [], "ssh": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for transport in ("serial", "ssh"):
                opts = RunOptions(target, [], paths.kmod_dir(), Path(tmp) / f"{transport}{i}", paths.cache_dir(),
                                  transport=transport)  # fmt: skip
                opts.out.mkdir(parents=True)
                results[transport].append(cycle(opts, args.commands))
    print(f"target {args.target}, {args.runs} boots per transport (alternating), {args.commands} commands each")
    for transport, rows in results.items():
        first = statistics.median(r[0] for r in rows)
        rtt = statistics.median(r[1] for r in rows)
        print(f"{transport:<6}  QEMU start -> first command {first:6.2f} s   round trip {rtt * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
