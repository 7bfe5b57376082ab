"""The fuzz loop: generate a round, run it (a guest, or a simulated driver), check, shrink.

    cma-harness fuzz --seed S --ops N [--target T] [--kmod DIR] [--out DIR]
    cma-harness fuzz --sim --seed S --ops N     (no guest: the model against itself)

Executors run one guest command: `batch(proc, words) -> cma_test output` (the steps inside
server `proc`), `guest(op) -> bool` (exit, kill, rmmod, insmod). `GuestExecutor` drives a
booted guest's transport; `SimExecutor` runs a DriverModel (possibly a broken subclass) and
prints the records it predicts, for tests and for measuring the model's own speed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from harness.errors import GuestSetupError
from harness.guest.guestinit import CONSOLE_LOGLEVEL
from harness.guest.shell import DEBUGFS_BLOCKS, MODULE, MODULE_PATH, RESET_COMMAND
from harness.guest.transport.base import Transport
from harness.model.check import Mismatch, check_batch, check_blocks_listing, check_guest
from harness.model.driver import DriverModel, Params
from harness.model.gen import Generator
from harness.model.ops import BATCH_CHARS, Batch, Op, batches, count_steps
from harness.model.shrink import replan, shrink, to_scenario_yaml
from harness.oracles.checks import CAPACITY_CHUNKS
from harness.oracles.cmatest import parse_records
from harness.oracles.dmesg import CmaReservation


class Executor(Protocol):
    def run(self, parts: Sequence[Batch]) -> list[str]:
        """Run the parts in order; one output per part: a step part's cma_test records, a guest
        action's `@cma op=guest` record. How many guest commands that takes is the executor's business."""
        ...


class SimExecutor:
    """A simulated driver: the records a (possibly broken) model predicts, with invented addresses."""

    def __init__(self, model: DriverModel) -> None:
        self.model = model
        self.model.p.fake_addresses = True
        self.commands = 0

    def run(self, parts: Sequence[Batch]) -> list[str]:
        self.commands += 1
        out = []
        for part in parts:
            g = part.guest
            if g is not None and g.kind == "blocks":
                self.model.guest(g)
                listing = "".join(
                    f"pid=1 name={name} id={i} phys=0x0 len={n} flags={flags} maps={maps}\n"
                    for i, name, n, flags, maps in (line.split() for line in self.model.debugfs_blocks())
                )
                out.append(listing + "@cma op=guest action=cat status=ok errno=0\n")
                continue
            if g is not None:
                ok = self.model.guest(g).ok
                status, errno = ("ok", "0") if ok else ("fail", "EBUSY")
                out.append(f"@cma op=guest action={g.kind} status={status} errno={errno}\n")
                continue
            preds = self.model.apply_batch(part.ops, None)
            lines = []
            for p in sorted(preds, key=lambda p: p.step):
                fields = dict(p.fields)
                if p.op.kind == "fork":
                    fields.setdefault("pid", "4242")
                lines.append(f"@cma step={p.step} " + " ".join(f"{k}={v}" for k, v in fields.items()))
            out.append("\n".join(lines) + "\n")
        return out


def guest_ok(output: str) -> bool:
    """Did the guest action whose output this is succeed?"""
    recs = [r for r in parse_records(output) if r.op == "guest"]
    return bool(recs) and recs[-1].get("errno") == "0"


def check_part(model: DriverModel, part: Batch, output: str) -> list[Mismatch]:
    """One part's output against the model (which moves on by that part)."""
    g = part.guest
    if g is not None and g.kind == "blocks":
        model.guest(g)
        return check_blocks_listing(model, g, output)
    if g is not None:
        return check_guest(model.guest(g), guest_ok(output), output.strip())
    return check_batch(model, part.ops, output)


@dataclass
class Failure:
    ops: list[Op]  # the whole sequence up to and including the failing command
    mismatches: list[Mismatch]


def run_sequence(ops: list[Op], model: DriverModel, ex: Executor, max_chars: int = BATCH_CHARS) -> list[Mismatch]:
    """Run ops command by command, checking each against the model; stop at the first mismatch."""
    parts = list(batches(ops, max_chars))
    for part, output in zip(parts, ex.run(parts), strict=True):
        found = check_part(model, part, output)
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
        # The whole round goes to the executor at once (one guest round trip for hundreds of
        # steps); the parts are then checked in order, and the first mismatch ends the run.
        parts = list(batches(ops, max_chars))
        for part, output in zip(parts, ex.run(parts), strict=True):
            history.extend(part.ops)
            stats.ops += count_steps(part.ops)
            found = check_part(model, part, output)
            if found:
                stats.seconds = time.monotonic() - start
                stats.coverage = dict(gen.coverage)
                stats.commands = getattr(ex, "commands", 0)
                return stats, Failure(history, found)
    probe = getattr(ex, "capacity", None)
    if probe is not None and model.loaded:
        # The leak oracle: every process gone, nothing live in the model; what can be allocated
        # must be what could be allocated at the start, to the CMA granule of a block (2 pages).
        ends = [Op("exit", name) for name in list(model.procs)]
        for end in ends:
            model.guest(end)
        ex.run([Batch(end.proc, (end,)) for end in ends])
        assert model.live_pages == 0
        got, count = probe()
        model.consume_ids(count)
        base = model.p.capacity
        if base is not None and got < base:
            detail = f"{base - got} bytes fewer allocatable than at the start ({base} -> {got}): CMA leaked"
            stats.seconds = time.monotonic() - start
            stats.coverage = dict(gen.coverage)
            stats.commands = getattr(ex, "commands", 0)
            return stats, Failure(history, [Mismatch("leak", 0, None, detail=detail)])
    stats.seconds = time.monotonic() - start
    stats.coverage = dict(gen.coverage)
    stats.commands = getattr(ex, "commands", 0)
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

