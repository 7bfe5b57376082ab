"""The step-kind registry: each kind of scenario step is defined once, here, with everything about it.

A `StepKind` declares, in one place:
- `fields`: its YAML schema (types, defaults, errors with file:line come from harness.config.yamlconf);
- `shorthand`: the one field a bare value fills (`free: mem1` is `free: {name: mem1}`);
- `check`: the static check run on load, before anything boots (blocks and processes exist);
- `words`: for steps that are cma_test words, how they compile (such steps batch inside `repeat`);
- `run`: what it does against the guest, through the DriverClient, failing the StepResult.

Adding a step kind is one `register(StepKind(...))` in this file (docs/architecture.md shows one).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.config import abi
from harness.config.yamlconf import (
    Field,
    Schema,
    is_bool,
    is_int,
    is_number,
    is_positive_int,
    is_str,
    one_of,
    parse_share,
    parse_size,
)
from harness.errors import ConfigError
from harness.guest.heapshell import heap_probe_command
from harness.guest.shell import (
    CMA_USED_MARKER,
    KMEMLEAK_MARKER,
    PROBE_INSMOD_FAILED,
    PROBE_RMMOD_FAILED,
    RMMOD_COMMAND,
    capacity_probe_command,
    insmod_command,
    section_bases_command,
)
from harness.oracles.checks import CAPACITY_CHUNKS, capacity_problems, rmmod_problems
from harness.oracles.cmatest import parse_records
from harness.oracles.heap import heap_leak_problems, heap_name, heap_unavailable, witness_problems
from harness.oracles.ktap import parse_ktap, plan, totals_problems
from harness.scenario.client import DriverClient, LeakCheck, parse_uptime
from harness.scenario.model import DRIVER, FILL, HEAP, MAIN, CmaShare, Step, StepResult, StepStatus

# cma_test steps per guest command in a batched repeat (a console line holds ~4 KiB).
BATCH_CHARS = 3000

Words = tuple[str, dict[str, str]]  # cma_test words, and the memory type of each block they allocate


# --- static checks: names and processes, before anything boots -------------------


@dataclass
class LiveModel:
    """Which blocks each process holds at this point of the scenario, as far as the file says."""

    live: dict[str, set[str]] = field(default_factory=dict)  # process -> block names
    heap: set[tuple[str, str]] = field(default_factory=set)  # (process, name) of heap buffers

    def need_block(self, step: Step, source: str, name: str, process: str) -> None:
        if name not in self.live.get(process, set()):
            raise ConfigError(
                f"{source}:{step.line}: step '{step.kind}': block '{name}' is not allocated "
                f"in process '{process}' at this point"
            )
        if "backend" in step.args:
            mine, theirs = (HEAP, DRIVER) if backend_of(step) == HEAP else (DRIVER, HEAP)
            if ((process, name) in self.heap) != (mine == HEAP):
                raise ConfigError(
                    f"{source}:{step.line}: step '{step.kind}' (backend {mine}): block '{name}' was allocated "
                    f"through the {theirs} backend"
                )

    def need_process(self, step: Step, source: str, process: str) -> None:
        if process not in self.live:
            raise ConfigError(f"{source}:{step.line}: step '{step.kind}': process '{process}' is not running")


def starts_process(step: Step, model: LiveModel, source: str) -> set[str]:
    """The default static check: the step's process (main unless named) runs from here on."""
    return model.live.setdefault(step.args.get("process", MAIN), set())


def cma_size(value: Any) -> int | CmaShare:
    """Bytes (4M, 800*480*4) or a share of the target's CMA area (50%, cma/2), resolved at run time."""
    try:
        share = parse_share(value)
    except ValueError:
        share = None
    if share is not None:
        return CmaShare(share[0], share[1], str(value).strip())
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError("a size (bytes, or with K/M/G) or a share of the CMA area (50%, cma/2, cma*3/4)") from None


def count_or_fill(value: Any) -> int | str:
    if value == FILL:
        return FILL
    try:
        return is_positive_int(value)
    except ValueError:
        raise ValueError(f"a positive integer, or '{FILL}' (as many as the area holds)") from None


def _succeeds(step: Step) -> bool:
    return bool(step.args.get("expect", "0") == "0")


