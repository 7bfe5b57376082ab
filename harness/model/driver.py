"""A model of cma_mem's contract: from the state, the full result of every operation.

Sources: the uapi header (kmod/include/uapi/linux/cma_mem.h: the name length, the commands,
the structs, the test pattern), the driver's documented behaviour (the comments of
kmod/cma_mem.c: ownership, lifetime, errno of each misuse) and cma_test's record format
(userland/README.md, userland/cma_test.c: which fields each step prints, and what cma_test
itself does around the ioctl: it keeps its own table of the blocks ALLOCATE gave it, reads and
writes through those mappings, unmaps them on close).

`DriverModel.apply(op, observed)` predicts the records of one cma_test step (a fork predicts
its child's steps too) or the outcome of one guest action, then updates the state. With
`observed` (the records cma_test printed), values the model cannot know are bound from them
(physical and user addresses, pids) and an outcome the model leaves open (an allocation near
the capacity: ENOMEM or not) follows the driver; without it (when generating), the model
takes the likely branch and leaves addresses unknown.

What the model knows exactly: every errno; id (global counter from insmod), len (PAGE_ALIGN),
mmap offset (first fit per open file), the totals (used, available, blocks) at every instant,
which block each mapping shows and what bytes it holds (the driver's pattern, a seeded pattern
written by `write`, or zeros with test_pattern=0), when each block's memory really goes back
(list reference + one per VMA; files live while an fd or a VMA holds them), what rmmod does.
What it constrains: phys (page aligned, inside the reservation, disjoint from every live
block's real extent: a one-page block takes two CMA pages), user/mmap addresses (page aligned,
non-zero, disjoint from the process's other mappings), and equality of later reports of the
same value (info after alloc).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field

from harness.model.ops import Op
from harness.oracles.cmatest import CmaRecord

PAGE = 4096
NAME_LEN = 16  # CMA_MEM_NAME_LEN: at most 15 bytes + NUL
COOKIE_LIMIT_64 = 1 << 44
COOKIE_LIMIT_32 = (1 << 32) - PAGE
ID_WRAP = 1 << 32

# ioctl numbers as the header defines them (asm-generic _IOC: dir<<30 | size<<16 | type<<8 | nr).
_IOC_WRITE, _IOC_READ = 1, 2
BLOCK_SIZE, INFO_SIZE = 56, 32
MAGIC = ord("m")


def ioc(direction: int, magic: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (magic << 8) | nr


CMDS = {
    "CMEM_GET_PHYS": ioc(3, MAGIC, 1, BLOCK_SIZE),
    "CMEM_MAP": ioc(3, MAGIC, 2, BLOCK_SIZE),
    "CMEM_GET_SIZE": ioc(3, MAGIC, 3, BLOCK_SIZE),
    "CMEM_UNMAP": ioc(3, MAGIC, 4, BLOCK_SIZE),
    "CMEM_ALLOCATE": ioc(3, MAGIC, 5, BLOCK_SIZE),
    "CMEM_CONNECT": ioc(3, MAGIC, 6, BLOCK_SIZE),
    "CMEM_GET_TOTAL_SIZE": ioc(_IOC_READ, MAGIC, 7, INFO_SIZE),
    "CMEM_CACHE_FLUSH": ioc(3, MAGIC, 8, BLOCK_SIZE),
}
CMD_NAMES = {v: k for k, v in CMDS.items()}


def page_align(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def cma_pages(length: int) -> int:
    """CMA pages a block of `length` (page-aligned) bytes really holds: the driver asks the DMA API
    for at least two pages (dma-direct never takes a single page from CMA)."""
    return max(length // PAGE, 2)


def pattern_byte(block_id: int, off: int) -> int:
    """cma_mem_pattern_byte() of the header."""
    return (block_id * off + (off >> 8) * 131 + (off >> 16) * 7 + (off >> 24) * 13) & 0xFF


def seeded_word(seed: int, word: int) -> int:
    """cma_test's seeded_word()."""
    m = 0xFFFFFFFF
    x = ((word & m) * 0x9E3779B1 & m) ^ ((word >> 32) & m) ^ (seed * 0x85EBCA6B & m)
    x ^= x >> 16
    x = x * 0x7FEB352D & m
    x ^= x >> 15
    return x


