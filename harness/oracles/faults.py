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

from harness.oracles.fault_titles import CONTINUES_REPORT, KMEMLEAK, Header, header_of, title_for

# "[   12.345678] ", "[   12.345678][  T81] " (CONFIG_PRINTK_CALLER: task or CPU), optionally after a
# "<4>" log level, a "** N printk messages dropped **" note or a getty prompt the kernel wrote into.
_PREFIX = re.compile(r"^(?:\*\* \d+ printk messages dropped \*\* )?(?:<\d+>)?\[ *(\d+\.\d+)\](?:\[ *([CT]\d+)\])? ?")
_LOGIN_PREFIX = re.compile(
    r"^(?:\*\* \d+ printk messages dropped \*\* )?(?:.* login: )?(?:<\d+>)?\[ *(\d+\.\d+)\](?:\[ *([CT]\d+)\])? ?"
)
# A caller-stamped message that began in the middle of a console line (console.split_kernel_lines
# only cuts at plain "[   12.345678] " stamps).
_CALLER_STAMP = re.compile(r"\[ *\d+\.\d{6}\]\[ *[CT]\d+\] ")
_QUESTIONABLE = re.compile(r"(?:\[<[0-9a-f]+>\])? \? ")  # x86 frames the unwinder is not sure of
END_MARKERS = ("---[ end trace", "---[ end Kernel panic")
_NMI_BACKTRACE = "Sending NMI from CPU"
# Reports of their own kind that are no fault but break the report they land in.
_INTRUDERS = ("vmalloc: allocation failure:", "FAULT_INJECTION: forcing a failure", "FAULT_FLAG_ALLOW_RETRY missing")
_REPLAYED = "** replaying previous printk message **"
# Any of the few substrings that change how a report is read (one search per line, not six).
_NOTABLE = re.compile(
    "|".join(
        re.escape(s)
        for s in (
            *_INTRUDERS,
            _NMI_BACKTRACE,
            "Disabling lock debugging due to kernel taint",
            "Kernel panic - not syncing",
            "WARNING: possible circular locking dependency",
        )
    )
)
_REBOOT = "Booting the kernel."
MAX_REPORT_LINES = 400
MAX_OPEN = 8  # reports being read at once (one per printk caller)
# A report is printed in one go: a line stamped this much later belongs to something else
# (a hung-task report has no end marker; without this it would run on into later messages).
MAX_REPORT_SECONDS = 10.0
# Past this many lines, a report has said what it had to: a panic_on_warn panic, or the lockdep
# report an oops provoked, is another story (lines still kept, not read for the title).
TITLE_LINES = 22
# Faults after which the guest may never answer again (a dead task can hold locks forever).
FATAL_KINDS = {"oops", "panic", "bug", "hung_task", "rcu_stall", "soft_lockup"}


@dataclass
class KernelEvent:
    kind: str
    title: str
    first_line: str
    report: list[str] = field(default_factory=list)
    step: str = ""  # the harness step during which the first line arrived
    corrupted: bool = False  # truncated or intermixed (syzkaller's CORRUPTED): the title may be wrong

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


def parse_line(line: str) -> tuple[str, str]:
    """(context, text): the printk caller ("T81", "C0"), "console" for a plain timestamp, "" for none."""
    context, text, _ = _parse(line)
    return context, text


def _parse(line: str) -> tuple[str, str, float | None]:
    m = _PREFIX.match(line)
    if m is None and " login: " in line:
        m = _LOGIN_PREFIX.match(line)
    if m is None:
        return "", line, None
    return m.group(2) or "console", line[m.end() :], float(m.group(1))


def make_title(kind: str, first: str, report: list[str]) -> str:
    """syzkaller's title for a report that starts with `first` ('WARNING in f', 'KASAN: use-after-free Read in f')."""
    header = header_of(first) or (KMEMLEAK if kind == "kmemleak" else None)
    if header is None:
        return parse_line(first)[1]
    return title_for(header, report or [first]).title


def classify(line: str) -> tuple[str, re.Match[str]] | None:
    """(kind, the header's match) if `line` starts a kernel report."""
    header = header_of(line)
    if header is None:
        return None
    m = re.search(re.escape(header.needle), line)
    assert m is not None
    return header.kind_of(line), m


@dataclass
class _Reading:
    event: KernelEvent
    header: Header
    context: str
    seq: int
    title_lines: int | None = None  # only report[:title_lines] is read for the title
    ended: bool = False  # "---[ end trace" seen: the next line of its context closes it
    nmi: bool = False  # other CPUs' backtraces, asked for by this report, belong to it
    since: float | None = None  # the header's timestamp


def _ends_title(reading: _Reading, text: str) -> bool:
    if any(s in text for s in _INTRUDERS):
        return reading.context in ("", "console")
    report = reading.event.report
    if "Kernel panic - not syncing" in text or "WARNING: possible circular locking dependency" in text:
        return len(report) > (16 if "BUG: KMSAN:" in report[0] else TITLE_LINES)
    return False


