"""result.json → report.md and report.html (one self-contained page: inline CSS and SVG, no scripts).

Pure functions of the result (and, for links only, of the run directory), so a report
can be re-rendered from an archived result.json years later and unit-tested on fixtures.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from harness.oracles.faults import group_events
from harness.run.result import RunResult

MIB = 1 << 20
STAGES = ["start-up", "setup", "images", "build kmod", "build userland", "initramfs", "boot", "scenario", "report"]
VERDICT_COLOURS = {"pass": "#15803d", "fail": "#b91c1c", "error": "#7e22ce"}
TYPE_COLOURS = {"wc": "#2563eb", "coherent": "#d97706"}
ARTIFACTS = ["console.log", "dmesg.txt", "result.json"]


def load_result(run_dir: Path) -> dict[str, Any]:
    """result.json read and checked through the result model (RunResult), as its JSON.

    Files without `schema_version` (version 1) come back with it; a malformed one is a ResultError."""
    return RunResult.load(run_dir).to_json()


# --- facts shared by both formats -----------------------------------------------------------


@dataclass
class Block:
    """One allocation placed in the reservation."""

    name: str
    scenario: str
    kind: str
    phys: int
    length: int
    step: int
    freed_at: int | None  # the step that freed it by name; None: released when its process ended, or live
    process: str
    live: bool = False  # still allocated when its scenario ended (the run's own list, `blocks`)
    dmesg_phys: int | None = None  # the driver's own dump_mem view, when it disagrees with the ioctl

    @property
    def end(self) -> int:
        return self.phys + self.length


def _key(a: dict[str, Any]) -> tuple[object, ...]:
    return (a.get("scenario"), a.get("process"), a.get("name"), (a.get("ioctl") or {}).get("id"))


def blocks(result: dict[str, Any]) -> list[Block]:
    live = {_key(b) for b in result.get("blocks", [])}
    out = []
    for a in result.get("allocations", []):
        # The ioctl's view is what user space got; dmesg's is the cross-check (already judged by the run).
        view = a.get("ioctl") or a.get("dmesg") or {}
        if view.get("phys") is None:
            continue
        out.append(
            Block(
                name=str(a.get("name", "?")),
                scenario=str(a.get("scenario", "")),
                kind=str(a.get("type", "?")),
                phys=int(str(view["phys"]), 16),
                length=int(view.get("len") or 0),
                step=int(a.get("step") or 0),
                freed_at=a.get("freed_at"),
                process=str(a.get("process", "")),
                live=_key(a) in live,
                dmesg_phys=_dmesg_phys(a, view),
            )
        )
    return out


def _dmesg_phys(a: dict[str, Any], view: dict[str, Any]) -> int | None:
    d = a.get("dmesg") or {}
    return int(str(d["phys"]), 16) if d.get("phys") and d["phys"] != view.get("phys") else None


def reservation(result: dict[str, Any], placed: list[Block]) -> tuple[int, int, bool]:
    """(base, size, known): the boot log's reservation, else the span of the blocks."""
    cma = result.get("cma") or {}
    if cma.get("base") and cma.get("size_mib"):
        return int(str(cma["base"]), 16), int(cma["size_mib"]) * MIB, True
    if placed:
        low = min(b.phys for b in placed)
        return low, max(b.end for b in placed) - low or MIB, False
    return 0, 128 * MIB, False


