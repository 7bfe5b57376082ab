"""cma-harness command line. Imports are lazy: start-up time is part of every guest cycle.

Exit status: 0 pass, 1 test failure, 2 bad usage or config, 3 infrastructure failure.
"""

from __future__ import annotations

import os
import sys

from harness.errors import EXIT_USAGE, HarnessError

# `run` starts a remembered QEMU before anything else is imported (harness/guest/prespawn.py):
# argparse, pathlib and typing wait until after it.
TYPE_CHECKING = False  # mypy reads this name as True
if TYPE_CHECKING:
    import argparse

# CMA_HARNESS_PRESPAWN=off: `run` never starts QEMU before planning (harness/guest/prespawn.py).
PRESPAWN_ENV = "CMA_HARNESS_PRESPAWN"


def _parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="cma-harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add_targets(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--target",
            default="arm64-virt",
            help="target name or YAML path, a comma list, or 'all' (default arm64-virt)",
        )

    def add_cache(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cache-dir", help="artifact cache (default $CMA_HARNESS_CACHE or ~/.cache/cma-harness)")

    p = sub.add_parser(
        "setup", help="check host packages and prove the toolchains link; install what is missing (root on Debian)"
    )
    add_targets(p)
    p.add_argument(
        "--with",
        dest="extras",
        default="",
        help="comma list of optional extras to install too: browser (report test), ssh-client (stock ssh login)",
    )
    p.add_argument("--check", action="store_true", help="only check; print the fix and exit 3 if anything is missing")

    p = sub.add_parser(
        "prepare", help="fetch, build and cache everything a run needs (kernels included), without booting"
    )
    add_targets(p)
    p.add_argument("--kmod", help="driver source folder (default: the project's kmod/)")
    p.add_argument("--transport", choices=["serial", "ssh"], default="serial", help="ssh also prepares dropbear")
    p.add_argument("--no-install", action="store_true", help="never install host packages; fail with the fix")
    add_cache(p)

    p = sub.add_parser("run", help="build, boot, run a scenario, report a verdict")
    add_targets(p)
    p.add_argument(
        "--scenario",
        action="append",
        help="scenario name, YAML path or folder of scenarios; repeat for several (default smoke)",
    )
    p.add_argument("--kmod", help="driver source folder to build and test (default: the project's kmod/)")
    p.add_argument("--transport", choices=["serial", "ssh"], default="serial", help="how commands reach the guest")
    p.add_argument(
        "--backend",
        choices=["driver", "heap"],
        help="allocate through the driver or the kernel's CMA heap (/dev/dma_heap) in steps that name none",
    )
    p.add_argument(
        "--snapshot",
        choices=["auto", "off"],
        default="auto",
        help="auto: restore the booted guest from a cached snapshot (made on first use) instead of booting; "
        "off: always boot (default auto)",
    )
    p.add_argument("--out", help="run directory (default ./runs/<timestamp>)")
    p.add_argument("--update", action="store_true", help="re-resolve Debian packages and rewrite the lock")
    p.add_argument("--no-install", action="store_true", help="never install host packages; fail with the fix")
    add_cache(p)
    from harness.frontends.run_cli import add_run_arguments

    add_run_arguments(p)  # -k, --add, overrides, -j, --repeat, --dry-run, --json

    p = sub.add_parser("boot", help="boot a guest with the driver and cma_test in place and leave it running")
    p.add_argument("--target", default="arm64-virt", help="target name or YAML path (default arm64-virt)")
    p.add_argument("--transport", choices=["serial", "ssh"], default="serial", help="ssh also offers an ssh login")
    p.add_argument("--kmod", help="driver source folder (default: the project's kmod/)")
    p.add_argument("--out", help="directory for console.log and the SSH keys (default ./runs/<timestamp>)")
    add_cache(p)

    from harness.frontends.cli_reports import add_parsers

    add_parsers(sub)  # report, compare
    from harness.frontends.heap_compare import add_parser

    add_parser(sub)  # heap-compare

    from harness.frontends.fuzz import add_parser as add_fuzz

    add_fuzz(sub)

    p = sub.add_parser("lava-job", help="write a LAVA job definition (and its artifacts) that runs scenarios on a farm")
    p.add_argument("--target", default="arm64-virt", help="target name or YAML path (default arm64-virt)")
    p.add_argument("--scenario", action="append", help="scenario name, YAML path or folder; repeat (default smoke)")
    p.add_argument("--kmod", help="driver source folder (default: the project's kmod/)")
    p.add_argument("--device-type", default="qemu", help="LAVA device type (default qemu; others: TFTP + U-Boot)")
    p.add_argument("--artifact-url", help="where the farm fetches the artifacts (default: file:// URLs of the copies)")
    p.add_argument("--out", help="the job file; artifacts go next to it (default ./lava-TARGET-SCENARIOS/job.yaml)")
    p.add_argument("--no-install", action="store_true", help="never install host packages; fail with the fix")
    add_cache(p)

    p = sub.add_parser("import-lava", help="turn a LAVA job log into a run directory (result.json, console, dmesg)")
    p.add_argument("log", metavar="LOG", help="the job's log (`lava-run` output or `lavacli jobs logs --raw ID`)")
    p.add_argument("--out", help="run directory (default ./runs/lava-LOGNAME)")
    p.add_argument("--target", help="the target the job was exported for (default: as the job declares)")
    p.add_argument("--scenario", action="append", help="the scenario files it was exported from (default: declared)")

    sub.add_parser("targets", help="list targets")
    sub.add_parser("scenarios", help="list scenarios")
    return parser


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=True, highlight=False, emoji=False)


