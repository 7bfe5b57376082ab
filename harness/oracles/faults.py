"""Kernel faults in console or dmesg lines, titled the way syzkaller titles its reports.

`FaultDetector` is fed one line at a time (so it can run live on the
console) and is itself pure: the same lines give the same events.
`find_faults` runs it over a whole text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from harness.oracles.dmesg import strip_stamp

# (kind, pattern on the line without its timestamp). Order matters: first match wins.
MARKERS: list[tuple[str, re.Pattern[str]]] = [
    ("panic", re.compile(r"^Kernel panic - not syncing: (?P<what>.*)")),
    ("oops", re.compile(r"^Unable to handle kernel (?P<what>.+?)(?: at virtual address.*)?$")),
    ("oops", re.compile(r"^Internal error: (?P<what>[^:]+)")),
    ("bug", re.compile(r"^BUG: (?P<what>.*)")),
    ("bug", re.compile(r"^kernel BUG at (?P<what>\S+)")),
    ("warning", re.compile(r"^WARNING: (?P<what>.*)")),
    # Not "kmemleak: N new suspected memory leaks": that console line only points at the
    # kmemleak file, which the capacity check reads and turns into one event per object.
    ("kmemleak", re.compile(r"^unreferenced object (?P<what>0x[0-9a-f]+) \(size (?P<size>\d+)\)")),
    ("hung_task", re.compile(r"^INFO: task (?P<what>\S+?):\d+ blocked for more than")),
    ("rcu_stall", re.compile(r"^rcu: INFO: (?P<what>rcu_\w+ (?:self-)?detected (?:expedited )?stalls?)")),
    ("soft_lockup", re.compile(r"^watchdog: BUG: soft lockup")),
]

END_MARKERS = ("---[ end trace", "---[ end Kernel panic")
# Lines of a report that name the faulting function, most precise first.
PC_LINE = re.compile(r"^pc : (?P<func>[\w.]+)\+0x")
AT_FUNC = re.compile(r" at (?:\S+:\d+ )?(?P<func>[\w.]+)\+0x[0-9a-f]+/0x[0-9a-f]+")
IN_FUNC = re.compile(r" in (?P<func>[\w.]+)(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?")
# "  func+0x10/0x20" (call trace) or "    [<0000000012345678>] func+0x10/0x20" (kmemleak backtrace;
# the pointer is "(____ptrval____)" when hashed pointers are not printable yet).
CALL_TRACE_FUNC = re.compile(r"^\s*(?:\[<[^>]*>\]\s*)?(?P<func>[\w.]+)\+0x[0-9a-f]+/0x[0-9a-f]+")
MAX_REPORT_LINES = 120
# Faults after which the guest may never answer again (a dead task can hold locks forever).
FATAL_KINDS = {"oops", "panic", "bug", "hung_task", "rcu_stall", "soft_lockup"}


@dataclass
class KernelEvent:
    kind: str
    title: str
    first_line: str
    report: list[str] = field(default_factory=list)
    step: str = ""  # the harness step during which the first line arrived

    @property
    def signature(self) -> str:
        return signature(self.title)

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "title": self.title,
            "first_line": self.first_line,
            "signature": self.signature,
            "step": self.step,
            "report": "\n".join(self.report),
        }


_VOLATILE = re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F]{8,}\b|\d+")


def signature(title: str) -> str:
    """A stable id for comparing runs: the title with addresses and numbers removed, hashed."""
    canonical = _VOLATILE.sub("N", title).strip()
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]


# Frames that say how the kernel reported or waited, not where the fault is (syzkaller skips these too).
_PLUMBING = re.compile(
    r"^(dump_|show_|__warn|warn_|report_|kasan_|panic|__switch_to|__schedule|schedule|io_schedule|"
    r"__mutex_lock|mutex_lock|__rwsem|rwsem_|down_|__down|wait_for_|__wait_|_raw_spin|preempt_schedule|"
    r"kmem_cache_alloc|__kmem_cache_alloc|kmalloc|__kmalloc|kmemleak_|slab_|__slab|create_object)"
)


def _is_plumbing(func: str) -> bool:
    return bool(_PLUMBING.match(func))


def _function_from(lines: list[str]) -> str | None:
    for line in lines:
        m = PC_LINE.match(line)
        if m:
            return m.group("func")
    in_trace = False
    for line in lines:
        if line.strip() in ("Call trace:", "backtrace:"):
            in_trace = True
            continue
        if in_trace:
            m = CALL_TRACE_FUNC.match(line)
            if m and not _is_plumbing(m.group("func")):
                return m.group("func")
    return None


def make_title(kind: str, first: str, report: list[str]) -> str:
    """syzkaller-style: 'WARNING in cmamem_free', 'KASAN: use-after-free Read in f', 'kernel panic: msg'."""
    body = strip_stamp(first)
    if kind == "panic":
        return "kernel panic: " + re.sub(r"\s+", " ", body.split(":", 1)[1]).strip()
    if kind == "warning":
        m = AT_FUNC.search(body)
        func = m.group("func") if m else _function_from(report)
        if body.startswith("WARNING: possible circular locking"):
            return "possible deadlock in " + (_function_from(report) or "?")
        if body.startswith("WARNING: CPU:") or m:
            return f"WARNING in {func or '?'}"
        return "WARNING: " + body.removeprefix("WARNING: ")
    if kind == "bug":
        what = body.removeprefix("BUG: ")
        if what.startswith("KASAN:"):
            m = IN_FUNC.search(what)
            access = next((w for w in ("Read", "Write") if any(line.startswith(w) for line in report)), "")
            kind_text = what.split(" in ")[0]
            return f"{kind_text} {access} in {m.group('func') if m else '?'}".replace("  ", " ")
        if what.startswith(("sleeping function called from invalid context", "scheduling while atomic")):
            where_ = IN_FUNC.search(what)
            return what.split(" at ")[0] if not where_ else f"{what.split(' at ')[0]} in {where_.group('func')}"
        if body.startswith("kernel BUG at"):
            return f"kernel BUG in {_function_from(report) or body.split(' at ', 1)[1]}"
        func = IN_FUNC.search(what)
        return f"BUG: {what.split(' in ')[0]} in {func.group('func')}" if func else f"BUG: {what}"
    if kind == "oops":
        func = _function_from(report)
        what = body.removeprefix("Unable to handle kernel ").removeprefix("Internal error: ")
        what = what.split(" at virtual address")[0]
        return f"Unable to handle kernel {what} in {func or '?'}" if "Unable" in body else f"Oops in {func or '?'}"
    if kind == "kmemleak":
        return f"memory leak in {_function_from(report) or '?'}"
    if kind == "hung_task":
        return f"INFO: task hung in {_function_from(report) or '?'}"
    if kind == "rcu_stall":
        return f"INFO: rcu detected stall in {_function_from(report) or '?'}"
    if kind == "soft_lockup":
        return f"BUG: soft lockup in {_function_from(report) or '?'}"
    return body


def classify(line: str) -> tuple[str, re.Match[str]] | None:
    text = strip_stamp(line)
    for kind, pattern in MARKERS:
        m = pattern.match(text)
        if m:
            return kind, m
    return None


class FaultDetector:
    """Feed console lines one by one; completed events accumulate in `events`."""

    def __init__(self) -> None:
        self.events: list[KernelEvent] = []
        self._open: KernelEvent | None = None

    def feed(self, line: str, step: str = "") -> None:
        text = strip_stamp(line.rstrip())
        if self._open is not None:
            if self._continues(line, text):
                self._open.report.append(text)
                if text.startswith(END_MARKERS) or len(self._open.report) >= MAX_REPORT_LINES:
                    self._close()
                return
            self._close()
        hit = classify(line)
        if hit is None:
            return
        kind, _ = hit
        self._open = KernelEvent(kind=kind, title="", first_line=text, report=[text], step=step)

    @property
    def fatal_count(self) -> int:
        """Fatal events so far, the one still being read included."""
        events = [*self.events, *([self._open] if self._open else [])]
        return sum(1 for e in events if e.kind in FATAL_KINDS)

    def _continues(self, raw: str, text: str) -> bool:
        # A report is the kernel lines that follow its marker; a new marker of a different
        # fault starts a new event (but an Oops's "Internal error" belongs to its "Unable to handle").
        if not raw.lstrip().startswith("[") and raw.strip():
            return False  # a non-kernel console line ends the report
        hit = classify(raw)
        if hit is None:
            return True
        assert self._open is not None
        return hit[0] == "oops" and self._open.kind == "oops" and text.startswith("Internal error")

    def _close(self) -> None:
        event = self._open
        self._open = None
        if event is None:
            return
        event.title = make_title(event.kind, event.first_line, event.report)
        self.events.append(event)

    def snapshot(self) -> list[KernelEvent]:
        """Closed events plus the one still being read (titled from what has arrived so far)."""
        if self._open is None:
            return list(self.events)
        pending = KernelEvent(self._open.kind, "", self._open.first_line, list(self._open.report), self._open.step)
        pending.title = make_title(pending.kind, pending.first_line, pending.report)
        return [*self.events, pending]

    def finish(self) -> list[KernelEvent]:
        self._close()
        return self.events


def group_events(events: list[dict[str, object]]) -> list[dict[str, object]]:
    """One entry per signature, in order of first appearance, with a count (as syzkaller dedups crashes)."""
    groups: dict[object, dict[str, object]] = {}
    for event in events:
        key = event["signature"]
        if key in groups:
            groups[key]["count"] = int(str(groups[key]["count"])) + 1
        else:
            groups[key] = {**event, "count": 1}
    return list(groups.values())


def kmemleak_events(report_text: str, step: str = "") -> list[KernelEvent]:
    """Leaks from /sys/kernel/debug/kmemleak: one event per 'unreferenced object' block."""
    events: list[KernelEvent] = []
    for block in re.split(r"\n(?=unreferenced object )", report_text.strip()):
        lines = block.splitlines()
        if lines and lines[0].startswith("unreferenced object"):
            event = KernelEvent("kmemleak", "", lines[0], lines, step)
            event.title = make_title("kmemleak", lines[0], lines)
            events.append(event)
    return events


def find_faults(lines: Iterable[str]) -> list[KernelEvent]:
    detector = FaultDetector()
    for line in lines:
        detector.feed(line)
    return detector.finish()
