"""Runs a scenario against a booted guest through any transport, checking invariants after every step.

The runner reasons about cma_test records, not about step kinds: every
successful allocation a step makes (single, batched in a repeat, inside a
fragment) is checked the same way:
- it lies inside the CMA reservation and overlaps no live block;
- its dump_mem record in the kernel log agrees with what the ioctl returned;
and after every step no kernel fault appeared on the console meanwhile.
"""

from __future__ import annotations

import itertools
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.errors import GuestError
from harness.guest.kernel_log import KernelLog
from harness.guest.transport.base import CommandResult, Transport
from harness.oracles.cmatest import CmaRecord, parse_records
from harness.oracles.dmesg import CmaReservation, DumpMemRecord, parse_dump_mem
from harness.oracles.faults import KernelEvent, kmemleak_events
from harness.oracles.ktap import parse_ktap, plan
from harness.oracles.symbolize import Symbol, parse_section_bases, section_bases_command, symbolize
from harness.scenario.loader import MAIN, Scenario, Step

# What the driver prints itself: pr_*() with its pr_fmt prefix, dev_*() on its misc device, dump_mem.
DRIVER_MESSAGE = re.compile(r"^(?:misc )?cma_mem: |^dump_mem:")
MODULE_PATH = "/lib/modules/cma_mem.ko"
KMEMLEAK = "/sys/kernel/debug/kmemleak"
PATTERN_PARAM = "/sys/module/cma_mem/parameters/test_pattern"
# delete_module() refuses a module with users: EWOULDBLOCK under busybox rmmod (O_NONBLOCK), EBUSY otherwise.
MODULE_IN_USE = ("Resource temporarily unavailable", "Device or resource busy", "is in use")
# The capacity probe allocates big chunks, then this granule; baseline and check must agree within it.
CAPACITY_GRANULE = 1 << 20
CAPACITY_CHUNKS = (16 << 20, CAPACITY_GRANULE)
# The kernel's own notes on loading an unsigned out-of-tree module: not the driver's words, not faults.
TAINT_NOTICE = re.compile(r"taints kernel|tainting kernel")
# cma_test steps per guest command in a batched repeat (a console line holds ~4 KiB).
BATCH_CHARS = 3000
# Steps that compile to cma_test words and can share one guest command.
CMA_KINDS = {"alloc", "free", "verify", "write", "check", "info", "ioctl", "mmap", "cma"}


@dataclass
class Block:
    name: str
    process: str
    id: int
    phys: int
    length: int
    user: int
    kind: str
    dmesg: DumpMemRecord | None = None
    step: int = 0  # index of the step that allocated it
    freed_at: int | None = None  # index of the step that freed it by name (None: process exit, or live)

    def as_dict(self) -> dict[str, Any]:
        d = self.dmesg
        return {
            "name": self.name,
            "process": self.process,
            "type": self.kind,
            "step": self.step,
            "freed_at": self.freed_at,
            "ioctl": {"id": self.id, "phys": hex(self.phys), "len": self.length, "user": hex(self.user)},
            "dmesg": None
            if d is None
            else {"id": d.id, "phys": _hex(d.phys), "len": d.size, "user": _hex(d.user), "usebuf": d.usebuf},
        }


def _hex(value: int | None) -> str | None:
    return None if value is None else hex(value)


@dataclass
class StepResult:
    index: int
    name: str
    line: int = 0
    status: str = "pass"  # pass | fail
    duration: float = 0.0
    problems: list[str] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    subtests: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.status = "fail"
        if problem not in self.problems:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "line": self.line,
            "status": self.status,
            "duration": round(self.duration, 4),
            "problems": self.problems,
            "commands": self.commands,
            "subtests": self.subtests,
        }


@dataclass
class RunState:
    reservation: CmaReservation | None
    blocks: dict[tuple[str, str], Block] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)  # name -> pid
    capacity_baseline: int | None = None
    capacity_check: int | None = None
    cma_used_baseline: int | None = None  # CMA debugfs pages in use, where the kernel has it
    allocated: list[Block] = field(default_factory=list)  # every allocation, freed or not (for the report)


