"""pytest plugin (entry point `pytest11: cma_harness`): booted guests as fixtures, scenario files as tests.

    pytest --cma-target arm64-virt configs/scenarios tests/guest

- `guest` (session scope): the target's guest, booted once, driver built and loaded;
- `cma` (function scope): a clean driver state and a cma_test process of the test's own;
  `cma.alloc/free/verify/write/check/info/run` go through the same oracles as scenarios
  (reservation, overlap, dmesg agreement), and `cma.events` holds only this test's kernel events;
- a kernel fault during a test fails that test with the fault's title and report;
- every `*.yaml` with a top-level `steps:` key is collected as a test (users' scenarios run with no Python);
- `@pytest.mark.cma_target("armv7-virt", ...)` runs a test only on those targets.

Imports of the harness are lazy: the plugin loads in every pytest run of this environment.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.config.targets import Target
    from harness.guest.machine import Guest
    from harness.oracles.cmatest import CmaRecord
    from harness.oracles.faults import KernelEvent
    from harness.scenario.model import Scenario, StepResult
    from harness.scenario.runner import ScenarioRunner

DEFAULT_TARGET = "arm64-virt"
_POOL_KEY = pytest.StashKey["GuestPool"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cma-harness")
    group.addoption("--cma-target", default=None, help=f"target name or YAML (default {DEFAULT_TARGET})")
    group.addoption("--cma-transport", default="serial", choices=["serial"], help="how commands reach the guest")
    group.addoption("--cma-kmod", default=None, help="driver source folder (default: the project's kmod/)")
    group.addoption("--cma-out", default=None, help="run directory for console.log etc. (default runs/pytest-*)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cma_target(*names): run this test only on these targets")
    config.stash[_POOL_KEY] = GuestPool(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    pool = config.stash.get(_POOL_KEY, None)
    if pool is not None:
        pool.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    target = config.getoption("--cma-target") or DEFAULT_TARGET
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("cma_target")
        (drop if marker and Path(target).stem not in marker.args else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# --- the guests --------------------------------------------------------------


class BootedGuest:
    """A guest with the driver loaded, shared by the tests of one session."""

    def __init__(self, target: Target, guest: Guest, out: Path) -> None:
        self.target = target
        self.guest = guest
        self.out = out
        assert guest.transport is not None
        self.transport = guest.transport

    def fits(self, command: str, *, bulky: bool = False) -> bool:
        return bool(self.transport.fits(command, bulky=bulky))

    def run(self, command: str, timeout: float | None = None, *, bulky: bool = False) -> Any:
        return self.transport.run(command, timeout=timeout, bulky=bulky)

    @property
    def reservation(self) -> Any:
        return self.guest.read_facts().reservation

    def reset(self, load: bool = True) -> None:
        """No cma_test process left, the module unloaded, then (load=True) freshly loaded."""
        from harness.guest.shell import MODULE_PATH, RESET_COMMAND

        out = self.run(f"{RESET_COMMAND}; insmod {MODULE_PATH}" if load else RESET_COMMAND)
        if out.status != 0:
            raise RuntimeError(f"cannot reload cma_mem: {out.stderr}")

    def runner(self, label: str) -> ScenarioRunner:
        from harness.scenario.runner import ScenarioRunner

        return ScenarioRunner.for_guest(self.guest, label)


class GuestPool:
    """One booted guest per target, created on first use, stopped when pytest ends."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.guests: dict[str, BootedGuest] = {}
        self._logs: list[Any] = []

    def get(self, target_name: str | None = None) -> BootedGuest:
        from harness import paths
        from harness.config.targets import resolve_target
        from harness.run.result import RunResult
        from harness.run.session import RunOptions, Stages, boot_guest, prepare

        name = target_name or self.config.getoption("--cma-target") or DEFAULT_TARGET
        if name in self.guests:
            return self.guests[name]
        target = resolve_target(name)
        base = self.config.getoption("--cma-out")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(base) if base else Path(self.config.rootpath) / "runs" / f"pytest-{stamp}"
        out = out / target.name
        out.mkdir(parents=True, exist_ok=True)
        kmod = self.config.getoption("--cma-kmod")
        opts = RunOptions(
            target=target,
            scenarios=[],
            kmod=Path(kmod).resolve() if kmod else paths.kmod_dir(),
            out=out,
            cache=paths.cache_dir(),
        )
        record = RunResult(target=target.name)
        stages = Stages(record, lambda *a: None)
        boot = prepare(opts, stages, record, lambda msg: None)
        log = (out / "console.log").open("wb", buffering=0)
        self._logs.append(log)
        guest = boot_guest(opts, stages, boot, log, record)
        booted = BootedGuest(target, guest, out)
        self.guests[name] = booted
        booted.reset()
        return booted

    def close(self) -> None:
        for booted in self.guests.values():
            booted.guest.poweroff()
            booted.guest.stop()
        for log in self._logs:
            log.close()
        self.guests.clear()


@pytest.fixture(scope="session")
def guest(request: pytest.FixtureRequest) -> BootedGuest:
    """The session's booted guest for --cma-target, driver loaded."""
    pool: GuestPool = request.config.stash[_POOL_KEY]
    return pool.get()


