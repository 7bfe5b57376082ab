"""Two result.json files → what changed, and whether that is a regression.

A regression is something the candidate made worse that a person must look at:
the verdict got worse (pass → fail → error), a scenario or step fails that did not
fail in the base, or a kernel-event signature appears that the base did not have.
Everything else (newly passing tests, gone signatures, other kernels, timings) is
reported, never gated on: TCG timings follow the host's load, and a different kernel
is a different experiment, not a driver change.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.oracles.faults import group_events
from harness.report.provenance_diff import ProvenanceDiff
from harness.report.provenance_diff import diff as provenance_diff

VERDICT_RANK = {"pass": 0, "fail": 1, "error": 2}
# Timing noise. Under TCG every guest instruction is host CPU time, so a busy host slows a
# whole run (measured: clean pairs 0.34x to 1.3x apart) and, as load comes and goes, single
# steps by up to 2.5x more. So a scenario or step is judged against the base time scaled by
# the pair's host factor (median step ratio), and must move beyond an absolute floor and a
# factor: at least 25 %, wider when the pair's own steps scatter more (NOISE_MADS times their
# median absolute log deviation, a robust spread).
NOISE_RATIO = 0.25
NOISE_SECONDS = 0.5
NOISE_MADS = 4.0
MIN_STEP_SECONDS = 0.05  # shorter steps are mostly round-trip latency: left out of the host factor
# The capacity probe allocates until ENOMEM; its time is the kernel migrating whatever movable pages
# sit in CMA (0.3-2.0 s across 11 clean runs, the first probe after boot worst), not the driver.
# It is timed within its scenario, never judged as a step.
UNJUDGED_STEPS = ("capacity",)
STAGES = ("setup", "images", "build kmod", "build userland", "initramfs", "boot", "scenario", "report", "total")
# Step names may end with what happened, "repeat times=500 (500/500 iterations)": not part of the identity.
_OUTCOME = re.compile(r"\s+\([^()]*\)$")


@dataclass
class StepChange:
    scenario: str
    index: int
    name: str
    base: str | None  # status in the base run; None: the step is not there
    cand: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.scenario} step {self.index}"


@dataclass
class EventChange:
    signature: str
    title: str
    kind: str
    base_count: int
    cand_count: int
    step: str  # where it first happened (in the run that has it)


@dataclass
class TimingChange:
    what: str
    base: float
    cand: float
    expected: float  # base × the host factor

    @property
    def ratio(self) -> float:
        return self.cand / self.expected if self.expected > 0 else float("inf")


@dataclass
class Noise:
    """How differently the host ran the two runs, measured on the steps both have."""

    factor: float = 1.0  # candidate time / base time, median over steps
    spread: float = 0.0  # median |ln(step ratio / factor)|
    samples: int = 0

    @property
    def limit(self) -> float:
        """A time must move by more than this factor (either way) to count."""
        return max(1 + NOISE_RATIO, math.exp(NOISE_MADS * self.spread))

    def beyond(self, base: float, cand: float) -> bool:
        expected = base * self.factor
        if abs(cand - expected) <= NOISE_SECONDS:
            return False
        if expected <= 0 or cand <= 0:
            return True
        return not 1 / self.limit <= cand / expected <= self.limit

    def rule(self) -> str:
        return (
            f"a scenario or step (capacity probes only within their scenario) counts as slower or faster only if "
            f"its time moved by more than {NOISE_SECONDS} s "
            f"and by more than ×{self.limit:.2f} from its base time × the host factor; ×{self.limit:.2f} is "
            f"max(1 + {NOISE_RATIO:.0%}, e^({NOISE_MADS:.0f} × this pair's step spread)). Host factor "
            f"{self.factor:.2f} (median candidate/base time over {self.samples} steps of ≥ {MIN_STEP_SECONDS} s; "
            f"a busy host or a driver slowing every step moves it), step spread ×{math.exp(self.spread):.2f}. "
            "Timings are never a regression"
        )


def measure_noise(pairs: list[tuple[float, float]]) -> Noise:
    ratios = [c / b for b, c in pairs if b >= MIN_STEP_SECONDS and c > 0]
    if not ratios:
        return Noise()
    factor = statistics.median(ratios)
    return Noise(factor, statistics.median(abs(math.log(r / factor)) for r in ratios), len(ratios))


@dataclass
class Comparison:
    base_name: str
    cand_name: str
    base_verdict: str
    cand_verdict: str
    facts: list[tuple[str, str, str]] = field(default_factory=list)  # (what, base, candidate)
    context: list[str] = field(default_factory=list)
    newly_failing_scenarios: list[str] = field(default_factory=list)
    newly_passing_scenarios: list[str] = field(default_factory=list)
    newly_failing: list[StepChange] = field(default_factory=list)
    newly_passing: list[StepChange] = field(default_factory=list)
    still_failing: list[StepChange] = field(default_factory=list)
    only_base: list[StepChange] = field(default_factory=list)
    only_cand: list[StepChange] = field(default_factory=list)
    new_events: list[EventChange] = field(default_factory=list)
    gone_events: list[EventChange] = field(default_factory=list)
    kept_events: list[EventChange] = field(default_factory=list)
    slower: list[TimingChange] = field(default_factory=list)
    faster: list[TimingChange] = field(default_factory=list)
    noise: Noise = field(default_factory=Noise)
    provenance: ProvenanceDiff = field(default_factory=ProvenanceDiff)  # what differs besides the driver

    @property
    def verdict_worse(self) -> bool:
        return VERDICT_RANK.get(self.cand_verdict, 2) > VERDICT_RANK.get(self.base_verdict, 2)

    @property
    def reasons(self) -> list[str]:
        """Why this is a regression; empty when it is not."""
        out = []
        if self.verdict_worse:
            out.append(f"verdict {self.base_verdict} → {self.cand_verdict}")
        # Named in the headline: a CI log's last lines should say which tests and which fault.
        if self.newly_failing_scenarios:
            out.append(_named("scenario(s) newly fail", self.newly_failing_scenarios))
        if self.newly_failing:
            out.append(_named("step(s) newly fail", [s.ref for s in self.newly_failing]))
        if self.new_events:
            out.append(_named("new kernel-event signature(s)", [e.title for e in self.new_events]))
        return out

    @property
    def regression(self) -> bool:
        return bool(self.reasons)


def _named(what: str, names: list[str], shown: int = 4) -> str:
    more = f", … {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} {what}: {', '.join(names[:shown])}{more}"


def _step_key(step: dict[str, Any]) -> tuple[str, int, str]:
    return (str(step.get("scenario", "")), int(step.get("index", 0)), _OUTCOME.sub("", str(step.get("name", ""))))


def _steps(result: dict[str, Any]) -> dict[tuple[str, int, str], dict[str, Any]]:
    return {_step_key(s): s for s in result.get("steps", [])}


def _events(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(g["signature"]): g for g in group_events(result.get("kernel_events", []))}


def _change(key: tuple[str, int, str], base: dict[str, Any] | None, cand: dict[str, Any] | None) -> StepChange:
    shown = cand or base or {}
    return StepChange(
        scenario=key[0],
        index=key[1],
        name=str(shown.get("name", key[2])),
        base=None if base is None else str(base.get("status")),
        cand=None if cand is None else str(cand.get("status")),
        problems=list((cand or {}).get("problems", [])),
    )


def _timings(base: dict[str, Any], cand: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(what, base s, candidate s) for every scenario and step timed in both runs."""
    pairs = []
    bs = {s.get("name"): float(s.get("duration", 0)) for s in base.get("scenarios", [])}
    for sc in cand.get("scenarios", []):
        if sc.get("name") in bs:
            pairs.append((f"scenario {sc.get('name')}", bs[sc.get("name")], float(sc.get("duration", 0))))
    base_steps = _steps(base)
    for key, step in _steps(cand).items():
        if key in base_steps and not key[2].startswith(UNJUDGED_STEPS):
            pairs.append(
                (f"{key[0]} step {key[1]} ({key[2]})", float(base_steps[key]["duration"]), float(step["duration"]))
            )
    return pairs


