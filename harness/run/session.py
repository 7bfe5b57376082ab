"""`cma-harness run`: stages from host check to verdict, each timed, everything kept in the run directory."""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from harness import hosttools, paths
from harness.artifacts import build, initramfs
from harness.artifacts.debian import DebianProvider, ImageCache
from harness.artifacts.kernels import vermagic
from harness.artifacts.kernels.registry import kernel_provider
from harness.artifacts.kernels.requirements import check as check_features
from harness.artifacts.kernels.requirements import parse_kconfig
from harness.config.guestfiles import FileSpec
from harness.config.overrides import Overrides
from harness.config.targets import Target
from harness.errors import Cancelled, ConfigError, GuestDied, GuestError, HarnessError, InfraError
from harness.guest import guestinit, prespawn
from harness.guest.console import ConsoleTimeout
from harness.guest.guestinit import BASE_READY_MARKER
from harness.guest.qemu import BootFiles
from harness.run import observe, resolve
from harness.run.result import (
    RunResult,
    ScenarioSummary,
    TransportKind,
    Verdict,
    aborted_by_environment,
    error_verdict,
)
from harness.scenario.model import Scenario, StepStatus

if TYPE_CHECKING:
    from harness.artifacts.debian import KernelImage
    from harness.guest.machine import Guest, SshSetup
    from harness.guest.snapshot import Snapshot
    from harness.run.parallel import ClaimBoard
    from harness.scenario.runner import ScenarioResult, ScenarioRunner

# How long a QEMU whose console closed may take to be reaped before we call it alive (a
# SIGKILL closes its fds a moment before it becomes a zombie).
QEMU_EXIT_GRACE = 5.0

STAGES = ["setup", "images", "build kmod", "build userland", "initramfs", "boot", "scenario", "report"]


@dataclass
class RunOptions:
    target: Target
    scenarios: list[Scenario]
    kmod: Path
    out: Path
    cache: Path
    update: bool = False
    install: bool = True
    transport: TransportKind = TransportKind.SERIAL
    # ergo (issue 15): --add files, command-line overrides (already applied to `target`), a watcher
    files: list[FileSpec] = field(default_factory=list)
    overrides: Overrides = field(default_factory=Overrides)
    observer: observe.RunObserver = field(default_factory=observe.RunObserver)
    # Called once QEMU has been spawned, while the guest boots: a front end imports and prepares
    # what it needs after the guest (its report, say) there, off the critical path.
    while_booting: Callable[[], None] | None = None
    # "auto": restore the guest from a snapshot of a booted base guest where one can be used
    # (made on first use); "off": always boot. Front ends other than `run` boot.
    snapshot: str = "off"
    # Stop after the first scenario that fails (a mutant or a bisect step needs one failure,
    # not all of them); the scenarios left are recorded in RunResult.not_run.
    exitfirst: bool = False
    # -j: the queue this job shares with the target's other jobs (harness/run/parallel.py); a
    # scenario runs here only if this job claims it first. None: run every scenario.
    claims: ClaimBoard | None = None


class Stages:
    """Times each stage and tells the UI."""

    def __init__(self, record: RunResult, on_stage: Callable[[str, str, float], None]) -> None:
        self.record = record
        self.on_stage = on_stage
        self.current = ""  # the stage running now, for messages about an interrupted run

    def position(self) -> str:
        """Where the run is, in words: 'stage scenario (smoke step 3: alloc ...)'."""
        where = f"stage {self.current or 'start-up'}"
        steps = self.record.steps
        if self.current == "scenario" and steps:
            where += f" ({steps[-1].scenario} step {steps[-1].index}: {steps[-1].name})"
        return where

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.current = name
        self.on_stage(name, "start", 0.0)
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.on_stage(name, "failed", self._add(name, started))
            raise
        self.on_stage(name, "done", self._add(name, started))

    def _add(self, name: str, started: float) -> float:
        # Stages that happen more than once (boot, scenario) add up.
        seconds = time.monotonic() - started
        self.record.timings[name] = round(self.record.timings.get(name, 0.0) + seconds, 4)
        return seconds


