"""`cma-harness run`: its options and what it does with them.

One run per target in this process (live progress on a terminal, plain lines otherwise), or,
with `-j N`, jobs in parallel guests (harness/run/parallel.py), and with `--repeat N` that N
times with a flake summary. `--dry-run` prints the resolved plan; `--json` puts the result on
stdout (every human line goes to stderr). Imports stay lazy: start-up time is part of every run.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError

if TYPE_CHECKING:
    from harness.config.guestfiles import FileSpec
    from harness.config.overrides import Overrides
    from harness.config.targets import Target
    from harness.run.parallel import Job
    from harness.run.result import RunResult
    from harness.scenario.model import Scenario


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `run` beyond target, scenario, kmod, transport, out, update, install and cache."""
    g = p.add_argument_group("selection and files")
    g.add_argument(
        "-k",
        dest="select",
        action="append",
        metavar="PATTERN",
        help="only scenarios whose name matches: a glob (multi*) or a substring; !PATTERN excludes; "
        "repeatable. Without --scenario, chooses from the whole shipped suite",
    )
    g.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="SRC[:DEST]",
        help="put a host file or folder into the guest (static programs, scripts, data); "
        "default DEST /usr/bin/NAME (a folder: /opt/NAME); repeatable",
    )
    g = p.add_argument_group("overrides (recorded in result.json under config)")
    g.add_argument("--kernel-arg", action="append", metavar="ARG", help="append to the kernel command line")
    g.add_argument(
        "--qemu-arg", action="append", metavar="ARG", help="append to QEMU's argv (write --qemu-arg='-d int')"
    )
    g.add_argument("--cma", metavar="SIZE", help="CMA reservation, e.g. 64M")
    g.add_argument("--memory", metavar="SIZE", help="guest RAM, e.g. 2G")
    g.add_argument("--smp", type=int, metavar="N", help="guest CPUs")
    g.add_argument(
        "--timeout",
        action="append",
        metavar="[NAME=]S",
        help="seconds per guest command, or boot=S, command=S, shutdown=S, ssh=S; repeatable",
    )
    g = p.add_argument_group("how to run")
    g.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="guests in parallel (default 1)")
    g.add_argument("--repeat", type=int, default=1, metavar="N", help="run everything N times; flake summary")
    g.add_argument(
        "-x",
        "--exitfirst",
        action="store_true",
        help="stop at the first failing scenario (the rest are listed as not run); with -j, every job stops",
    )
    # A -j job's share of its target's scenario queue (harness/run/parallel.py ClaimBoard).
    g.add_argument("--claim-dir", help=argparse.SUPPRESS)
    g.add_argument("--dry-run", action="store_true", help="print the resolved plan (prepares, never boots)")
    g.add_argument("--json", action="store_true", help="the result (or the summary) as JSON on stdout")


def select(scenarios: list[Scenario], patterns: list[str]) -> list[Scenario]:
    """-k: keep scenarios matching any including pattern (all if none), drop those matching an excluding one."""

    def hit(name: str, pattern: str) -> bool:
        return fnmatch.fnmatchcase(name, pattern) if any(c in pattern for c in "*?[") else pattern in name

    include = [p for p in patterns if not p.startswith("!")]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    chosen = [
        s
        for s in scenarios
        if (not include or any(hit(s.name, p) for p in include)) and not any(hit(s.name, p) for p in exclude)
    ]
    if not chosen:
        names = ", ".join(s.name for s in scenarios)
        raise ConfigError(f"-k {' '.join(patterns)}: no scenario matches; scenarios: {names}")
    return chosen