def _stage_times(result: dict[str, Any]) -> str:
    t = result.get("timings") or {}
    return ", ".join(f"{s} {float(t[s]):.2f}" for s in STAGES if s in t)


def _kernel(k: dict[str, Any]) -> str:
    return f"{k.get('release', '?')} ({k.get('version', '?')})"


def _cma(cma: dict[str, Any]) -> str:
    return f"{cma.get('size_mib', '?')} MiB at {cma['base']}" if cma.get("base") else "unknown"


def _context(base: dict[str, Any], cand: dict[str, Any]) -> tuple[list[tuple[str, str, str]], list[str]]:
    bk, ck = base.get("kernel") or {}, cand.get("kernel") or {}
    bc, cc = base.get("cma") or {}, cand.get("cma") or {}
    facts = [
        ("verdict", str(base.get("verdict")), str(cand.get("verdict"))),
        ("target", str(base.get("target", "?")), str(cand.get("target", "?"))),
        ("kernel", _kernel(bk), _kernel(ck)),
        ("driver (--kmod)", str(base.get("kmod", "?")), str(cand.get("kmod", "?"))),
        ("CMA", _cma(bc), _cma(cc)),
        ("scenarios", str(base.get("scenario", "")), str(cand.get("scenario", ""))),
        ("started", str(base.get("started", "")), str(cand.get("started", ""))),
        # Stages are context: host stages measure the cache (a new driver is a rebuild), boot the kernel.
        ("stage times (s)", _stage_times(base), _stage_times(cand)),
    ]
    notes = []
    if bk.get("release") != ck.get("release") or bk.get("version") != ck.get("version"):
        notes.append(
            f"different kernels ({bk.get('release')} {bk.get('version')} → {ck.get('release')} {ck.get('version')}): "
            "changes may come from the kernel as well as the driver; the kernel change itself is not a regression"
        )
    if base.get("target") != cand.get("target"):
        notes.append(f"different targets ({base.get('target')} → {cand.get('target')})")
    if base.get("kmod") != cand.get("kmod"):
        notes.append("different driver folders (--kmod): the driver under test may differ")
    if (bc.get("base"), bc.get("size_mib")) != (cc.get("base"), cc.get("size_mib")):
        notes.append("different CMA reservations: block addresses are not comparable")
    if base.get("scenario") != cand.get("scenario"):
        notes.append("different scenario lists: only scenarios in both runs are compared step by step")
    return facts, notes


