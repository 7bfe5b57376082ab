#!/usr/bin/env python3
"""Warm guest cycle vs. the bare-boot floor, measured in the same run.

bare: QEMU + the same kernel + an initramfs whose /init powers off at once
      (busybox only), from spawn to QEMU exit.
run:  `cma-harness run` (the CLI process, Python start-up included) with the
      default target and scenario, warm cache.
Runs alternate (bare, run, bare, run, ...) so machine noise hits both alike;
medians are reported, and the ratio of medians.

    python benchmarks/cycle.py [--runs 5] [--target arm64-virt [--target armv7-virt ...]] [--scenario smoke]

`--scenario benchmarks/one-command.yaml` is the fixed-cost yardstick: one shell command, so
run minus bare is what the harness itself adds. Each run's time is split into phases: start-up
(process start to the session: interpreter, imports, parsing), the stages from result.json,
and exit (result.json written to process exit: the summary, interpreter teardown).

With several targets, each gets its own floor (its own kernel and QEMU), and a
Markdown table of all of them ends the output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import paths
from harness.artifacts import initramfs
from harness.artifacts.debian import DebianProvider, ImageCache
from harness.artifacts.kernels.registry import kernel_provider
from harness.config.targets import resolve_target
from harness.guest import guestinit
from harness.guest.qemu import BootFiles, QemuProcess, qemu_command


def bare_boot(argv: list[str]) -> float:
    started = time.monotonic()
    with QemuProcess(argv) as qemu:
        qemu.child.expect_exact("@@ready", timeout=120)
        qemu.wait_exit(60)
    return time.monotonic() - started


def harness_run(target: str, scenario: str, out: Path) -> tuple[float, dict]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--target", target, "--scenario", scenario, "--out", str(out)],
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    result = json.loads((out / "result.json").read_text())
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return wall, result


def measure(name: str, scenario: str, runs: int) -> tuple[list[float], list[float], list[dict]]:
    target = resolve_target(name)
    cache = ImageCache(paths.cache_dir())
    kernel = kernel_provider(target, cache).kernel(target)
    busybox = DebianProvider(cache).busybox(target)
    with tempfile.TemporaryDirectory() as tmp:
        dummy = Path(tmp) / "empty"
        dummy.write_bytes(b"")
        files = initramfs.GuestFiles(busybox=busybox.busybox, cma_test=dummy, kmod=dummy)
        initrd = initramfs.cached_initramfs(Path(tmp), files, guestinit.BARE_INIT, guestinit.FORMAT_VERSION)
        argv = qemu_command(target, BootFiles(kernel.image, initrd, kernel.dtb))
        harness_run(name, scenario, Path(tmp) / "warmup")  # fill the caches
        bare, full, stages = [], [], []
        for i in range(runs):
            bare.append(bare_boot(argv))
            wall, result = harness_run(name, scenario, Path(tmp) / f"run{i}")
            full.append(wall)
            stages.append(result["timings"])
    return bare, full, stages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--target", action="append", help="default: arm64-virt")
    parser.add_argument("--scenario", default="smoke")
    args = parser.parse_args()
    rows = []
    for name in args.target or ["arm64-virt"]:
        bare, full, stages = measure(name, args.scenario, args.runs)
        med_bare, med_full = statistics.median(bare), statistics.median(full)
        print(f"target {name}, scenario {args.scenario}, {args.runs} runs each, alternating")
        print(f"bare boot-to-poweroff   median {med_bare:6.2f} s   {' '.join(f'{b:.2f}' for b in bare)}")
        print(f"cma-harness run (warm)  median {med_full:6.2f} s   {' '.join(f'{f:.2f}' for f in full)}")
        added = med_full - med_bare
        print(f"ratio run/bare          {med_full / med_bare:6.2f}x  (harness + whole scenario add {added:.2f} s)")
        for stage in stages[0]:
            print(f"  phase {stage:<15} median {statistics.median(s[stage] for s in stages):6.3f} s")
        exits = [w - s.get("start-up", 0.0) - s["total"] for w, s in zip(full, stages, strict=True)]
        print(f"  phase {'exit':<15} median {statistics.median(exits):6.3f} s  (wall - start-up - total)")
        pre_boot = statistics.median(
            sum(s.get(k, 0.0) for k in ("setup", "images", "build kmod", "build userland", "initramfs")) for s in stages
        )
        rows.append((name, med_bare, med_full, pre_boot))
        print(flush=True)
    print(f"| target | bare boot (floor) | warm `run --scenario {args.scenario}` | ratio | harness before boot |")
    print("|---|---|---|---|---|")
    for name, med_bare, med_full, pre_boot in rows:
        print(f"| {name} | {med_bare:.2f} s | {med_full:.2f} s | {med_full / med_bare:.1f}x | {pre_boot:.3f} s |")


if __name__ == "__main__":
    main()
