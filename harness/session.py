"""`cma-harness run`: stages from host check to verdict, each timed, everything kept in the run directory."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import build, guestinit, hosttools, initramfs, paths
from harness.errors import EXIT_FAIL, EXIT_PASS, GuestError, HarnessError
from harness.images import DebianProvider, ImageCache
from harness.qemu import BootFiles
from harness.runner import ScenarioRunner
from harness.scenario import Scenario
from harness.targets import Target

STAGES = ["setup", "images", "build kmod", "build userland", "initramfs", "boot", "scenario", "report"]


@dataclass
class RunOptions:
    target: Target
    scenario: Scenario
    kmod: Path
    out: Path
    cache: Path
    update: bool = False
    install: bool = True


@dataclass
class RunRecord:
    """What result.json holds."""

    verdict: str = "error"
    target: str = ""
    scenario: str = ""
    kmod: str = ""
    kernel: dict[str, Any] = field(default_factory=dict)
    cma: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    kernel_events: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""
    started: str = ""
    problems: list[str] = field(default_factory=list)
    console_tail: str = ""  # set when the guest died or hung

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2) + "\n")


class Stages:
    """Times each stage and tells the UI."""

    def __init__(self, record: RunRecord, on_stage: Callable[[str, str, float], None]) -> None:
        self.record = record
        self.on_stage = on_stage

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.on_stage(name, "start", 0.0)
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.record.timings[name] = round(time.monotonic() - started, 4)
            self.on_stage(name, "failed", self.record.timings[name])
            raise
        self.record.timings[name] = round(time.monotonic() - started, 4)
        self.on_stage(name, "done", self.record.timings[name])


def default_run_dir(base: Path | None = None) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return (base or Path.cwd() / "runs") / stamp


def execute(opts: RunOptions, on_stage: Callable[[str, str, float], None], log: Callable[[str], None]) -> RunRecord:
    """Run everything; always leaves result.json (verdict error on infrastructure failure)."""
    from harness.guest import Guest  # lazy: pulls in pexpect

    opts.out.mkdir(parents=True, exist_ok=True)
    record = RunRecord(
        target=opts.target.name,
        scenario=opts.scenario.name,
        kmod=str(opts.kmod),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    stage = Stages(record, on_stage)
    total_started = time.monotonic()
    guest: Guest | None = None
    try:
        with stage("setup"):
            hosttools.ensure([opts.target], install=opts.install, log=log)
        cache = ImageCache(opts.cache, log=log)
        with stage("images"):
            provider = DebianProvider(cache, update=opts.update)
            kernel = provider.kernel(opts.target)
            userspace = provider.busybox(opts.target)
        record.kernel = {"package": kernel.package, "version": kernel.version, "release": kernel.release}
        with stage("build kmod"):
            ko = build.build_kmod(
                opts.kmod, kernel.kdir, opts.target.kernel.make_arch, opts.target.kernel.cross_compile, opts.cache
            )
        with stage("build userland"):
            cma_test = build.build_cma_test(
                paths.userland_dir(), paths.uapi_header(), opts.target.userland.cross_compile, opts.cache
            )
        with stage("initramfs"):
            files = initramfs.GuestFiles(busybox=userspace.busybox, cma_test=cma_test, kmod=ko)
            initrd = initramfs.cached_initramfs(opts.cache, files, guestinit.init_script())
        console_log = (opts.out / "console.log").open("wb", buffering=0)
        try:
            with stage("boot"):
                guest = Guest(opts.target, BootFiles(kernel.image, initrd), console_log)
                guest.on_spawn = lambda pid: _write_pid(opts.out, pid)
                guest.start()
            record.kernel["booted_release"] = guest.facts.release
            res = guest.facts.reservation
            record.cma = {"size_mib": res.size_mib, "base": hex(res.base)} if res else {}
            if res is None:
                record.problems.append("no 'cma: Reserved' line in the boot log: the reservation is unknown")
            assert guest.transport is not None
            runner = ScenarioRunner(
                guest.transport,
                guest.kernel_log,
                guest.events,
                res,
                set_step=guest.set_step,
                barrier=guest.barrier,
                command_timeout=opts.target.timeouts.command,
            )
            with stage("scenario"):
                try:
                    runner.run(opts.scenario)
                finally:
                    record.steps = [r.as_dict() for r in runner.results]
                    record.blocks = [b.as_dict() for b in runner.state.blocks.values()]
            with stage("report"):
                if runner.aborted is not None:
                    record.console_tail = runner.aborted.detail or guest.tail()
                else:
                    guest.set_step("report")
                    dmesg = guest.transport.run("dmesg", timeout=opts.target.timeouts.command)
                    (opts.out / "dmesg.txt").write_text(dmesg.stdout)
                    guest.poweroff()
        finally:
            if guest is not None:
                guest.stop()
                record.kernel_events = [e.as_dict() for e in guest.events()]
                if not (opts.out / "dmesg.txt").exists():
                    (opts.out / "dmesg.txt").write_text("\n".join(line for _, line in guest.kernel_log.lines) + "\n")
            console_log.close()
        failed = any(s["status"] != "pass" for s in record.steps) or record.kernel_events or record.problems
        record.verdict = "fail" if failed else "pass"
    except HarnessError as exc:
        record.verdict = "error"
        record.error = exc.render()
        if isinstance(exc, GuestError):
            record.console_tail = exc.detail
            if guest is not None:
                record.kernel_events = [e.as_dict() for e in guest.events()]
    finally:
        record.timings["total"] = round(time.monotonic() - total_started, 4)
        record.write(opts.out / "result.json")
    return record


def _write_pid(out: Path, pid: int) -> None:
    # For people and tests: which process is this run's guest.
    (out / "qemu.pid").write_text(f"{pid}\n")


def exit_code(record: RunRecord) -> int:
    if record.verdict == "pass":
        return EXIT_PASS
    if record.verdict == "fail":
        return EXIT_FAIL
    return 3