def compare(
    base: dict[str, Any], cand: dict[str, Any], base_name: str = "base", cand_name: str = "candidate"
) -> Comparison:
    facts, notes = _context(base, cand)
    c = Comparison(base_name, cand_name, str(base.get("verdict")), str(cand.get("verdict")), facts, notes)
    bsc = {s.get("name"): s.get("verdict") for s in base.get("scenarios", [])}
    for sc in cand.get("scenarios", []):
        before, now = bsc.get(sc.get("name")), sc.get("verdict")
        if now != "pass" and before in ("pass", None):
            c.newly_failing_scenarios.append(str(sc.get("name")))
        elif now == "pass" and before not in ("pass", None):
            c.newly_passing_scenarios.append(str(sc.get("name")))
    c.provenance = provenance_diff(base, cand)
    _compare_steps(c, _steps(base), _steps(cand))
    _compare_events(c, _events(base), _events(cand))
    timed = _timings(base, cand)
    c.noise = measure_noise([(b, n) for what, b, n in timed if not what.startswith("scenario ")])
    for what, b, n in timed:
        if c.noise.beyond(b, n):
            t = TimingChange(what, b, n, b * c.noise.factor)
            (c.slower if n > t.expected else c.faster).append(t)
    return c


def _compare_steps(c: Comparison, base: dict[tuple[str, int, str], Any], cand: dict[tuple[str, int, str], Any]) -> None:
    for key, step in cand.items():
        before = base.get(key)
        change = _change(key, before, step)
        failing = step.get("status") != "pass"
        if before is None:
            # A step the base never ran: new, and if it fails, it newly fails.
            c.only_cand.append(change)
            if failing:
                c.newly_failing.append(change)
        elif failing and before.get("status") == "pass":
            c.newly_failing.append(change)
        elif failing:
            c.still_failing.append(change)
        elif before.get("status") != "pass":
            c.newly_passing.append(change)
    c.only_base = [_change(k, s, None) for k, s in base.items() if k not in cand]


