"""The fuzz loop: generate a round, run it (a guest, or a simulated driver), check, shrink.

    cma-harness fuzz --seed S --ops N [--target T] [--kmod DIR] [--out DIR]
    cma-harness fuzz --sim --seed S --ops N     (no guest: the model against itself)

Executors run one guest command: `batch(proc, words) -> cma_test output` (the steps inside
server `proc`), `guest(op) -> bool` (exit, kill, rmmod, insmod). `GuestExecutor` drives a
booted guest's transport; `SimExecutor` runs a DriverModel (possibly a broken subclass) and
prints the records it predicts, for tests and for measuring the model's own speed.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from typing import Protocol

from harness.errors import GuestSetupError
from harness.guest.shell import MODULE_PATH, RESET_COMMAND, wait_gone
from harness.guest.transport.base import Transport
from harness.model.check import Mismatch, check_batch, check_guest
from harness.model.driver import DriverModel, Params
from harness.model.gen import Generator
from harness.model.ops import BATCH_CHARS, Op, batches, count_steps
from harness.model.shrink import replan, shrink
from harness.oracles.cmatest import parse_records


class Executor(Protocol):
    def batch(self, proc: str, ops: tuple[Op, ...]) -> str: ...

    def guest(self, op: Op) -> bool: ...


class SimExecutor:
    """A simulated driver: the records a (possibly broken) model predicts, with invented addresses."""

    def __init__(self, model: DriverModel) -> None:
        self.model = model
        self.model.p.fake_addresses = True

    def batch(self, proc: str, ops: tuple[Op, ...]) -> str:
        preds = self.model.apply_batch(ops, None)
        lines = []
        for p in sorted(preds, key=lambda p: p.step):
            fields = dict(p.fields)
            if p.op.kind == "fork":
                fields.setdefault("pid", "4242")
            lines.append(f"@cma step={p.step} " + " ".join(f"{k}={v}" for k, v in fields.items()))
        return "\n".join(lines) + "\n"

    def guest(self, op: Op) -> bool:
        return self.model.guest(op).ok


@dataclass
class Failure:
    ops: list[Op]  # the whole sequence up to and including the failing command
    mismatches: list[Mismatch]


def run_sequence(ops: list[Op], model: DriverModel, ex: Executor, max_chars: int = BATCH_CHARS) -> list[Mismatch]:
    """Run ops command by command, checking each against the model; stop at the first mismatch."""
    for b in batches(ops, max_chars):
        g = b.guest
        if g is not None:
            outcome = model.guest(g)
            found = check_guest(outcome, ex.guest(g))
        else:
            found = check_batch(model, b.ops, ex.batch(b.proc, b.ops))
        if found:
            return found
    return []


@dataclass
class FuzzStats:
    ops: int = 0
    commands: int = 0
    seconds: float = 0.0
    coverage: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


def fuzz(
    model: DriverModel,
    ex: Executor,
    seed: int,
    total_ops: int,
    round_ops: int = 200,
    max_chars: int = BATCH_CHARS,
    gen: Generator | None = None,
) -> tuple[FuzzStats, Failure | None]:
    """Rounds of ~round_ops steps until total_ops ran or a mismatch; the failing prefix is kept."""
    gen = gen or Generator(seed)
    stats = FuzzStats()
    history: list[Op] = []
    start = time.monotonic()
    while stats.ops < total_ops:
        ops = gen.round(model, min(round_ops, total_ops - stats.ops))
        for b in batches(ops, max_chars):
            history.extend(b.ops)
            stats.commands += 1
            found = run_sequence(list(b.ops), model, ex, max_chars)
            stats.ops += count_steps(b.ops)
            if found:
                stats.seconds = time.monotonic() - start
                stats.coverage = dict(gen.coverage)
                return stats, Failure(history, found)
    probe = getattr(ex, "capacity", None)
    if probe is not None and model.loaded:
        # The leak oracle: every process gone, nothing live in the model; what can be allocated
        # must be what could be allocated at the start, to the CMA granule of a block (2 pages).
        for name in list(model.procs):
            end = Op("exit", name)
            model.guest(end)
            ex.guest(end)
        assert model.live_pages == 0
        got, count = probe()
        model.consume_ids(count)
        base = model.p.capacity
        if base is not None and got < base:
            detail = f"{base - got} bytes fewer allocatable than at the start ({base} -> {got}): CMA leaked"
            stats.seconds = time.monotonic() - start
            stats.coverage = dict(gen.coverage)
            return stats, Failure(history, [Mismatch("leak", 0, None, detail=detail)])
    stats.seconds = time.monotonic() - start
    stats.coverage = dict(gen.coverage)
    return stats, None


def minimise(failure: Failure, fresh_model: DriverModelFactory, fresh_executor: ExecutorFactory) -> list[Op]:
    """Shrink a failure: every candidate is replayed from scratch (new model, new driver state)."""

    def fails(candidate: list[Op]) -> bool:
        planned = replan(candidate, fresh_model())
        return bool(run_sequence(planned, fresh_model(), fresh_executor()))

    return replan(shrink(failure.ops, fails), fresh_model())


class DriverModelFactory(Protocol):
    def __call__(self) -> DriverModel: ...


class ExecutorFactory(Protocol):
    def __call__(self) -> Executor: ...


# ---- the guest ---------------------------------------------------------------------------------


class GuestExecutor:
    """cma_test servers in a booted guest, one per process name, started on first use."""

    def __init__(self, transport: Transport, timeout: float = 120.0) -> None:
        self.t = transport
        self.timeout = timeout
        self.pids: dict[str, int] = {}

    def run_command(self, command: str) -> tuple[int, str, str]:
        out = self.t.run(command, timeout=self.timeout)
        return out.status, out.stdout, out.stderr

    def _ensure(self, proc: str) -> None:
        if proc in self.pids:
            return
        _, stdout, stderr = self.run_command(f"cma_test serve {shlex.quote(proc)}")
        recs = parse_records(stdout)
        pid = recs[0].int("pid") if recs else None
        if pid is None:
            raise GuestSetupError(f"the guest-side helper `cma_test serve {proc}` could not start: {stdout} {stderr}")
        self.pids[proc] = pid

    def batch(self, proc: str, ops: tuple[Op, ...]) -> str:
        self._ensure(proc)
        words = " ".join(op.words() for op in ops)
        _, stdout, _ = self.run_command(f"cma_test ctl {shlex.quote(proc)} {words}")
        return stdout

    def guest(self, op: Op) -> bool:
        if op.kind in ("exit", "kill"):
            pid = self.pids.pop(op.proc, None)
            if pid is None:
                return True
            if op.kind == "exit":
                self.run_command(f"cma_test ctl {shlex.quote(op.proc)} exit >/dev/null")
            else:
                self.run_command(f"kill -9 {pid}")
            self.run_command(wait_gone(str(pid)))
            return True
        if op.kind == "rmmod":
            return self.run_command("rmmod cma_mem")[0] == 0
        return self.run_command(f"insmod {MODULE_PATH}")[0] == 0

    def capacity(self) -> tuple[int, int]:
        """Bytes and blocks an exhaust probe gets (granule: 8 KiB, the least a block holds)."""
        _, out, _ = self.run_command(f"cma_test exhaust {PROBE_CHUNKS}")
        rec = next(r for r in parse_records(out) if r.op == "exhaust")
        return rec.int("total") or 0, rec.int("count") or 0

    def reset(self) -> None:
        self.run_command(RESET_COMMAND)
        self.pids.clear()
        self.run_command(f"insmod {MODULE_PATH}")


PROBE_CHUNKS = "16M,1M,64K,8K"


def measure(ex: GuestExecutor) -> Params:
    """cma_total from the driver, the capacity from an exhaust probe."""
    ex.run_command("insmod /lib/modules/cma_mem.ko 2>/dev/null; true")
    _, out, _ = ex.run_command(f"cma_test total exhaust {PROBE_CHUNKS}")
    recs = {r.op: r for r in parse_records(out)}
    total = recs["total"].int("cma_total") or 0
    capacity = recs["exhaust"].int("total") or total
    ex.run_command("rmmod cma_mem; insmod /lib/modules/cma_mem.ko")  # the probe used ids: start again from 1
    return Params(cma_total=total, capacity=capacity)
