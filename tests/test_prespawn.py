"""The early start: a plan is the last identical run's QEMU command line, adopted only when
this run resolves to the same argv on unchanged files; any other guess is stopped."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from harness.guest import prespawn
from harness.guest.qemu_process import QemuProcess


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "Image"
    path.write_bytes(b"kernel")
    return path


def fake_qemu(image: Path, seconds: str = "30") -> list[str]:
    # Stands in for QEMU: a long-lived process whose argv names a file, as -kernel does.
    return ["sh", "-c", f"exec sleep {seconds}", "-kernel", str(image)]


def guess_for(cache: Path, name: str, argv: list[str]) -> QemuProcess:
    """A run that leaves a plan for argv, then the next identical run's early-started guess."""
    prespawn.arm(cache, ["run", name])
    prespawn.spawned(argv, repeatable=True)
    prespawn.arm(cache, ["run", name])
    guess = prespawn.pending()
    assert guess is not None
    return guess


def test_the_key_is_the_invocation() -> None:
    env = {"HOME": "/root", "PATH": "/bin", "TERM": "xterm"}
    key = prespawn.plan_key(["run", "--target", "arm64-fast"], "/w", env)
    assert key == prespawn.plan_key(["run", "--target", "arm64-fast"], "/w", env | {"TERM": "dumb"})
    assert key != prespawn.plan_key(["run", "--target", "arm64-virt"], "/w", env)
    assert key != prespawn.plan_key(["run", "--target", "arm64-fast"], "/elsewhere", env)
    assert key != prespawn.plan_key(["run", "--target", "arm64-fast"], "/w", env | {"CMA_HARNESS_CACHE": "/c"})
    # Where the run directory goes never reaches QEMU: a CI job's --out per build shares the plan.
    assert key == prespawn.plan_key(["run", "--out", "runs/1", "--target", "arm64-fast", "--claim-dir=c"], "/w", env)
    # -j orders each job's queue by the last durations: the scenarios count as a set.
    two = ["run", "--scenario", "a.yaml", "--scenario=b.yaml"]
    assert prespawn.plan_key(two, "/w", env) == prespawn.plan_key(
        ["run", "--scenario", "b.yaml", "--scenario", "a.yaml"], "/w", env
    )
    assert prespawn.plan_key(two, "/w", env) != prespawn.plan_key(["run", "--scenario", "a.yaml"], "/w", env)
    assert prespawn.cache_override(["run", "--cache-dir", "/c"]) == "/c"
    assert prespawn.cache_override(["run", "--cache-dir=/d"]) == "/d"
    assert prespawn.cache_override(["run"]) is None


def test_named_files_are_the_absolute_paths_qemu_reads(image: Path) -> None:
    argv = ["qemu", "-kernel", str(image), "-incoming", f"exec:cat {image}", "-append", "console=ttyAMA0 /x"]
    assert prespawn.named_files(argv) == [str(image), str(image)]


def test_a_plan_is_made_by_a_spawn_and_started_by_the_next_identical_run(tmp_path: Path, image: Path) -> None:
    argv = fake_qemu(image)
    prespawn.arm(tmp_path, ["run", "x"])
    assert prespawn.adopt(argv) is None  # no plan yet
    prespawn.spawned(argv, repeatable=True)
    assert len(list((tmp_path / "plans").glob("*.json"))) == 1

    prespawn.arm(tmp_path, ["run", "x"])
    early = prespawn.adopt(argv)
    try:
        assert early is not None and early.alive() and early.argv == argv
    finally:
        assert early is not None
        early.stop()