def process_age() -> float:
    """Seconds since this process started (interpreter start-up and imports included), from
    /proc/self/stat at clock-tick resolution; 0.0 where that cannot be read."""
    import os

    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, after boot
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


def default_run_dir(base: Path | None = None) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return (base or Path.cwd() / "runs") / stamp


@dataclass
class Prepared:
    """What prepare_run() hands to the boot: the files, and a snapshot to restore instead if one can be used."""

    boot: BootFiles
    snapshot: Snapshot | None = None
    snapshot_note: str = ""  # why not, when one was asked for and cannot be used


def prepare(opts: RunOptions, stage: Stages, record: RunResult, log: Callable[[str], None]) -> BootFiles:
    """Host tools, images, builds and the initramfs: everything before QEMU starts."""
    return prepare_run(opts, stage, record, log).boot


def prepare_run(opts: RunOptions, stage: Stages, record: RunResult, log: Callable[[str], None]) -> Prepared:
    """prepare(), and with opts.snapshot "auto" the snapshot the boot may restore."""
    with stage("setup"):
        hosttools.ensure([opts.target], install=opts.install, log=log, cache=opts.cache)
    with stage("images"):
        cache = ImageCache(opts.cache, log=log)
        provider = DebianProvider(cache, update=opts.update)
        kernel = kernel_provider(opts.target, cache, update=opts.update, install=opts.install).kernel(opts.target)
        userspace = provider.busybox(opts.target)  # busybox always comes from Debian
    record.kernel = {"package": kernel.package, "version": kernel.version, "release": kernel.release}
    record.kernel["features"] = check_kernel_features(opts.target, kernel.kdir / ".config")
    with stage("build kmod"):
        ko = build.build_kmod(
            opts.kmod, kernel.kdir, opts.target.kernel.make_arch, opts.target.kernel.cross_compile, opts.cache
        )
        # A module the kernel would refuse is a configuration error, told before boot.
        vermagic.check_module(
            ko, kernel.image, kernel.kdir, kernel.release, opts.cache, expected_release=opts.target.kernel.release
        )
    with stage("build userland"):
        cma_test = build.build_cma_test(
            paths.userland_dir(), paths.uapi_header(), opts.target.userland.cross_compile, opts.cache
        )
        # The user's files (target, scenarios, --add); kselftests among them are built here.
        staged = resolve.stage(opts.target, resolve.requested_files(opts.target, opts.scenarios, opts.files), cache)
        record.config["files"] = [f.to_json() for f in staged]
    with stage("initramfs"):
        files = initramfs.GuestFiles(busybox=userspace.busybox, cma_test=cma_test, kmod=ko)
        extra_init = ""
        if opts.transport == "ssh":
            from harness.artifacts.sshimage import ssh_files

            ssh = ssh_files(provider, opts.target, kernel.modules)
            files = dataclasses.replace(
                files, extra_modules=ssh.modules, extra_files=ssh.files, extra_links=ssh.symlinks
            )
            extra_init = guestinit.ssh_init([m.stem for m in ssh.modules])
        files = dataclasses.replace(files, extra_files=(*files.extra_files, *((f.dest, f.host) for f in staged)))
        initrd = initramfs.cached_initramfs(
            opts.cache, files, guestinit.init_script(extra_init), guestinit.FORMAT_VERSION
        )
        prepared = Prepared(BootFiles(kernel.image, initrd, kernel.dtb, module=ko))
        if opts.snapshot == "auto":
            prepared.snapshot, prepared.snapshot_note = plan_snapshot(opts, kernel, userspace.busybox, cma_test, ko)
    return prepared


def plan_snapshot(
    opts: RunOptions, kernel: KernelImage, busybox: Path, cma_test: Path, ko: Path
) -> tuple[Snapshot | None, str]:
    """The snapshot of this target's base guest (it may not be saved yet), or why there is none."""
    if opts.transport != TransportKind.SERIAL:
        return None, "snapshots are for the serial transport (an SSH guest's keys are made per run)"
    from harness.guest import snapshot

    modules, why = snapshot.disk_support(kernel.kdir / ".config", kernel.modules)
    if why:
        return None, why
    try:
        return snapshot.plan(opts.cache, opts.target, kernel.image, kernel.dtb, busybox, cma_test, ko, modules), ""
    except (GuestError, OSError) as exc:
        return None, f"no snapshot: {exc}"