class FaultDetector:
    """Feed console lines one by one; completed events accumulate in `events`.

    Lines are read the way syzkaller reads a console: the timestamp and printk caller
    ("[  T81]", "[   C0]") are stripped, and a report is made of the lines of its own
    caller, so reports from several CPUs or tasks interleave without mixing. Once the
    console has shown timestamped kernel lines, lines without one are user space: they
    neither start a report nor end one.
    """

    def __init__(self) -> None:
        self.events: list[KernelEvent] = []
        self._open: list[_Reading] = []  # oldest first
        self._seq = 0
        self._order: dict[int, int] = {}  # id(event) -> its first line's number
        self._stamped = False
        self._kernel_seen = False

    def feed(self, line: str, step: str = "") -> None:
        line = line.rstrip()
        cut = [m.start() for m in _CALLER_STAMP.finditer(line, 1)] if "][" in line else []
        if not cut:
            self._feed_one(line, step)
            return
        for a, b in zip([0, *cut], [*cut, len(line)], strict=True):
            if line[a:b]:
                self._feed_one(line[a:b], step)

    def _feed_one(self, line: str, step: str) -> None:
        self._seq += 1
        context, text, now = _parse(line)
        header = header_of(line)
        if context:
            self._stamped = True
        elif self._stamped and not (header is not None and header.needle == _REBOOT):
            return  # user space talking on the console (a reboot's first words have no stamp yet)
        if _REPLAYED in line:
            self._drop_replayed()
            return
        if header is not None and header.needle == _REBOOT and not self._kernel_seen:
            header = None  # the first boot, not a reboot
        self._kernel_seen = True
        readers = [r for r in self._open if r.context == context or (r.nmi and context.startswith("C"))]
        if now is not None:
            for reading in [r for r in readers if r.since is not None and now - r.since > MAX_REPORT_SECONDS]:
                self._close(reading)
                readers.remove(reading)
        panic = "Kernel panic - not syncing" in line
        if header is not None and readers:
            if any(s in line for s in CONTINUES_REPORT) and any(panic or not r.ended for r in readers):
                header = None  # part of the report being read (an oops's "Internal error", its panic)
            elif header is KMEMLEAK and any(r.event.kind == "kmemleak" and r.header is not KMEMLEAK for r in readers):
                header = None  # the objects of a "BUG: memory leak" report
        for reading in readers:
            if reading.ended and not (panic and header is None):
                self._close(reading)
            elif header is not None and reading.context in ("", "console"):
                self._close(reading)  # one console, one report at a time
            else:
                # A printk caller's report goes on until it ends, whatever it runs into (as syzkaller reads it).
                reading.ended = False
                self._append(reading, context, text)
        if header is not None:
            self._start(header, context, text, step, now)

    def _start(self, header: Header, context: str, text: str, step: str, since: float | None) -> None:
        event = KernelEvent(kind=header.kind_of(text), title="", first_line=text, report=[text], step=step)
        self._order[id(event)] = self._seq
        self._open.append(_Reading(event, header, context, self._seq, since=since))
        if len(self._open) > MAX_OPEN:
            self._close(self._open[0])

    def _drop_replayed(self) -> None:
        # The line before was an old message printed again: not a new report.
        if self._open and len(self._open[-1].event.report) == 1 and self._open[-1].seq == self._seq - 1:
            self._open.pop()

    def _append(self, reading: _Reading, context: str, text: str) -> None:
        if context and (_QUESTIONABLE.match(text) or text.endswith(" (unreliable)")):
            return  # frames the unwinder guessed (x86 "? f+0x..", powerpc "(unreliable)")
        report = reading.event.report
        if _NOTABLE.search(text):
            if "Disabling lock debugging due to kernel taint" in text:
                return
            if _NMI_BACKTRACE in text:
                reading.nmi = True
            if reading.title_lines is None and _ends_title(reading, text):
                reading.title_lines = len(report)
        report.append(text)
        if text.startswith(END_MARKERS):
            reading.ended = True
        if len(report) >= MAX_REPORT_LINES:
            self._close(reading)

    def _title(self, reading: _Reading) -> KernelEvent:
        event = reading.event
        lines = event.report if reading.title_lines is None else event.report[: reading.title_lines]
        titled = title_for(reading.header, lines, event.report)
        event.title, event.corrupted, event.kind = titled.title, titled.corrupted, titled.kind
        return event

    def _close(self, reading: _Reading) -> None:
        if reading in self._open:
            self._open.remove(reading)
            self.events.append(self._title(reading))

    @property
    def fatal_count(self) -> int:
        """Fatal events so far, the ones still being read included."""
        kinds = [e.kind for e in self.events] + [r.event.kind for r in self._open]
        return sum(1 for k in kinds if k in FATAL_KINDS)

    def snapshot(self) -> list[KernelEvent]:
        """Closed events plus the ones still being read (titled from what has arrived so far)."""
        pending = []
        for reading in self._open:
            e = reading.event
            copy = _Reading(
                KernelEvent(e.kind, "", e.first_line, list(e.report), e.step),
                reading.header,
                reading.context,
                reading.seq,
                reading.title_lines,
            )
            pending.append(self._title(copy))
        return [*self.events, *pending]

    def finish(self) -> list[KernelEvent]:
        for reading in list(self._open):
            self._close(reading)
        self.events.sort(key=lambda e: self._order.get(id(e), 0))
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
            titled = title_for(KMEMLEAK, lines)
            events.append(KernelEvent("kmemleak", titled.title, lines[0], lines, step, titled.corrupted))
    return events


def find_faults(lines: Iterable[str]) -> list[KernelEvent]:
    detector = FaultDetector()
    for line in lines:
        detector.feed(line)
    return detector.finish()