# The capacity step's chunk sizes (harness/oracles/checks.py).
PROBE_CHUNKS = ",".join(str(chunk) for chunk in CAPACITY_CHUNKS)
# Characters of cma_test words per guest command. Over the serial console they travel
# gzip+base64 (~3.5 times smaller) in one line of at most 3800; GuestExecutor.run shrinks a
# command that would not fit.
COMMAND_CHARS = 9000


class GuestExecutor:
    """cma_test servers in a booted guest, one per process name, started on first use.

    A round's parts travel together: `cma_test ctl - ::!serve P2 ::P1 STEP... ::P2 STEP...
    ::!kill P1 ::!rmmod cma_mem ...` runs them in order inside the guest and prints `@part`
    before each part's output, so the fuzzer pays one round trip per ~max_chars of operations,
    not one per process switch, server start or guest action."""

    def __init__(self, transport: Transport, timeout: float = 120.0, max_chars: int = COMMAND_CHARS) -> None:
        self.t = transport
        self.timeout = timeout
        self.max_chars = max_chars
        self.alive: set[str] = set()  # the servers running
        self.commands = 0

    def run_command(self, command: str) -> tuple[int, str, str]:
        self.commands += 1
        # Bulky: a round's records are ~100 bytes a step, compressed ~6 times over the serial line.
        out = self.t.run(command, timeout=self.timeout, bulky=True)
        return out.status, out.stdout, out.stderr

    def run(self, parts: Sequence[Batch]) -> list[str]:
        outputs: list[str] = []
        i = 0
        while i < len(parts):
            budget = self.max_chars
            plan = self._plan(parts, i, budget)
            # The budget is characters of cma_test words; the transport may pack them (serial:
            # gzip+base64 into one console line) and says whether the result fits.
            while plan.end > i + 1 and not self.t.fits(plan.command(), bulky=True):
                budget = budget * 3 // 4
                plan = self._plan(parts, i, budget)
            outputs.extend(self._send(plan))
            i = plan.end
        return outputs

    def _plan(self, parts: Sequence[Batch], i: int, budget: int) -> _Command:
        """The longest run of parts from i whose words fit the budget."""
        cmd = _Command(end=i, alive=set(self.alive))
        for part in parts[i:]:
            g = part.guest
            words: list[_Word] = []
            if g is None:
                if part.proc not in cmd.alive:
                    words.append(_Word(f"::!serve {part.proc}", serve=True))
                words.append(_Word(f"::{part.proc} {part.words()}"))
            elif g.kind in ("exit", "kill"):
                # A process never started (or already gone): nothing to do, as the model says.
                words.append(_Word(f"::!{g.kind} {g.proc}" if g.proc in cmd.alive else None))
            elif g.kind == "blocks":
                words.append(_Word(f"::!cat {DEBUGFS_BLOCKS}"))
            elif g.kind == "rmmod":
                words.append(_Word(f"::!rmmod {MODULE}"))
            else:
                words.append(_Word(f"::!insmod {MODULE_PATH}"))
            cost = sum(len(w.text or "") + 1 for w in words)
            if cmd.end > i and cmd.size + cost > budget:
                break
            if g is None:
                cmd.alive.add(part.proc)
            elif g.kind in ("exit", "kill"):
                cmd.alive.discard(g.proc)
            cmd.words += words
            cmd.size += cost
            cmd.end += 1
        return cmd

    def _send(self, cmd: _Command) -> list[str]:
        remote = [w for w in cmd.words if w.text is not None]
        stdout = ""
        if remote:
            _, stdout, _ = self.run_command(cmd.command())
        chunks: list[str] = []
        for line in stdout.splitlines(keepends=True):
            if line == "@part\n":
                chunks.append("")
            elif chunks:
                chunks[-1] += line
        chunks += [""] * (len(remote) - len(chunks))  # the guest stopped answering mid-command
        it = iter(chunks)
        outputs: list[str] = []
        for w in cmd.words:
            if w.text is None:
                outputs.append("@cma op=guest action=noop status=ok errno=0\n")
                continue
            out = next(it)
            if not w.serve:
                outputs.append(out)
                continue
            # The server touches no driver code before it answers: failing to start is the
            # guest environment's doing. (No answer at all: the guest died; the parts say so.)
            started = [r for r in parse_records(out) if r.op == "serve"]
            if started and started[0].int("pid") is None:
                why = started[0].describe()
                raise GuestSetupError(f"the guest-side helper `cma_test {w.text[3:]}` could not start: {why}")
        self.alive = cmd.alive
        return outputs

    def capacity(self) -> tuple[int, int]:
        """Bytes and blocks an exhaust probe gets (granule: 8 KiB, the least a block holds)."""
        _, out, _ = self.run_command(f"cma_test exhaust {PROBE_CHUNKS}")
        rec = next(r for r in parse_records(out) if r.op == "exhaust")
        return rec.int("total") or 0, rec.int("count") or 0

    def reset(self) -> None:
        self.run_command(RESET_COMMAND)
        self.alive.clear()
        self.run_command(f"insmod {MODULE_PATH}")


