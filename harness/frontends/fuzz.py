"""`cma-harness fuzz`: seeded random operations on the driver, every record checked against the model.

A mismatch (or a kernel event) is shrunk to a minimal sequence and written as a scenario YAML
that reproduces it (`repro.yaml` in the run directory). Exit 1 means the driver disagreed with
its contract; 3, the environment failed; 0, every operation behaved.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import EXIT_FAIL, EXIT_PASS

if TYPE_CHECKING:
    from harness.model.fuzz import FuzzStats

# The model and the fuzzer are imported when `fuzz` runs: every other command (a guest cycle
# included) would otherwise pay ~0.1 s to import them just to list `fuzz` in --help.


def add_parser(sub: Any) -> None:
    """Add `fuzz` to the CLI's subparsers (argparse's _SubParsersAction)."""
    p = sub.add_parser("fuzz", help="seeded random operations checked against the driver model; shrinks failures")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ops", type=int, default=1000, help="operations to run (default 1000)")
    p.add_argument("--round", type=int, default=200, help="operations planned per round")
    p.add_argument("--target", default="arm64-fast", help="target name or YAML path (default arm64-fast)")
    p.add_argument("--kmod", help="driver source folder (default: the project's kmod/)")
    p.add_argument("--out", help="run directory (default ./runs/<timestamp>-fuzz)")
    p.add_argument("--sim", action="store_true", help="no guest: the model against a simulation of itself")
    p.add_argument("--no-shrink", action="store_true", help="report the failing sequence as it is")
    p.add_argument("--batch-chars", type=int, help="characters per guest command (default: the fuzzer's)")
    p.add_argument("--cache-dir", help="artifact cache (default $CMA_HARNESS_CACHE or ~/.cache/cma-harness)")


def report(stats: FuzzStats, out: Path, extra: dict[str, object]) -> None:
    print(f"{stats.ops} ops in {stats.commands} commands, {stats.seconds:.1f} s ({stats.rate:.0f} ops/s)")
    print("coverage: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.coverage.items())))
    summary = {"ops": stats.ops, "commands": stats.commands, "seconds": round(stats.seconds, 3)} | extra
    (out / "fuzz.json").write_text(json.dumps(summary | {"coverage": stats.coverage}, indent=2) + "\n")


def cmd_fuzz(args: argparse.Namespace) -> int:
    from harness import paths
    from harness.model.driver import DriverModel, Params
    from harness.model.fuzz import BATCH_CHARS, SimExecutor, fuzz
    from harness.run.session import default_run_dir

    if args.batch_chars is None:
        args.batch_chars = BATCH_CHARS
    out = Path(args.out).resolve() if args.out else default_run_dir().with_name(default_run_dir().name + "-fuzz")
    out.mkdir(parents=True, exist_ok=True)
    if args.sim:
        params = Params(cma_total=256 << 20, capacity=250 << 20)
        simulated = SimExecutor(DriverModel(Params(**vars(params))))
        stats, failure = fuzz(DriverModel(params), simulated, args.seed, args.ops)
        mismatches = [m.describe() for m in failure.mismatches] if failure else []
        report(stats, out, {"seed": args.seed, "mismatches": mismatches})
        return EXIT_FAIL if failure else EXIT_PASS
    return guest_fuzz(args, out, paths.cache_dir(args.cache_dir), paths.kmod_dir())


def guest_fuzz(args: argparse.Namespace, out: Path, cache: Path, default_kmod: Path) -> int:
    from harness.config.targets import resolve_target
    from harness.model.fuzz import fuzz_guest
    from harness.model.ops import count_steps
    from harness.run.result import RunResult
    from harness.run.session import RunOptions, Stages, boot_guest, prepare

    target = resolve_target(args.target)
    opts = RunOptions(
        target=target, scenarios=[], kmod=Path(args.kmod).resolve() if args.kmod else default_kmod, out=out, cache=cache
    )
    record = RunResult(target=target.name)
    stages = Stages(record, lambda name, event, seconds: None)
    files = prepare(opts, stages, record, print)
    with (out / "console.log").open("wb", buffering=0) as console_log:
        guest = boot_guest(opts, stages, files, console_log, record)
        try:
            assert guest.transport is not None
            found = fuzz_guest(
                guest.transport,
                guest.read_facts().reservation,
                target.userland.bits,
                target.kernel.bits,
                args.seed,
                args.ops,
                round_ops=args.round,
                max_chars=args.batch_chars,
                shrink_failure=not args.no_shrink,
            )
            events = guest.events()
            report(
                found.stats,
                out,
                {"seed": args.seed, "target": target.name, "mismatches": found.mismatches}
                | {"events": [e.title for e in events]},
            )
            for line in found.mismatches[:10]:
                print("MISMATCH " + line)
            for event in events:
                print(f"kernel {event.kind}: {event.title}")
            if found.failure is None:
                return EXIT_FAIL if events else EXIT_PASS
            if found.repro is not None:
                (out / "repro.yaml").write_text(found.repro_yaml)
                print(f"shrunk to {count_steps(found.repro)} steps: {out / 'repro.yaml'}")
                print(f"reproduce: cma-harness run --target {target.name} --scenario {out / 'repro.yaml'}")
            return EXIT_FAIL
        finally:
            guest.poweroff()
            guest.stop()
