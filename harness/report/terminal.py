"""Verdict table at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.oracles.faults import group_events
from harness.run.result import STOPPED_EARLY, RunResult

COLOURS = {"pass": "green", "fail": "red", "error": "magenta"}


def print_summary(record: RunResult, out: Path, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"{record.scenario} on {record.target}", show_lines=False)
    if len(record.scenarios) > 1:
        table.add_column("scenario")
    table.add_column("#", justify="right")
    table.add_column("step")
    table.add_column("result")
    table.add_column("s", justify="right")
    for step in record.steps:
        colour = COLOURS.get(step.status, "white")
        table.add_row(str(step.index), step.name, f"[{colour}]{step.status}[/{colour}]", f"{step.duration:.3f}")
    if record.steps:
        console.print(table)
    # Problems unwrapped, one per line: CI logs and grep must see them whole.
    for step in record.steps:
        for problem in step.problems:
            where = f"{step.scenario} step {step.index}"
            # An interrupted step (status error) is the environment's, not a failure of the driver.
            label = "[magenta]ERROR[/magenta]" if step.status == "error" else "[red]FAIL[/red]"
            console.print(f"{label} {where} ({step.name}): {problem}", soft_wrap=True)
    for event in group_events(record.kernel_events):
        times = f" (x{event['count']})" if event["count"] != 1 else ""
        console.print(
            f"[red]kernel {event['kind']}[/red]{times}: {event['title']}  [dim]first during {event['step']!r}[/dim]",
            soft_wrap=True,
        )
    for problem in record.problems:
        console.print(f"[red]problem:[/red] {problem}")
    absent = [a["feature"] for a in (record.kernel.get("features") or {}).get("absent", [])]
    if absent:
        # Oracles this kernel cannot run: said on every run, so a pass is not read as more than it is.
        console.print(f"[dim]not in this kernel (oracles off): {', '.join(absent)}[/dim]", soft_wrap=True)
    boot = record.kernel.get("boot") or {}
    if boot.get("mode") == "restored":
        console.print(f"[dim]guest restored from snapshot {boot.get('snapshot', '?')} (--snapshot off boots)[/dim]")
    elif boot.get("note"):
        console.print(f"[dim]booted: {boot['note']}[/dim]", soft_wrap=True)
    elif boot.get("saved"):
        console.print(f"[dim]booted; snapshot {boot.get('snapshot', '?')} saved for the next runs[/dim]")
    if record.console_tail and record.console_tail.rstrip() not in record.error:  # said once
        console.print("console tail:\n" + record.console_tail, soft_wrap=True, markup=False)
    if record.error:
        console.print("error: " + record.error, soft_wrap=True, markup=False, style="magenta")
    if record.not_run:
        early = any(p.startswith(STOPPED_EARLY) for p in record.problems)
        why = "the run stopped early, see the problem above" if early else "-x stopped at the first failure"
        console.print(f"not run ({why}): {', '.join(record.not_run)}", soft_wrap=True)
    kernel = record.kernel.get("release", "?")
    cma = record.cma
    cma_text = f"cma {cma['size_mib']} MiB at {cma['base']}" if cma.get("base") else "cma ?"
    colour = COLOURS.get(record.verdict, "white")
    console.print(
        f"verdict: [bold {colour}]{record.verdict.upper()}[/bold {colour}]  "
        f"kernel {kernel}, {cma_text}, {record.timings.get('total', 0):.2f} s  → {out}"
    )


def print_matrix(records: list[RunResult], out: Path, console: Any) -> None:
    """One table for a run over several targets: scenario rows, target columns."""
    from rich.table import Table

    table = Table(title="targets × scenarios")
    table.add_column("scenario")
    for record in records:
        table.add_column(record.target)
    names = list(dict.fromkeys(s.name for r in records for s in r.scenarios))
    for name in names:
        cells = []
        for record in records:
            verdict = next((s.verdict for s in record.scenarios if s.name == name), record.verdict)
            cells.append(f"[{COLOURS.get(verdict, 'white')}]{verdict}[/]")
        table.add_row(name, *cells)
    table.add_row("[bold]verdict[/bold]", *(f"[bold {COLOURS.get(r.verdict, 'white')}]{r.verdict}[/]" for r in records))
    console.print(table)
    console.print(f"run directories: {out}/<target>")