@dataclass(frozen=True)
class _Word:
    """One part of a guest command: cma_test ctl words (None: nothing to send)."""

    text: str | None
    serve: bool = False  # a server start the executor added, not one of the caller's parts


@dataclass
class _Command:
    """One guest command being planned: its words, the parts it covers (up to `end`), and
    which servers run once it is done."""

    end: int
    alive: set[str]
    words: list[_Word] = field(default_factory=list)
    size: int = 0

    def command(self) -> str:
        return "cma_test ctl - " + " ".join(w.text for w in self.words if w.text is not None)


# console_loglevel while fuzzing: messages below it reach the console (4 and lower: every fault).
QUIET_CONSOLE = 5


def measure(ex: GuestExecutor) -> Params:
    """cma_total from the driver, the capacity from an exhaust probe."""
    ex.run_command("insmod /lib/modules/cma_mem.ko 2>/dev/null; true")
    _, out, _ = ex.run_command(f"cma_test total exhaust {PROBE_CHUNKS}")
    recs = {r.op: r for r in parse_records(out)}
    total = recs["total"].int("cma_total") or 0
    capacity = recs["exhaust"].int("total") or total
    ex.run_command("rmmod cma_mem; insmod /lib/modules/cma_mem.ko")  # the probe used ids: start again from 1
    return Params(cma_total=total, capacity=capacity)


@dataclass
class GuestFuzz:
    """What one fuzz session in a guest found (the CLI and the `fuzz` step both report this)."""

    params: Params
    stats: FuzzStats
    failure: Failure | None
    repro: list[Op] | None = None  # the shrunk sequence, when there was a failure and shrinking ran
    repro_yaml: str = ""  # that sequence as a scenario

    @property
    def mismatches(self) -> list[str]:
        return [m.describe() for m in self.failure.mismatches] if self.failure else []


def fuzz_guest(
    transport: Transport,
    reservation: CmaReservation | None,
    bits: int,
    kernel_bits: int,
    seed: int,
    ops: int,
    *,
    round_ops: int = 200,
    max_chars: int = BATCH_CHARS,
    shrink_failure: bool = True,
) -> GuestFuzz:
    """Seeded operations on a booted guest from a fresh module load, checked against the model;
    a mismatch is shrunk (every candidate replayed from a fresh load) to a reproducing scenario.
    Leaves the module loaded and no cma_test process running."""
    ex = GuestExecutor(transport)
    # The console shows warnings and worse only while fuzzing (printk writes the console
    # synchronously, ~2.3 us a byte under TCG: the driver's dump_mem lines for thousands of
    # allocations cost more than the records). Faults (oops, BUG, WARNING, KASAN, lockdep,
    # hung tasks) are all at level 4 or lower and still reach the live detector; the kernel
    # log itself keeps everything.
    ex.run_command(f"echo {QUIET_CONSOLE} > /proc/sys/kernel/printk; {RESET_COMMAND}")
    params = measure(ex)
    if reservation is not None:
        # The contract: cma_total is the CMA area as the kernel reserved it (not what the driver says).
        params.reservation = (reservation.base, reservation.end)
        params.cma_total = reservation.size_mib << 20
    params.bits, params.kernel_bits = bits, kernel_bits
    # The driver's debugfs block list is checked where the kernel has debugfs (most do).
    listing = ex.run_command(f"test -r {DEBUGFS_BLOCKS}")[0] == 0
    stats, failure = fuzz(DriverModel(params), ex, seed, ops, round_ops, max_chars, Generator(seed, listing=listing))
    found = GuestFuzz(params, stats, failure)
    if failure is not None and shrink_failure:

        def fresh_model() -> DriverModel:
            return DriverModel(Params(**vars(params)))

        def fresh_executor() -> Executor:
            ex.reset()
            return ex

        found.repro = minimise(failure, fresh_model, fresh_executor)
        found.repro_yaml = to_scenario_yaml(found.repro, fresh_model(), description=failure.mismatches[0].describe())
    ex.run_command(f"{RESET_COMMAND}; insmod {MODULE_PATH}; echo {CONSOLE_LOGLEVEL} > /proc/sys/kernel/printk")
    return found
