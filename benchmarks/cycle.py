#!/usr/bin/env python3
"""Warm guest cycle vs. the bare-boot floor, measured in the same run.

bare:     QEMU + the same kernel + an initramfs whose /init powers off at once
          (busybox only), from spawn to QEMU exit.
run:      `cma-harness run --snapshot off` (the CLI process, Python start-up included),
          warm cache, booting cold.
restored: the same run with `--snapshot auto`, the guest restored from its snapshot
          (made by the warm-up run), with --restored.
late:     the same cold run with CMA_HARNESS_PRESPAWN=off: QEMU started only once the run is
          planned, not from the last identical run's plan at process start (--no-late skips it).
before:   with --before DIR, the same cold run from another source tree (e.g. `git archive main`
          unpacked there), so before and after are measured in the same run.
Runs alternate (bare, run, [restored], [before], bare, ...) so machine noise hits all alike;
medians are reported, with the median of the rounds' own differences (run minus the bare
boot just before it) and its bootstrap 95 % interval. Each variant reuses one run directory,
so its command line is the same every time, as a user repeating a run types it.

    python benchmarks/cycle.py [--runs 7] [--target arm64-virt ...] [--scenario benchmarks/one-command.yaml]
                               [--restored] [--before DIR] [--no-late]

A second estimate takes the kernel's own boot out of both sides: each cycle less the guest's
uptime when its /init started (printed by both inits), paired the same way. The kernel's boot
is the same work with and without the harness and moves by tenths of a second from boot to
boot on a shared host; what is left is QEMU's start, the harness's own time, /init and the
scenario, so a difference of a few tens of milliseconds can be seen in a few rounds.

`--scenario benchmarks/one-command.yaml` is the fixed-cost yardstick: one shell command, so
run minus bare is what the harness itself adds. Each run's time is split into phases: start-up
(process start to the session: interpreter, imports, parsing), the stages from result.json,
and exit (result.json written to process exit: the summary, interpreter teardown).

The harness runs with PYTHONDONTWRITEBYTECODE removed from its environment (as installed,
Python caches bytecode; without it every harness module is compiled from source on every
run, ~0.1 s); --keep-env measures with the environment as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
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
from harness.guest.qemu import BootFiles, qemu_command
from harness.guest.qemu_process import QemuProcess

PRE_BOOT = ("setup", "images", "build kmod", "build userland", "initramfs")


UPTIME = re.compile(rb"@@boot (?:release=\S+ )?uptime=([0-9.]+)")


def bare_boot(argv: list[str]) -> tuple[float, float]:
    """Seconds from spawn to QEMU's exit, and the guest's uptime when its /init started."""
    started = time.monotonic()
    with QemuProcess(argv) as qemu:
        qemu.child.expect(UPTIME, timeout=120)
        uptime = float(qemu.child.match.group(1))
        qemu.child.expect_exact("@@ready", timeout=120)
        qemu.wait_exit(60)
    return time.monotonic() - started, uptime


class Variant:
    def __init__(self, label: str, extra: list[str], tree: Path | None, env: dict[str, str]) -> None:
        self.label, self.extra, self.tree, self.env = label, extra, tree, env
        self.walls: list[float] = []
        self.results: list[dict] = []
        self.uptimes: list[float] = []  # the guest's uptime at /init, from console.log

    def run(self, target: str, scenario: str, out: Path, record: bool = True) -> None:
        env = dict(self.env)
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree)  # wins over the editable install's finder
        started = time.monotonic()
        argv = [sys.executable, "-m", "harness", "run", "--target", target, "--scenario", scenario, "--out", str(out)]
        proc = subprocess.run(
            [*argv, *self.extra],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.tree or Path.cwd(),
        )
        wall = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"{self.label} run failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        if record:
            self.walls.append(wall)
            self.results.append(json.loads((out / "result.json").read_text()))
            m = UPTIME.search((out / "console.log").read_bytes())
            self.uptimes.append(float(m.group(1)) if m else float("nan"))

    def phases(self) -> list[tuple[str, float]]:
        """Median seconds per phase, process start to exit."""
        rows: dict[str, list[float]] = {}
        for wall, result in zip(self.walls, self.results, strict=True):
            t = result["timings"]
            phases = {"start-up": t.get("start-up", 0.0), "pre-boot stages": sum(t.get(k, 0.0) for k in PRE_BOOT)}
            phases |= {k: t.get(k, 0.0) for k in ("boot", "scenario", "report")}
            staged = sum(t.get(k, 0.0) for k in (*PRE_BOOT, "boot", "scenario", "report"))
            phases["between stages"] = t["total"] - staged
            phases["exit"] = wall - t.get("start-up", 0.0) - t["total"]
            for k, v in phases.items():
                rows.setdefault(k, []).append(v)
        return [(k, statistics.median(v)) for k, v in rows.items()]


def measure(name: str, scenario: str, runs: int, variants: list[Variant]) -> list[float]:
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
        # One run directory per variant, reused: the same command line every time, as a user
        # repeating a run types it (and as the early start's plan is keyed).
        for v in variants:  # fill the caches (and make the snapshot and the early-start plan)
            v.run(name, scenario, Path(tmp) / v.label, record=False)
        bare = []
        for _ in range(runs):
            bare.append(bare_boot(argv))
            for v in variants:
                v.run(name, scenario, Path(tmp) / v.label)
    return bare


def beyond_init(walls: list[float], uptimes: list[float]) -> list[float]:
    """Each cycle less the guest's uptime at /init: what is left once the kernel's own boot (the
    part that moves by tenths of a second from boot to boot on a shared host, and is the same
    work with or without the harness) is taken out."""
    return [w - u for w, u in zip(walls, uptimes, strict=True)]


def paired_interval(runs: list[float], bare: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    """The median of the rounds' own differences (run i - bare i, measured back to back) and a
    bootstrap 95 % interval for it. On this host one boot moves by a few tenths of a second from
    round to round: the interval says how far a fixed cost from this many rounds can be trusted.
    Seeded, so the same timings always give the same interval."""
    diffs = [r - b for r, b in zip(runs, bare, strict=True)]
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return statistics.median(diffs), medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--target", action="append", help="default: arm64-virt")
    parser.add_argument("--scenario", default="smoke")
    parser.add_argument("--restored", action="store_true", help="also time runs restored from a snapshot")
    parser.add_argument("--before", type=Path, help="a source tree to time too, cold (the 'before' of a change)")
    parser.add_argument("--keep-env", action="store_true", help="keep PYTHONDONTWRITEBYTECODE if set")
    parser.add_argument(
        "--no-late", action="store_true", help="skip the cold run with CMA_HARNESS_PRESPAWN=off (QEMU after planning)"
    )
    args = parser.parse_args()
    env = dict(os.environ)
    if not args.keep_env:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    scenario = str(Path(args.scenario).resolve()) if Path(args.scenario).exists() else args.scenario
    rows = []
    load = os.getloadavg()
    for name in args.target or ["arm64-virt"]:
        variants = []
        if args.before:
            variants.append(Variant("before", ["--snapshot", "off"], args.before.resolve(), env))
        variants.append(Variant("run", ["--snapshot", "off"], None, env))
        if not args.no_late:
            late = env | {"CMA_HARNESS_PRESPAWN": "off"}
            variants.append(Variant("run, QEMU started late", ["--snapshot", "off"], None, late))
        if args.restored:
            variants.append(Variant("restored", ["--snapshot", "auto"], None, env))
        bare_cycles = measure(name, scenario, args.runs, variants)
        bare = [wall for wall, _ in bare_cycles]
        bare_rest = beyond_init(bare, [uptime for _, uptime in bare_cycles])
        med_bare = statistics.median(bare)
        print(f"target {name}, scenario {args.scenario}, {args.runs} runs each, alternating")
        print(f"bare boot-to-poweroff   median {med_bare:6.2f} s   {' '.join(f'{b:.2f}' for b in bare)}")
        by = {v.label: v for v in variants}
        for v in variants:
            med = statistics.median(v.walls)
            what = {"run": "cma-harness run (cold)", "restored": "cma-harness run (restored)"}.get(v.label, v.label)
            print(f"{what:<26} median {med:6.2f} s   {' '.join(f'{f:.2f}' for f in v.walls)}")
        run = by["run"]
        med_run = statistics.median(run.walls)
        added = med_run - med_bare
        print(f"ratio run/bare          {med_run / med_bare:6.2f}x  (harness + whole scenario add {added:.2f} s)")
        paired, low, high = paired_interval(run.walls, bare)
        print(f"  paired rounds: run - bare median {paired:.2f} s, 95 % interval {low:.2f} to {high:.2f} s")
        paired, low, high = paired_interval(beyond_init(run.walls, run.uptimes), bare_rest)
        print(
            f"  the kernel's boot taken out (each cycle less the guest's uptime at /init): harness + whole "
            f"scenario add {paired:.3f} s, 95 % interval {low:.3f} to {high:.3f} s"
        )
        if "run, QEMU started late" in by:
            med_late = statistics.median(by["run, QEMU started late"].walls)
            print(f"QEMU started late: run/bare {med_late / med_bare:6.2f}x  (harness + whole scenario add "
                  f"{med_late - med_bare:.2f} s; CMA_HARNESS_PRESPAWN=off)")  # fmt: skip
        if "before" in by:
            before = by["before"]
            med_before = statistics.median(before.walls)
            added = med_before - med_bare
            print(
                f"before: ratio run/bare  {med_before / med_bare:6.2f}x  (harness + whole scenario add {added:.2f} s)"
            )
            if not any(u != u for u in before.uptimes):  # a tree whose /init prints its uptime
                paired, low, high = paired_interval(beyond_init(before.walls, before.uptimes), bare_rest)
                print(f"  before, the kernel's boot taken out: {paired:.3f} s, 95 % interval {low:.3f} to {high:.3f} s")
        if "restored" in by:
            med_restored = statistics.median(by["restored"].walls)
            modes = ", ".join(sorted({r["kernel"].get("boot", {}).get("mode", "?") for r in by["restored"].results}))
            print(
                f"restored cycle          median {med_restored:6.2f} s  ({med_restored / med_bare:.2f}x bare; {modes})"
            )
        for v in variants:
            print(f"  phases of {v.label}: " + ", ".join(f"{k} {s:.3f}" for k, s in v.phases()))
        rows.append((name, med_bare, med_run, statistics.median(by["restored"].walls) if "restored" in by else None))
        print(flush=True)
    end = os.getloadavg()
    print(
        "load average at start: "
        + " ".join(f"{x:.2f}" for x in load)
        + "; at end: "
        + " ".join(f"{x:.2f}" for x in end)
    )
    print(f"| target | bare boot (floor) | cold `run --scenario {args.scenario}` | fixed cost | restored |")
    print("|---|---|---|---|---|")
    for name, med_bare, med_run, med_restored in rows:
        restored = f"{med_restored:.2f} s" if med_restored is not None else "-"
        print(f"| {name} | {med_bare:.2f} s | {med_run:.2f} s | {med_run - med_bare:.2f} s | {restored} |")


if __name__ == "__main__":
    main()
