"""Check cma_test's records (and guest actions) against the model's predictions."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.model.driver import PAGE, Constraint, DriverModel, GuestOutcome, Predicted
from harness.model.ops import Op
from harness.oracles.cmatest import CmaRecord, parse_records


@dataclass(frozen=True)
class Mismatch:
    """One way the driver (through cma_test) disagreed with the model."""

    kind: str  # errno | field | constraint | missing | extra | guest | blocks | leak
    step: int
    op: Op | None
    key: str = ""
    want: str = ""
    got: str = ""
    detail: str = ""

    def describe(self) -> str:
        where = f"step {self.step} ({self.op.describe()})" if self.op is not None else f"step {self.step}"
        if self.kind in ("errno", "field"):
            return f"{where}: {self.key} is {self.got or '(absent)'}, the model says {self.want}"
        return f"{where}: {self.kind}: {self.detail}"


def _same(want: str, got: str) -> bool:
    if want == got:
        return True
    try:
        return int(want, 0) == int(got, 0)
    except ValueError:
        return False


def _check_constraint(c: Constraint, rec: CmaRecord) -> str | None:
    value = rec.int(c.key)
    if value is None:
        return f"{c.key} missing or not a number ({rec.get(c.key)!r})"
    if c.kind == "nonzero" and value == 0:
        return f"{c.key} is 0"
    if c.kind == "aligned" and value % PAGE:
        return f"{c.key}={value:#x} is not page aligned"
    if c.kind == "min" and value < c.lo:
        return f"{c.key}={value} is below {c.lo}"
    if c.kind == "within" and not (c.lo <= value and value + c.size <= c.hi):
        return f"{c.key}={value:#x}+{c.size:#x} lies outside the reservation [{c.lo:#x}, {c.hi:#x})"
    if c.kind == "disjoint":
        for lo, hi, what in c.others:
            if value < hi and lo < value + c.size:
                return f"{c.key}=[{value:#x}, {value + c.size:#x}) overlaps {what} [{lo:#x}, {hi:#x})"
    return None


def compare(pred: Predicted, rec: CmaRecord | None) -> list[Mismatch]:
    """Every field the model predicts, every constraint, the errno among the acceptable ones."""
    if rec is None:
        return [Mismatch("missing", pred.step, pred.op, detail=f"no record; expected {pred.describe()}")]
    out: list[Mismatch] = []
    got_errno = rec.get("errno")
    if got_errno not in pred.errnos:
        out.append(Mismatch("errno", pred.step, pred.op, "errno", "|".join(pred.errnos), got_errno))
        return out  # the rest follows from another branch
    for key, want in pred.fields.items():
        got = rec.fields.get(key)
        if got is None or not _same(want, got):
            out.append(Mismatch("field", pred.step, pred.op, key, want, got or ""))
    for c in pred.constraints:
        why = _check_constraint(c, rec)
        if why:
            out.append(Mismatch("constraint", pred.step, pred.op, c.key, c.describe(), rec.get(c.key), why))
    return out


def check_batch(model: DriverModel, ops: tuple[Op, ...] | list[Op], output: str | list[CmaRecord]) -> list[Mismatch]:
    """Apply one command's steps to the model with the records cma_test printed; all mismatches."""
    records = parse_records(output) if isinstance(output, str) else output
    usage = [r for r in records if r.op == "usage"]
    if usage:
        return [Mismatch("extra", 0, None, detail=f"cma_test refused the command: {usage[0].get('msg')}")]
    preds = model.apply_batch(ops, records)
    by_step: dict[int, CmaRecord] = {}
    extra: list[Mismatch] = []
    for r in records:
        n = r.int("step")
        if n is None or n in by_step:
            extra.append(Mismatch("extra", n or 0, None, detail=f"unexpected record: {r.describe()}"))
        else:
            by_step[n] = r
    out: list[Mismatch] = []
    predicted = {p.step for p in preds}
    for p in preds:
        out.extend(compare(p, by_step.get(p.step)))
    for n, r in by_step.items():
        if n not in predicted:
            extra.append(Mismatch("extra", n, None, detail=f"unexpected record: {r.describe()}"))
    return out + extra


_DEBUGFS_LINE = re.compile(
    r"^pid=-?\d+ name=(?P<name>.*) id=(?P<id>\d+) phys=0x[0-9a-f]+ len=(?P<len>\d+) "
    r"flags=(?P<flags>\w+) maps=(?P<maps>-?\d+)$"
)


def parse_debugfs_blocks(text: str) -> list[str]:
    """The driver's debugfs `cma_mem/blocks` as DriverModel.debugfs_blocks() words it (sorted by
    id; pids and addresses dropped). A line in no known form is kept whole, so it mismatches."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("@cma "):
            continue
        m = _DEBUGFS_LINE.match(line)
        out.append(f"{m['id']} {m['name']} {m['len']} {m['flags']} {m['maps']}" if m else f"? {line}")
    return sorted(out, key=lambda line: int(line.split()[0]) if line.split()[0].isdigit() else -1)


def check_blocks_listing(model: DriverModel, op: Op, output: str) -> list[Mismatch]:
    """The driver's global block list (debugfs) against every block the model says is allocated."""
    want, got = model.debugfs_blocks(), parse_debugfs_blocks(output)
    if want == got:
        return []
    missing = [w for w in want if w not in got]
    extra = [g for g in got if g not in want]
    detail = f"debugfs cma_mem/blocks lists {len(got)} blocks, the model {len(want)}"
    if missing:
        detail += f"; missing: {'; '.join(missing[:5])}"
    if extra:
        detail += f"; not expected: {'; '.join(extra[:5])}"
    return [Mismatch("blocks", 0, op, detail=detail + " (id name len flags maps)")]


def check_guest(outcome: GuestOutcome, ok: bool, detail: str = "") -> list[Mismatch]:
    if outcome.ok == ok:
        return []
    want = "succeeds" if outcome.ok else f"fails ({outcome.note})"
    return [Mismatch("guest", 0, outcome.op, outcome.op.kind, want, "succeeded" if ok else "failed", detail)]