def check_fit(scenarios: list[Scenario], target: Target) -> None:
    """Refuse, before anything is built or booted, a scenario that asks for more CMA than the target has."""
    from harness.scenario.steps import fit_problems

    cma = target.cma_mib << 20
    problems = [p for s in scenarios for p in fit_problems(s.resolved(cma).steps, cma, str(s.path))]
    if problems:
        raise ConfigError(
            f"a scenario does not fit {target.name}'s CMA area ({target.cma_mib} MiB):\n  " + "\n  ".join(problems),
            hint="write sizes relative to the area (50%, cma/2, fragment count: fill), or use a target with more CMA",
        )


def check_kernel_features(target: Target, config_file: Path) -> dict[str, Any]:
    """The kernel's .config against what the harness needs, before anything boots.

    A missing hard requirement is an environment error naming the options (exit 3), never a
    run that fails like a broken driver; optional features absent are recorded, with what
    their absence switches off, for the result and the report.
    """
    if not config_file.is_file():
        return {"source": "", "absent": [], "note": f"no {config_file}: checked after boot only"}
    config = parse_kconfig(config_file.read_text(errors="replace"))
    features = check_features(config, console=target.console, cmdline=target.kernel_cmdline())
    if not features.ok:
        raise InfraError(
            f"{target.name}: {features.message()}",
            hint=f"enable {', '.join(features.missing_options)} in the kernel ({config_file}); "
            "the README lists the guest kernel's requirements",
        )
    return {
        "source": str(config_file),
        "present": list(features.enabled()),
        "absent": [{"feature": f.key, "without": f.requirement.without} for f in features.optional if not f.present],
    }


def prepare_artifacts(opts: RunOptions, log: Callable[[str], None] = print) -> BootFiles:
    """Everything a run does before QEMU starts (host packages, images, builds, initramfs), cached.

    For `cma-harness prepare` and CI: kernels are built once, before the tests that share them.
    """
    record = RunResult(target=opts.target.name)
    return prepare(opts, Stages(record, lambda name, event, seconds: None), record, log)


def warm_up() -> None:
    """Import what runs after the boot (the scenario runner, its oracles): called while the guest
    boots, so the imports cost nothing on the way to the verdict."""
    import harness.scenario.runner  # noqa: F401


def start_guest(guest: Guest, opts: RunOptions) -> Guest:
    """Spawn QEMU, do the host's own work while the guest boots, wait for the guest's shell."""
    guest.spawn()
    try:
        # QEMU is booting the kernel (a second or more under TCG): the host's own work
        # meanwhile is free. The console waits in the pty.
        warm_up()
        if opts.while_booting is not None:
            opts.while_booting()
    except BaseException:
        guest.stop()
        raise
    return guest.wait_ready()


def boot_guest(
    opts: RunOptions,
    stage: Stages,
    boot: BootFiles,
    console_log: IO[bytes],
    record: RunResult,
    prepared: Prepared | None = None,
) -> Guest:
    """A guest at its shell with the driver and cma_test in place: restored from the snapshot in
    `prepared` when there is one (saved first if need be), else booted from `boot`."""
    from harness.guest.machine import Guest

    with stage("boot"):
        guest: Guest | None = None
        info: dict[str, Any] = {"mode": "cold"}
        if prepared is not None and prepared.snapshot_note:
            info["note"] = prepared.snapshot_note
        if prepared is not None and prepared.snapshot is not None:
            guest, info = snapshot_guest(opts, prepared.snapshot, console_log)
        if guest is None:
            guest = Guest(opts.target, boot, console_log, ssh_setup(opts.out) if opts.transport == "ssh" else None)
            guest.on_spawn = lambda pid: _write_pid(opts.out, pid)
            start_guest(guest, opts)
    if guest.prespawned:
        info["prespawned"] = True  # started by the CLI from the last identical run's plan
    record.kernel["boot"] = info
    record.config["qemu_argv"] = list(guest.qemu.argv)
    opts.observer.guest_started(guest)
    record.kernel["booted_release"] = guest.facts.release
    return guest