class Invocation:
    """Everything a `run` command line resolved to, before anything runs."""

    def __init__(self, args: argparse.Namespace) -> None:
        from harness import paths
        from harness.config.guestfiles import parse_add
        from harness.config.overrides import parse_overrides
        from harness.config.targets import resolve_targets
        from harness.run.session import default_run_dir
        from harness.scenario.loader import resolve_scenarios

        self.args = args
        self.overrides: Overrides = parse_overrides(
            args.kernel_arg, args.qemu_arg, args.cma, args.memory, args.smp, args.timeout
        )
        # Every file is validated before anything runs; overrides apply to each target.
        self.targets: list[Target] = [self.overrides.apply(t) for t in resolve_targets(args.target)]
        specs = args.scenario or ([str(paths.scenarios_dir())] if args.select else ["smoke"])
        scenarios = resolve_scenarios(specs, getattr(args, "backend", None))
        self.scenarios: list[Scenario] = select(scenarios, args.select) if args.select else scenarios
        self.files: list[FileSpec] = [parse_add(v, Path.cwd(), "--add") for v in args.add]
        from harness.artifacts.extra_files import check_files

        for target in self.targets:  # a dynamic or foreign program is refused before anything is built
            check_files([*target.files, *(f for s in self.scenarios for f in s.files), *self.files], target)
        self.kmod = Path(args.kmod).resolve() if args.kmod else paths.kmod_dir()
        if not (self.kmod / "Kbuild").exists() and not (self.kmod / "Makefile").exists():
            raise ConfigError(f"--kmod {self.kmod}: not a kernel module source folder (no Makefile or Kbuild)")
        self.out = Path(args.out).resolve() if args.out else default_run_dir()
        self.cache = paths.cache_dir(args.cache_dir)
        if args.jobs < 1 or args.repeat < 1:
            raise ConfigError("-j and --repeat take a number ≥ 1")

    def options(self, target: Target, out: Path, scenarios: list[Scenario] | None = None) -> Any:
        from harness.run.parallel import ClaimBoard
        from harness.run.result import TransportKind
        from harness.run.session import RunOptions

        return RunOptions(
            target=target,
            scenarios=self.scenarios if scenarios is None else scenarios,
            kmod=self.kmod,
            out=out,
            cache=self.cache,
            update=self.args.update,
            install=not self.args.no_install,
            transport=TransportKind(self.args.transport),
            files=self.files,
            overrides=self.overrides,
            while_booting=import_reports,
            snapshot=self.args.snapshot,
            exitfirst=self.args.exitfirst,
            claims=ClaimBoard(Path(self.args.claim_dir)) if self.args.claim_dir else None,
        )

    def target_out(self, root: Path, target: Target) -> Path:
        return root if len(self.targets) == 1 else root / target.name

    def child_argv(self, job: Job) -> list[str]:
        """A job's own `cma-harness run` (same options, its target and scenarios, its directory)."""
        target = next(t for t in self.targets if t.name == job.target)
        argv = [sys.executable, "-m", "harness", "run", "--target", str(target.path), "--out", str(job.out)]
        for scenario in job.scenarios:
            argv += ["--scenario", str(scenario.path)]
        if job.claims is not None:
            argv += ["--claim-dir", str(job.claims)]
        if self.args.exitfirst:
            argv.append("--exitfirst")
        argv += ["--kmod", str(self.kmod), "--transport", self.args.transport, "--cache-dir", str(self.cache)]
        if getattr(self.args, "backend", None):
            argv += ["--backend", self.args.backend]
        argv += ["--snapshot", self.args.snapshot]
        argv += self.overrides.to_argv()
        for spec in self.files:
            argv.append(f"--add={spec.src}:{spec.dest}" if spec.dest else f"--add={spec.src}")
        if self.args.no_install:
            argv.append("--no-install")
        return argv


def import_reports() -> None:
    """While the guest boots: the summary's imports (rich's tables, the event grouping)."""
    import rich.table  # noqa: F401

    import harness.report.terminal  # noqa: F401


def _console() -> Any:
    from rich.console import Console

    # emoji=False: ":name:" in a path or scenario name stays text (and the emoji table is not loaded)
    return Console(stderr=True, highlight=False, emoji=False)


def cmd_run(args: argparse.Namespace) -> int:
    inv = Invocation(args)
    console = _console()
    if args.dry_run:
        return dry_run(inv, console)
    iterations: list[list[tuple[Path, RunResult]]] = []
    (inv.out / "summary.json").unlink(missing_ok=True)  # an earlier run's, in a reused --out
    for i in range(1, args.repeat + 1):
        root = inv.out if args.repeat == 1 else inv.out / f"iter-{i:02d}"
        if args.repeat > 1:
            console.print(f"[bold]iteration {i}/{args.repeat}[/bold]")
        if args.jobs > 1:
            iterations.append(run_parallel(inv, root, console))
        else:
            iterations.append(run_sequential(inv, root, console))
        cancelled = next((r for _, r in iterations[-1] if r.interrupted_by), None)
        if cancelled is not None:
            # SIGINT/SIGTERM ends the whole command, not just the iteration it landed in.
            if i < args.repeat:
                console.print(f"cancelled by {cancelled.interrupted_by}: {args.repeat - i} iteration(s) not run")
            break
    from harness.run.parallel import remember_durations

    remember_durations(inv.cache, [r for records in iterations for _, r in records])
    records = [r for records in iterations for _, r in records]
    worst = max(r.exit_code for r in records)
    single = len(records) == 1
    summary = None
    if not single:
        from harness.run.parallel import write_summary

        extra = {
            "jobs": args.jobs,
            "targets": [t.name for t in inv.targets],
            "selected": [s.name for s in inv.scenarios],
        }
        summary = write_summary(inv.out, iterations, extra)
        if args.repeat > 1:
            print_flakes(summary, console)
    if args.json:
        data = records[0].to_json() if single else summary
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    return worst


