"""Seeded random op sequences, chosen from the model's state, aimed at the edges.

`Generator(seed).round(model, n)` plans about n cma_test steps (and now and then a guest
action) on a clone of the model, so every op is chosen knowing what exists: own, foreign and
unknown names; blocks to map at an offset, across, beyond; processes to fork, close, exit,
kill; a module to unload busy or idle. Each step carries `expect=` with the errno the model
predicts, so a replay in a scenario fails by itself where the driver's errno differs.
Same seed, same model state -> same ops. `coverage` counts the edge classes emitted.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

from harness.model.driver import CMDS, NAME_LEN, PAGE, DriverModel, Predicted, Proc, Unpredictable, ioc
from harness.model.ops import MAIN, Op, count_steps

PROCS = (MAIN, "p2", "p3")
# Names: lengths 1, limit-2, limit-1 (the longest valid), limit (no room for the NUL), limit+1;
# families that prefix one another.
_L = NAME_LEN
NAMES = (
    "a",
    "ab",
    "abc",
    "b",
    "x.1",
    "x_2",
    "n" * (_L - 2),
    "n" * (_L - 1),
    "n" * _L,
    "n" * (_L + 1),
    "m" * (_L - 1),
    "m" * (_L - 1) + "q",
)
# Magic numbers no VFS-level ioctl uses (FIONBIO & co. are 'T', FIFREEZE 'X', FS_IOC_* 'f', FICLONE 0x94).
RAW_MAGICS = (ord("m"), ord("m"), ord("m"), ord("M"), ord("n"), 0xCA)
EDGE_CLASSES = frozenset(
    {
        "size_0", "size_1", "size_page-1", "size_page", "size_page+1", "size_odd", "size_whole", "size_more",
        "name_len_0", "name_len_1", "name_len_limit-1", "name_len_limit", "name_len_limit+1", "name_prefix",
        "free_own", "free_foreign", "free_unknown", "query_own", "query_foreign", "query_unknown",
        "total", "mmap_whole", "mmap_offset", "mmap_partial", "mmap_beyond", "mmap_unaligned", "mmap_across",
        "mmap_nowhere", "mmap_zero", "mmap_foreign", "mmap_private", "fork", "second_process", "close", "exit", "kill",
        "rmmod_busy", "rmmod_idle", "raw_random_cmd", "raw_bad_ptr", "raw_ro_ptr", "raw_bad_flags",
        "verify", "write", "check", "blocks",
    }
)  # fmt: skip


class Generator:
    def __init__(
        self,
        seed: int,
        *,
        procs: tuple[str, ...] = PROCS,
        guest_actions: bool = True,
        listing: bool = True,
        switch: float = 0.04,
        fork_weight: int = 3,
        guest_rate: float = 0.015,
    ) -> None:
        self.guest_rate = guest_rate  # chance per step of a guest action (exit, kill, rmmod, insmod)
        self.rng = random.Random(seed)
        self.switch = switch  # chance per step of moving to another process (ends a command)
        self.fork_weight = fork_weight  # a fork ends its command too
        self.procs = procs
        self.guest_actions = guest_actions
        self.listing = listing  # end each round with the driver's debugfs block list (op "blocks")
        self.coverage: Counter[str] = Counter()
        self.cur = procs[0]

    # -- plumbing -----------------------------------------------------------

    def _tag(self, *classes: str) -> None:
        for c in classes:
            self.coverage[c] += 1

    def _plan(self, plan: DriverModel, op: Op) -> Op | None:
        """Apply op to the plan; return it with expect= set from the prediction (None: skip it)."""
        if not op.is_step:
            plan.guest(op)
            return op
        snapshot = plan.clone() if op.kind in ("write", "fork") else None
        try:
            preds = plan.apply(op)
        except Unpredictable:
            if snapshot is not None:
                plan.__dict__.update(snapshot.__dict__)
            return None
        return with_expects(op, preds)

    # -- choices ------------------------------------------------------------

    def _size(self, plan: DriverModel) -> int:
        total = plan.p.cma_total
        r = self.rng.random()
        choices: list[tuple[float, int, str]] = [
            (0.10, 1, "size_1"),
            (0.10, PAGE - 1, "size_page-1"),
            (0.12, PAGE, "size_page"),
            (0.10, PAGE + 1, "size_page+1"),
            (0.22, self.rng.randrange(1, 300_000) | 1, "size_odd"),
            (0.12, self.rng.choice((2 * PAGE, 3 * PAGE + 123, 65536, 65537, (1 << 20) + 1)), "size_odd"),
            (0.04, 0, "size_0"),
            (0.03, total, "size_whole"),
            (0.04, total + self.rng.choice((1, PAGE, total)), "size_more"),
        ]
        acc = 0.0
        for p, size, tag in choices:
            acc += p
            if r < acc:
                self._tag(tag)
                return size
        self._tag("size_page")
        return PAGE

    def _name(self, plan: DriverModel, pr: Proc) -> str:
        live = [b.name for b in pr.file.blocks] if pr.file else []
        if live and self.rng.random() < 0.2:
            base = self.rng.choice(live)
            name = base[:-1] if len(base) > 1 and self.rng.random() < 0.5 else (base + "z")[: NAME_LEN + 1]
            self._tag("name_prefix")
        else:
            name = self.rng.choice(NAMES)
            if any(n != name and (n.startswith(name) or name.startswith(n)) for n in live):
                self._tag("name_prefix")
        n = len(name)
        tag = {1: "name_len_1", NAME_LEN - 1: "name_len_limit-1", NAME_LEN: "name_len_limit"}.get(n)
        if n > NAME_LEN:
            tag = "name_len_limit+1"
        if tag:
            self._tag(tag)
        return name

    def _target(self, plan: DriverModel, pr: Proc, kind: str) -> str:
        """A name to free/query: own, foreign (another owner in this file, or another file), unknown."""
        own = [b.name for b in pr.file.blocks if b.owner == pr.pid] if pr.file else []
        foreign = [b.name for b in pr.file.blocks if b.owner != pr.pid] if pr.file else []
        others = [b.name for b in plan.blocks if pr.file is None or b.file is not pr.file]
        r = self.rng.random()
        if own and r < 0.6:
            self._tag(f"{kind}_own")
            return self.rng.choice(own)
        if (foreign or others) and r < 0.8:
            self._tag(f"{kind}_foreign")
            return self.rng.choice(foreign or others)
        self._tag(f"{kind}_unknown")
        return self.rng.choice((*NAMES, "nosuch", "zz"))

    def _mmap(self, plan: DriverModel, pr: Proc) -> Op:
        entries = [e for e in pr.entries.values() if e.mapping is not None]
        rng = self.rng
        if not entries or rng.random() < 0.15:
            choice = rng.choice(("nowhere", "zero", "unknown"))
            if choice == "nowhere":
                self._tag("mmap_nowhere")
                base = pr.file.next_offset if pr.file else 0
                return Op("mmap", pr.name, offset=str(base + PAGE * rng.randrange(0, 4)), size=PAGE)
            if choice == "zero":
                self._tag("mmap_zero")
                return Op("mmap", pr.name, offset=f"@{entries[0].name}" if entries else "0", size=0)
            self._tag("mmap_nowhere")
            return Op("mmap", pr.name, offset="@nosuch", size=PAGE)
        e = rng.choice(entries)
        pages = e.len // PAGE
        kind = rng.choice(("whole", "offset", "partial", "beyond", "unaligned", "across", "foreign", "private"))
        if kind == "private":
            self._tag("mmap_private")
            return Op("mmap", pr.name, offset=f"@{e.name}", size=e.len, private=True)
        if kind == "whole":
            self._tag("mmap_whole")
            return Op("mmap", pr.name, offset=f"@{e.name}", size=e.len - rng.choice((0, 0, PAGE - 1)))
        if kind == "offset" and pages > 1:
            self._tag("mmap_offset")
            k = rng.randrange(1, pages)
            return Op("mmap", pr.name, offset=f"@{e.name}+{k * PAGE}", size=e.len - k * PAGE)
        if kind == "partial" and pages > 1:
            self._tag("mmap_partial")
            k = rng.randrange(0, pages)
            return Op("mmap", pr.name, offset=f"@{e.name}+{k * PAGE}", size=rng.randrange(1, (pages - k) * PAGE + 1))
        if kind == "unaligned":
            self._tag("mmap_unaligned")
            return Op("mmap", pr.name, offset=f"@{e.name}+{rng.choice((1, PAGE - 1, PAGE + 7))}", size=PAGE)
        if kind == "across":
            self._tag("mmap_across")
            return Op("mmap", pr.name, offset=f"@{e.name}", size=e.len + rng.choice((PAGE, 2 * PAGE, e.len)))
        if kind == "foreign" and pr.child:
            self._tag("mmap_foreign")
            return Op("mmap", pr.name, offset=f"@{e.name}", size=PAGE)
        self._tag("mmap_beyond")
        k = rng.randrange(0, pages)
        return Op("mmap", pr.name, offset=f"@{e.name}+{k * PAGE}", size=(pages - k) * PAGE + rng.choice((1, PAGE)))

    def _raw(self, plan: DriverModel, pr: Proc) -> Op:
        rng = self.rng
        r = rng.random()
        ptr = rng.choice(("ok", "ok", "ok", "bad", "ro"))
        if ptr == "bad":
            self._tag("raw_bad_ptr")
        elif ptr == "ro":
            self._tag("raw_ro_ptr")
        if r < 0.3:
            self._tag("raw_random_cmd")
            cmd = ioc(rng.randrange(4), rng.choice(RAW_MAGICS), rng.randrange(256), rng.randrange(1 << 14))
            return Op("raw", pr.name, cmd=f"{cmd:#x}", name=rng.choice(("-", "a")), size=rng.choice((0, PAGE)), ptr=ptr)
        which = rng.choice(sorted(CMDS))
        flags = 0
        if which == "CMEM_ALLOCATE":
            flags = rng.choice((0, 1, 1, 0, 2, 0xFFFFFFFF))
            if flags > 1:
                self._tag("raw_bad_flags")
            name = "-" if rng.random() < 0.2 else self._name(plan, pr)
            if name == "-":
                self._tag("name_len_0")
            return Op("raw", pr.name, cmd=which, name=name, size=self._size(plan), flags=flags, ptr=ptr)
        if which == "CMEM_UNMAP" and ptr == "ro":
            ptr = "bad"  # unmapping behind cma_test's back leaves it a stale table entry
        name = "-" if rng.random() < 0.15 else self._target(plan, pr, "query")
        if name == "-":
            self._tag("name_len_0")
        return Op("raw", pr.name, cmd=which, name=name, size=0, ptr=ptr)

    def _step(self, plan: DriverModel, pr: Proc, *, in_child: bool = False) -> Op:
        rng = self.rng
        entries = [e for e in pr.entries.values() if e.mapping is not None and e.mapping.off == 0]
        heavy = plan.live_pages * PAGE > (plan.capacity_pages * PAGE) // 4
        weights = {
            "alloc": 6 if heavy else 24,
            "free": 22 if heavy else 12,
            "info": 8,
            "total": 5,
            "verify": 7 if entries else 1,
            "write": 4 if entries else 0,
            "check": 4 if entries else 0,
            "mmap": 10,
            "raw": 10,
            "close": 1 if in_child else 2,
            "fork": 0 if in_child else self.fork_weight,
        }
        kind = rng.choices(list(weights), list(weights.values()))[0]
        if kind == "alloc":
            return Op("alloc", pr.name, name=self._name(plan, pr), size=self._size(plan), wc=rng.random() < 0.5)
        if kind in ("free", "info"):
            return Op(kind, pr.name, name=self._target(plan, pr, "free" if kind == "free" else "query"))
        if kind == "total":
            self._tag("total")
            return Op("total", pr.name)
        if kind in ("verify", "write", "check"):
            self._tag(kind)
            name = rng.choice(entries).name if entries else rng.choice(NAMES)
            seed = rng.choice((1, 2, 7, rng.randrange(1 << 32)))
            return Op(kind, pr.name, name=name, seed=0 if kind == "verify" else seed)
        if kind == "mmap":
            return self._mmap(plan, pr)
        if kind == "raw":
            return self._raw(plan, pr)
        if kind == "close":
            self._tag("close")
            return Op("close", pr.name)
        return self._fork(plan, pr)

    def _fork(self, plan: DriverModel, pr: Proc) -> Op:
        """A fork whose child runs a few steps, planned against a scratch copy of the child."""
        self._tag("fork")
        scratch = plan.clone()
        child = scratch.fork_child(scratch.procs[pr.name])
        ops: list[Op] = []
        for _ in range(self.rng.randrange(1, 7)):
            op = replace(self._step(scratch, child, in_child=True), proc=pr.name)
            try:
                scratch.run_step(child, op, None)
            except Unpredictable:
                continue
            ops.append(op)
        return Op("fork", pr.name, child=tuple(ops))

    def _guest(self, plan: DriverModel) -> list[Op]:
        rng = self.rng
        if not plan.loaded:
            return [Op("insmod")]
        started = [p for p in plan.procs if p in self.procs]
        r = rng.random()
        if r < 0.4 and started:
            victim = rng.choice(started)
            kind = rng.choice(("exit", "kill"))
            self._tag(kind)
            return [Op(kind, victim)]
        if r < 0.7:
            self._tag("rmmod_busy" if plan.busy else "rmmod_idle")
            return [Op("rmmod")]
        # Everything closed and gone, then an idle unload and a fresh load (ids restart at 1).
        self._tag("rmmod_idle")
        ops = [Op(rng.choice(("exit", "kill")), p) for p in started]
        return [*ops, Op("rmmod"), Op("insmod")]

    # -- rounds -------------------------------------------------------------

    def round(self, model: DriverModel, n: int) -> list[Op]:
        """About n steps planned from the model's state (the model itself is not changed)."""
        plan = model.clone()
        out: list[Op] = []
        steps = 0  # count_steps(out), kept as it grows
        while steps < n:
            r = self.rng.random()
            if r < self.switch:
                self.cur = self.rng.choice(self.procs)
                if self.cur != self.procs[0]:
                    self._tag("second_process")
            if self.guest_actions and (r > 1 - self.guest_rate or not plan.loaded):
                for op in self._guest(plan):
                    planned = self._plan(plan, op)
                    if planned is not None:
                        out.append(planned)
                        steps += count_steps((planned,))
                continue
            pr = plan.proc(self.cur)
            op = self._step(plan, pr)
            planned = self._plan(plan, op)
            if planned is not None:
                out.append(planned)
                steps += count_steps((planned,))
        if self.listing and plan.loaded:
            self._tag("blocks")
            out.append(Op("blocks"))
            plan.guest(out[-1])
        return out


def with_expects(op: Op, preds: list[Predicted]) -> Op:
    """Set expect= on op (and a fork's child steps) from the model's predictions, in step order."""
    it = iter(preds)

    def fill(o: Op) -> Op:
        if o.kind == "fork":
            kids = tuple(fill(c) for c in o.child)
            next(it)
            return replace(o, child=kids, expect=None)
        return settle(o, next(it))

    # A fork's prediction comes after its child's: walk the children first.
    if op.kind == "fork":
        return replace(op, child=tuple(settle(c, next(it)) for c in op.child))
    return fill(op)


def settle(op: Op, p: Predicted) -> Op:
    """expect= from the predicted errno (when only one is acceptable); for an mmap the model
    expects to succeed, shows= from the block's content, so cma_test checks every byte."""
    err = p.errnos[0]
    return replace(
        op,
        expect=err if err != "0" and len(p.errnos) == 1 else None,
        shows=p.shows if op.kind == "mmap" and err == "0" and len(p.errnos) == 1 else "",
    )
