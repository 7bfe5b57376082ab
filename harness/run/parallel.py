"""`run -j N` and `run --repeat N`: several guests side by side, iterations, and their one summary.

-j N runs up to N jobs at once, each a `cma-harness run` process with its own guest and its own
run directory (`<run>/jobs/<k>/`). The jobs of a target share one queue of its scenarios
(`ClaimBoard`), longest first by the durations remembered from earlier runs (else estimated
from the steps): each job takes the next scenario nobody has taken when its guest is free. On
a noisy host a scenario's time varies by 2x from run to run, so a split made in advance leaves
one guest idle while the other finishes; a queue keeps both busy to the end (LPT order keeps
the tail short). The prepare stage has run once in the parent before any job starts, so jobs
find the cache warm; entry locks keep it safe anyway. The jobs of a target are merged into one
result.json (`merge`), read by `report` and `compare` like any other.

--repeat N runs the whole thing N times (`<run>/iter-01/`, ...); every iteration's verdict
goes into `<run>/summary.json` with per-scenario pass counts: a scenario that both passed
and failed is flaky.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.artifacts.cachelock import write_atomic
from harness.errors import EXIT_FAIL, EXIT_INFRA, EXIT_PASS
from harness.run import sched
from harness.run.result import STOPPED_EARLY, ResultError, RunResult, Verdict
from harness.scenario.model import Scenario, Step

DURATIONS = "durations.json"
VERDICT_RANK = {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.ERROR: 2}


@dataclass
class Job:
    key: str  # "arm64-fast/2"
    target: str
    scenarios: list[Scenario]
    out: Path
    estimate: float = 0.0
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ended: float = 0.0
    exit_status: int | None = None
    result: RunResult | None = None
    claims: Path | None = None  # the target's ClaimBoard: the job runs only what it claims
    skipped: bool = False  # never started: the pool stopped early (Pool.stopped says why)

    @property
    def log(self) -> Path:
        return self.out / "harness.log"

    def last_line(self) -> str:
        """The job's latest progress line (its plain line-per-step log)."""
        with contextlib.suppress(OSError), self.log.open("rb") as f:
            f.seek(max(0, self.log.stat().st_size - 400))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
            return lines[-1].strip() if lines else ""
        return ""


# --- splitting ---------------------------------------------------------------


def _step_weight(step: Step) -> float:
    if step.body:
        return float(step.args.get("times", 1)) * sum(_step_weight(s) for s in step.body) * 0.2
    return 1.0


def estimate(scenario: Scenario, known: dict[str, float]) -> float:
    """Seconds, from an earlier run of this scenario on this target, else ~0.05 s per step."""
    if scenario.name in known:
        return known[scenario.name]
    return 0.5 + 0.05 * sum(_step_weight(s) for s in scenario.steps)


def load_durations(cache: Path, target: str) -> dict[str, float]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((cache / DURATIONS).read_text())
        return {str(k): float(v) for k, v in data.get(target, {}).items()}
    return {}


