"""The operations the model and the fuzzer speak: one cma_test step, or one guest-level action.

An `Op` is either a cma_test step (alloc, free, verify, write, check, info, total, raw, mmap,
fork, close), run inside the named cma_test server process `proc`, or a guest action (exit,
kill, rmmod, insmod). `fork` carries the steps its child runs (cma_test gives a forked child
the rest of the command line). `words()` is the exact cma_test text; `batches()` is how a flat
op list becomes guest commands, shared by the executor and the model so both agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

STEP_KINDS = ("alloc", "free", "verify", "write", "check", "info", "total", "raw", "mmap", "fork", "close")
# blocks: read the driver's debugfs list of every live block (cma_mem/blocks) and compare it
# with the model's, so the global list and its accounting are checked, not only each file's.
GUEST_KINDS = ("exit", "kill", "rmmod", "insmod", "blocks")
MAIN = "main"
# A guest command line stays under this many characters (a console line holds ~4 KiB).
BATCH_CHARS = 3000


@dataclass(frozen=True)
class Op:
    kind: str
    proc: str = MAIN
    name: str = ""  # block name (alloc/free/verify/write/check/info/raw: "-" = empty)
    size: int = 0  # alloc: bytes; mmap: length; raw: len field
    wc: bool = False  # alloc: write-combine (else coherent)
    seed: int = 0  # write/check
    cmd: str = ""  # raw: a CMEM_* name or a number
    flags: int = 0  # raw: is_use_buffer
    ptr: str = "ok"  # raw: ok | bad | ro
    offset: str = "0"  # mmap: number, @NAME or @NAME+N
    child: tuple[Op, ...] = field(default_factory=tuple)  # fork: the child's steps
    expect: str | None = None  # errno name cma_test is told to expect (None: 0)
    shows: str = ""  # mmap: what the mapping must show, KIND:ARG:BLOCKOFF (cma_test checks every byte)
    private: bool = False  # mmap: MAP_PRIVATE (the driver must refuse it: a copy-on-write "view")

    @property
    def is_step(self) -> bool:
        return self.kind in STEP_KINDS

    def words(self) -> str:
        """This step as cma_test words (a fork includes its child's steps)."""
        k = self.kind
        if k == "alloc":
            w = f"alloc {self.name} {self.size} {'wc' if self.wc else 'coherent'}"
        elif k in ("free", "verify", "info"):
            w = f"{k} {self.name}"
        elif k in ("write", "check"):
            w = f"{k} {self.name} {self.seed}"
        elif k in ("total", "close"):
            w = k
        elif k == "raw":
            w = f"raw {self.cmd} {self.name or '-'} {self.size} {self.flags}"
            if self.ptr != "ok":
                w += f" ptr={self.ptr}"
        elif k == "mmap":
            w = f"mmap {self.offset} {self.size}" + (f" shows={self.shows}" if self.shows else "")
            w += " private" if self.private else ""
        elif k == "fork":
            w = "fork"
        else:
            raise ValueError(f"{k} is not a cma_test step")
        if self.expect and self.expect != "0":
            w += f" expect={self.expect}"
        if k == "fork" and self.child:
            w += " " + " ".join(c.words() for c in self.child)
        return w

    def describe(self) -> str:
        if self.is_step:
            return f"[{self.proc}] {self.words()}"
        return f"{self.kind} {self.proc}" if self.kind in ("exit", "kill") else self.kind

    def without_expect(self) -> Op:
        """The op as the generator first made it: expect= and shows= come from the model's state."""
        return replace(self, expect=None, shows="", child=tuple(c.without_expect() for c in self.child))


@dataclass(frozen=True)
class Batch:
    """One guest command: steps in one cma_test server (`ctl PROC`), or one guest action."""

    proc: str
    ops: tuple[Op, ...]

    @property
    def guest(self) -> Op | None:
        return self.ops[0] if len(self.ops) == 1 and not self.ops[0].is_step else None

    def words(self) -> str:
        return " ".join(op.words() for op in self.ops)


def batches(ops: list[Op] | tuple[Op, ...], max_chars: int = BATCH_CHARS) -> Iterator[Batch]:
    """Consecutive steps of one process share a command, up to max_chars; a fork ends its command
    (the child takes the rest of the line); a guest action is a command of its own."""
    cur: list[Op] = []
    size = 0
    for op in ops:
        if not op.is_step:
            if cur:
                yield Batch(cur[0].proc, tuple(cur))
                cur, size = [], 0
            yield Batch(op.proc, (op,))
            continue
        n = len(op.words()) + 1
        if cur and (cur[0].proc != op.proc or size + n > max_chars):
            yield Batch(cur[0].proc, tuple(cur))
            cur, size = [], 0
        cur.append(op)
        size += n
        if op.kind == "fork":
            yield Batch(op.proc, tuple(cur))
            cur, size = [], 0
    if cur:
        yield Batch(cur[0].proc, tuple(cur))


def count_steps(ops: list[Op] | tuple[Op, ...]) -> int:
    return sum(1 + count_steps(op.child) for op in ops)