def test_a_guess_that_does_not_match_is_stopped(tmp_path: Path, image: Path) -> None:
    argv = fake_qemu(image)
    guess = guess_for(tmp_path, "y", argv)
    assert guess.alive()
    assert prespawn.adopt(fake_qemu(image, "31")) is None  # this run resolved to something else
    assert not guess.alive() and guess.stopped_by_us

    # A file the plan names changed since: no guess at all.
    prespawn.arm(tmp_path, ["run", "y"])
    prespawn.spawned(argv, repeatable=True)
    time.sleep(0.01)
    image.write_bytes(b"another kernel")
    os.utime(image)
    prespawn.arm(tmp_path, ["run", "y"])
    assert prespawn.pending() is None


def test_only_the_first_guest_and_only_a_repeatable_one_makes_a_plan(tmp_path: Path, image: Path) -> None:
    prespawn.arm(tmp_path, ["run", "z"])
    prespawn.spawned(fake_qemu(image), repeatable=False)  # an SSH guest: its port changes every run
    prespawn.spawned(fake_qemu(image), repeatable=True)  # a second guest of the same process
    assert not (tmp_path / "plans").exists()


def test_an_unadopted_guess_is_discarded(tmp_path: Path, image: Path) -> None:
    prespawn.arm(tmp_path, ["run", "w"])
    prespawn.spawned(fake_qemu(image), repeatable=True)
    prespawn.arm(tmp_path, ["run", "w"])
    guess = prespawn.pending()
    assert guess is not None
    prespawn.discard()  # the run failed before booting
    assert not guess.alive()


def test_plans_are_pruned_to_the_newest(tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    for i in range(10):
        (plans / f"{i}.json").write_text("{}")
        os.utime(plans / f"{i}.json", ns=(i * 10**9, i * 10**9))
    prespawn.prune(plans, keep=3)
    assert sorted(p.name for p in plans.iterdir()) == ["7.json", "8.json", "9.json"]


def test_a_matching_guess_killed_from_outside_is_adopted_dead_not_replaced(tmp_path: Path, image: Path) -> None:
    # faults.sh found it: a QEMU killed right after a -j job started it was replaced by a fresh
    # boot and the run passed; a QEMU killed from outside must end as an infrastructure error.
    argv = fake_qemu(image)
    guess = guess_for(tmp_path, "k", argv)
    assert guess.pid is not None
    os.kill(guess.pid, signal.SIGKILL)
    assert guess.wait_exit(5.0)
    adopted = prespawn.adopt(argv)
    assert adopted is guess and not adopted.alive()
    adopted.stop()
    assert adopted.describe_exit() == "killed by SIGKILL"

    # A guess that exited by itself (QEMU refusing a stale argument) is dropped: the run boots.
    exited = guess_for(tmp_path, "e", ["sh", "-c", "exit 1", "-kernel", str(image)])
    assert exited.wait_exit(5.0)
    assert prespawn.adopt(["sh", "-c", "exit 1", "-kernel", str(image)]) is None


def test_the_process_yields_to_its_guess_until_it_takes_or_drops_it(tmp_path: Path, image: Path) -> None:
    import resource

    own = os.getpriority(os.PRIO_PROCESS, 0)
    argv = fake_qemu(image)
    guess = guess_for(tmp_path, "n", argv)
    assert guess.pid is not None
    if os.geteuid() != 0 and resource.getrlimit(resource.RLIMIT_NICE)[0] < 20 - own:
        # It could not come back: it does not yield at all (CI runs this as root, below).
        assert os.getpriority(os.PRIO_PROCESS, 0) == own
        prespawn.discard()
        return
    assert os.getpriority(os.PRIO_PROCESS, 0) == min(own + prespawn.YIELD_NICE, 19)
    assert os.getpriority(os.PRIO_PROCESS, guess.pid) == own  # QEMU keeps the process's own priority
    taken = prespawn.adopt(argv)
    assert taken is guess and os.getpriority(os.PRIO_PROCESS, 0) == own
    taken.stop()

    guess_for(tmp_path, "d", argv)
    assert os.getpriority(os.PRIO_PROCESS, 0) > own
    prespawn.discard()
    assert os.getpriority(os.PRIO_PROCESS, 0) == own