def remember_durations(cache: Path, records: list[RunResult]) -> None:
    """Each scenario's latest passing duration per target (the next -j split uses them). A failing
    scenario's time says little about the next run: it may have stopped early or waited out a
    hung command (a driver mutant's 26 s bad-input would unbalance every later split)."""
    path = cache / DURATIONS
    data: dict[str, dict[str, float]] = {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
    for record in records:
        for sc in record.scenarios:
            if sc.verdict == Verdict.PASS:
                data.setdefault(record.target, {})[sc.name] = round(sc.duration, 2)
    with contextlib.suppress(OSError):
        write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def longest_first(scenarios: list[Scenario], known: dict[str, float]) -> list[Scenario]:
    return sorted(scenarios, key=lambda s: -estimate(s, known))


@dataclass(frozen=True)
class ClaimBoard:
    """The scenarios of one target handed out once each to the jobs sharing them: a claim is a
    file created with O_EXCL, so two processes never both get one, and no coordinator is needed
    while they run. A job that must stop the others (-x after a failure) closes the board."""

    root: Path

    CLOSED = ".closed"

    def claim(self, name: str) -> bool:
        if (self.root / self.CLOSED).exists():
            return False
        try:
            fd = os.open(self.root / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return True

    def taken(self, name: str) -> bool:
        return (self.root / name).exists() or (self.root / self.CLOSED).exists()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            (self.root / self.CLOSED).touch()


# --- running -------------------------------------------------------------------


@dataclass
class Pool:
    """Up to `width` jobs at once, longest first; `argv(job)` is the job's command line."""

    jobs: list[Job]
    width: int
    argv: Callable[[Job], list[str]]
    on_change: Callable[[Job], None] = lambda job: None
    running: list[Job] = field(default_factory=list)
    # Why the pool stopped its other jobs early (a job ended in an infrastructure error), if it did.
    stopped: str | None = None

    def run(self) -> list[Job]:
        waiting = sorted(self.jobs, key=lambda j: -j.estimate)
        try:
            while waiting or self.running:
                while waiting and len(self.running) < self.width:
                    self._start(waiting.pop(0))
                self._wait_any()
                ended = [job for job in self.running if job.proc is not None and job.proc.poll() is not None]
                for job in ended:
                    self._finish(job)
                failed = next((job for job in ended if job_exit(job) not in (EXIT_PASS, EXIT_FAIL)), None)
                if failed is not None and self.stopped is None:
                    self._stop_others(failed, waiting)
        finally:
            for job in self.running:
                self._kill(job)
        return self.jobs

    def _stop_others(self, failed: Job, waiting: list[Job]) -> None:
        """A job's guest died, or its environment failed (exit 3 and the like): the run's verdict is
        an infrastructure error whatever the others find, so it ends now, with the evidence, rather
        than after the rest of the queue (the surviving guest would otherwise run every scenario
        the dead one left). Jobs not yet started never start; running ones get SIGTERM (their
        harness saves what it has); every claim board is closed."""
        cancelled = failed.result.interrupted_by if failed.result is not None else None
        # A Ctrl-C on a terminal reaches every job at once: then one was cancelled, nothing failed.
        infra = f"ended in an infrastructure error (exit {job_exit(failed)})"
        what = f"was cancelled ({cancelled})" if cancelled else infra
        self.stopped = f"job {failed.key} {what}: see {failed.log}"
        for board in {job.claims for job in self.jobs if job.claims is not None}:
            ClaimBoard(board).close()
        for job in waiting:
            job.skipped = True
        waiting.clear()
        for job in list(self.running):
            self._kill(job)
            self._finish(job)

    def _wait_any(self) -> None:
        """Until a running job exits (its pidfd turns readable): the next starts, or the run ends, at
        once. SIGINT/SIGTERM still interrupt the wait (Python retries select only for other signals)."""
        fds = []
        try:
            for job in self.running:
                assert job.proc is not None
                with contextlib.suppress(OSError):  # already reaped or gone: poll() below sees it
                    fds.append(os.pidfd_open(job.proc.pid))
            if len(fds) == len(self.running):
                select.select(fds, [], [], 60.0)
        finally:
            for fd in fds:
                os.close(fd)

    def _start(self, job: Job) -> None:
        job.out.mkdir(parents=True, exist_ok=True)
        # An earlier run into the same --out left its result here: a job that dies before
        # writing its own must not be read as having passed with the old one.
        (job.out / "result.json").unlink(missing_ok=True)
        log = job.log.open("wb")
        env = dict(os.environ, COLUMNS="160", NO_COLOR="1", TERM="dumb")
        env.update(sched.job_env(self.width))
        job.proc = subprocess.Popen(
            self.argv(job), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        log.close()
        job.started = time.monotonic()
        self.running.append(job)
        self.on_change(job)

    def _finish(self, job: Job) -> None:
        assert job.proc is not None
        job.ended = time.monotonic()
        job.exit_status = job.proc.returncode
        try:
            job.result = RunResult.load(job.out)
        except ResultError:
            job.result = None
        self.running.remove(job)
        self.on_change(job)

    @staticmethod
    def _kill(job: Job) -> None:
        # Our own children only, by pid: SIGTERM stops their guests (the harness's handler).
        if job.proc is not None and job.proc.poll() is None:
            with contextlib.suppress(OSError):
                job.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                job.proc.wait(timeout=10)
            if job.proc.poll() is None:
                job.proc.kill()


# --- merging -------------------------------------------------------------------


def job_exit(job: Job) -> int:
    if job.result is not None:
        return job.result.exit_code
    return EXIT_INFRA if job.exit_status in (None, 0, 1) else int(job.exit_status)


def merge(target: str, jobs: list[Job], order: list[str], wall: float, stopped: str | None = None) -> RunResult:
    """One result for a target from its jobs: scenarios in the asked order, the worst verdict.
    `stopped`: why the pool ended the run early (Pool.stopped); what no job ran is then not run."""
    merged = RunResult(target=target, scenario=",".join(order))
    results = [j.result for j in jobs if j.result is not None]
    if stopped is not None:
        merged.problems.append(f"{STOPPED_EARLY}: {stopped}")
    jobs = [j for j in jobs if not j.skipped]
    for job in jobs:
        if job.result is None:
            merged.problems.append(f"job {job.key} left no result.json (exit {job.exit_status}); log: {job.log}")
    first = results[0] if results else None
    if first is not None:
        merged.kmod, merged.transport, merged.started = first.kmod, first.transport, first.started
        merged.kernel, merged.cma, merged.provenance = first.kernel, first.cma, first.provenance
        merged.config = dict(first.config)
    rank = {name: i for i, name in enumerate(order)}
    for result in sorted(results, key=lambda r: min((rank.get(s.name, 99) for s in r.scenarios), default=99)):
        merged.scenarios += result.scenarios
        merged.steps += result.steps
        merged.blocks += result.blocks
        merged.allocations += result.allocations
        merged.kernel_events += result.kernel_events
        merged.extra_events += result.extra_events
        merged.problems += result.problems
        merged.error = "; ".join(e for e in (merged.error, result.error) if e)
        for stage, seconds in result.timings.items():
            merged.timings[stage] = round(merged.timings.get(stage, 0.0) + seconds, 4)
    merged.scenarios.sort(key=lambda s: rank.get(s.name, 99))
    # The console of a job that failed by itself says more than one the pool stopped with SIGTERM.
    tails = [r for r in results if r.console_tail]
    if tails:
        merged.console_tail = next((r for r in tails if not r.interrupted_by), tails[0]).console_tail
    merged.timings["total"] = round(wall, 4)
    merged.config["jobs"] = [
        {
            "job": j.key,
            "dir": str(j.out),
            "scenarios": [s.name for s in j.result.scenarios] if j.result else [s.name for s in j.scenarios],
            "verdict": str(j.result.verdict) if j.result else "error",
            "seconds": round(j.ended - j.started, 3),
        }
        for j in jobs
    ]
    ran = {s.name for s in merged.scenarios}
    missing = [name for name in order if name not in ran]
    verdicts = [r.verdict for r in results] + ([Verdict.ERROR] if len(results) < len(jobs) else [])
    if stopped is not None:
        merged.not_run = missing
        verdicts.append(Verdict.ERROR)
    elif any(r.not_run for r in results):  # -x: one job failed and closed the board
        merged.not_run = missing
    elif missing and not any(r.interrupted_by for r in results):
        # Every job ended and none took these: nothing tested them, so the run cannot pass.
        merged.problems.append(f"no job ran {', '.join(missing)} (claims: {jobs[0].claims if jobs else '?'})")
        verdicts.append(Verdict.ERROR)
    merged.verdict = max(verdicts, key=lambda v: VERDICT_RANK[v]) if verdicts else Verdict.ERROR
    return merged


# --- repeat ----------------------------------------------------------------------


def flake_summary(iterations: list[list[RunResult]]) -> dict[str, Any]:
    """Per (target, scenario): how many iterations passed, failed, errored; flaky when both pass and not."""
    counts: dict[str, dict[str, int]] = {}
    for records in iterations:
        for record in records:
            if record.interrupted_by:
                continue  # cancelled by a person or CI: says nothing about flakiness
            names = [s.name for s in record.scenarios]
            for sc in record.scenarios:
                key = f"{record.target}/{sc.name}"
                counts.setdefault(key, {"pass": 0, "fail": 0, "error": 0})[str(sc.verdict)] += 1
            if not names and record.verdict == Verdict.ERROR:
                for name in record.scenario.split(","):
                    counts.setdefault(f"{record.target}/{name}", {"pass": 0, "fail": 0, "error": 0})["error"] += 1
    flaky = sorted(k for k, c in counts.items() if c["pass"] and (c["fail"] or c["error"]))
    return {"scenarios": counts, "flaky": flaky}


def write_summary(out: Path, iterations: list[list[tuple[Path, RunResult]]], extra: dict[str, Any]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for i, records in enumerate(iterations, start=1):
        for run_dir, record in records:
            runs.append(
                {
                    "iteration": i,
                    "target": record.target,
                    "dir": str(run_dir),
                    "verdict": str(record.verdict),
                    "exit_status": record.exit_code,
                    "seconds": record.timings.get("total", 0.0),
                    "scenarios": {s.name: str(s.verdict) for s in record.scenarios},
                }
            )
    worst = max((int(r["exit_status"]) for r in runs), default=EXIT_INFRA)
    verdict = {0: "pass", 1: "fail"}.get(worst, "error")
    summary = {
        "verdict": verdict,
        "exit_status": worst,
        "iterations": len(iterations),
        **extra,
        **flake_summary([[r for _, r in records] for records in iterations]),
        "runs": runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