class ScenarioRunner:
    def __init__(
        self,
        transport: Transport,
        kernel_log: KernelLog,
        events: Callable[[], list[KernelEvent]],
        reservation: CmaReservation | None,
        *,
        set_step: Callable[[str], None] = lambda s: None,
        barrier: Callable[[str], None] = lambda s: None,
        command_timeout: float = 60.0,
        module_symbols: list[Symbol] | None = None,
    ) -> None:
        self.transport = transport
        self.kernel_log = kernel_log
        self.events = events  # all kernel events so far (live detector)
        self.state = RunState(reservation)
        self.set_step = set_step
        self.barrier = barrier  # waits until the kernel log has caught up
        self.command_timeout = command_timeout
        self.results: list[StepResult] = []
        self.aborted: GuestError | None = None  # set when the guest stopped answering
        self.extra_events: list[KernelEvent] = []  # found outside the console (kmemleak scans)
        self.module_symbols = module_symbols or []
        self.module_loads: list[dict[str, int]] = []  # section bases of each insmod, for symbolize()
        self._new_blocks: list[Block] = []  # allocations of the running step, for the dmesg check
        self._step_index = 0

    # --- plumbing -------------------------------------------------------

    def _run(self, result: StepResult, command: str, timeout: float | None = None) -> CommandResult:
        out = self.transport.run(command, timeout=timeout or self.command_timeout)
        result.commands.append(
            {
                "command": command if len(command) < 300 else command[:300] + "…",
                "status": out.status,
                "stdout": out.stdout[-4000:],
                "stderr": out.stderr[-2000:],
                "duration": round(out.duration, 4),
            }
        )
        return out

    def _ensure_process(self, result: StepResult, process: str) -> bool:
        if process in self.state.processes:
            return True
        out = self._run(result, f"cma_test serve {shlex.quote(process)}")
        records = parse_records(out.stdout)
        pid = records[0].int("pid") if records else None
        if out.status != 0 or pid is None:
            result.fail(f"cannot start process '{process}': {out.stdout.strip()} {out.stderr.strip()}")
            return False
        self.state.processes[process] = pid
        return True

    def cma(self, result: StepResult, process: str, words: str, kinds: dict[str, str] | None = None) -> list[CmaRecord]:
        """Run cma_test steps inside a process; absorb every record into the model."""
        if not self._ensure_process(result, process):
            return []
        out = self._run(result, f"cma_test ctl {shlex.quote(process)} {words}")
        records = parse_records(out.stdout)
        if not records:
            result.fail(f"cma_test printed no record (exit {out.status}): {out.stderr.strip() or out.stdout.strip()}")
        for record in records:
            self._absorb(result, process, record, kinds or {})
        return records

    def _absorb(self, result: StepResult, process: str, record: CmaRecord, kinds: dict[str, str]) -> None:
        if not record.ok:
            result.fail(f"cma_test: {record.describe()}")
            return
        if record.get("errno", "0") != "0" or record.get("proc") == "child":
            return  # an expected failure changes nothing
        name = record.get("name")
        if record.op == "alloc":
            block = Block(
                name=name,
                process=process,
                id=record.int("id") or 0,
                phys=record.int("phys") or 0,
                length=record.int("len") or 0,
                user=record.int("user") or 0,
                kind=kinds.get(name, "?"),
            )
            self._check_new_block(result, block)
            self.state.blocks[(process, name)] = block
            block.step = self._step_index
            self.state.allocated.append(block)
            self._new_blocks.append(block)
        elif record.op == "free":
            freed = self.state.blocks.pop((process, name), None)
            if freed is not None:
                freed.freed_at = self._step_index

    def _forget_process(self, process: str) -> None:
        self.state.processes.pop(process, None)
        for key in [k for k in self.state.blocks if k[0] == process]:
            del self.state.blocks[key]

    # --- steps that compile to cma_test words ----------------------------

    @staticmethod
    def cma_words(step: Step) -> tuple[str, dict[str, str]]:
        """The cma_test words for a step, and the memory type of each block it allocates."""
        a, kind = step.args, step.kind
        expect = f" expect={a['expect']}" if a.get("expect", "0") != "0" else ""
        if kind == "alloc":
            return f"alloc {a['name']} {a['size']} {a['type']}{expect}", {a["name"]: a["type"]}
        if kind == "free":
            return f"free {a['name']}{expect}", {}
        if kind == "verify":
            return " ".join(f"verify {n}" for n in a["names"]), {}
        if kind in ("write", "check"):
            return f"{kind} {a['name']} {a['seed']}", {}
        if kind == "info":
            return f"info {a['name']}{expect}", {}
        if kind == "ioctl":
            ptr = f" ptr={a['ptr']}" if a["ptr"] != "ok" else ""
            return f"raw {a['cmd']} {a['name']} {a['len']} {a['flags']}{ptr}{expect}", {}
        if kind == "mmap":
            return f"mmap {a['offset']} {a['len']}{expect}", {}
        if kind == "cma":
            return a["run"], {}
        raise AssertionError(kind)

    def _cma_step(self, step: Step, result: StepResult) -> None:
        words, kinds = self.cma_words(step)
        self.cma(result, step.args.get("process", MAIN), words, kinds)

    step_alloc = step_free = step_verify = step_write = step_check = _cma_step
    step_info = step_ioctl = step_mmap = step_cma = _cma_step

    def step_fragment(self, step: Step, result: StepResult) -> None:
        a = step.args
        n, size, kind = a["count"], a["size"], a["type"]
        words = [f"alloc frag.{i} {size} {kind}" for i in range(n)]
        words += [f"free frag.{i}" for i in range(0, n, 2)]
        expect = f" expect={a['expect']}" if a["expect"] != "0" else ""
        words.append(f"alloc frag.large {a['large']} {kind}{expect}")
        kinds = {f"frag.{i}": kind for i in range(n)} | {"frag.large": kind}
        self.cma(result, a["process"], " ".join(words), kinds)

    def step_exhaust(self, step: Step, result: StepResult) -> None:
        records = self.cma(result, step.args["process"], f"exhaust {step.args['chunk']}")
        for record in records:
            if record.op == "exhaust" and record.ok and not record.int("total"):
                result.fail("exhaust: not a single chunk could be allocated")

    # --- processes and the module ----------------------------------------

    def step_spawn(self, step: Step, result: StepResult) -> None:
        self._ensure_process(result, step.args["process"])

    def _wait_gone(self, result: StepResult, pid: int, how: str) -> None:
        out = self._run(result, f"{how}; {wait_gone(str(pid))}")
        if out.status != 0:
            result.fail(f"'{how}' failed ({out.status}): {out.stderr.strip()}")

    def step_kill(self, step: Step, result: StepResult) -> None:
        process = step.args["process"]
        pid = self.state.processes.get(process)
        if pid is None:
            result.fail(f"process '{process}' is not running")
            return
        self._wait_gone(result, pid, f"kill -9 {pid}")
        # The driver's release() frees a killed process's blocks; the capacity check proves it.
        self._forget_process(process)

    def step_exit(self, step: Step, result: StepResult) -> None:
        process = step.args["process"]
        pid = self.state.processes.get(process)
        self.cma(result, process, "exit")
        if pid is not None:
            self._wait_gone(result, pid, ":")
        self._forget_process(process)

    def step_insmod(self, step: Step, result: StepResult) -> None:
        # Where this load put the module's code, printed in the same round trip: kmemleak reports
        # read after rmmod then still name the driver's functions (harness/symbolize.py).
        insmod = f"insmod {MODULE_PATH} {step.args['params']}".strip()
        out = self._run(result, f"{insmod} && {section_bases_command('cma_mem')}")
        self._note_module_load(out.stdout)
        if out.status != 0:
            result.fail(f"insmod failed ({out.status}): {out.stderr.strip()}")

    def step_rmmod(self, step: Step, result: StepResult) -> None:
        out = self._run(result, "rmmod cma_mem")
        if step.args["expect"] == "ok" and out.status != 0:
            result.fail(f"rmmod failed ({out.status}): {out.stderr.strip()}")
        elif step.args["expect"] == "busy":
            if out.status == 0:
                result.fail("rmmod succeeded while blocks were mapped (expected it to be refused)")
            elif not any(reason in out.stderr for reason in MODULE_IN_USE):
                result.fail(f"rmmod refused for another reason than 'in use': {out.stderr.strip()}")

    def step_repeat(self, step: Step, result: StepResult) -> None:
        times, body = step.args["times"], step.body
        processes = {s.args.get("process", MAIN) for s in body}
        if all(s.kind in CMA_KINDS for s in body) and len(processes) == 1:
            # A pure cma_test body: as many iterations per guest command as fit on one line.
            [process] = processes
            compiled = [self.cma_words(s) for s in body]
            words = " ".join(w for w, _ in compiled)
            kinds = {name: kind for _, k in compiled for name, kind in k.items()}
            per_call = max(1, BATCH_CHARS // (len(words) + 1))
            done = 0
            while done < times and result.status == "pass":
                batch = min(per_call, times - done)
                self.cma(result, process, " ".join([words] * batch), kinds)
                done += batch
            result.name = f"{result.name} ({done}/{times} iterations)"
            return
        for _ in range(times):
            for inner in body:
                getattr(self, f"step_{inner.kind}")(inner, result)
            if result.status != "pass":
                break

    # --- host-side observations ------------------------------------------

    def step_shell(self, step: Step, result: StepResult) -> None:
        out = self._run(result, step.args["run"], step.args["timeout"])
        if out.status != step.args["expect_status"]:
            result.fail(f"'{step.args['run']}' exited {out.status}, expected {step.args['expect_status']}")

    def step_ktap(self, step: Step, result: StepResult) -> None:
        out = self._run(result, step.args["run"], step.args["timeout"])
        points = parse_ktap(out.stdout)
        result.subtests = [p.as_dict() for p in points]
        planned = plan(out.stdout)
        if not points:
            result.fail(f"'{step.args['run']}' printed no KTAP/TAP result (exit {out.status})")
        for point in points:
            if point.status == "fail":
                result.fail(f"not ok {point.number} {point.name}")
        top = [p for p in points if p.depth == 0]
        if planned is not None and len(top) != planned:
            result.fail(f"planned {planned} tests, {len(top)} reported")

    def step_dmesg(self, step: Step, result: StepResult) -> None:
        self.barrier("dmesg")
        lines = [line for _, line in self.kernel_log.lines]
        contains, absent = step.args["contains"], step.args["absent"]
        if contains and not any(re.search(contains, line) for line in lines):
            result.fail(f"kernel log has no line matching /{contains}/")
        if absent:
            hits = [line for line in lines if re.search(absent, line)]
            if hits:
                result.fail(f"kernel log has a line matching /{absent}/: {hits[0]}")

    def step_capacity(self, step: Step, result: StepResult) -> None:
        """The largest total the driver can allocate: an allocator-level leak check.

        CmaFree in /proc/meminfo cannot be used (freed pages linger on per-CPU
        lists); allocating until ENOMEM measures what really came back. Big
        chunks first, then the granule, so the probe stays fast. In 'check'
        mode the module is loaded just for the probe.
        """
        mode = step.args["mode"]
        chunks = ",".join(str(chunk) for chunk in CAPACITY_CHUNKS)
        measure = f"echo 0 > {PATTERN_PARAM}; cma_test exhaust {chunks}; rc=$?; echo 1 > {PATTERN_PARAM}"
        # Where the kernel has them: CMA debugfs page counts (exact) and kmemleak (after the probe).
        used = "for f in /sys/kernel/debug/cma/*/used; do [ -e $f ] && echo @cmaused $(cat $f); done"
        leaks = (
            f"if [ -e {KMEMLEAK} ]; then "
            + (
                f"echo scan > {KMEMLEAK}; sleep 6; echo scan > {KMEMLEAK}; sed 's/^/@kmemleak /' {KMEMLEAK}; "
                if mode == "check"
                else f"echo scan > {KMEMLEAK}; echo clear > {KMEMLEAK}; "  # earlier leaks are not ours
            )
            + "fi"
        )
        # Probe with the module as it is; if it is not loaded, load it just for the probe
        # (after rmmod: what did unloading give back?).
        probe = self._run(
            result,
            f"if grep -q '^cma_mem ' /proc/modules; then {measure}; else "
            f"insmod {MODULE_PATH} test_pattern=0 || exit 99; {section_bases_command('cma_mem')}; {measure}; "
            "rmmod cma_mem || exit 98; fi; "
            f"{used}; {leaks}; exit $rc",
            timeout=self.command_timeout + 15,
        )
        if probe.status in (98, 99):
            result.fail(f"capacity probe: {'insmod' if probe.status == 99 else 'rmmod'} failed: {probe.stderr.strip()}")
            return
        self._note_module_load(probe.stdout)
        self._check_kmemleak(result, probe.stdout)
        used_pages = sum(int(line.split()[1]) for line in probe.stdout.splitlines() if line.startswith("@cmaused "))
        has_debugfs = "@cmaused " in probe.stdout
        records = [r for r in parse_records(probe.stdout) if r.op == "exhaust"]
        total = records[0].int("total") if records else None
        if total is None:
            result.fail(f"capacity probe printed no total: {probe.stdout.strip()} {probe.stderr.strip()}")
            return
        if mode == "baseline":
            self.state.capacity_baseline = total
            self.state.cma_used_baseline = used_pages if has_debugfs else None
            return
        self.state.capacity_check = total
        base = self.state.capacity_baseline
        if base is None:
            result.fail("capacity check without a baseline step before it")
        elif base - total >= CAPACITY_GRANULE:
            result.fail(
                f"CMA capacity leak: {base - total} bytes fewer allocatable than before the scenario "
                f"(baseline {base}, now {total}): blocks were not freed"
            )
        used_base = self.state.cma_used_baseline
        if has_debugfs and used_base is not None and used_pages > used_base:
            result.fail(
                f"CMA debugfs: {used_pages - used_base} pages still in use that were free before the scenario "
                f"({used_base} -> {used_pages})"
            )

    def _note_module_load(self, stdout: str) -> None:
        bases = parse_section_bases(stdout)
        if bases:
            self.module_loads.append(bases)

    def _check_kmemleak(self, result: StepResult, stdout: str) -> None:
        text = "\n".join(line[len("@kmemleak ") :] for line in stdout.splitlines() if line.startswith("@kmemleak "))
        text = symbolize(text, self.module_loads, self.module_symbols, "cma_mem")
        for event in kmemleak_events(text, step=result.name):
            self.extra_events.append(event)
            result.fail(f"kernel kmemleak: {event.title}")

    # --- invariants -----------------------------------------------------

    def _check_new_block(self, result: StepResult, block: Block) -> None:
        reservation = self.state.reservation
        if reservation and not reservation.contains(block.phys, block.length):
            result.fail(
                f"{block.name}: phys {block.phys:#x}+{block.length:#x} is outside the CMA reservation "
                f"{reservation.base:#x}..{reservation.end:#x}"
            )
        for other in self.state.blocks.values():
            if block.phys < other.phys + other.length and other.phys < block.phys + block.length:
                result.fail(
                    f"blocks {block.name} and {other.name} overlap "
                    f"({block.phys:#x}+{block.length:#x} and {other.phys:#x}+{other.length:#x})"
                )

    def check_invariants(self, result: StepResult, log_mark: int, events_before: int) -> None:
        for event in self.events()[events_before:]:
            result.fail(f"kernel {event.kind}: {event.title}")
        blocks = sorted(self.state.blocks.values(), key=lambda b: b.phys)
        for a, b in itertools.pairwise(blocks):
            if a.phys + a.length > b.phys:
                result.fail(f"blocks {a.name} and {b.name} overlap ({a.phys:#x}+{a.length:#x} > {b.phys:#x})")
        self._check_dump_mem(result, parse_dump_mem(self.kernel_log.since(log_mark)))

    def final_checks(self, result: StepResult, since: float) -> None:
        """After the scenario: the driver logged nothing at warning level or worse (seed defect 23
        logged every ioctl at KERN_ERR; a block left at unload is a warning). Levels are only in
        /dev/kmsg, so this reads `dmesg -r`."""
        out = self._run(result, "dmesg -r | grep -E '^<[0-4]>' | grep -E 'cma_mem|dump_mem' ; true")
        for line in out.stdout.splitlines():
            m = re.match(r"^<(\d)>\[\s*(\d+\.\d+)\]\s*(.*)$", line)
            # The driver's own words only: a KASAN or WARN report naming its frames is a kernel
            # event, already reported with a title.
            if not m or not DRIVER_MESSAGE.match(m.group(3)):
                continue
            if float(m.group(2)) >= since and not TAINT_NOTICE.search(m.group(3)):
                level = ["emerg", "alert", "crit", "err", "warning"][int(m.group(1))]
                result.fail(f"driver logged at {level} level: {m.group(3)}")

    def _check_dump_mem(self, result: StepResult, records: list[DumpMemRecord]) -> None:
        """Each allocation of this step has a dump_mem record that agrees with the ioctl."""
        new, self._new_blocks = self._new_blocks, []
        pending = list(records)
        for block in new:
            match = next((r for r in pending if r.name == block.name and r.id in (None, block.id)), None)
            if match is None:
                result.fail(f"{block.name}: no dump_mem record in the kernel log for this allocation")
                continue
            pending.remove(match)
            block.dmesg = match
            if match.kernel and _raw_kernel_pointer(match.kernel):
                result.fail(f"{block.name}: dump_mem prints a raw kernel address ({match.kernel}): use %p")
            for label, logged, returned in (
                ("physical address", match.phys, block.phys),
                ("user address", match.user, block.user),
                ("id", match.id, block.id),
                ("size", match.size, block.length),
                ("memory type", match.usebuf, {"wc": 1, "coherent": 0}.get(block.kind, match.usebuf)),
            ):
                if logged is not None and returned is not None and logged != returned:
                    result.fail(
                        f"{block.name}: {label} in dmesg ({_show(logged)}) differs from the ioctl's ({_show(returned)})"
                    )

    # --- driver ---------------------------------------------------------

    def run(self, scenario: Scenario) -> list[StepResult]:
        for index, step in enumerate(scenario.steps, start=1):
            result = StepResult(index=index, name=step.describe(), line=step.line)
            self._step_index = index
            self.results.append(result)
            self.set_step(f"{index}: {result.name}")
            log_mark, events_before = self.kernel_log.mark, len(self.events())
            started = time.monotonic()
            try:
                getattr(self, f"step_{step.kind}")(step, result)
                self.barrier(f"step {index} done")
            except GuestError as exc:
                # The guest hung, died or panicked during this step: nothing after it can run.
                result.duration = time.monotonic() - started
                result.fail(f"guest stopped answering: {exc.message}")
                self.check_invariants(result, log_mark, events_before)
                self.aborted = exc
                break
            result.duration = time.monotonic() - started
            self.check_invariants(result, log_mark, events_before)
        return self.results


def wait_gone(pid: str) -> str:
    """Shell that waits until a process has exited. A zombie counts as gone: it has closed its
    files (the driver's release ran), and over SSH nobody may reap it soon."""
    return f"while [ -e /proc/{pid} ] && ! grep -q '^State:.*Z' /proc/{pid}/status 2>/dev/null; do sleep 0.01; done"


def _raw_kernel_pointer(text: str) -> bool:
    # %p hashes to 32 bits, zero-extended on 64-bit kernels: set upper bits mean a raw address.
    try:
        return int(text, 16) >= 1 << 32
    except ValueError:
        return False


def _show(value: int) -> str:
    return hex(value) if value > 4096 else str(value)