def cmd_setup(args: argparse.Namespace) -> int:
    from harness import hosttools
    from harness.config.targets import resolve_targets

    targets = resolve_targets(args.target)
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    status = hosttools.check(targets, extras)
    names = ", ".join(t.name for t in targets)
    if not status.ok:
        if args.check:
            raise hosttools.MissingHostTools(
                hosttools.describe(status), hint="\n  ".join(hosttools.fix_commands(status))
            )
        hosttools.ensure(targets, install=True, extras=extras)
    for probe in hosttools.prove_toolchains(targets):
        print(f"toolchain ok: {probe.compiler} ({'static link' if probe.link else 'compile'}: {probe.why})")
    packages = len(hosttools.requirements(targets, extras))
    print(f"host packages: {'all present' if status.ok else 'installed'} ({packages} for {names})")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Everything before boot, for each target: what CI runs once before tests that share the cache."""
    import time
    from pathlib import Path

    from harness import paths
    from harness.config.targets import resolve_targets
    from harness.run.session import RunOptions, default_run_dir, prepare_artifacts

    kmod = Path(args.kmod).resolve() if args.kmod else paths.kmod_dir()
    for target in resolve_targets(args.target):
        started = time.monotonic()
        opts = RunOptions(
            target=target,
            scenarios=[],
            kmod=kmod,
            out=default_run_dir(),
            cache=paths.cache_dir(args.cache_dir),
            install=not args.no_install,
            transport=args.transport,
        )
        boot = prepare_artifacts(opts, log=lambda msg: print(f"  {msg}", flush=True))
        print(f"prepared {target.name}: {boot.kernel} ({time.monotonic() - started:.1f} s)", flush=True)
    return 0


def cmd_list(kind: str) -> int:
    if kind == "targets":
        from harness.config.targets import load_target, target_paths

        for path in target_paths():
            t = load_target(path)
            print(
                f"{t.name:<16} {t.qemu.binary} -M {t.qemu.machine} -cpu {t.qemu.cpu}, cma={t.cma_mib}M: {t.description}"
            )
    else:
        from harness.scenario.loader import load_scenario, scenario_paths

        for path in scenario_paths():
            s = load_scenario(path)
            print(f"{s.name:<16} {len(s.steps):>3} steps  {s.description}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness.frontends.run_cli import cmd_run as run

    return run(args)


def cmd_boot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness import paths
    from harness.config.targets import resolve_target
    from harness.frontends.interactive import boot
    from harness.run.result import TransportKind
    from harness.run.session import RunOptions, default_run_dir

    opts = RunOptions(
        target=resolve_target(args.target),
        scenarios=[],
        kmod=Path(args.kmod).resolve() if args.kmod else paths.kmod_dir(),
        out=Path(args.out).resolve() if args.out else default_run_dir(),
        cache=paths.cache_dir(args.cache_dir),
        transport=TransportKind(args.transport),
    )
    return boot(opts, lambda line: print(line, flush=True))


def cancel_on_signals() -> None:
    """SIGINT and SIGTERM become `Cancelled` at the point where the run is, so every stage unwinds
    normally: the guest is stopped, result.json and the console are kept, the exit status is
    130 or 143. A second signal while that cleanup runs (bounded: QEMU gets 2 s) is ignored."""
    import signal

    from harness.errors import Cancelled

    def on_signal(signum: int, frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise Cancelled(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["run"]:
        cancel_on_signals()  # from the start: a signal during the early start below is a cancel too
        from harness.run.sched import apply_job_sched

        apply_job_sched()  # a -j job: before it starts its QEMU, which inherits the policy
    try:
        if raw[:1] == ["run"] and os.environ.get(PRESPAWN_ENV, "on") != "off" and "--dry-run" not in raw:
            # Before anything else: start the QEMU the last identical run used, so the guest boots
            # while the rest of Python starts (adopted only if this run resolves to the same thing).
            from harness import paths
            from harness.guest import prespawn

            prespawn.arm(paths.cache_root(prespawn.cache_override(raw)), raw)
        args = _parser().parse_args(argv)
        if args.command in ("prepare", "setup", "fuzz"):  # `run`: above, before the early start
            cancel_on_signals()  # `boot` has its own: there a signal is the normal way to stop
        if args.command == "setup":
            return cmd_setup(args)
        if args.command in ("targets", "scenarios"):
            return cmd_list(args.command)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "boot":
            return cmd_boot(args)
        if args.command == "prepare":
            return cmd_prepare(args)
        if args.command == "fuzz":
            from harness.frontends.fuzz import cmd_fuzz

            return cmd_fuzz(args)
        if args.command == "heap-compare":
            from harness.frontends.heap_compare import cmd_heap_compare

            return cmd_heap_compare(args)
        if args.command in ("lava-job", "import-lava"):
            from harness.lava.commands import cmd_import_lava, cmd_lava_job

            return cmd_lava_job(args) if args.command == "lava-job" else cmd_import_lava(args)
        if args.command in ("report", "compare"):
            from harness.frontends.cli_reports import cmd_compare, cmd_report

            return cmd_report(args) if args.command == "report" else cmd_compare(args)
    except HarnessError as exc:
        print(f"cma-harness: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cma-harness: interrupted; the guest was stopped", file=sys.stderr)
        return 130
    return EXIT_USAGE


def entry() -> None:
    """The console script (and `python -m harness`): main(), then an exit without Python's teardown.

    Freeing every module and object at exit took 25-60 ms after a run (rich, yaml, pexpect, the
    compiled fault patterns), all after result.json is written and QEMU reaped: time a CI job or a
    person waits for nothing. By then every file is closed by its with-block and every QEMU by the
    session; the exit hooks still run (qemu_process.py's stops any QEMU left, logging flushes). A thread
    still running (none should be) gets the ordinary exit, which waits for it."""
    import atexit
    import threading

    try:
        code = main()
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        # The reader went away (`cma-harness targets | head`): what is left to print goes nowhere,
        # as Python's documentation advises, instead of a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    if threading.active_count() > 1:
        raise SystemExit(code)
    atexit._run_exitfuncs()
    os._exit(code)