def note_boot_facts(record: RunResult, guest: Guest, whole_log: str | None = None) -> None:
    """The kernel log's boot facts (the CMA reservation, the checkers) into the result, once a
    guest is done with: known already (a check needed them, or a snapshot's boot printed them),
    found in the whole kernel log the run read at its end, or asked of the guest if it still
    answers. A log that no longer reaches back to the boot (its ring buffer wrapped) leaves them
    unknown, and says so, instead of claiming the kernel reserved nothing."""
    facts = guest.facts
    if not facts.from_log and whole_log is not None:
        guest.learn_facts(whole_log)
    why = "the guest stopped answering before they were read"
    if not facts.from_log and guest.transport is not None and guest.qemu.alive():
        try:
            guest.read_facts()
            why = "the kernel log no longer reaches back to the boot"
        except GuestError as exc:
            why = f"asking the guest failed ({exc.message})"
    if not facts.from_log:
        record.cma = {"note": f"the CMA reservation is unknown: {why}"}
        return
    record.kernel["checkers"] = facts.checkers
    res = facts.reservation
    record.cma = {"size_mib": res.size_mib, "base": hex(res.base)} if res else {}
    if res is None:
        record.problems.append("no 'cma: Reserved' line in the boot log: the reservation is unknown")


def snapshot_guest(opts: RunOptions, snap: Snapshot, console_log: IO[bytes]) -> tuple[Guest | None, dict[str, Any]]:
    """The guest restored from snap (or, on first use, booted from its base image and saved), with
    this build's driver and cma_test delivered; (None, why) when the run must boot instead."""
    import shutil
    import tempfile

    from harness.guest import snapshot
    from harness.guest.machine import Guest

    restoring = snap.exists()
    sockets = Path(tempfile.mkdtemp(prefix="cma-harness-"))  # a Unix socket path must be short
    if restoring:
        extra, replay = snap.restore_args(), snap.transcript()
    else:
        extra, replay = [*snap.disk_args(), "-qmp", f"unix:{sockets / 'qmp'},server=on,wait=off"], None
    guest = Guest(
        opts.target,
        snap.base,
        console_log,
        extra_args=extra,
        replay=replay,
        ready_marker=BASE_READY_MARKER,
        repeatable=restoring,  # a save's argv holds a fresh QMP socket path
    )
    guest.on_spawn = lambda pid: _write_pid(opts.out, pid)
    info: dict[str, Any] = {"mode": "restored" if restoring else "cold", "snapshot": snap.key}
    try:
        start_guest(guest, opts)
        if not restoring:
            try:
                info["save_seconds"] = round(
                    snapshot.save(snap, sockets / "qmp", guest.boot_transcript, opts.target.timeouts.boot), 3
                )
                info["saved"] = True
                info["pruned"] = [p.name for p in snapshot.prune(snap)]
            except GuestError as exc:
                info["note"] = f"the snapshot could not be saved: {exc.message}"
        assert guest.serial is not None
        out = guest.serial.run(snap.deliver_command(), timeout=opts.target.timeouts.boot)
        wrong = snap.check_delivery(out.stdout) if out.status == 0 else f"unpacking failed ({out.status})"
        if wrong:
            raise GuestError(f"delivering the driver and cma_test: {wrong}", detail=out.stderr)
        guest.announce_ready()
        if restoring:
            snapshot.mark_used(snap)
        return guest, info
    except GuestError as exc:
        guest.stop()
        if guest.qemu.exit_signal is not None and not guest.qemu.stopped_by_us:
            raise  # QEMU was killed from outside: the environment's doing, not the snapshot's
        # Fall back to a normal boot, and say why; a snapshot that would not restore is made anew.
        if restoring:
            snapshot.discard(snap)
        console_log.seek(0)
        console_log.truncate()
        what = f"restoring snapshot {snap.key}" if restoring else "booting the snapshot's base image"
        return None, {"mode": "cold", "snapshot": snap.key, "note": f"{what} failed ({exc.message}): booted instead"}
    except BaseException:
        guest.stop()
        raise
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def ssh_setup(out: Path) -> SshSetup:
    """A loopback port and a fresh key pair for one guest, kept in the run directory."""
    from harness.guest.machine import SshSetup
    from harness.guest.transport.ssh import ClientKey, free_loopback_port

    keys = out / "ssh"
    keys.mkdir(parents=True, exist_ok=True)
    keys.chmod(0o700)
    return SshSetup(port=free_loopback_port(), key=ClientKey.generate(keys), known_hosts=keys / "known_hosts")


