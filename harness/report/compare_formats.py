"""`compare` as JSON (for scripts and dashboards) and as a self-contained HTML page (for people).

Both hold what the Markdown holds (compare.render): the regression reasons, the facts of
both runs, the provenance warning, every changed step and kernel-event signature, and the
timing changes beyond noise with the rule that judged them.
"""

from __future__ import annotations

from dataclasses import asdict
from html import escape
from typing import Any

from harness.report.compare import Comparison, EventChange, StepChange, TimingChange
from harness.report.render import CSS, VERDICT_COLOURS

FORMAT_VERSION = 1


def to_json(c: Comparison) -> dict[str, Any]:
    def steps(items: list[StepChange]) -> list[dict[str, Any]]:
        return [asdict(s) | {"ref": s.ref} for s in items]

    def events(items: list[EventChange]) -> list[dict[str, Any]]:
        return [asdict(e) for e in items]

    def timings(items: list[TimingChange]) -> list[dict[str, Any]]:
        return [asdict(t) | {"ratio": round(t.ratio, 4)} for t in items]

    return {
        "format_version": FORMAT_VERSION,
        "base": c.base_name,
        "candidate": c.cand_name,
        "base_verdict": c.base_verdict,
        "candidate_verdict": c.cand_verdict,
        "regression": c.regression,
        "exit_status": 1 if c.regression else 0,
        "reasons": c.reasons,
        "facts": [{"what": w, "base": b, "candidate": n} for w, b, n in c.facts],
        "context": c.context,
        "provenance": c.provenance.to_json(),
        "newly_failing_scenarios": c.newly_failing_scenarios,
        "newly_passing_scenarios": c.newly_passing_scenarios,
        "newly_failing": steps(c.newly_failing),
        "newly_passing": steps(c.newly_passing),
        "still_failing": steps(c.still_failing),
        "only_base": steps(c.only_base),
        "only_candidate": steps(c.only_cand),
        "new_events": events(c.new_events),
        "gone_events": events(c.gone_events),
        "kept_events": events(c.kept_events),
        "slower": timings(c.slower),
        "faster": timings(c.faster),
        "noise": {
            "factor": c.noise.factor,
            "spread": c.noise.spread,
            "samples": c.noise.samples,
            "rule": c.noise.rule(),
        },
    }


def _badge(status: str | None) -> str:
    status = status or "absent"
    colour = VERDICT_COLOURS.get(status, "#6e7781")
    return f'<span class="badge" style="background:{colour}">{escape(status)}</span>'


def _step_rows(items: list[StepChange], problems: bool) -> str:
    rows = []
    for s in items:
        detail = "<br>".join(escape(p) for p in s.problems[:5]) if problems else ""
        rows.append(
            f"<tr><td>{escape(s.ref)}</td><td><code>{escape(s.name)}</code></td>"
            f"<td>{_badge(s.base)} → {_badge(s.cand)}</td><td class='small'>{detail}</td></tr>"
        )
    return "".join(rows)


def _section(title: str, body: str, count: int | None = None) -> str:
    shown = f"{title} ({count})" if count else title
    return f"<section><h2>{escape(shown)}</h2>{body}</section>"


def _body(c: Comparison) -> str:
    colour = VERDICT_COLOURS["fail"] if c.regression else VERDICT_COLOURS["pass"]
    head = "REGRESSION" if c.regression else "NO REGRESSION"
    sub = "; ".join(c.reasons) if c.regression else "no step or scenario newly fails and no new kernel-event signature"
    parts = [
        f'<section class="banner" style="background:{colour}"><div class="verdict">{head}</div>'
        f"<div><h1>{escape(c.base_name)} → {escape(c.cand_name)}</h1><div class='sub'>{escape(sub)}</div></div>"
        "</section>"
    ]
    if c.provenance.warning():
        parts.append(
            '<section style="border-left:6px solid #d97706"><h2>Warning</h2>'
            f"<p>{escape(c.provenance.warning())}.</p></section>"
        )
    facts = "".join(f"<tr><th>{escape(w)}</th><td>{escape(b)}</td><td>{escape(n)}</td></tr>" for w, b, n in c.facts)
    notes = "".join(f"<li>{escape(n)}</li>" for n in c.context)
    driver = "".join(f"<li>{escape(d)}</li>" for d in c.provenance.driver)
    parts.append(
        "<section><h2>Runs</h2><table><tr><th></th><th>base</th><th>candidate</th></tr>"
        f"{facts}</table>{f'<ul>{notes}</ul>' if notes else ''}"
        f"{f'<h3>Driver changes (expected)</h3><ul>{driver}</ul>' if driver else ''}</section>"
    )
    head_row = "<tr><th>step</th><th>name</th><th>status</th><th>problems</th></tr>"
    for title, items, problems in (
        ("Steps newly failing", c.newly_failing, True),
        ("Steps newly passing", c.newly_passing, False),
        ("Steps still failing", c.still_failing, True),
        ("Steps only in the base run", c.only_base, False),
        ("Steps only in the candidate run", c.only_cand, False),
    ):
        if items:
            parts.append(_section(title, f"<table>{head_row}{_step_rows(items, problems)}</table>", len(items)))
    for title, events in (
        ("New kernel-event signatures", c.new_events),
        ("Gone kernel-event signatures", c.gone_events),
    ):
        if events:
            rows = "".join(
                f"<tr><td><code>{escape(e.signature)}</code></td><td>{escape(e.title)}</td><td>{escape(e.kind)}</td>"
                f"<td class='num'>×{e.base_count} → ×{e.cand_count}</td><td>{escape(e.step)}</td></tr>"
                for e in events
            )
            parts.append(_section(title, f"<table>{rows}</table>", len(events)))
    timing_rows = "".join(
        f"<tr><td>{escape(t.what)}</td><td class='num'>{t.base:.3f}</td><td class='num'>{t.expected:.3f}</td>"
        f"<td class='num'>{t.cand:.3f}</td><td class='num'>×{t.ratio:.2f}</td></tr>"
        for t in [*c.slower, *c.faster]
    )
    timing = (
        "<table><tr><th>what</th><th class='num'>base s</th><th class='num'>expected s</th>"
        f"<th class='num'>candidate s</th><th class='num'>vs expected</th></tr>{timing_rows}</table>"
        if timing_rows
        else "<p>No scenario or step changed beyond noise.</p>"
    )
    parts.append(_section("Timing", f"{timing}<p class='small muted'>{escape(c.noise.rule())}.</p>"))
    return "".join(parts)


def render_html(comparisons: list[Comparison]) -> str:
    """One page: one block per compared pair (one pair, or one per target)."""
    regression = any(c.regression for c in comparisons)
    title = ("REGRESSION" if regression else "NO REGRESSION") + " · " + ", ".join(c.cand_name for c in comparisons)
    body = "<hr>".join(_body(c) for c in comparisons)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body><main>{body}"
        '<p class="small muted">Rendered by <code>cma-harness compare</code>.</p></main></body></html>\n'
    )


def render_json(comparisons: list[Comparison]) -> dict[str, Any]:
    regression = any(c.regression for c in comparisons)
    return {
        "format_version": FORMAT_VERSION,
        "regression": regression,
        "exit_status": 1 if regression else 0,
        "comparisons": [to_json(c) for c in comparisons],
    }