def backend_of(step: Step) -> str:
    """The step's backend: 'heap' (the kernel's CMA heap, /dev/dma_heap) or 'driver' (cma_mem, the default)."""
    return HEAP if step.args.get("backend") == HEAP else DRIVER


def needs_blocks(*names_of: Callable[[dict[str, Any]], list[str]], always: bool = False) -> Callable[..., None]:
    """A static check: the named blocks are live in the step's process (if the step must succeed,
    or `always`: reading a pattern from a block that is not there is never what a scenario means)."""

    def check(step: Step, model: LiveModel, source: str) -> None:
        if always or _succeeds(step):
            for names in names_of:
                for name in names(step.args):
                    model.need_block(step, source, name, step.args.get("process", MAIN))

    return check


def ends_process(step: Step, model: LiveModel, source: str) -> None:
    model.need_process(step, source, step.args["process"])
    model.live.pop(step.args["process"])


# --- field value checks ------------------------------------------------------------


def block_name(value: Any) -> str:
    name_max = abi.name_len() - 1  # the NUL takes one byte
    if not isinstance(value, str) or not value or len(value.encode()) > name_max or " " in value:
        raise ValueError(f"a block name of 1..{name_max} characters without spaces")
    return value


def block_names(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("a block name or a list of block names")
    return [block_name(v) for v in value]


def process_name(value: Any) -> str:
    if not isinstance(value, str) or not value.replace("-", "").replace("_", "").isalnum() or len(value) > 32:
        raise ValueError("a process name (letters, digits, - and _)")
    return value


def errno_name(value: Any) -> str:
    if value in (0, "0", None):
        return "0"
    if isinstance(value, str) and value.isupper() and value.startswith("E") and value.isalnum():
        return value
    raise ValueError("an errno name like EINVAL (or 0 for success)")


def raw_name(value: Any) -> str:
    # Raw ioctls may pass any name, including empty ("-") and overlong ones.
    if value in ("", None):
        return "-"
    if not isinstance(value, str) or " " in value or len(value) > 64:
        raise ValueError("a name without spaces, at most 64 characters ('' for empty)")
    return value


def ioctl_cmd(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and (value in abi.command_names() or value.startswith("0x")):
        return value
    raise ValueError("a CMEM_* command from the uapi header or a number: " + ", ".join(abi.command_names()))


def mmap_offset(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.startswith("@"):
        name, _, extra = value[1:].partition("+")
        block_name(name)
        if extra:
            parse_size(extra)
        return value
    raise ValueError("a byte offset, or '@NAME' / '@NAME+BYTES' for a block's own offset")


def cma_steps(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "'" in value or ";" in value:
        raise ValueError("cma_test steps as one string (see userland/README.md)")
    return value.strip()


def regex(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a regular expression")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"a valid regular expression ({exc})") from None
    return value


PROCESS = Field("process", process_name, default=MAIN, doc="the cma_test process that owns the blocks")
# None: the scenario's (or the run's) default backend, which is the driver unless `backend: heap` / `--backend heap`.
BACKEND = Field("backend", one_of(DRIVER, HEAP), default=None, doc="driver (cma_mem) or heap (/dev/dma_heap CMA heap)")
EXPECT = Field("expect", errno_name, default="0", doc="errno the call must fail with (0: must succeed)")


# --- the registry ----------------------------------------------------------------


@dataclass(frozen=True)
class StepKind:
    name: str
    fields: tuple[Field, ...]
    run: Callable[[DriverClient, Step, StepResult], None]
    shorthand: str | None = None
    check: Callable[[Step, LiveModel, str], object] = starts_process
    words: Callable[[Step], Words] | None = None  # set: a cma_test step, batched inside repeat
    body: bool = False  # has nested steps (repeat: its `steps` field)
    # Bytes of CMA the step needs to do what it says (sizes resolved): checked before boot, so a
    # scenario too big for a board's reservation is refused, never a failing verdict.
    needs: Callable[[Step], int] | None = None
    # Why this step needs the driver (cannot run on the heap backend), or None. Kinds with a
    # `backend` field run on either; others without this run on either too (shell, dmesg, ...).
    driver_only: Callable[[dict[str, Any]], str | None] | None = None

    @property
    def schema(self) -> Schema:
        return Schema(list(self.fields))


REGISTRY: dict[str, StepKind] = {}


def fit_problems(steps: list[Step], cma: int, source: str) -> list[str]:
    """What a scenario (its sizes resolved for an area of `cma` bytes) asks of the area beyond its size."""
    problems = []
    for step in steps:
        needs = REGISTRY[step.kind].needs
        need = needs(step) if needs else 0
        if need > cma:
            problems.append(
                f"{source}:{step.line}: {step.describe()} needs {_mib(need)} of CMA; the area is {_mib(cma)}"
            )
        problems += fit_problems(list(step.body), cma, source)
    return problems


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def register(kind: StepKind) -> StepKind:
    assert kind.name not in REGISTRY, f"step kind {kind.name} defined twice"
    REGISTRY[kind.name] = kind
    return kind


def kind_of(step: Step) -> StepKind:
    return REGISTRY[step.kind]


def execute(client: DriverClient, step: Step, result: StepResult) -> None:
    """Run one step of any kind (the runner's loop and `repeat` both dispatch here)."""
    REGISTRY[step.kind].run(client, step, result)


def static_check(step: Step, model: LiveModel, source: str) -> None:
    REGISTRY[step.kind].check(step, model, source)


def apply_backend(kind: str, args: dict[str, Any], default: str, where: str) -> None:
    """Resolve a step's backend against the scenario's default (`where` is 'file:line' for errors):
    a step without `backend` takes the default; one that only the driver has is refused on the heap."""
    step_kind = REGISTRY[kind]
    if any(f.name == "backend" for f in step_kind.fields):
        if args.get("backend") is None and default == HEAP:
            args["backend"] = HEAP
        return
    if default == HEAP and step_kind.driver_only is not None:
        why = step_kind.driver_only(args)
        if why:
            raise ConfigError(f"{where}: step '{kind}' needs the driver ({why}); not available with backend heap")


# --- cma_test steps: one guest command each, batched inside repeat -------------------


def _expect(a: dict[str, Any]) -> str:
    heap = " backend=heap" if a.get("backend") == HEAP else ""
    return heap + (f" expect={a['expect']}" if a.get("expect", "0") != "0" else "")


def _heap(a: dict[str, Any]) -> str:
    return " backend=heap" if a.get("backend") == HEAP else ""


def run_words(client: DriverClient, step: Step, result: StepResult) -> None:
    words, kinds = REGISTRY[step.kind].words(step)  # type: ignore[misc]
    client.cma(result, step.args.get("process", MAIN), words, kinds)


def _alloc_check(step: Step, model: LiveModel, source: str) -> None:
    live = starts_process(step, model, source)
    if _succeeds(step):
        live.add(step.args["name"])
        key = (step.args["process"], step.args["name"])
        if backend_of(step) == HEAP:
            model.heap.add(key)
        else:
            model.heap.discard(key)


register(
    StepKind(
        "alloc",
        (
            Field("name", block_name, required=True),
            Field("size", cma_size, required=True, doc="bytes, e.g. 800*480*4 or 4M, or a share of the area: 50%"),
            Field("type", one_of("wc", "coherent"), default="wc"),
            PROCESS,
            EXPECT,
            BACKEND,
        ),
        run=run_words,
        check=_alloc_check,
        needs=lambda s: s.args["size"] if _succeeds(s) else 0,
        words=lambda s: (
            f"alloc {s.args['name']} {s.args['size']} {s.args['type']}{_expect(s.args)}",
            {s.args["name"]: HEAP if backend_of(s) == HEAP else s.args["type"]},
        ),
    )
)


def _free_check(step: Step, model: LiveModel, source: str) -> None:
    needs_blocks(lambda a: [a["name"]])(step, model, source)
    if _succeeds(step):
        model.live[step.args["process"]].discard(step.args["name"])


register(
    StepKind(
        "free",
        (Field("name", block_name, required=True), PROCESS, EXPECT, BACKEND),
        run=run_words,
        shorthand="name",
        check=_free_check,
        words=lambda s: (f"free {s.args['name']}{_expect(s.args)}", {}),
    )
)
register(
    StepKind(
        "verify",
        (Field("names", block_names, required=True), PROCESS, BACKEND),
        run=run_words,
        shorthand="names",
        check=needs_blocks(lambda a: a["names"], always=True),
        words=lambda s: (" ".join(f"verify {n}{_heap(s.args)}" for n in s.args["names"]), {}),
    )
)
for _pattern_kind in ("write", "check"):
    register(
        StepKind(
            _pattern_kind,
            (Field("name", block_name, required=True), Field("seed", is_int, default=1), PROCESS, BACKEND),
            run=run_words,
            check=needs_blocks(lambda a: [a["name"]], always=True),
            words=lambda s: (f"{s.kind} {s.args['name']} {s.args['seed']}{_heap(s.args)}", {}),
        )
    )
register(
    StepKind(
        "info",
        (Field("name", block_name, required=True), PROCESS, EXPECT),
        run=run_words,
        check=needs_blocks(lambda a: [a["name"]]),
        words=lambda s: (f"info {s.args['name']}{_expect(s.args)}", {}),
        driver_only=lambda a: "CMEM_GET_PHYS",
    )
)


def _ioctl_words(s: Step) -> Words:
    a = s.args
    ptr = f" ptr={a['ptr']}" if a["ptr"] != "ok" else ""
    return f"raw {a['cmd']} {a['name']} {a['len']} {a['flags']}{ptr}{_expect(a)}", {}


register(
    StepKind(
        "ioctl",
        (
            Field("cmd", ioctl_cmd, required=True),
            Field("name", raw_name, default="-"),
            Field("len", parse_size, default=0),
            Field("flags", is_int, default=0),
            Field("ptr", one_of("ok", "bad", "ro"), default="ok"),
            PROCESS,
            EXPECT,
        ),
        run=run_words,
        words=_ioctl_words,
        driver_only=lambda a: "a raw cma_mem ioctl",
    )
)
register(
    StepKind(
        "mmap",
        (Field("offset", mmap_offset, required=True), Field("len", parse_size, required=True), PROCESS, EXPECT),
        run=run_words,
        # '@NAME' offsets name a block that must be there; a plain byte offset names none.
        check=needs_blocks(lambda a: [a["offset"][1:].partition("+")[0]] if a["offset"].startswith("@") else []),
        words=lambda s: (f"mmap {s.args['offset']} {s.args['len']}{_expect(s.args)}", {}),
        driver_only=lambda a: "mmap() of /dev/cma_mem",
    )
)
register(
    StepKind(
        "cma",
        (Field("run", cma_steps, required=True), PROCESS),
        run=run_words,
        words=lambda s: (s.args["run"], {}),
        # Raw cma_test words name their backend themselves (backend=heap); as written, they are the driver's.
        driver_only=lambda a: None if "backend=heap" in a["run"] else "raw cma_test words for the driver",
    )
)


def _fragment(client: DriverClient, step: Step, result: StepResult) -> None:
    a = step.args
    n, size, kind = a["count"], a["size"], a["type"]
    if n == FILL:
        # As many blocks as the area holds by the capacity baseline (else its size), an even
        # number so the last block stays: every hole left is one block, none merges with the tail.
        room = client.state.capacity_baseline or client.cma_bytes
        n = room // size // 2 * 2
        if n < 4:
            result.fail(f"fragment: the area holds {room} bytes, room for only {n} blocks of {size}; 4 needed")
            return
    heap = _heap(a)
    words = [f"alloc frag.{i} {size} {kind}{heap}" for i in range(n)]
    words += [f"free frag.{i}{heap}" for i in range(0, n, 2)]
    words.append(f"alloc frag.large {a['large']} {kind}{_expect(a)}")
    kind = HEAP if heap else kind
    kinds = {f"frag.{i}": kind for i in range(n)} | {"frag.large": kind}
    client.cma(result, a["process"], " ".join(words), kinds)


def _fragment_check(step: Step, model: LiveModel, source: str) -> None:
    live = starts_process(step, model, source)
    count = step.args["count"]
    # The odd-numbered blocks stay; with `fill` at least frag.1 and frag.3 (4 blocks or the step fails).
    kept = [f"frag.{i}" for i in range(1, 4 if count == FILL else count, 2)]
    if _succeeds(step):
        kept.append("frag.large")
    live.update(kept)
    if backend_of(step) == HEAP:
        model.heap.update((step.args["process"], name) for name in kept)


register(
    StepKind(
        "fragment",
        (
            Field("count", count_or_fill, required=True),
            Field("size", cma_size, required=True),
            Field("large", cma_size, required=True),
            Field("type", one_of("wc", "coherent"), default="coherent"),
            PROCESS,
            EXPECT,
            BACKEND,
        ),
        run=_fragment,
        check=_fragment_check,
        # `count` blocks must fit (4 with fill), and so must `large` when it is meant to.
        needs=lambda s: max(
            (4 if s.args["count"] == FILL else s.args["count"]) * s.args["size"], s.args["large"] if _succeeds(s) else 0
        ),
    )
)


def _exhaust(client: DriverClient, step: Step, result: StepResult) -> None:
    records = client.cma(result, step.args["process"], f"exhaust {step.args['chunk']}{_heap(step.args)}")
    for record in records:
        if record.op == "exhaust" and record.ok and not record.int("total"):
            result.fail("exhaust: not a single chunk could be allocated")


register(
    StepKind(
        "exhaust",
        (Field("chunk", parse_size, required=True), PROCESS, BACKEND),
        run=_exhaust,
        needs=lambda s: s.args["chunk"],
    )
)


# --- processes and the module ------------------------------------------------------


def _spawn(client: DriverClient, step: Step, result: StepResult) -> None:
    client.ensure_process(result, step.args["process"])


def _kill(client: DriverClient, step: Step, result: StepResult) -> None:
    process = step.args["process"]
    pid = client.state.processes.get(process)
    if pid is None:
        result.fail(f"process '{process}' is not running")
        return
    client.wait_gone(result, pid, f"kill -9 {pid}")
    # The driver's release() frees a killed process's blocks; the capacity check proves it.
    client.forget_process(process)


def _exit(client: DriverClient, step: Step, result: StepResult) -> None:
    process = step.args["process"]
    pid = client.state.processes.get(process)
    client.cma(result, process, "exit")
    if pid is not None:
        client.wait_gone(result, pid, ":")
    client.forget_process(process)


register(StepKind("spawn", (Field("process", process_name, required=True),), run=_spawn, shorthand="process"))
register(
    StepKind(
        "kill", (Field("process", process_name, required=True),), run=_kill, shorthand="process", check=ends_process
    )
)
register(
    StepKind(
        "exit", (Field("process", process_name, required=True),), run=_exit, shorthand="process", check=ends_process
    )
)


def _insmod(client: DriverClient, step: Step, result: StepResult) -> None:
    out = client.run(result, insmod_command(step.args["params"]))
    client.note_module_load(out.stdout)
    if out.status != 0:
        result.fail(f"insmod failed ({out.status}): {out.stderr.strip()}")


def _rmmod(client: DriverClient, step: Step, result: StepResult) -> None:
    out = client.run(result, RMMOD_COMMAND)
    result.fail_all(rmmod_problems(step.args["expect"], out.status, out.stderr))


register(StepKind("insmod", (Field("params", is_str, default=""),), run=_insmod))
register(
    StepKind(
        "rmmod",
        (Field("expect", one_of("ok", "busy"), default="ok"),),
        run=_rmmod,
        # Refused while the driver's blocks are mapped: heap buffers hold nothing of the driver.
        driver_only=lambda a: "a driver mapping holds the module" if a["expect"] == "busy" else None,
    )
)


def _repeat(client: DriverClient, step: Step, result: StepResult) -> None:
    times, body = step.args["times"], step.body
    processes = {s.args.get("process", MAIN) for s in body}
    if all(REGISTRY[s.kind].words is not None for s in body) and len(processes) == 1:
        # A pure cma_test body: as many iterations per guest command as fit on one line.
        [process] = processes
        compiled = [REGISTRY[s.kind].words(s) for s in body]  # type: ignore[misc]
        words = " ".join(w for w, _ in compiled)
        kinds = {name: kind for _, k in compiled for name, kind in k.items()}
        per_call = max(1, BATCH_CHARS // (len(words) + 1))
        done = 0
        while done < times and result.status == StepStatus.PASS:
            batch = min(per_call, times - done)
            client.cma(result, process, " ".join([words] * batch), kinds, ops=batch * len(body))
            done += batch
        result.name = f"{result.name} ({done}/{times} iterations)"
        return
    for _ in range(times):
        for inner in body:
            execute(client, inner, result)
        if result.status != StepStatus.PASS:
            break


def _repeat_check(step: Step, model: LiveModel, source: str) -> None:
    for inner in step.body:
        static_check(inner, model, source)


register(
    StepKind(
        "repeat",
        (Field("times", is_positive_int, required=True), Field("steps", lambda v: v, required=True)),
        run=_repeat,
        check=_repeat_check,
        body=True,
    )
)


def _capacity(client: DriverClient, step: Step, result: StepResult) -> None:
    """The largest total that can be allocated: an allocator-level leak check.

    CmaFree in /proc/meminfo cannot be used (freed pages linger on per-CPU
    lists); allocating until ENOMEM measures what really came back. Big
    chunks first, then the granule, so the probe stays fast. Measured through
    the driver (in 'check' mode the module is loaded just for the probe) and,
    where the kernel has it, through its own CMA heap: an independent witness
    that shares no code with the driver. `probe` picks one of them (default both).
    """
    probe = step.args["probe"] or "both"
    driver_total = _driver_capacity(client, step, result) if probe != HEAP else None
    if probe != DRIVER:
        _heap_capacity(client, step, result, driver_total)


def _driver_capacity(client: DriverClient, step: Step, result: StepResult) -> int | None:
    mode = step.args["mode"]
    chunks = ",".join(str(chunk) for chunk in CAPACITY_CHUNKS)
    probe = client.run(result, capacity_probe_command(chunks, mode), timeout=client.command_timeout + 15)
    if probe.status in (PROBE_RMMOD_FAILED, PROBE_INSMOD_FAILED):
        what = "insmod" if probe.status == PROBE_INSMOD_FAILED else "rmmod"
        result.fail(f"capacity probe: {what} failed: {probe.stderr.strip()}")
        return None
    client.note_module_load(probe.stdout)
    at = parse_uptime(probe.stdout)
    if at is not None:  # kmemleak is read later, once (harness/scenario/kmemleak.py)
        client.leak_checks.append(LeakCheck(at, result, mode == "check"))
    lines = probe.stdout.splitlines()
    leaks = [line[len(KMEMLEAK_MARKER) :] for line in lines if line.startswith(KMEMLEAK_MARKER)]
    client.check_kmemleak(result, "\n".join(leaks))
    used_pages = sum(int(line.split()[1]) for line in lines if line.startswith(CMA_USED_MARKER))
    has_debugfs = CMA_USED_MARKER in probe.stdout
    records = [r for r in parse_records(probe.stdout) if r.op == "exhaust"]
    total = records[0].int("total") if records else None
    if total is None:
        result.fail(f"capacity probe printed no total: {probe.stdout.strip()} {probe.stderr.strip()}")
        return None
    state = client.state
    if mode == "baseline":
        state.capacity_baseline = total
        state.cma_used_baseline = used_pages if has_debugfs else None
        return total
    state.capacity_check = total
    result.fail_all(
        capacity_problems(state.capacity_baseline, total, state.cma_used_baseline, used_pages if has_debugfs else None)
    )
    return total


def _heap_capacity(client: DriverClient, step: Step, result: StepResult, driver_total: int | None) -> None:
    """The witness: the same measure through /dev/dma_heap; where there is none, a note says why."""
    mode = step.args["mode"]
    chunks = ",".join(str(chunk) for chunk in CAPACITY_CHUNKS)
    out = client.run(result, heap_probe_command(chunks), timeout=client.command_timeout + 15)
    records = parse_records(out.stdout)
    unavailable = heap_unavailable(records)
    if unavailable is not None:
        result.notes.append(f"heap witness {unavailable}")
        return
    heap = heap_name(records)
    exhaust = next((r for r in records if r.op == "exhaust"), None)
    total = exhaust.int("total") if exhaust is not None and exhaust.ok else None
    if total is None:
        result.fail(f"heap witness printed no total: {out.stdout.strip()} {out.stderr.strip()}")
        return
    state = client.state
    if mode == "baseline":
        state.heap_baseline = total
    else:
        state.heap_check = total
        result.fail_all(heap_leak_problems(state.heap_baseline, total, heap))
    figures = f"heap witness (/dev/dma_heap/{heap}): {total} bytes allocatable"
    if driver_total is not None:
        figures += f", the driver {driver_total}"
        result.fail_all(witness_problems(driver_total, total, heap))
    result.notes.append(figures)


register(
    StepKind(
        "capacity",
        (
            Field("mode", one_of("baseline", "check"), required=True),
            Field("probe", one_of("both", DRIVER, HEAP), default=None, doc="measure through both (default) or one"),
        ),
        run=_capacity,
        shorthand="mode",
    )
)


# --- host-side observations ----------------------------------------------------------


def _shell(client: DriverClient, step: Step, result: StepResult) -> None:
    out = client.run(result, step.args["run"], step.args["timeout"])
    if out.status != step.args["expect_status"]:
        result.fail(f"'{step.args['run']}' exited {out.status}, expected {step.args['expect_status']}")


def _ktap(client: DriverClient, step: Step, result: StepResult) -> None:
    out = client.run(result, step.args["run"], step.args["timeout"])
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
    result.fail_all(totals_problems(points, out.stdout))  # kselftest's own '# Totals:' line agrees


def _dmesg(client: DriverClient, step: Step, result: StepResult) -> None:
    client.barrier("dmesg")
    lines = [line for _, line in client.kernel_log.lines]
    contains, absent = step.args["contains"], step.args["absent"]
    if contains and not any(re.search(contains, line) for line in lines):
        result.fail(f"kernel log has no line matching /{contains}/")
    if absent:
        hits = [line for line in lines if re.search(absent, line)]
        if hits:
            result.fail(f"kernel log has a line matching /{absent}/: {hits[0]}")


register(
    StepKind(
        "shell",
        (
            Field("run", is_str, required=True),
            Field("expect_status", is_int, default=0),
            Field("timeout", is_number, default=None, doc="seconds; default: the target's command timeout"),
        ),
        run=_shell,
        shorthand="run",
    )
)
register(
    StepKind(
        "ktap",
        (Field("run", is_str, required=True), Field("timeout", is_number, default=None)),
        run=_ktap,
        shorthand="run",
    )
)
register(
    StepKind(
        "dmesg",
        (Field("contains", regex, default=None), Field("absent", regex, default=None)),
        run=_dmesg,
    )
)


# --- fuzz: seeded operations checked against the driver model --------------------------


def _fuzz(client: DriverClient, step: Step, result: StepResult) -> None:
    # Imported here: the model and generator cost ~0.1 s to import, paid only by scenarios using them.
    from harness.model.fuzz import fuzz_guest
    from harness.model.ops import count_steps

    a = step.args
    found = fuzz_guest(
        client.transport,
        client.state.reservation,
        client.userland_bits,
        client.kernel_bits,
        a["seed"],
        a["ops"],
        shrink_failure=a["shrink"],
    )
    # The fuzzer leaves a fresh load of the driver: where its code is now, for symbolize().
    client.note_module_load(client.run(result, section_bases_command()).stdout)
    st = found.stats
    result.notes.append(f"{st.ops} ops in {st.commands} commands, {st.seconds:.1f} s ({st.rate:.0f} ops/s)")
    result.fail_all(found.mismatches[:10])
    if found.repro is not None:
        result.fail(f"shrunk to {count_steps(found.repro)} steps; the reproducing scenario:\n{found.repro_yaml}")


def _fuzz_check(step: Step, model: LiveModel, source: str) -> None:
    # The fuzzer starts from a fresh module load with its own processes: it ends any the
    # scenario runs, which would then fail for a reason the file does not show.
    if model.live:
        raise ConfigError(
            f"{source}:{step.line}: step 'fuzz' needs no cma_test process running; "
            f"end {', '.join(sorted(model.live))} first (exit or kill)"
        )


register(
    StepKind(
        "fuzz",
        (
            Field("seed", is_int, default=1, doc="the generator's seed: the same seed, the same operations"),
            Field("ops", is_positive_int, default=1000, doc="operations to run"),
            Field("shrink", is_bool, default=True, doc="shrink a mismatch to a reproducing scenario"),
        ),
        run=_fuzz,
        shorthand="ops",
        check=_fuzz_check,
        driver_only=lambda a: "it exercises the driver's own ioctls",
    )
)

ALL_STEPS = sorted(REGISTRY)