class Cma:
    """Drive /dev/cma_mem from a test, through one cma_test process of its own."""

    def __init__(self, booted: BootedGuest, process: str) -> None:
        self.booted = booted
        self.process = process
        self.runner = booted.runner(process)
        self._events_before = len(booted.guest.events())
        self._log_mark = booted.guest.kernel_log.mark
        self.calls: list[StepResult] = []

    def run(self, steps: str) -> list[CmaRecord]:
        """Any cma_test steps (userland/README.md); fails the test on the first problem."""
        from harness.scenario.model import StepResult

        result = StepResult(index=len(self.calls) + 1, name=steps)
        self.calls.append(result)
        log_mark, events_before = self.booted.guest.kernel_log.mark, len(self.booted.guest.events())
        records = self.runner.cma(result, self.process, steps)
        self.runner.barrier("call")
        self.runner.check_invariants(result, log_mark, events_before)
        if result.problems:
            raise AssertionError("\n".join(result.problems))
        return records

    def _one(self, steps: str) -> CmaRecord:
        return self.run(steps)[0]

    def alloc(self, name: str, size: int, kind: str = "wc", expect: str = "0") -> CmaRecord:
        suffix = f" expect={expect}" if expect != "0" else ""
        record = self._one(f"alloc {name} {size} {kind}{suffix}")
        return record

    def free(self, name: str, expect: str = "0") -> CmaRecord:
        return self._one(f"free {name}" + (f" expect={expect}" if expect != "0" else ""))

    def verify(self, *names: str) -> list[CmaRecord]:
        return self.run(" ".join(f"verify {n}" for n in names))

    def write(self, name: str, seed: int = 1) -> CmaRecord:
        return self._one(f"write {name} {seed}")

    def check(self, name: str, seed: int = 1) -> CmaRecord:
        return self._one(f"check {name} {seed}")

    def info(self, name: str, expect: str = "0") -> CmaRecord:
        return self._one(f"info {name}" + (f" expect={expect}" if expect != "0" else ""))

    @property
    def events(self) -> list[KernelEvent]:
        """Kernel events since this test started."""
        return self.booted.guest.events()[self._events_before :]

    def kernel_lines(self) -> list[str]:
        return self.booted.guest.kernel_log.since(self._log_mark)

    def close(self) -> None:
        if self.process in self.runner.state.processes:
            self.run("exit")


@pytest.fixture
def cma(guest: BootedGuest, request: pytest.FixtureRequest) -> Iterator[Cma]:
    """A clean driver (reloaded) and a cma_test process named after the test."""
    guest.reset()
    name = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:32]
    helper = Cma(guest, name)
    guest.guest.set_step(f"test {request.node.nodeid}")
    yield helper
    helper.close()


# --- kernel faults fail the test that caused them ------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    booted = _booted_of(item)
    if booted is None:
        return (yield)
    before, mark = len(booted.guest.events()), booted.guest.kernel_log.mark
    try:
        result = yield
    finally:
        # Attached to the report (and to JUnit XML): this test's kernel log and events.
        booted.guest.barrier("test end")
        events = booted.guest.events()[before:]
        item.add_report_section("call", "kernel log", "\n".join(booted.guest.kernel_log.since(mark)))
        for event in events:
            item.user_properties.append(("kernel_event", f"{event.kind}: {event.title} [{event.signature}]"))
    if events:
        first = events[0]
        raise AssertionError(f"kernel {first.kind} during the test: {first.title}\n" + "\n".join(first.report))
    return result


def _booted_of(item: pytest.Item) -> BootedGuest | None:
    funcargs = getattr(item, "funcargs", {})
    if "cma" in funcargs:
        return funcargs["cma"].booted
    if "guest" in funcargs:
        return funcargs["guest"]
    if isinstance(item, ScenarioItem):
        pool: GuestPool = item.config.stash[_POOL_KEY]
        return pool.get()
    return None


# --- scenario files as tests ----------------------------------------------------


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and _looks_like_scenario(file_path):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


def _looks_like_scenario(path: Path) -> bool:
    try:
        return re.search(r"^steps:", path.read_text(errors="replace"), re.M) is not None
    except OSError:
        return False


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        yield ScenarioItem.from_parent(self, name=self.path.stem)


class ScenarioItem(pytest.Item):
    booted: BootedGuest | None = None

    def runtest(self) -> None:
        from harness.scenario.loader import load_scenario

        scenario: Scenario = load_scenario(self.path)  # a ConfigError fails this item, with file:line
        pool: GuestPool = self.config.stash[_POOL_KEY]
        self.booted = pool.get()
        self.booted.reset(load=False)  # scenarios load the module themselves
        runner = self.booted.runner(scenario.name)
        started = time.monotonic()
        results = runner.run_scenario(scenario).steps
        problems = [f"step {r.index} ({r.name}, line {r.line}): {p}" for r in results for p in r.problems]
        self.user_properties.append(("duration_in_guest", f"{time.monotonic() - started:.2f}"))
        if runner.aborted is not None:
            pool.guests.pop(self.booted.target.name, None)
            self.booted.guest.stop()
        if problems:
            raise ScenarioFailed(problems)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            return "\n".join(excinfo.value.problems)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario {self.name}"


class ScenarioFailed(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