def add_scenario(record: RunResult, outcome: ScenarioResult) -> None:
    """A scenario's outcome into the run result (steps and blocks tagged with the scenario's name)."""
    for step in outcome.steps:
        step.scenario = outcome.name
    record.steps += outcome.steps
    record.blocks += [b.as_dict() | {"scenario": outcome.name} for b in outcome.live_blocks]
    record.allocations += [b.as_dict() | {"scenario": outcome.name} for b in outcome.allocations]
    record.extra_events += [e.as_dict() for e in outcome.extra_events]
    if any(s.status == StepStatus.ERROR for s in outcome.steps):
        verdict = Verdict.ERROR  # the environment interrupted it: no verdict on the driver
    else:
        verdict = Verdict.FAIL if outcome.failed else Verdict.PASS
    duration = round(outcome.duration, 4)
    record.scenarios.append(ScenarioSummary(outcome.name, outcome.path, verdict, len(outcome.steps), duration))


def _run_scenario(
    guest: Guest,
    scenario: Scenario,
    record: RunResult,
    observer: observe.RunObserver | None = None,
    last: Callable[[], bool] = lambda: False,
) -> ScenarioRunner:
    from harness.scenario.runner import ScenarioRunner

    runner = ScenarioRunner.for_guest(guest, scenario.name)
    if observer is not None:
        observe.attach(runner, scenario, observer)
    runner.defer_kmemleak = True  # swept once per guest: sweep_kmemleak()
    runner.keep_kernel_log = last  # the report's dmesg.txt comes with the last check
    try:
        runner.run_scenario(scenario)
    finally:
        if runner.outcome is not None:
            add_scenario(record, runner.outcome)
        if observer is not None:
            observe.finish(runner, scenario, observer)
    return runner


# What a run writes into its folder. A folder reused with --out (CI jobs often do) is cleared of
# them first: a run that died before writing dmesg.txt left the previous run's there, next to its
# own console.log and verdict, and a run killed outright left the previous result.json.
RUN_FILES = ("result.json", "console.log", "dmesg.txt", "qemu.pid")