def _compare_events(c: Comparison, base: dict[str, dict[str, Any]], cand: dict[str, dict[str, Any]]) -> None:
    def count(g: dict[str, Any] | None) -> int:
        return int(str(g["count"])) if g else 0

    for sig, g in cand.items():
        change = EventChange(sig, str(g["title"]), str(g["kind"]), count(base.get(sig)), count(g), str(g["step"]))
        (c.kept_events if sig in base else c.new_events).append(change)
    c.gone_events = [
        EventChange(sig, str(g["title"]), str(g["kind"]), count(g), 0, str(g["step"]))
        for sig, g in base.items()
        if sig not in cand
    ]


# --- rendering (Markdown: readable in a terminal, a CI log and a merge request) ----------------

MAX_LISTED_PROBLEMS = 3


def _step_line(s: StepChange, with_problems: bool) -> str:
    line = f"- **{s.ref}** `{s.name}`: {s.base or 'absent'} → {s.cand or 'absent'}"
    if with_problems and s.problems:
        shown = "; ".join(s.problems[:MAX_LISTED_PROBLEMS])
        more = f" (+{len(s.problems) - MAX_LISTED_PROBLEMS} more)" if len(s.problems) > MAX_LISTED_PROBLEMS else ""
        line += f" — {shown}{more}"
    return line


def _event_line(e: EventChange) -> str:
    counts = f"×{e.base_count} → ×{e.cand_count}"
    return f"- `{e.signature}` **{e.title}** ({e.kind}, {counts}, first during `{e.step}`)"


def _timing_row(t: TimingChange) -> str:
    return f"| {t.what} | {t.base:.3f} | {t.expected:.3f} | {t.cand:.3f} | ×{t.ratio:.2f} |"


def render(c: Comparison) -> str:
    lines = [f"# Compare: {c.base_name} → {c.cand_name}", ""]
    if c.regression:
        lines.append(f"**REGRESSION** (exit 1): {'; '.join(c.reasons)}.")
    else:
        lines.append("**No regression** (exit 0): no step or scenario newly fails and no new kernel-event signature.")
    if c.slower or c.faster:
        lines.append(f"Timing: {len(c.slower)} slower, {len(c.faster)} faster beyond noise (below; never gated on).")
    if c.provenance.warning():
        lines += ["", f"**Warning**: {c.provenance.warning()}."]
    if c.provenance.driver:
        lines += ["", f"Driver changes (expected): {'; '.join(c.provenance.driver)}."]
    lines += ["", "| | base | candidate |", "|---|---|---|"]
    lines += [f"| {what} | {b} | {n} |" for what, b, n in c.facts]
    if c.context:
        lines += ["", "Context:"] + [f"- {note}" for note in c.context]

    def section(title: str, items: list[str], empty: str | None = None) -> None:
        if items or empty:
            lines.extend(["", f"## {title}" + (f" ({len(items)})" if items else ""), ""])
            lines.extend(items or [empty or ""])

    section("Scenarios newly failing", [f"- {n}" for n in c.newly_failing_scenarios])
    section("Steps newly failing", [_step_line(s, True) for s in c.newly_failing], "none")
    section("Scenarios newly passing", [f"- {n}" for n in c.newly_passing_scenarios])
    section("Steps newly passing", [_step_line(s, False) for s in c.newly_passing])
    section("Steps still failing", [_step_line(s, True) for s in c.still_failing])
    section("Steps only in the base run", [_step_line(s, False) for s in c.only_base])
    section("Steps only in the candidate run", [_step_line(s, False) for s in c.only_cand])
    section("New kernel-event signatures", [_event_line(e) for e in c.new_events], "none")
    section("Gone kernel-event signatures", [_event_line(e) for e in c.gone_events])
    changed = [e for e in c.kept_events if e.base_count != e.cand_count]
    section("Kernel-event signatures in both runs, count changed", [_event_line(e) for e in changed])
    lines += ["", "## Timing", "", f"Rule: {c.noise.rule()}.", ""]
    head = ["| what | base s | expected s | candidate s | vs expected |", "|---|---:|---:|---:|---:|"]
    for title, moved in (("Slower", c.slower), ("Faster", c.faster)):
        if moved:
            lines += [f"{title} beyond noise ({len(moved)}):", "", *head]
            lines += [_timing_row(t) for t in sorted(moved, key=lambda t: -abs(t.cand - t.expected))] + [""]
    if not c.slower and not c.faster:
        lines.append("No scenario or step changed beyond noise.")
    return "\n".join(lines) + "\n"


def write(c: Comparison, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(c))
    return path
