"""run -j's scheduling policy: asked for by the parent, applied by each job to itself, inherited by QEMU."""

from __future__ import annotations

import os
import subprocess
import sys

from harness.run import sched


def test_batch_only_when_guests_share_the_host(monkeypatch):
    monkeypatch.delenv(sched.SCHED_ENV, raising=False)
    assert sched.job_env(1) == {}
    assert sched.job_env(2) == {sched.JOB_SCHED_ENV: "batch"}
    monkeypatch.setenv(sched.SCHED_ENV, "normal")
    assert sched.job_env(2) == {}


def test_a_job_applies_it_and_its_children_inherit_it():
    # A fresh interpreter: the policy must not leak into this test process.
    code = (
        "import os, subprocess; from harness.run.sched import apply_job_sched; apply_job_sched(); "
        "print(os.sched_getscheduler(0), subprocess.run(['awk', '/^policy/ {print $3}', '/proc/self/sched'],"
        " capture_output=True, text=True).stdout)"
    )
    env = dict(os.environ, **{sched.JOB_SCHED_ENV: "batch"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(os.SCHED_BATCH)] * 2
    env.pop(sched.JOB_SCHED_ENV)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(os.SCHED_OTHER)] * 2