def seeded_byte(seed: int, off: int) -> int:
    return (seeded_word(seed, off // 4) >> (8 * (off % 4))) & 0xFF


Content = tuple[str, int]  # ("pattern", id) | ("seeded", seed) | ("zero", 0)


def content_byte(content: Content, off: int) -> int:
    kind, arg = content
    if kind == "pattern":
        return pattern_byte(arg, off)
    if kind == "seeded":
        return seeded_byte(arg, off)
    return 0


class Unpredictable(Exception):
    """The model cannot say what happens (the generator must not emit this op here)."""


# ---- state --------------------------------------------------------------------------------


@dataclass(eq=False)
class File:
    fid: int
    blocks: list[Block] = field(default_factory=list)  # listed blocks, list order
    next_offset: int = 0
    fds: int = 0
    vmas: int = 0
    released: bool = False


@dataclass(eq=False)
class Block:
    name: str
    id: int
    len: int
    wc: bool
    offset: int
    file: File
    owner: int  # pid (model-internal) of the thread group that allocated it
    content: Content
    listed: bool = True
    vmas: int = 0
    user_addr: int | None = 0  # mem_base the driver reports: ALLOCATE's mapping, 0 after free
    phys: int | None = None
    freed: bool = False

    @property
    def pages(self) -> int:
        return cma_pages(self.len)


@dataclass(eq=False)
class Mapping:
    """One VMA of a block in one process."""

    block: Block
    off: int  # offset inside the block
    length: int
    addr: int | None
    kind: str  # "alloc" (made by CMEM_ALLOCATE) | "mmap"


@dataclass(eq=False)
class Entry:
    """One entry of cma_test's own block table (S.blk): what ALLOCATE returned."""

    name: str
    id: int
    len: int
    offset: int
    mem_base: int | None
    mapping: Mapping | None  # None once the driver unmapped it behind cma_test's back


@dataclass(eq=False)
class Proc:
    name: str
    pid: int
    child: bool = False
    file: File | None = None
    mappings: list[Mapping] = field(default_factory=list)
    entries: dict[str, Entry] = field(default_factory=dict)  # keyed by the first 16 bytes
    real_pid: int | None = None


# ---- predictions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraint:
    """A check on a field whose value the model cannot know."""

    kind: str  # nonzero | aligned | within | disjoint | min
    key: str
    size: int = 0  # bytes the value's range spans (within/disjoint)
    lo: int = 0
    hi: int = 0
    others: tuple[tuple[int, int, str], ...] = ()  # disjoint: (start, end, what)

    def describe(self) -> str:
        if self.kind == "within":
            return f"{self.key}+{self.size:#x} inside [{self.lo:#x}, {self.hi:#x})"
        if self.kind == "disjoint":
            return f"{self.key}+{self.size:#x} disjoint from {len(self.others)} live ranges"
        if self.kind == "min":
            return f"{self.key} >= {self.lo}"
        return f"{self.key} {self.kind}"


@dataclass
class Predicted:
    """What cma_test prints for one step, as far as the model can tell."""

    step: int
    op: Op
    errnos: tuple[str, ...]  # acceptable errno names; the first is the model's choice
    fields: dict[str, str] = field(default_factory=dict)  # exact values (status, errno, ... included)
    constraints: list[Constraint] = field(default_factory=list)
    child: bool = False
    alternatives: bool = False  # errnos holds more than one acceptable outcome
    shows: str = ""  # a successful mmap: what its mapping must show (Op.shows), from the block's content

    def describe(self) -> str:
        exact = " ".join(f"{k}={v}" for k, v in self.fields.items())
        more = "; ".join(c.describe() for c in self.constraints)
        return f"step={self.step} {exact}" + (f" [{more}]" if more else "")


@dataclass
class GuestOutcome:
    """What a guest action must do: rmmod ok/busy, insmod ok, exit/kill."""

    op: Op
    ok: bool
    note: str = ""


# ---- the model ----------------------------------------------------------------------------


@dataclass
class Params:
    cma_total: int  # bytes of CMA the driver reports (CMEM_GET_TOTAL_SIZE.cma_total)
    capacity: int | None = None  # bytes the driver can really allocate when empty (None: cma_total)
    slack: int = 4 << 20  # below capacity by less than this: ENOMEM or not, both accepted
    reservation: tuple[int, int] | None = None  # [lo, hi) of the CMA area, if known
    bits: int = 64  # 32 for armhf callers (SIZE_MAX, what a 32-bit size field can say)
    kernel_bits: int = 64  # the kernel's BITS_PER_LONG (the mmap cookie limit)
    test_pattern: bool = True
    fake_addresses: bool = False  # simulation: invent addresses instead of leaving them unknown


class DriverModel:
    def __init__(self, params: Params, *, loaded: bool = True, last_id: int | None = 0) -> None:
        self.p = params
        self.loaded = loaded
        self.last_id = last_id  # None: unknown until the first allocation is seen
        self.procs: dict[str, Proc] = {}
        self.blocks: list[Block] = []  # every block whose memory is allocated
        self._next_pid = 1
        self._next_fid = 1
        self.used = 0
        self.nblocks = 0
        self.step = 0  # cma_test's record counter within the current command
        self._fake_phys = 0x4000_0000
        self._fake_user = 0x7F00_0000_0000

    def clone(self) -> DriverModel:
        # A pickle round trip copies the object graph (files, blocks, mappings point at each
        # other) like deepcopy, ~3 times faster; the generator clones before every write and fork.
        copied: DriverModel = pickle.loads(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
        return copied

    # -- derived ----------------------------------------------------------

    @property
    def live_pages(self) -> int:
        return sum(b.pages for b in self.blocks)

    @property
    def capacity_pages(self) -> int:
        cap = self.p.capacity if self.p.capacity is not None else self.p.cma_total
        return cap // PAGE

    def files(self) -> Iterator[File]:
        seen: set[int] = set()
        for b in self.blocks:
            if id(b.file) not in seen and not b.file.released:
                seen.add(id(b.file))
                yield b.file
        for pr in self.procs.values():
            if pr.file is not None and id(pr.file) not in seen and not pr.file.released:
                seen.add(id(pr.file))
                yield pr.file

    @property
    def busy(self) -> bool:
        """Is the module pinned (an open file: an fd or a VMA holds one)?"""
        return any(True for _ in self.files())

    def proc(self, name: str) -> Proc:
        pr = self.procs.get(name)
        if pr is None:
            pr = self._new_proc(name)
            self.procs[name] = pr
        return pr

    def _new_proc(self, name: str, child: bool = False) -> Proc:
        pr = Proc(name=name, pid=self._next_pid, child=child)
        self._next_pid += 1
        return pr

    # -- lifetime ----------------------------------------------------------

    def _maybe_free(self, b: Block) -> None:
        if not b.freed and not b.listed and b.vmas == 0:
            b.freed = True
            self.blocks.remove(b)
            self.used -= b.len
            self.nblocks -= 1

    def _maybe_release(self, f: File) -> None:
        if not f.released and f.fds == 0 and f.vmas == 0:
            f.released = True
            dead, f.blocks = f.blocks, []
            for b in dead:
                b.listed = False
                self._maybe_free(b)

    def _add_mapping(self, pr: Proc, m: Mapping) -> None:
        pr.mappings.append(m)
        m.block.vmas += 1
        m.block.file.vmas += 1

    def _drop_mapping(self, pr: Proc, m: Mapping) -> None:
        pr.mappings.remove(m)
        for e in pr.entries.values():
            if e.mapping is m:
                e.mapping = None
        m.block.vmas -= 1
        m.block.file.vmas -= 1
        self._maybe_free(m.block)
        self._maybe_release(m.block.file)

    def _munmap(self, pr: Proc, lo: int | None, length: int, target: Mapping | None, only: Block | None = None) -> None:
        """munmap(lo, length) in pr: removes `target` for sure, and (with known addresses) every
        other VMA in the range (of block `only`, if given), splitting the ones it cuts."""
        if target is not None and target in pr.mappings and (lo is None or target.addr is None):
            self._drop_mapping(pr, target)
            return
        if lo is None:
            return
        hi = lo + page_align(length)
        for m in list(pr.mappings):
            if m.addr is None or (only is not None and m.block is not only):
                continue
            a, z = m.addr, m.addr + m.length
            if z <= lo or a >= hi:
                continue
            keep: list[Mapping] = []
            if a < lo:
                keep.append(Mapping(m.block, m.off, lo - a, a, m.kind))
            if z > hi:
                keep.append(Mapping(m.block, m.off + (hi - a), z - hi, hi, m.kind))
            for k in keep:  # vm_open of a split piece: one more reference each
                self._add_mapping(pr, k)
                for e in pr.entries.values():
                    if e.mapping is m and k.addr == e.mem_base:
                        e.mapping = k
            self._drop_mapping(pr, m)

    def _exit(self, pr: Proc) -> None:
        """Process exit (exit_mm, then exit_files): every mapping, then the fd."""
        for m in list(pr.mappings):
            self._drop_mapping(pr, m)
        pr.entries.clear()
        if pr.file is not None:
            f, pr.file = pr.file, None
            f.fds -= 1
            self._maybe_release(f)

    def _need_fd(self, pr: Proc) -> str:
        if pr.file is not None:
            return "0"
        if not self.loaded:
            return "ENOENT"  # misc_deregister removed /dev/cma_mem
        pr.file = File(fid=self._next_fid, fds=1)
        self._next_fid += 1
        return "0"

    # -- memory ------------------------------------------------------------

    def _alloc_outcome(self, length: int) -> tuple[str, ...]:
        """ENOMEM or not, from the pages still free: certain far from the capacity, open near it."""
        need = cma_pages(length)
        free = self.capacity_pages - self.live_pages
        slack = self.p.slack // PAGE
        align = min(1 << (need - 1).bit_length(), 256)  # CMA aligns to the order, up to 1 MiB
        if need > free + slack:
            return ("ENOMEM",)
        if need + align + slack <= free:
            return ("0",)
        return ("ENOMEM", "0") if need > free else ("0", "ENOMEM")

    def _fake_addr(self, length: int) -> int:
        addr = self._fake_user
        self._fake_user += length + PAGE
        return addr

    def _live_ranges(self, exclude: Block | None = None) -> tuple[tuple[int, int, str], ...]:
        return tuple(
            (b.phys, b.phys + b.pages * PAGE, f"block {b.name} id {b.id}")
            for b in self.blocks
            if b.phys is not None and b is not exclude
        )

    def _proc_ranges(self, pr: Proc) -> tuple[tuple[int, int, str], ...]:
        return tuple(
            (m.addr, m.addr + m.length, f"mapping of {m.block.name}") for m in pr.mappings if m.addr is not None
        )

    # -- name rules --------------------------------------------------------

    @staticmethod
    def name_ok(name: str) -> bool:
        """Not empty, NUL-terminated within the 16-byte array (cma_test copies at most 16 bytes)."""
        return 0 < len(name.encode()) < NAME_LEN

    @staticmethod
    def key(name: str) -> str:
        return name.encode()[:NAME_LEN].decode(errors="replace")

    def lookup(self, pr: Proc, name: str) -> tuple[str, Block | None]:
        """cma_mem_lookup(): EINVAL (name), ENOENT (not in this file), EPERM (not the owner)."""
        if not self.name_ok(name):
            return "EINVAL", None
        assert pr.file is not None
        for b in pr.file.blocks:
            if b.name == name:
                return ("0", b) if b.owner == pr.pid else ("EPERM", None)
        return "ENOENT", None

    # -- applying ----------------------------------------------------------

    def begin_command(self) -> None:
        """A new guest command: cma_test numbers its records from 1 again."""
        self.step = 0

    def apply_batch(self, ops: tuple[Op, ...] | list[Op], records: list[CmaRecord] | None) -> list[Predicted]:
        """All steps of one command in one process (a fork's child included), in record order of steps."""
        self.begin_command()
        by_step = _by_step(records) if records is not None else None
        out: list[Predicted] = []
        for op in ops:
            out.extend(self.apply(op, by_step))
        return out

    def apply(self, op: Op, observed: dict[int, CmaRecord] | None = None) -> list[Predicted]:
        """Predict one step (a fork: its child's steps, then its own record) and update the state."""
        pr = self.proc(op.proc)
        return self.run_step(pr, op, observed)

    def run_step(self, pr: Proc, op: Op, observed: dict[int, CmaRecord] | None) -> list[Predicted]:
        self.step += 1
        step = self.step
        rec = observed.get(step) if observed is not None else None
        pred = Predicted(step=step, op=op, errnos=("0",), child=pr.child)
        fields: dict[str, str] = {}
        bad = False
        k = op.kind
        if k == "fork":
            return self._fork(pr, op, pred, observed)
        if k == "alloc":
            err = self._alloc(pr, op.name, op.size, op.wc, "ok", pred, fields, rec, from_raw=False)
        elif k == "free":
            err = self._free(pr, op.name, "ok", fields, drop_entry=True)
        elif k in ("verify", "write", "check"):
            err, bad = self._mem(pr, op, fields)
        elif k == "info":
            fields["name"] = op.name
            err = self._need_fd(pr)
            if err == "0":
                err, b = self.lookup(pr, op.name)
                if b is not None:
                    self._block_fields(b, fields, pred)
        elif k == "total":
            err = self._need_fd(pr)
            if err == "0":
                self._total_fields(fields)
        elif k == "raw":
            err = self._raw(pr, op, pred, fields, rec)
        elif k == "mmap":
            err, bad = self._mmap(pr, op, pred, fields, rec)
        elif k == "close":
            err = self._close(pr, fields)
        else:
            raise ValueError(f"not a step: {k}")
        pred.errnos = (err, *[e for e in pred.errnos if e != err]) if pred.alternatives else (err,)
        want = op.expect or "0"
        status = "ok" if err == want and not bad else "fail"
        head = {"op": k, "status": status, "errno": err}
        if op.expect is not None:
            head["expect"] = op.expect
        if pr.child:
            head["proc"] = "child"
        pred.fields = head | fields
        return [pred]

    # -- steps -------------------------------------------------------------

    def _block_fields(self, b: Block, fields: dict[str, str], pred: Predicted) -> None:
        """rec_block(): id len phys user offset, of the driver's struct."""
        fields["id"] = str(b.id)
        fields["len"] = str(b.len)
        if b.phys is not None:
            fields["phys"] = f"{b.phys:#x}"
        else:
            pred.constraints.append(Constraint("aligned", "phys"))
        if b.user_addr is not None:
            fields["user"] = f"{b.user_addr:#x}"
        else:
            pred.constraints.append(Constraint("aligned", "user"))
        fields["offset"] = f"{b.offset:#x}"

    def _total_fields(self, fields: dict[str, str]) -> None:
        fields["cma_total"] = str(self.p.cma_total)
        fields["used"] = str(self.used)
        fields["available"] = str(max(self.p.cma_total - self.used, 0))
        fields["blocks"] = str(self.nblocks)

    def _pick_offset(self, f: File, length: int) -> int | None:
        limit = COOKIE_LIMIT_32 if self.p.kernel_bits == 32 else COOKIE_LIMIT_64
        cand, wrapped = f.next_offset, False
        while True:
            if cand > limit - length:
                if wrapped:
                    return None
                wrapped, cand = True, 0
            for b in f.blocks:
                if cand < b.offset + b.len and b.offset < cand + length:
                    cand = b.offset + b.len
                    break
            else:
                f.next_offset = cand + length
                return cand

    def _alloc(
        self,
        pr: Proc,
        name: str,
        size: int,
        wc: bool,
        ptr: str,
        pred: Predicted,
        fields: dict[str, str],
        rec: CmaRecord | None,
        *,
        from_raw: bool,
        flags_ok: bool = True,
    ) -> str:
        if not from_raw:
            fields["name"] = name
        err = self._need_fd(pr)
        if err != "0":
            return err
        if ptr == "bad":
            return "EFAULT"
        if not self.name_ok(name) or not flags_ok or size == 0 or size > self.p.cma_total:
            return "EINVAL"
        f = pr.file
        assert f is not None
        if any(b.name == name for b in f.blocks):
            return "EEXIST"
        length = page_align(size)
        outcomes = self._alloc_outcome(length)
        if len(outcomes) > 1:
            pred.alternatives = True
            pred.errnos = tuple("EFAULT" if o == "0" and ptr == "ro" else o for o in outcomes)
        chosen = outcomes[0]
        if rec is not None:
            seen = rec.get("errno")
            if ptr == "ro" and seen == "EFAULT":
                seen = "0"
            if seen == "ENOMEM" and "ENOMEM" in outcomes:
                chosen = "ENOMEM"
            elif seen != "ENOMEM" and "0" in outcomes:
                chosen = "0"
        if chosen == "ENOMEM":
            return "ENOMEM"
        offset = self._pick_offset(f, length)
        if offset is None:
            return "ENOSPC"
        if self.last_id is None:
            got = rec.int("id") if rec is not None else None
            self.last_id = (got - 1) if got else 0
            pred.constraints.append(Constraint("min", "id", lo=1))
        self.last_id = self.last_id + 1 if self.last_id + 1 < ID_WRAP else 1
        b = Block(
            name=name,
            id=self.last_id,
            len=length,
            wc=wc,
            offset=offset,
            file=f,
            owner=pr.pid,
            content=("pattern", self.last_id) if self.p.test_pattern else ("zero", 0),
        )
        f.blocks.append(b)
        self.blocks.append(b)
        self.used += length
        self.nblocks += 1
        live = self._live_ranges(exclude=b)
        user_ranges = self._proc_ranges(pr)
        if ptr == "ro":
            # Allocated, mapped, then copy_to_user fails: all undone (id and offset stay used).
            b.listed = False
            f.blocks.remove(b)
            self._maybe_free(b)
            return "EFAULT"
        if rec is not None and rec.get("errno") == "0":
            b.phys = rec.int("phys")
            b.user_addr = rec.int("user")
        elif self.p.fake_addresses:
            b.phys = self._fake_phys
            self._fake_phys += b.pages * PAGE
            b.user_addr = self._fake_addr(length)
        else:
            b.user_addr = None
        m = Mapping(b, 0, length, b.user_addr, "alloc")
        self._add_mapping(pr, m)
        pr.entries[self.key(name)] = Entry(name, b.id, length, offset, b.user_addr, m)
        fields["id"] = str(b.id)
        fields["len"] = str(length)
        if b.phys is not None:
            fields["phys"] = f"{b.phys:#x}"
        if b.user_addr is not None:
            fields["user"] = f"{b.user_addr:#x}"
        pred.constraints += [
            Constraint("aligned", "phys"),
            Constraint("disjoint", "phys", size=b.pages * PAGE, others=live),
            Constraint("nonzero", "user"),
            Constraint("aligned", "user"),
            Constraint("disjoint", "user", size=length, others=user_ranges),
        ]
        if self.p.reservation is not None:
            lo, hi = self.p.reservation
            pred.constraints.append(Constraint("within", "phys", size=b.pages * PAGE, lo=lo, hi=hi))
        fields["offset"] = f"{offset:#x}"
        return "0"

    def _free(self, pr: Proc, name: str, ptr: str, fields: dict[str, str], *, drop_entry: bool) -> str:
        if drop_entry:
            fields["name"] = name
        err = self._need_fd(pr)
        if err != "0":
            return err
        if ptr == "bad":
            return "EFAULT"
        err, b = self.lookup(pr, name)
        if b is None:
            return err
        assert pr.file is not None
        pr.file.blocks.remove(b)
        b.listed = False
        addr, b.user_addr = b.user_addr, 0
        if addr != 0:
            target = next((m for m in pr.mappings if m.block is b and m.kind == "alloc"), None)
            self._munmap(pr, addr, b.len, target, only=b)
        if drop_entry:
            pr.entries.pop(self.key(name), None)
        self._maybe_free(b)
        return "0"

    def _mem(self, pr: Proc, op: Op, fields: dict[str, str]) -> tuple[str, bool]:
        """verify / write / check through cma_test's own table entry (the ALLOCATE mapping)."""
        fields["name"] = op.name
        if op.kind != "verify":
            fields["seed"] = str(op.seed)
        e = pr.entries.get(self.key(op.name))
        if e is None:
            return "ENOENT", False
        fields["bytes"] = str(e.len)
        m = e.mapping
        if op.kind == "write":
            if m is None or m.off != 0 or m.length < e.len:
                raise Unpredictable(f"write through a stale mapping of {op.name}")
            m.block.content = ("seeded", op.seed)
            return "0", False
        want: Content = ("pattern", e.id) if op.kind == "verify" else ("seeded", op.seed)
        if not self.p.test_pattern and op.kind == "verify":
            want = ("pattern", e.id)  # cma_test always checks the pattern
        at = self._first_diff(pr, e, want)
        if at is None:
            return "0", False
        off, got = at
        if got is None:
            fields["at"] = str(off)
            return "EFAULT", False
        fields["at"] = str(off)
        fields["want"] = f"0x{content_byte(want, off):02x}"
        fields["got"] = f"0x{got:02x}"
        return "0", True

    def _first_diff(self, pr: Proc, e: Entry, want: Content) -> tuple[int, int | None] | None:
        """First offset of e's range whose byte differs from `want` (got None: unmapped there)."""
        segments: list[tuple[int, int, Mapping | None]] = []  # (entry offset from, to, mapping)
        if e.mapping is not None and e.mapping.off == 0 and e.mapping.length >= e.len:
            segments = [(0, e.len, e.mapping)]
        elif e.mem_base is None:
            if e.mapping is None:
                return (0, None)
            raise Unpredictable("access through an unknown address")
        else:
            pos = 0
            while pos < e.len:
                addr = e.mem_base + pos
                hit = next((m for m in pr.mappings if m.addr is not None and m.addr <= addr < m.addr + m.length), None)
                if hit is None:
                    return (pos, None)
                assert hit.addr is not None
                end = min(e.len, hit.addr + hit.length - e.mem_base)
                segments.append((pos, end, hit))
                pos = end
        for lo, hi, m in segments:
            assert m is not None
            if m.addr is not None and e.mem_base is not None:
                start_in_block = m.off + e.mem_base + lo - m.addr
            else:
                start_in_block = m.off + lo
            content = m.block.content
            if content == want and start_in_block == lo:
                continue
            for off in range(lo, hi):
                got = content_byte(content, start_in_block + off - lo)
                if got != content_byte(want, off):
                    return (off, got)
        return None

    def _mmap(
        self, pr: Proc, op: Op, pred: Predicted, fields: dict[str, str], rec: CmaRecord | None
    ) -> tuple[str, bool]:
        """The errno, and whether the new mapping shows other bytes than op.shows says."""
        off = 0
        err = "0"
        spec = op.offset
        if spec.startswith("@"):
            name, plus, extra = spec[1:].partition("+")
            e = pr.entries.get(self.key(name[:NAME_LEN]))
            if e is None:
                err = "ENOENT"
            else:
                off = e.offset + (int(extra, 0) if plus else 0)
        else:
            off = int(spec, 0)
        fields["offset"] = f"{off:#x}"
        fields["len"] = str(op.size)
        if err != "0":
            return err, False
        err = self._need_fd(pr)
        if err != "0":
            return err, False
        size_max = (1 << self.p.bits) - 1
        if op.size > size_max or off > (1 << 63) - 1:
            return "EOVERFLOW", False
        if off % PAGE or op.size == 0:
            return "EINVAL", False
        size = page_align(op.size)
        if size >= 1 << (self.p.bits - 2 if self.p.bits == 32 else 47):
            return "ENOMEM", False  # no room in the address space (checked before the driver runs)
        if op.private:
            fields["private"] = "1"
            return "EINVAL", False  # the driver's first check: a private mapping would not share the buffer
        assert pr.file is not None
        b = next((x for x in pr.file.blocks if x.offset <= off < x.offset + x.len), None)
        if b is None:
            return "EINVAL", False
        if b.owner != pr.pid:
            return "EPERM", False
        inner = off - b.offset
        if size > b.len - inner:
            return "EINVAL", False
        addr = rec.int("addr") if rec is not None and rec.get("errno") == "0" else None
        if addr is None and rec is None and self.p.fake_addresses:
            addr = self._fake_addr(size)
        if addr is not None:
            fields["addr"] = f"{addr:#x}"
        pred.constraints += [
            Constraint("nonzero", "addr"),
            Constraint("aligned", "addr"),
            Constraint("disjoint", "addr", size=size, others=self._proc_ranges(pr)),
        ]
        self._add_mapping(pr, Mapping(b, inner, size, addr, "mmap"))
        pred.shows = self.shown(b, inner)
        # Told to expect other bytes than the block holds (planned against a state that went
        # another way, e.g. an allocation near capacity): cma_test reports the first
        # difference (status fail, at/want/got), which the model does not pin down.
        return "0", bool(op.shows) and op.shows != pred.shows

    def _close(self, pr: Proc, fields: dict[str, str]) -> str:
        fields["blocks"] = str(len(pr.entries))
        if pr.file is None:
            return "0"
        for e in list(pr.entries.values()):
            if e.mem_base != 0:
                self._munmap(pr, e.mem_base, e.len, e.mapping)
        pr.entries.clear()
        f, pr.file = pr.file, None
        f.fds -= 1
        self._maybe_release(f)
        return "0"

    def _raw(self, pr: Proc, op: Op, pred: Predicted, fields: dict[str, str], rec: CmaRecord | None) -> str:
        cmd = CMDS.get(op.cmd)
        if cmd is None:
            cmd = int(op.cmd, 0) & 0xFFFFFFFF
        fields["cmd"] = f"{cmd:#x}"
        fields["name"] = op.name or "-"
        name = "" if op.name in ("", "-") else op.name
        extra: dict[str, str] = {}
        err = self._need_fd(pr)
        if err != "0":
            return err
        which = CMD_NAMES.get(cmd)
        if which == "CMEM_ALLOCATE":
            err = self._alloc(
                pr, name, op.size, op.flags == 1, op.ptr, pred, extra, rec, from_raw=True, flags_ok=op.flags in (0, 1)
            )
        elif which == "CMEM_UNMAP":
            err = self._free(pr, name, op.ptr, extra, drop_entry=op.ptr == "ok")
            extra.clear()
        elif which in ("CMEM_GET_PHYS", "CMEM_GET_SIZE", "CMEM_CACHE_FLUSH"):
            if op.ptr == "bad":
                err = "EFAULT"
            else:
                err, b = self.lookup(pr, name)
                if b is not None:
                    if which == "CMEM_CACHE_FLUSH":
                        err = "0"
                    elif op.ptr == "ro":
                        err = "EFAULT"
                    else:
                        self._block_fields(b, extra, pred)
        elif which == "CMEM_GET_TOTAL_SIZE":
            if op.ptr != "ok":
                err = "EFAULT"
            else:
                self._total_fields(extra)
        else:
            err = "ENOTTY"
        fields["ret"] = "0" if err == "0" else "-1"
        if err == "0" and op.ptr == "ok":
            fields.update(extra)
        return err

    def fork_child(self, pr: Proc) -> Proc:
        """fork(): the child shares the open file, inherits every mapping (vm_open: one more
        reference each) and a copy of cma_test's table pointing at its own copies."""
        child = self._new_proc(f"{pr.name}/child", child=True)
        child.file = pr.file
        if child.file is not None:
            child.file.fds += 1
        copies: dict[int, Mapping] = {}
        for m in pr.mappings:
            c = Mapping(m.block, m.off, m.length, m.addr, m.kind)
            copies[id(m)] = c
            self._add_mapping(child, c)
        for key, e in pr.entries.items():
            mapping = copies.get(id(e.mapping)) if e.mapping is not None else None
            child.entries[key] = Entry(e.name, e.id, e.len, e.offset, e.mem_base, mapping)
        return child

    def _fork(self, pr: Proc, op: Op, pred: Predicted, observed: dict[int, CmaRecord] | None) -> list[Predicted]:
        child = self.fork_child(pr)
        out: list[Predicted] = []
        for sub in op.child:
            out.extend(self.run_step(child, sub, observed))
        self._exit(child)
        failed = any(p.fields.get("status") == "fail" for p in out)
        fields: dict[str, str] = {"op": "fork", "status": "fail" if failed or (op.expect or "0") != "0" else "ok"}
        fields["errno"] = "0"
        if op.expect is not None:
            fields["expect"] = op.expect
        if pr.child:
            fields["proc"] = "child"
        fields["exit"] = "1" if failed else "0"
        pred.fields = fields
        pred.constraints.append(Constraint("nonzero", "pid"))
        return [*out, pred]

    def consume_ids(self, n: int) -> None:
        """Another program (an exhaust probe) allocated n blocks: the id counter moved on."""
        if self.last_id is not None:
            self.last_id = (self.last_id + n - 1) % (ID_WRAP - 1) + 1 if n else self.last_id

    # -- guest actions -----------------------------------------------------

    def guest(self, op: Op) -> GuestOutcome:
        k = op.kind
        if k in ("exit", "kill"):
            pr = self.procs.pop(op.proc, None)
            if pr is not None:
                self._exit(pr)
            return GuestOutcome(op, True)
        if k == "rmmod":
            if not self.loaded:
                return GuestOutcome(op, False, "not loaded")
            if self.busy:
                return GuestOutcome(op, False, "busy")
            self.loaded = False
            return GuestOutcome(op, True)
        if k == "insmod":
            if self.loaded:
                return GuestOutcome(op, False, "already loaded")
            self.loaded = True
            self.last_id = 0
            return GuestOutcome(op, True)
        if k == "blocks":
            return GuestOutcome(op, self.loaded, "" if self.loaded else "not loaded")
        raise ValueError(f"not a guest action: {k}")

    def shown(self, block: Block, inner: int) -> str:
        """What a new mapping of block from block offset `inner` shows, as mmap's shows= says it."""
        kind, arg = block.content
        return f"{kind}:{arg}:{inner}"

    def debugfs_blocks(self) -> list[str]:
        """What the driver's debugfs `cma_mem/blocks` must list, as `id name len flags maps`
        lines sorted by id: every block whose memory is still allocated (pids and addresses,
        which the model cannot know, left out)."""
        return sorted(
            (f"{b.id} {b.name} {b.len} {'wc' if b.wc else 'coherent'} {b.vmas}" for b in self.blocks),
            key=lambda line: int(line.split()[0]),
        )


def _by_step(records: list[CmaRecord]) -> dict[int, CmaRecord]:
    out: dict[int, CmaRecord] = {}
    for r in records:
        n = r.int("step")
        if n is not None and n not in out:
            out[n] = r
    return out