def execute(opts: RunOptions, on_stage: Callable[[str, str, float], None], log: Callable[[str], None]) -> RunResult:
    """Run everything; always leaves result.json (verdict error on infrastructure failure)."""
    opts.out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (opts.out / name).unlink(missing_ok=True)
    record = RunResult(
        target=opts.target.name,
        scenario=",".join(s.name for s in opts.scenarios),
        kmod=str(opts.kmod),
        transport=opts.transport,
        started=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    stage = Stages(record, on_stage)
    total_started = time.monotonic()
    # Before this call: Python start-up, imports, argument and file parsing (the "start-up" phase;
    # the stages follow, and what comes after result.json is written is the caller's).
    record.timings["start-up"] = round(process_age(), 4)
    guest: Guest | None = None
    all_events: list[dict[str, Any]] = []
    try:
        check_fit(opts.scenarios, opts.target)
        prepared = prepare_run(opts, stage, record, log)
        boot = prepared.boot
        record.config = {**resolve.effective_config(opts.target, boot, opts.overrides), **record.config}
        # Provenance (hashes, git, versions: tens of ms) is host work the boot can hide: done
        # while QEMU starts, or after the scenarios when no guest was booted.
        booting_hook = opts.while_booting

        def ensure_provenance() -> None:
            if not record.provenance:
                record.provenance = _provenance(opts, boot, record)

        def while_booting() -> None:
            ensure_provenance()
            if booting_hook is not None:
                booting_hook()

        opts = dataclasses.replace(opts, while_booting=while_booting)
        with (opts.out / "console.log").open("wb", buffering=0) as console_log:
            try:
                runners: list[ScenarioRunner] = []  # those that ran on this guest
                for index, scenario in enumerate(opts.scenarios):
                    if opts.claims is not None and not opts.claims.claim(scenario.name):
                        continue  # another job's guest has it
                    later = opts.scenarios[index + 1 :]

                    # The last one here keeps its kernel log for dmesg.txt: with a shared queue,
                    # when every later scenario is taken by the time its final check runs (claims
                    # are never given back, so none can come here after that).
                    def last(later: list[Scenario] = later) -> bool:
                        return not later or (opts.claims is not None and all(opts.claims.taken(s.name) for s in later))

                    if guest is None:
                        guest = boot_guest(opts, stage, boot, console_log, record, prepared)
                        runners = []
                    elif index:
                        from harness.guest.shell import RESET_COMMAND

                        assert guest.transport is not None
                        guest.transport.run(RESET_COMMAND, timeout=opts.target.timeouts.command)
                    opts.observer.scenario_started(scenario, index + 1, len(opts.scenarios))
                    with stage("scenario"):
                        runner = _run_scenario(guest, scenario, record, opts.observer, last=last)
                    runners.append(runner)
                    if runner.aborted is not None:
                        # The guest hung or died: keep its story, boot a fresh one for what is left.
                        record.console_tail = runner.aborted.detail or guest.tail()
                        # A console that closed means QEMU is exiting, maybe not reaped yet:
                        # give it a moment, so a kill from outside is not mistaken for a hang.
                        hung = isinstance(runner.aborted, ConsoleTimeout)
                        died = guest.qemu.wait_exit(0.0 if hung else QEMU_EXIT_GRACE)
                        guest.stop()
                        opts.observer.guest_stopped()
                        all_events += [e.as_dict() for e in guest.events()]
                        reported = runner.outcome is not None and runner.outcome.events
                        note_boot_facts(record, guest)  # what is known of them: it answers no more
                        dead, guest = guest, None
                        if aborted_by_environment(not died, bool(reported)):
                            # No panic, oops or warning on the console: the emulator died (killed
                            # from outside, out of memory, a QEMU bug), not the driver's doing.
                            raise guest_died(record, dead, runner.aborted)
                    if opts.exitfirst and runner.outcome is not None and runner.outcome.failed:
                        record.not_run = [s.name for s in later]
                        if opts.claims is not None:
                            opts.claims.close()  # the other jobs stop taking scenarios too
                        break
                ensure_provenance()
                if guest is not None and runners:
                    with stage("scenario"):
                        sweep_kmemleak(guest, runners, record, opts.target.timeouts.command + 30)
                with stage("report"):
                    if guest is not None:
                        assert guest.transport is not None
                        guest.set_step("report")
                        kept = runners[-1].kernel_log_raw if runners else None
                        if kept is not None:  # read by the last check; what came since is on the console
                            since = guest.kernel_log.since(runners[-1].kernel_log_mark)
                            (opts.out / "dmesg.txt").write_text(dmesg_text(kept, since))
                        else:
                            dmesg = guest.transport.run("dmesg", timeout=opts.target.timeouts.command, bulky=True)
                            (opts.out / "dmesg.txt").write_text(dmesg.stdout)
                            kept = dmesg.stdout
                        note_boot_facts(record, guest, kept)
                        # Everything is saved: QEMU is stopped below without waiting for the guest
                        # to power off (nothing in it needs a clean shutdown; it has no disk).
            finally:
                if guest is not None:
                    guest.stop()
                    all_events += [e.as_dict() for e in guest.events()]
                    if not (opts.out / "dmesg.txt").exists():
                        lines = [line for _, line in guest.kernel_log.lines]
                        (opts.out / "dmesg.txt").write_text("\n".join(lines) + "\n")
                record.kernel_events = all_events + record.extra_events
        failed = any(s.verdict != Verdict.PASS for s in record.scenarios) or record.kernel_events or record.problems
        record.verdict = Verdict.FAIL if failed else Verdict.PASS
    except HarnessError as exc:
        record.error = exc.render()
        record.verdict, record.error_exit = error_verdict(exc, bool(record.kernel_events))
        if isinstance(exc, Cancelled):
            record.interrupted_by = exc.signal_name
            record.error = f"{exc.message} during {stage.position()}, {time.monotonic() - total_started:.1f} s in"
        if isinstance(exc, GuestError) and exc.detail:
            record.console_tail = exc.detail
    finally:
        prespawn.discard()  # a guess no guest adopted (failed before booting, or booted otherwise)
        record.timings["total"] = round(time.monotonic() - total_started, 4)
        record.write(opts.out / "result.json")
    return record


def _provenance(opts: RunOptions, boot: BootFiles, record: RunResult) -> dict[str, Any]:
    from harness.run.provenance import collect

    specs = resolve.requested_files(opts.target, opts.scenarios, opts.files)
    sources = sorted({f.source_package for f in specs if f.kselftest})
    return collect(opts.target, boot, opts.kmod, opts.cache, kselftest_sources=sources)


def sweep_kmemleak(guest: Guest, runners: list[ScenarioRunner], record: RunResult, timeout: float) -> None:
    """One kmemleak sweep for every capacity check the scenarios on this guest made: a leak fails
    its check step and the step's scenario, as if the check had found it."""
    from harness.scenario.kmemleak import needs_sweep, sweep

    clients = [r.client for r in runners]
    if not needs_sweep(clients):
        return
    guest.set_step("kmemleak sweep")
    for leak in sweep(clients, timeout):
        record.extra_events.append(leak.event.as_dict())
        scenario = leak.result.scenario
        for summary in record.scenarios:
            if summary.name == scenario and summary.verdict == Verdict.PASS:
                summary.verdict = Verdict.FAIL


def plain_dmesg(raw: str) -> str:
    """`dmesg -r` as `dmesg` prints it: without the <level> prefixes."""
    return "".join(re.sub(r"^<\d+>", "", line) + "\n" for line in raw.splitlines())


_STAMP = re.compile(r"^(?:<\d+>)?\[\s*(\d+\.\d+)\]")


def dmesg_text(raw: str, later: list[str]) -> str:
    """dmesg.txt from the kernel log a final check read (`dmesg -r`) and the kernel lines the
    console delivered after that read (a kmemleak scan's report, say). A line printed while
    `dmesg` ran can be in both: console lines are added from the first one stamped after the
    read's newest line (all of them when the kernel prints no timestamps)."""
    newest = next((float(m.group(1)) for line in reversed(raw.splitlines()) if (m := _STAMP.match(line))), None)
    if newest is not None:
        later = list(itertools.dropwhile(lambda line: not _stamped_after(line, newest), later))
    return plain_dmesg(raw) + "".join(line + "\n" for line in later)


def _stamped_after(line: str, newest: float) -> bool:
    m = _STAMP.match(line)
    return m is not None and float(m.group(1)) > newest


def guest_died(record: RunResult, guest: Guest, cause: GuestError) -> GuestDied:
    """The error for a guest whose QEMU exited with no kernel report, its step marked as interrupted."""
    how = guest.qemu.describe_exit()
    step = record.steps[-1] if record.steps else None
    where = f" during step {step.index} ({step.name}) of {step.scenario}" if step else ""
    message = f"QEMU {how}{where}, with no kernel panic or oops on the console: an environment failure"
    mark_interrupted(record, message)
    return GuestDied(message, detail=cause.detail or guest.tail())


def mark_interrupted(record: RunResult, why: str) -> None:
    """The step that was running when the environment failed gets status error, not fail."""
    if not record.steps:
        return
    step = record.steps[-1]
    if step.status == StepStatus.PASS:
        return  # the step had finished; the failure came between steps
    step.status = StepStatus.ERROR
    step.problems = [p for p in step.problems if not p.startswith("guest stopped answering")] + [why]
    for summary in record.scenarios:
        if summary.name == step.scenario:
            summary.verdict = Verdict.ERROR


def _write_pid(out: Path, pid: int) -> None:
    # For people and tests: which process is this run's guest.
    (out / "qemu.pid").write_text(f"{pid}\n")


def exit_code(record: RunResult) -> int:
    return record.exit_code
