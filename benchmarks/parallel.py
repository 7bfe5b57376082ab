"""Throughput of `run -j 2` against `run -j 1` on the whole shipped suite (docs/performance.md: "Parallel guests").

    .venv/bin/python benchmarks/parallel.py --target arm64-fast --rounds 3 [--before DIR] [--keep-env]
        [--sched batch,normal]

Each round runs the suite once with -j 1 (one guest, every scenario) and once with -j 2 (the
scenarios shared by two guests), alternating which goes first so load drifts hit both alike.
Wall time is the whole command (process start, prepare, guests, merge). Prints per-run times,
the medians, the throughput ratio median(-j 1) / median(-j 2), the median of the rounds' own
ratios, the host's CPUs and load average.

With --sched P1,P2 (CMA_HARNESS_SCHED policies: batch, normal; default: the harness's
own default), every round runs -j 2 once under each policy, so policies meet the same noise.

With --before DIR (another source tree, e.g. `git archive` of main unpacked there), every round
also times that tree, so before and after meet the same machine noise. The harness runs with
PYTHONDONTWRITEBYTECODE removed from its environment, as installed (--keep-env keeps it).

The host's own ceiling, in the same rounds (--ceiling, default on): the same kernel and QEMU
command line running a fixed guest-only workload (a busybox shell loop and md5sum over
/dev/zero, no harness, no serial traffic), once alone and then twice at once. Two TCG guests
on two cores rarely run at 2x one: they share caches and memory bandwidth, and this host's
CPUs are shared with other machines. 2 x alone / together is what any -j 2 can reach here.
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


def one(
    target: str, jobs: int, out: Path, env: dict[str, str], tree: Path = ROOT, sched: str = ""
) -> tuple[float, str]:
    """One whole `run -j N` of the shipped suite from source tree `tree` (its own scenarios)."""
    if sched:
        env = env | {"CMA_HARNESS_SCHED": sched}
    if tree != ROOT:
        env = env | {"PYTHONPATH": str(tree)}  # wins over the editable install's finder
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--target", target, "--scenario", str(tree / "configs" / "scenarios"),
         "-j", str(jobs), "--out", str(out), "--json"],
        capture_output=True, text=True, cwd=tree, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    wall = time.monotonic() - started
    data = json.loads(proc.stdout) if proc.stdout.strip() else {}
    verdict = data.get("verdict", f"exit {proc.returncode}")
    failing = [s["name"] for s in data.get("scenarios", []) if s["verdict"] != "pass"]
    return wall, verdict + (f" ({', '.join(failing)}; {out})" if failing else "")


# The ceiling's guest: CPU and memory work inside the guest only, then power off.
CEILING_INIT = """#!/bin/sh
/bin/busybox mount -t proc proc /proc
i=0
while [ $i -lt @LOOPS@ ]; do i=$((i + 1)); done
/bin/busybox dd if=/dev/zero bs=64k count=@BLOCKS@ 2>/dev/null | /bin/busybox md5sum
echo "@@ready"
/bin/busybox poweroff -f
"""


def ceiling_argv(target_name: str, tmp: Path, loops: int, blocks: int) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from harness import paths
    from harness.artifacts import initramfs
    from harness.artifacts.debian import DebianProvider, ImageCache
    from harness.artifacts.kernels.registry import kernel_provider
    from harness.config.targets import resolve_target
    from harness.guest.qemu import BootFiles, qemu_command

    target = resolve_target(target_name)
    cache = ImageCache(paths.cache_dir())
    kernel = kernel_provider(target, cache).kernel(target)
    busybox = DebianProvider(cache).busybox(target).busybox
    files = initramfs.GuestFiles(busybox=busybox, cma_test=None, kmod=None)
    init = CEILING_INIT.replace("@LOOPS@", str(loops)).replace("@BLOCKS@", str(blocks))
    initrd = initramfs.cached_initramfs(tmp, files, init, "ceiling")
    return qemu_command(target, BootFiles(kernel.image, initrd, kernel.dtb))


def guests(argv: list[str], n: int) -> float:
    """Seconds until n copies of the guest, started together, have all powered off."""
    started = time.monotonic()
    procs = [
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(n)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if b"@@ready" not in out:
            raise SystemExit(f"the ceiling guest did not finish: {out[-2000:].decode(errors='replace')}")
    return time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="arm64-fast")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", help="keep the run directories here (default: a temporary folder)")
    ap.add_argument("--no-ceiling", dest="ceiling", action="store_false", help="skip the host-ceiling guests")
    ap.add_argument("--loops", type=int, default=200000, help="the ceiling guest's shell loop count")
    ap.add_argument("--blocks", type=int, default=4000, help="the ceiling guest's 64 KiB blocks through md5sum")
    ap.add_argument("--before", type=Path, help="a source tree to time too (e.g. `git archive` of main, unpacked)")
    ap.add_argument("--keep-env", action="store_true", help="keep PYTHONDONTWRITEBYTECODE if set")
    ap.add_argument("--sched", default="", help="-j 2 under each of these CMA_HARNESS_SCHED policies (comma-separated)")
    args = ap.parse_args()
    scheds = args.sched.split(",") if args.sched else [""]
    # As installed, Python caches bytecode: with PYTHONDONTWRITEBYTECODE every process compiles
    # the harness from source (~0.1 s), and -j 2 starts three processes where -j 1 starts one.
    env = dict(os.environ)
    if not args.keep_env:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    trees = {"": ROOT} | ({"before ": args.before.resolve()} if args.before else {})
    # A run: (tree label, -j, policy); -j 1 runs one guest, so the policy does not apply to it.
    order = [(label, 1, "") for label in trees] + [(label, 2, p) for label in trees for p in scheds]
    times: dict[tuple[str, int, str], list[float]] = {run: [] for run in order}
    alone: list[float] = []
    together: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cma-parallel-") as scratch:
        tmp = args.keep or scratch
        for label, tree in trees.items():  # warm cache, bytecode and the durations the queue order uses
            one(args.target, 1, Path(tmp) / f"warm{label.strip()}", env, tree)
            one(args.target, 2, Path(tmp) / f"warm2{label.strip()}", env, tree)
        argv = ceiling_argv(args.target, Path(tmp), args.loops, args.blocks) if args.ceiling else []
        for r in range(args.rounds):
            for label, jobs, sched in order if r % 2 == 0 else order[::-1]:
                out = Path(tmp) / f"r{r}-{label.strip() or 'after'}-j{jobs}{sched}"
                wall, verdict = one(args.target, jobs, out, env, trees[label], sched)
                times[(label, jobs, sched)].append(wall)
                name = f"{label}-j {jobs}" + (f" {sched}" if sched else "")
                print(f"round {r + 1} {name}: {wall:6.2f} s  {verdict}  (load {os.getloadavg()[0]:.2f})",
                      flush=True)  # fmt: skip
            if args.ceiling:
                alone.append(guests(argv, 1))
                together.append(guests(argv, 2))
                print(f"round {r + 1} ceiling: one guest {alone[-1]:.2f} s, two at once {together[-1]:.2f} s: "
                      f"{2 * alone[-1] / together[-1]:.2f}x", flush=True)  # fmt: skip
    ceiling = statistics.median(2 * a / t for a, t in zip(alone, together, strict=True)) if alone else 0.0
    for label, jobs, sched in order:
        if jobs == 1:
            continue
        one_guest, two = times[(label, 1, "")], times[(label, 2, sched)]
        m1, m2 = statistics.median(one_guest), statistics.median(two)
        rounds = statistics.median(a / b for a, b in zip(one_guest, two, strict=True))
        name = label + (f"{sched} " if sched else "")
        print(f"{name}median -j 1: {m1:.2f} s   median -j 2: {m2:.2f} s   throughput -j 2 / -j 1: {m1 / m2:.2f}x")
        print(f"{name}median of the rounds' own ratios: {rounds:.2f}x")
        if alone:
            print(f"{name}-j 2 reaches {m1 / m2 / ceiling:.0%} of the host ceiling")
    if alone:
        print(f"host ceiling (two guests at once vs one, median of rounds): {ceiling:.2f}x")
    print(f"host: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