def run_sequential(inv: Invocation, root: Path, console: Any) -> list[tuple[Path, RunResult]]:
    from harness.frontends.progress import Progress
    from harness.run.session import execute

    out = []
    for target in inv.targets:
        target_out = inv.target_out(root, target)
        opts = inv.options(target, target_out)
        if len(inv.targets) > 1:
            console.print(f"[bold]target {target.name}[/bold]")
        with Progress(console, target.name) as progress:
            opts.observer = progress
            record = execute(opts, progress.on_stage, progress.log)
        # A -j job's passing result is one line in its log: the parent shows the merged table.
        show_summary(record, target_out, console, brief=inv.args.repeat > 1 or bool(inv.args.claim_dir))
        out.append((target_out, record))
        if record.interrupted_by:
            break  # cancelled: the other targets are not started
    if len(out) > 1:
        from harness.report.terminal import print_matrix  # here: not on the way to the first boot

        print_matrix([r for _, r in out], root, console)
    return out


def run_parallel(inv: Invocation, root: Path, console: Any) -> list[tuple[Path, RunResult]]:
    """Jobs (target, scenario group) in parallel guests; one merged result per target; one table."""
    from harness.report.terminal import print_matrix
    from harness.run.parallel import Job, Pool, estimate, load_durations, longest_first, merge
    from harness.run.session import prepare_artifacts, process_age

    width = inv.args.jobs
    per_target = max(1, -(-width // len(inv.targets)))  # ceil: every guest gets work
    jobs: list[Job] = []
    queues: dict[str, list[Scenario]] = {}
    for target in inv.targets:
        # Prepared once, here: the jobs then find every artifact in the cache.
        started = time.monotonic()
        prepare_artifacts(
            inv.options(target, inv.target_out(root, target)), log=lambda m: console.print(f"  [dim]{m}[/dim]")
        )
        console.print(f"[green]✓[/green] prepared {target.name} ({time.monotonic() - started:.2f} s)")
        known = load_durations(inv.cache, target.name)

        # Every job of the target gets the whole list, longest first, and runs what it claims.
        queue = queues[target.name] = longest_first(inv.scenarios, known)
        # Written when every job has ended: until then no earlier run's verdict may stand here.
        (inv.target_out(root, target) / "result.json").unlink(missing_ok=True)
        claims = inv.target_out(root, target) / "jobs" / "claims"
        # A board left by an earlier -j run into the same --out would hand every scenario to
        # nobody: this run's board starts empty.
        shutil.rmtree(claims, ignore_errors=True)
        claims.mkdir(parents=True)
        share = sum(estimate(s, known) for s in queue) / min(per_target, len(queue))
        for k in range(1, min(per_target, len(queue)) + 1):
            out = inv.target_out(root, target) / "jobs" / str(k)
            jobs.append(Job(f"{target.name}/{k}", target.name, queue, out, share, claims=claims))
    console.print(
        f"{len(jobs)} jobs on {width} guests at a time, each taking the next scenario from its target's "
        "queue: " + "; ".join(f"{t}: {','.join(s.name for s in q)}" for t, q in queues.items()),
        soft_wrap=True,
    )
    # The parent's own share of the wall time before any guest can start (interpreter, imports,
    # parsing, the prepare stage): -j pays it on top of each job's start-up.
    before_jobs = process_age()
    started = time.monotonic()
    pool = Pool(jobs, width, inv.child_argv)
    with JobBoard(console, jobs) as board:
        pool.on_change = board.changed
        pool.run()
    if pool.stopped:
        console.print(f"[red]stopped the other jobs:[/red] {pool.stopped}", soft_wrap=True)
    wall = time.monotonic() - started
    results = []
    for target in inv.targets:
        target_out = inv.target_out(root, target)
        mine = [j for j in jobs if j.target == target.name]
        record = merge(target.name, mine, [s.name for s in inv.scenarios], wall, pool.stopped)
        record.timings["before jobs"] = round(before_jobs, 4)
        record.write(target_out / "result.json")
        show_summary(record, target_out, console, brief=inv.args.repeat > 1)
        results.append((target_out, record))
    if len(results) > 1:
        print_matrix([r for _, r in results], root, console)
    console.print(f"{len(jobs)} jobs in {wall:.1f} s wall ({sum(j.ended - j.started for j in jobs):.1f} s of job time)")
    return results


def show_summary(record: RunResult, out: Path, console: Any, *, brief: bool) -> None:
    """The step table and verdict; with --repeat a passing iteration is one line (a failing one is shown whole)."""
    from harness.report.terminal import print_summary
    from harness.run.result import Verdict

    if brief and record.verdict == Verdict.PASS:
        names = ", ".join(s.name for s in record.scenarios)
        total = record.timings.get("total", 0.0)
        console.print(
            f"[green]PASS[/green] {record.target}: {names} ({len(record.steps)} steps, {total:.2f} s) → {out}"
        )
        return
    print_summary(record, out, console)


class JobBoard:
    """-j progress: on a terminal, a live table of jobs with each one's latest step; otherwise a line per change."""

    def __init__(self, console: Any, jobs: list[Job]) -> None:
        self.console = console
        self.jobs = jobs
        self._live: Any = None

    def __enter__(self) -> JobBoard:
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live(self, console=self.console, refresh_per_second=4, transient=True)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def changed(self, job: Job) -> None:
        if job.exit_status is None:
            self.console.print(f"  [dim]job {job.key} started[/dim]")
        else:
            verdict = str(job.result.verdict) if job.result else f"error (exit {job.exit_status})"
            ran = f" ({', '.join(s.name for s in job.result.scenarios)})" if job.result else ""
            self.console.print(f"  job {job.key}: {verdict} in {job.ended - job.started:.1f} s{ran} → {job.out}")

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(box=None, show_header=False, padding=(0, 1))
        now = time.monotonic()
        for job in self.jobs:
            if job.proc is None:
                state, detail = "[dim]waiting[/dim]", ""
            elif job.exit_status is None:
                state, detail = f"[cyan]{now - job.started:5.1f} s[/cyan]", job.last_line()[:100]
            else:
                verdict = str(job.result.verdict) if job.result else "error"
                state, detail = f"[bold]{verdict}[/bold]", f"{job.ended - job.started:.1f} s"
            table.add_row(job.key, state, detail)
        return table


def dry_run(inv: Invocation, console: Any) -> int:
    from harness.run.plan import render, target_plan

    plans = [
        target_plan(inv.options(t, inv.target_out(inv.out, t)), lambda m: console.print(f"  [dim]{m}[/dim]"))
        for t in inv.targets
    ]
    if inv.args.json:
        sys.stdout.write(json.dumps(plans[0] if len(plans) == 1 else plans, indent=2) + "\n")
    else:
        for plan in plans:
            print(render(plan))
    return 0


def print_flakes(summary: dict[str, Any], console: Any) -> None:
    n = summary["iterations"]
    console.print(f"[bold]flake summary over {n} iterations[/bold]")
    for key, c in sorted(summary["scenarios"].items()):
        flaky = key in summary["flaky"]
        mark = (
            "[yellow]FLAKY[/yellow]" if flaky else ("[green]stable[/green]" if c["pass"] == n else "[red]failing[/red]")
        )
        extra = f", {c['fail']} fail, {c['error']} error" if c["fail"] or c["error"] else ""
        missing = n - c["pass"] - c["fail"] - c["error"]
        extra += f", {missing} not run" if missing > 0 else ""
        console.print(f"  {key:<32} {c['pass']}/{n} pass{extra}  {mark}")
    verdicts = [r["verdict"] for r in summary["runs"]]
    console.print(
        f"iterations: {verdicts.count('pass')} pass, {verdicts.count('fail')} fail, {verdicts.count('error')} error "
        f"→ {summary['verdict'].upper()}"
    )
