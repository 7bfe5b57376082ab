#!/usr/bin/env python3
"""The fault detector measured on syzkaller's own report-parser test data.

syzkaller (Apache-2.0) keeps real kernel console logs in
`pkg/report/testdata/linux/report/` of github.com/google/syzkaller, each
headed by what its parser must say about it:

    TITLE: <the title>          (absent: the log must give no report)
    ALT: <another accepted title>
    TYPE: ...
    CORRUPTED: Y                (the report is truncated or intermixed)
    SUPPRESSED: Y
    <blank line>
    <the console log>
    [<blank line> REPORT: <the report text>]

This script feeds every log through `split_kernel_lines()` and
`find_faults()` exactly as the live console does, and reports:

- crash logs in which any event is found (recall), all and arm/arm64;
- clean logs (no TITLE) in which an event is found (false events);
- first event's title equal to TITLE or an ALT, over the detected logs
  that syzkaller does not mark CORRUPTED; and "same kind, same function";
- agreement of our `corrupted` flag with CORRUPTED, over detected logs;
- the time for the whole selection.

A log counts as arm/arm64 when it shows an arm register dump or unwinder
line: `pc : ` / `lr : ` (arm64 register dump), `PC is at` / `LR is at`
(arm), `Internal error:`, `Unhandled fault:`, an armv7 frame
`[<..>] (f) from [<..>]` or `f from g+0x..`, or an arm64 entry frame
(`el0_svc`, `el1h_64_*`, `__arm64_sys_*`).

The corpus is never fetched nor shipped here (see README, "Kernel faults");
point the script at a copy of that folder:

    python benchmarks/syzkaller_corpus.py --corpus DIR [--below 600 | --from 600] [--misses] [--json]

DIR defaults to $CMA_SYZ_CORPUS, else ../shared/syzkaller-report-corpus
(beside the checkout). Files numbered 600 and above are held back to
measure generalisation: develop with --below 600.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.guest.console import split_kernel_lines
from harness.oracles.faults import KernelEvent, find_faults

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "syzkaller-report-corpus"
HELD_BACK = 600

ARM_MARKERS = re.compile(
    r"(?:^|\] )\s*(?:pc : |lr : |PC is at |LR is at )|Internal error: |Unhandled fault: "
    r"|\[<[0-9a-f]+>\] \([\w.]+\) from \[<|^\s*(?:\[.*?\] )?\s*[\w.]+ from [\w.]+\+0x"
    r"|\bel0t?_svc|\bel1h?_64_|__arm64_sys_",
    re.M,
)


def default_corpus() -> Path:
    env = os.environ.get("CMA_SYZ_CORPUS")
    return Path(env) if env else DEFAULT_CORPUS


@dataclass
class Case:
    name: str
    number: int
    title: str = ""
    alts: list[str] = field(default_factory=list)
    corrupted: bool = False
    suppressed: bool = False
    log: str = ""

    @property
    def is_crash(self) -> bool:
        return bool(self.title)

    @property
    def is_arm(self) -> bool:
        return bool(ARM_MARKERS.search(self.log))


def read_case(path: Path) -> Case:
    text = path.read_bytes().replace(b"\r", b"").decode("utf-8", "replace")
    head, _, body = text.partition("\n\n")
    case = Case(path.name, int(path.name) if path.name.isdigit() else -1)
    if not head.strip() or not any(
        h.startswith(("TITLE:", "ALT:", "TYPE:", "CORRUPTED:", "#", "SUPPRESSED:", "FRAME:", "EXECUTOR:", "PANICKED:"))
        for h in head.splitlines()
    ):
        body = text  # no header: the whole file is the log
    else:
        for h in head.splitlines():
            key, _, value = h.partition(": ")
            if key == "TITLE":
                case.title = value
            elif key == "ALT":
                case.alts.append(value)
            elif key == "CORRUPTED":
                case.corrupted = value == "Y"
            elif key == "SUPPRESSED":
                case.suppressed = value == "Y"
    cut = body.find("\n\nREPORT:\n")
    case.log = body[: cut + 1] if cut != -1 else body
    return case


def load(corpus: Path, below: int | None = None, from_: int | None = None) -> list[Case]:
    if not corpus.is_dir():
        raise FileNotFoundError(f"no corpus at {corpus}")
    files = [p for p in corpus.iterdir() if p.is_file() and p.name.isdigit()]
    if below is not None:
        files = [p for p in files if int(p.name) < below]
    if from_ is not None:
        files = [p for p in files if int(p.name) >= from_]
    return [read_case(p) for p in sorted(files, key=lambda p: int(p.name))]


def detect(log: str) -> list[KernelEvent]:
    """What the console would find in this log: its lines, split as Console._feed splits them."""
    lines = [piece for raw in log.split("\n") for piece in split_kernel_lines(raw)]
    return find_faults(lines)


def kind_and_function(title: str) -> tuple[str, str]:
    kind, sep, func = title.rpartition(" in ")
    return (kind, func) if sep else (title, "")


@dataclass
class Scores:
    crash: int = 0
    detected: int = 0
    arm_crash: int = 0
    arm_detected: int = 0
    clean: int = 0
    false_events: int = 0
    arm_clean: int = 0
    arm_false: int = 0
    titled: int = 0  # detected and not CORRUPTED
    title_ok: int = 0
    arm_titled: int = 0
    arm_title_ok: int = 0
    kind_func_ok: int = 0
    any_title_ok: int = 0  # over all detected logs, CORRUPTED ones included
    any_kind_func_ok: int = 0
    corrupted_ok: int = 0
    seconds: float = 0.0
    misses: list[tuple[str, str, str]] = field(default_factory=list)  # (file, expected, got)

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "misses"}


def pct(n: int, d: int) -> str:
    return f"{n} of {d} ({100 * n / d:.1f} %)" if d else "0 of 0"


def evaluate(cases: list[Case]) -> Scores:
    s = Scores()
    started = time.perf_counter()
    results = [(case, detect(case.log)) for case in cases]
    s.seconds = time.perf_counter() - started
    for case, events in results:
        arm = case.is_arm
        if not case.is_crash:
            s.clean += 1
            s.arm_clean += arm
            if events:
                s.false_events += 1
                s.arm_false += arm
                s.misses.append((case.name, "(no report)", events[0].title))
            continue
        s.crash += 1
        s.arm_crash += arm
        if not events:
            s.misses.append((case.name, case.title, "(nothing found)"))
            continue
        s.detected += 1
        s.arm_detected += arm
        first = events[0]
        corrupted = bool(getattr(first, "corrupted", False))
        s.corrupted_ok += corrupted == case.corrupted
        ok = first.title == case.title or first.title in case.alts
        s.any_title_ok += ok
        s.any_kind_func_ok += kind_and_function(first.title) == kind_and_function(case.title)
        if case.corrupted:
            continue
        s.titled += 1
        s.arm_titled += arm
        s.title_ok += ok
        s.arm_title_ok += arm and ok
        s.kind_func_ok += kind_and_function(first.title) == kind_and_function(case.title)
        if not ok:
            s.misses.append((case.name, case.title, first.title))
    return s


def table(s: Scores) -> str:
    rows = [
        ("crash logs in which any event is found", pct(s.detected, s.crash)),
        ("… on arm/arm64 logs", pct(s.arm_detected, s.arm_crash)),
        ("clean logs with a false event", f"{s.false_events} of {s.clean} (arm: {s.arm_false} of {s.arm_clean})"),
        ("first title equal to syzkaller's (or an ALT), detected non-corrupted", pct(s.title_ok, s.titled)),
        ("… on arm/arm64 logs", pct(s.arm_title_ok, s.arm_titled)),
        ("same bug kind and same function", pct(s.kind_func_ok, s.titled)),
        (
            "title equal (or ALT) / same kind and function, all detected",
            f"{pct(s.any_title_ok, s.detected)} / {pct(s.any_kind_func_ok, s.detected)}",
        ),
        ("corrupted flag agrees, detected logs", pct(s.corrupted_ok, s.detected)),
        ("time for the selection", f"{s.seconds:.2f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"| {a:<{width}} | {b} |" for a, b in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=None, help="folder of syzkaller's linux/report test files")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--below", type=int, default=None, help="only files numbered below N (development set)")
    group.add_argument("--from", dest="from_", type=int, default=None, help="only files numbered N and above")
    ap.add_argument("--misses", action="store_true", help="list every miss: file, syzkaller's title, ours")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    corpus = args.corpus or default_corpus()
    try:
        cases = load(corpus, args.below, args.from_)
    except FileNotFoundError as exc:
        print(f"{exc}: pass --corpus DIR or set CMA_SYZ_CORPUS", file=sys.stderr)
        return 2
    scores = evaluate(cases)
    if args.misses:
        for name, want, got in scores.misses:
            print(f"{name:>5}  want: {want}\n       got:  {got}")
    if args.json:
        print(json.dumps(scores.as_dict(), indent=1))
    else:
        print(f"{len(cases)} files from {corpus}")
        print(table(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