def step_notes(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Findings that are not failures (the heap witness's figures, or why it was unavailable), per step."""
    return [(step_ref(s), n) for s in result.get("steps", []) for n in s.get("notes", [])]


def failing_steps(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in result.get("steps", []) if s.get("status") != "pass"]


def step_ref(step: dict[str, Any]) -> str:
    return f"{step.get('scenario', '')} step {step.get('index', '?')}"


def size_text(n: int) -> str:
    for unit, scale in (("MiB", MIB), ("KiB", 1024)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def summary_line(result: dict[str, Any]) -> str:
    steps = result.get("steps", [])
    scenarios = result.get("scenarios", [])
    failed_sc = sum(1 for s in scenarios if s.get("verdict") != "pass")
    events = result.get("kernel_events", [])
    parts = [
        f"{failed_sc} of {len(scenarios)} scenarios failed" if failed_sc else f"{len(scenarios)} scenarios passed",
        f"{len(failing_steps(result))} of {len(steps)} steps failed",
    ]
    if events:
        sigs = len({e.get("signature") for e in events})
        parts.append(f"{len(events)} kernel events ({sigs} signature{'s' if sigs != 1 else ''})")
    else:
        parts.append("no kernel events")
    return ", ".join(parts)


def kernel_text(result: dict[str, Any]) -> str:
    k = result.get("kernel") or {}
    text = f"{k.get('release', '?')} ({k.get('package', '?')} {k.get('version', '?')})"
    booted = k.get("booted_release")
    if booted and booted != k.get("release"):
        text += f"; booted {booted}"
    if k.get("checkers"):
        text += f"; checkers on: {', '.join(k['checkers'])}"
    return text


def features_text(result: dict[str, Any]) -> str:
    """What the kernel lacks and what that switches off: an oracle that could not run is said, not hidden."""
    features = (result.get("kernel") or {}).get("features") or {}
    absent = features.get("absent") or []
    if not features:
        return "not checked"
    if not absent:
        return "every optional oracle is available"
    return "; ".join(f"{a['feature']}: not in this kernel ({a['without']})" for a in absent)


def cma_text(result: dict[str, Any]) -> str:
    cma = result.get("cma") or {}
    if not cma.get("base"):
        return f"unknown ({cma.get('note') or 'no cma: Reserved line in the boot log'})"
    base = int(str(cma["base"]), 16)
    return f"{cma['size_mib']} MiB at {hex(base)}–{hex(base + int(cma['size_mib']) * MIB)}"


def facts(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("target", str(result.get("target", "?"))),
        ("transport", str(result.get("transport", "serial"))),
        ("kernel", kernel_text(result)),
        ("CMA reservation", cma_text(result)),
        ("optional oracles", features_text(result)),
        ("driver", str(result.get("kmod", "?"))),
        ("scenarios", str(result.get("scenario", "?")).replace(",", ", ")),
        ("started", str(result.get("started", "?"))),
        ("total time", f"{float((result.get('timings') or {}).get('total', 0)):.2f} s"),
    ]


def block_rows(result: dict[str, Any]) -> list[tuple[str, int, int, int, int, int]]:
    """Per scenario: (name, allocations, wc, coherent, live at the scenario's end, outside the reservation)."""
    placed = blocks(result)
    base, size, known = reservation(result, placed)
    rows = []
    for name in _scenario_order(result, placed):
        mine = [b for b in placed if b.scenario == name]
        outside = sum(1 for b in mine if known and (b.phys < base or b.end > base + size))
        rows.append(
            (
                name,
                len(mine),
                sum(1 for b in mine if b.kind == "wc"),
                sum(1 for b in mine if b.kind == "coherent"),
                sum(1 for b in mine if b.live),
                outside,
            )
        )
    return rows


def _scenario_order(result: dict[str, Any], placed: list[Block]) -> list[str]:
    names = [str(s.get("name")) for s in result.get("scenarios", [])]
    return names + sorted({b.scenario for b in placed} - set(names))


def _stage_timings(result: dict[str, Any]) -> list[tuple[str, float]]:
    timings = result.get("timings") or {}
    ordered = [s for s in STAGES if s in timings] + [s for s in timings if s not in STAGES and s != "total"]
    return [(s, float(timings[s])) for s in ordered]


# --- Markdown ---------------------------------------------------------------------------------


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fence(text: str, lang: str = "") -> str:
    # A fence longer than any backtick run inside, so a report can never close it early.
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def _md_table(header: list[str], rows: Iterable[Iterable[object]], right: tuple[int, ...] = ()) -> list[str]:
    align = "|".join("---:" if i in right else "---" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", f"|{align}|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


MAX_PROBLEMS = 12  # a flood (one line per WARN) is summarised; result.json keeps them all


def _md_step_detail(step: dict[str, Any]) -> list[str]:
    lines = [f"### {step_ref(step)}: `{step.get('name', '')}` — {step.get('status', '?')}", ""]
    problems = step.get("problems", [])
    lines += [f"- {p}" for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"- … and {len(problems) - MAX_PROBLEMS} more (see result.json)")
    for n, cmd in enumerate(step.get("commands", []), 1):
        summary = f"command {n}: exit {cmd.get('status')}, {cmd.get('duration', 0):.3f} s"
        lines += ["", f"<details><summary>{summary}</summary>"]
        lines += ["", _fence(str(cmd.get("command", "")), "sh")]
        for stream in ("stdout", "stderr"):
            if cmd.get(stream):
                lines += ["", f"{stream}:", "", _fence(str(cmd[stream]))]
        lines += ["", "</details>"]
    return [*lines, ""]


def render_markdown(result: dict[str, Any], run_dir: Path | None = None) -> str:
    verdict = str(result.get("verdict", "error"))
    mark = {"pass": "🟢", "fail": "🔴"}.get(verdict, "🟣")
    lines = [f"# {mark} {verdict.upper()} — cma_mem on {result.get('target', '?')}", ""]
    lines += [f"**{summary_line(result)}**", ""]
    lines += _md_table(["", ""], facts(result))
    if run_dir is not None:
        present = [a for a in ARTIFACTS if (run_dir / a).exists()]
        if present:
            lines += ["", "Artifacts: " + ", ".join(f"[{a}]({a})" for a in present)]
    if result.get("error"):
        lines += ["", "## Error", "", _fence(str(result["error"]))]
    if result.get("problems"):
        lines += ["", "## Run problems", ""] + [f"- {p}" for p in result["problems"]]
    failing = failing_steps(result)
    if failing:
        lines += ["", f"## Failures ({len(failing)})", ""]
        for step in failing:
            lines += _md_step_detail(step)
    notes = step_notes(result)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {ref}: {note}" for ref, note in notes]
    groups = group_events(result.get("kernel_events", []))
    if groups:
        lines += ["", f"## Kernel events ({len(groups)} signatures)", ""]
        for g in groups:
            lines += [
                f"### {g['title']}",
                "",
                f"{g['kind']}, ×{g['count']}, signature `{g['signature']}`, first during `{g['step']}`",
                "",
                _fence(str(g.get("report", ""))),
                "",
            ]
    rows = block_rows(result)
    if any(r[1] for r in rows):
        lines += ["", "## Blocks in the CMA reservation", ""]
        header = ["scenario", "allocations", "wc", "coherent", "live at end", "outside reservation"]
        lines += _md_table(header, [r for r in rows if r[1]], right=(1, 2, 3, 4, 5))
    lines += ["", "## Scenarios", ""]
    scen_rows = []
    for sc in result.get("scenarios", []):
        failed = sum(1 for s in failing if s.get("scenario") == sc.get("name"))
        scen_rows.append([sc.get("name"), sc.get("verdict"), sc.get("steps"), failed, f"{sc.get('duration', 0):.2f}"])
    lines += _md_table(["scenario", "verdict", "steps", "failed", "s"], scen_rows, right=(2, 3, 4))
    for sc in result.get("scenarios", []):
        steps = [s for s in result.get("steps", []) if s.get("scenario") == sc.get("name")]
        lines += ["", f"### {sc.get('name')} — {sc.get('verdict')}", ""]
        step_rows = [
            [s.get("index"), f"`{s.get('name')}`", s.get("status"), f"{s.get('duration', 0):.3f}"] for s in steps
        ]
        lines += _md_table(["#", "step", "result", "s"], step_rows, right=(0, 3))
    lines += ["", "## Stage timings", ""]
    lines += _md_table(["stage", "s"], [(s, f"{t:.3f}") for s, t in _stage_timings(result)], right=(1,))
    total = (result.get("timings") or {}).get("total")
    if total is not None:
        lines.append(f"| **total** | **{float(total):.3f}** |")
    if result.get("console_tail"):
        lines += ["", "## Console tail", "", _fence(str(result["console_tail"]))]
    return "\n".join(lines) + "\n"


# --- HTML -------------------------------------------------------------------------------------

MAP_W, LABEL_W, ROW_H, MAX_ROWS, MIN_PX = 960, 150, 13, 4, 2.0

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1f2328;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:20px;margin:0}h2{font-size:17px;margin:0 0 12px}h3{font-size:15px;margin:0 0 6px}
section{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:16px 20px;margin:16px 0}
.banner{display:flex;align-items:center;gap:20px;color:#fff;border:0}
.verdict{font-size:40px;font-weight:800;letter-spacing:2px;padding:4px 18px;border:3px solid #fff;border-radius:8px}
.banner .sub{font-size:15px;opacity:.95}
dl.facts{display:grid;grid-template-columns:170px 1fr;gap:4px 16px;margin:0}
dl.facts dt{color:#57606a}dl.facts dd{margin:0;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
font-size:13px;word-break:break-all}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{color:#57606a;font-weight:600;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:#f6f8fa;border:1px solid #eaeef2;border-radius:6px;padding:8px 10px;overflow:auto;max-height:420px;
white-space:pre-wrap;word-break:break-all;margin:6px 0}
.badge{display:inline-block;min-width:44px;text-align:center;border-radius:10px;padding:0 8px;font-size:12px;
font-weight:700;color:#fff}
.b-pass{background:#15803d}.b-fail{background:#b91c1c}.b-error{background:#7e22ce}.b-other{background:#6e7781}
.kind{background:#fde68a;color:#713f12}
tr.failed td{background:#fff1f1}
ul.problems{margin:4px 0 4px 18px;padding:0;color:#b91c1c}
.failure{border-left:4px solid #b91c1c;padding:4px 0 4px 12px;margin:10px 0}
.event{border-left:4px solid #d97706;padding:4px 0 4px 12px;margin:12px 0}
.muted{color:#57606a}.small{font-size:12px}
details>summary{cursor:pointer;color:#0969da;margin:4px 0}
details.step>summary{color:#1f2328;margin:0}details.step[open]{padding-bottom:6px}
details.scenario{border-top:1px solid #eaeef2;padding:6px 0}
details.scenario>summary{color:#1f2328;font-weight:600}
.bar{height:10px;background:#8c959f;border-radius:2px;display:inline-block;vertical-align:middle}
.legend span{margin-right:16px;white-space:nowrap}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-2px;margin-right:4px}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif}
a{color:#0969da}
"""


def _badge(status: object) -> str:
    status = str(status)
    cls = f"b-{status}" if status in VERDICT_COLOURS else "b-other"
    return f'<span class="badge {cls}">{escape(status)}</span>'


def _pack(mine: list[Block]) -> list[int]:
    """Row of each block in its lane: first row with no address overlap, the last row once MAX_ROWS are taken."""
    rows: list[list[tuple[int, int]]] = []
    out = []
    for b in mine:
        for i, taken in enumerate(rows):
            if all(b.end <= s or b.phys >= e for s, e in taken):
                taken.append((b.phys, b.end))
                out.append(i)
                break
        else:
            if len(rows) < MAX_ROWS:
                rows.append([(b.phys, b.end)])
            else:
                rows[-1].append((b.phys, b.end))
            out.append(len(rows) - 1)
    return out


def _tick_step(span: int) -> int:
    step = 64 * 1024
    while span / step > 8:
        step *= 2
    return step


def zoom_window(result: dict[str, Any]) -> tuple[int, int] | None:
    """The used part of the reservation, when the blocks sit in under a quarter of it (else None)."""
    placed = blocks(result)
    base, size, _ = reservation(result, placed)
    inside = [b for b in placed if base <= b.phys and b.end <= base + size]
    if not inside:
        return None
    lo = max(base, min(b.phys for b in inside) // MIB * MIB)
    hi = min(base + size, -(-max(b.end for b in inside) // MIB) * MIB)
    return (lo, hi) if hi - lo < size // 4 else None


def svg_block_map(result: dict[str, Any], window: tuple[int, int] | None = None) -> str:
    """The reservation as one bar per scenario, each allocation a rect at its physical range.

    `window` draws only that address range (a zoom on the used part); blocks outside it are
    clamped to its edges so that every allocation still has its rect.
    """
    placed = blocks(result)
    base, size, known = reservation(result, placed)
    lo, hi = window or (base, base + size)
    lanes = [(name, [b for b in placed if b.scenario == name]) for name in _scenario_order(result, placed)]
    lanes = [(n, m) for n, m in lanes if m]
    scale = MAP_W / (hi - lo)

    def x_of(addr: int) -> float:
        return LABEL_W + (min(max(addr, lo), hi) - lo) * scale

    parts: list[str] = []
    y = 32
    for name, mine in lanes:
        rows = _pack(mine)
        height = max((max(rows) + 1) * (ROW_H + 3) + 5, 34)
        parts.append(
            f'<rect x="{LABEL_W}" y="{y}" width="{MAP_W}" height="{height}" fill="#eef1f4" stroke="#d0d7de"/>'
            f'<text x="{LABEL_W - 8}" y="{y + 14}" text-anchor="end" font-size="12" font-weight="600">'
            f"{escape(name)}</text>"
            f'<text x="{LABEL_W - 8}" y="{y + 28}" text-anchor="end" font-size="10.5" fill="#57606a">'
            f"{len(mine)} block{'s' if len(mine) != 1 else ''}</text>"
        )
        for b, row in zip(mine, rows, strict=True):
            parts.append(_svg_block(b, x_of(b.phys), x_of(b.end), y + 4 + row * (ROW_H + 3), known, base, size))
        y += height + 8
    ticks = []
    step = _tick_step(hi - lo)
    first = lo + (-(lo - base) % step)
    for addr in range(first, hi + 1, step):
        x = LABEL_W + (addr - lo) * scale
        ticks.append(
            f'<line x1="{x:.1f}" y1="25" x2="{x:.1f}" y2="{y - 4}" stroke="#8c959f" stroke-dasharray="2 3"/>'
            f'<text x="{x:.1f}" y="11" text-anchor="middle" font-size="10.5" fill="#57606a">'
            f"+{size_text(addr - base) if addr > base else '0'}</text>"
            f'<text x="{x:.1f}" y="23" text-anchor="middle" font-size="9.5" fill="#8c959f">{hex(addr)}</text>'
        )
    if not lanes:
        parts.append(f'<text x="{LABEL_W}" y="{y + 14}" font-size="12" fill="#57606a">no allocations</text>')
        y += 24
    width = LABEL_W + MAP_W + 40
    cls = "blockmap zoom" if window else "blockmap"
    return (
        f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {y}" width="100%" '
        f'role="img" aria-label="CMA block map">{"".join(ticks)}{"".join(parts)}</svg>'
    )


def _svg_block(b: Block, x0: float, x1: float, y: int, known: bool, base: int, size: int) -> str:
    outside = known and (b.phys < base or b.end > base + size)
    colour = TYPE_COLOURS.get(b.kind, "#6e7781")
    style = 'stroke="#111" stroke-width="1.2"' if b.live else 'fill-opacity="0.35" stroke="#fff" stroke-width="0.6"'
    if outside:
        style = 'stroke="#dc2626" stroke-width="2"'
    freed = f"freed at step {b.freed_at}" if b.freed_at is not None else "released when its process ended"
    if b.live:
        freed = "still allocated when the scenario ended"
    title = (
        f"{b.name} ({b.kind}) · {b.scenario}, process {b.process}\nallocated at step {b.step}; {freed}\n"
        f"phys {hex(b.phys)}–{hex(b.end)} ({size_text(b.length)}, len {b.length})"
        + ("\nOUTSIDE the CMA reservation" if outside else "")
        + (f"\ndmesg says phys {hex(b.dmesg_phys)}" if b.dmesg_phys is not None else "")
    )
    return (
        f'<rect class="alloc" x="{x0:.1f}" y="{y}" width="{max(x1 - x0, MIN_PX):.1f}" height="{ROW_H}" '
        f'fill="{colour}" {style}><title>{escape(title)}</title></rect>'
    )


def svg_timings(result: dict[str, Any]) -> str:
    stages = _stage_timings(result)
    total = float((result.get("timings") or {}).get("total", 0)) or sum(t for _, t in stages) or 1.0
    bar_w, label_w, h = 640, 130, 20
    rows = []
    for i, (name, seconds) in enumerate(stages):
        y = i * h
        w = max(seconds / total * bar_w, 1.0)
        rows.append(
            f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end" font-size="12">{escape(name)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{h - 8}" fill="#0969da" rx="2">'
            f"<title>{escape(name)}: {seconds:.3f} s</title></rect>"
            f'<text x="{label_w + w + 6:.1f}" y="{y + 14}" font-size="11.5" fill="#57606a">{seconds:.3f} s '
            f"({seconds / total:.0%})</text>"
        )
    height = len(stages) * h + 4
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {label_w + bar_w + 130} {height}" '
        f'width="{label_w + bar_w + 130}" role="img" aria-label="stage timings">{"".join(rows)}</svg>'
    )


def _html_commands(step: dict[str, Any]) -> str:
    out = []
    for n, cmd in enumerate(step.get("commands", []), 1):
        head = f"command {n} · exit {escape(str(cmd.get('status')))} · {float(cmd.get('duration', 0)):.3f} s"
        body = f'<div class="muted small">{head}</div><pre>$ {escape(str(cmd.get("command", "")))}</pre>'
        for stream in ("stdout", "stderr"):
            if cmd.get(stream):
                body += f'<div class="muted small">{stream}</div><pre>{escape(str(cmd[stream]))}</pre>'
        out.append(body)
    return "".join(out)


def _html_problems(problems: list[str]) -> str:
    if not problems:
        return ""
    shown = "".join(f"<li>{escape(p)}</li>" for p in problems[:MAX_PROBLEMS])
    rest = problems[MAX_PROBLEMS:]
    more = ""
    if rest:
        items = "".join(f"<li>{escape(p)}</li>" for p in rest)
        more = f'<details><summary>{len(rest)} more problems</summary><ul class="problems">{items}</ul></details>'
    return f'<ul class="problems">{shown}</ul>{more}'


def _html_subtests(step: dict[str, Any]) -> str:
    subs = step.get("subtests") or []
    if not subs:
        return ""
    rows = "".join(
        f"<tr><td>{escape(str(t.get('number', '')))}</td><td>{escape(str(t.get('name', '')))}</td>"
        f"<td>{_badge(t.get('status'))}</td></tr>"
        for t in subs
    )
    return f"<details><summary>{len(subs)} KTAP subtests</summary><table>{rows}</table></details>"


def _html_failures(result: dict[str, Any]) -> str:
    failing = failing_steps(result)
    if not failing:
        return ""
    items = []
    for s in failing:
        anchor = _anchor(s)
        items.append(
            f'<div class="failure"><h3><a href="#{anchor}">{escape(step_ref(s))}</a>: '
            f"<code>{escape(str(s.get('name', '')))}</code> {_badge(s.get('status'))}</h3>"
            f"{_html_problems(s.get('problems', []))}{_html_subtests(s)}"
            f"<details><summary>guest commands ({len(s.get('commands', []))}) and their output</summary>"
            f"{_html_commands(s)}</details></div>"
        )
    return f'<section id="failures"><h2>Failures ({len(failing)})</h2>{"".join(items)}</section>'


def _anchor(step: dict[str, Any]) -> str:
    return f"step-{step.get('scenario', '')}-{step.get('index', '')}".replace(" ", "_")


def _html_events(result: dict[str, Any]) -> str:
    groups = group_events(result.get("kernel_events", []))
    if not groups:
        return ""
    events = result.get("kernel_events", [])
    items = []
    for i, g in enumerate(groups):
        steps = sorted({str(e.get("step")) for e in events if e.get("signature") == g["signature"]})
        where = f"first during <code>{escape(str(g.get('step')))}</code>"
        if len(steps) > 1:
            where += f", in {len(steps)} steps"
        items.append(
            f'<div class="event"><h3><span class="badge kind">{escape(str(g["kind"]))}</span> '
            f'{escape(str(g["title"]))} <span class="muted">×{g["count"]}</span></h3>'
            f'<div class="small muted">signature <code>{escape(str(g["signature"]))}</code> · {where}</div>'
            f"<details{' open' if i == 0 else ''}><summary>report</summary>"
            f"<pre>{escape(str(g.get('report', '')))}</pre></details></div>"
        )
    title = f"Kernel events ({len(events)} events, {len(groups)} signature{'s' if len(groups) != 1 else ''})"
    return f'<section id="events"><h2>{title}</h2>{"".join(items)}</section>'


def _html_block_map(result: dict[str, Any]) -> str:
    placed = blocks(result)
    _, size, known = reservation(result, placed)
    px = size / MAP_W
    where = cma_text(result) if known else "reservation unknown: the span of the blocks is drawn"
    legend = (
        '<div class="legend small">'
        f'<span><i class="sw" style="background:{TYPE_COLOURS["wc"]}"></i>write-combine</span>'
        f'<span><i class="sw" style="background:{TYPE_COLOURS["coherent"]}"></i>coherent</span>'
        '<span><i class="sw" style="background:#8c959f;opacity:.3"></i>faded: freed (by a free step or its '
        "process ending)</span>"
        '<span><i class="sw" style="background:#8c959f;outline:1.5px solid #111"></i>solid, outlined: live when '
        "its scenario ended</span>"
        '<span><i class="sw" style="outline:2px solid #dc2626"></i>outside the reservation</span></div>'
    )
    note = (
        f'<p class="small muted">{escape(where)}. Scale: the bar is the whole reservation, 1 px ≈ '
        f"{size_text(int(px))}; blocks narrower than {MIN_PX:.0f} px are drawn {MIN_PX:.0f} px wide. "
        f"One lane per scenario (addresses are reused between scenarios); blocks overlapping in address share "
        f"up to {MAX_ROWS} rows, then stack. Hover a block for its name, step, address and size.</p>"
    )
    zoom = zoom_window(result)
    if zoom:
        note += (
            f"<h3>Zoom: {hex(zoom[0])}–{hex(zoom[1])} ({size_text(zoom[1] - zoom[0])}, where the blocks are)</h3>"
            f"{svg_block_map(result, zoom)}"
            f'<p class="small muted">1 px ≈ {size_text(int((zoom[1] - zoom[0]) / MAP_W))}.</p>'
        )
    head = '<section id="blockmap"><h2>Block map of the CMA reservation</h2>'
    return f"{head}{legend}{svg_block_map(result)}{note}</section>"


def _html_scenarios(result: dict[str, Any]) -> str:
    scenarios = result.get("scenarios", [])
    steps = result.get("steps", [])
    longest = max([float(s.get("duration", 0)) for s in scenarios] + [1e-9])
    summary_rows = []
    blocks_out = []
    for sc in scenarios:
        mine = [s for s in steps if s.get("scenario") == sc.get("name")]
        failed = sum(1 for s in mine if s.get("status") != "pass")
        duration = float(sc.get("duration", 0))
        bar = f'<span class="bar" style="width:{duration / longest * 160:.0f}px"></span>'
        summary_rows.append(
            f"<tr{' class=failed' if sc.get('verdict') != 'pass' else ''}><td>{escape(str(sc.get('name')))}</td>"
            f"<td>{_badge(sc.get('verdict'))}</td><td class=num>{len(mine)}</td><td class=num>{failed}</td>"
            f"<td class=num>{duration:.2f} s</td><td>{bar}</td></tr>"
        )
        rows = []
        for s in mine:
            bad = s.get("status") != "pass"
            # The step name opens its guest commands: one line per step until someone asks for more.
            name = f"<code>{escape(str(s.get('name')))}</code>"
            if s.get("commands"):
                name = f'<details class="step"><summary>{name}</summary>{_html_commands(s)}</details>'
            extra = _html_problems(s.get("problems", [])) + _html_subtests(s)
            rows.append(
                f'<tr id="{_anchor(s)}"{" class=failed" if bad else ""}><td class=num>{s.get("index")}</td>'
                f"<td>{name}{extra}</td><td>{_badge(s.get('status'))}</td>"
                f"<td class=num>{float(s.get('duration', 0)):.3f}</td><td class=num>{s.get('line', '')}</td></tr>"
            )
        head = "<tr><th class=num>#</th><th>step</th><th>result</th><th class=num>s</th><th class=num>line</th></tr>"
        path = escape(str(sc.get("path", "")))
        blocks_out.append(
            f'<details class="scenario"{" open" if sc.get("verdict") != "pass" else ""}>'
            f"<summary>{escape(str(sc.get('name')))} {_badge(sc.get('verdict'))} "
            f'<span class="muted small">{len(mine)} steps · {path}</span></summary>'
            f"<table>{head}{''.join(rows)}</table></details>"
        )
    head = (
        "<tr><th>scenario</th><th>verdict</th><th class=num>steps</th><th class=num>failed</th>"
        "<th class=num>time</th><th></th></tr>"
    )
    return (
        f'<section id="scenarios"><h2>Scenarios and steps</h2><table>{head}{"".join(summary_rows)}</table>'
        f'<p class="small muted">Failing scenarios are open; click a scenario for its steps, a step for its '
        f"guest commands and their output.</p>{''.join(blocks_out)}</section>"
    )


def render_html(result: dict[str, Any], run_dir: Path | None = None) -> str:
    verdict = str(result.get("verdict", "error"))
    colour = VERDICT_COLOURS.get(verdict, "#6e7781")
    title = f"{verdict.upper()} · cma_mem on {result.get('target', '?')} · {result.get('scenario', '')}"
    fact_rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts(result))
    if run_dir is not None:
        present = [a for a in ARTIFACTS if (run_dir / a).exists()]
        if present:
            links = " · ".join(f'<a href="{a}">{a}</a>' for a in present)
            fact_rows += f"<dt>artifacts</dt><dd>{links}</dd>"
    parts = [
        f'<section class="banner" style="background:{colour}"><div class="verdict">{escape(verdict.upper())}</div>'
        f"<div><h1>cma_mem on {escape(str(result.get('target', '?')))}</h1>"
        f'<div class="sub">{escape(summary_line(result))}</div></div></section>',
        f'<section><dl class="facts">{fact_rows}</dl></section>',
    ]
    if result.get("error"):
        parts.append(f"<section><h2>Error</h2><pre>{escape(str(result['error']))}</pre></section>")
    if result.get("problems"):
        parts.append(f"<section><h2>Run problems</h2>{_html_problems(list(result['problems']))}</section>")
    notes = step_notes(result)
    if notes:
        items = "".join(f"<li>{escape(ref)}: {escape(note)}</li>" for ref, note in notes)
        parts.append(f'<section id="notes"><h2>Notes</h2><ul>{items}</ul></section>')
    parts += [_html_failures(result), _html_events(result), _html_block_map(result), _html_scenarios(result)]
    parts.append(f'<section id="timings"><h2>Stage timings</h2>{svg_timings(result)}</section>')
    if result.get("console_tail"):
        parts.append(f"<section><h2>Console tail</h2><pre>{escape(str(result['console_tail']))}</pre></section>")
    body = "".join(p for p in parts if p)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body><main>{body}"
        '<p class="small muted">Rendered by <code>cma-harness report</code> from result.json.</p>'
        "</main></body></html>\n"
    )


def write_reports(run_dir: Path, formats: Iterable[str] = ("md", "html")) -> list[Path]:
    result = load_result(run_dir)
    written = []
    for fmt in formats:
        path = run_dir / f"report.{fmt}"
        text = render_markdown(result, run_dir) if fmt == "md" else render_html(result, run_dir)
        path.write_text(text)
        written.append(path)
    return written
