"""The scheduling policy of parallel guests (run -j): kept free of imports, because a job applies
it before anything else, ahead of its early-started QEMU (harness/frontends/cli.py)."""

from __future__ import annotations

import contextlib
import os

# Guests side by side run SCHED_BATCH (the job process, and the QEMU it starts, which inherits
# it): a batch task woken by console bytes does not preempt the other guest's running vCPU, it
# waits for the tick. The serial console wakes the harness and a kworker for every byte the
# PL011 sends; with -j 2, QEMU counted ~377,000 involuntary context switches a suite against
# ~1,300 with -j 1. Measured gain: small (1.72x against 1.69x, docs/performance.md, "Parallel guests").
# CMA_HARNESS_SCHED=normal turns it off.
SCHED_ENV = "CMA_HARNESS_SCHED"
JOB_SCHED_ENV = "CMA_HARNESS_JOB_SCHED"


def job_env(width: int) -> dict[str, str]:
    """What a job's environment gets: batch when guests share the host, unless turned off."""
    if width > 1 and os.environ.get(SCHED_ENV, "batch") == "batch":
        return {JOB_SCHED_ENV: "batch"}
    return {}


def apply_job_sched() -> None:
    """In a job process: the scheduling policy its parent asked for (inherited by every child)."""
    if os.environ.get(JOB_SCHED_ENV) == "batch":
        with contextlib.suppress(OSError, AttributeError):  # not Linux, or refused: plain scheduling
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
