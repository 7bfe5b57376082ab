"""`cma-harness report` and `cma-harness compare`: read finished run directories, never a guest.

A run directory is one holding result.json, or (from `run --target a,b`) one whose
subfolders each hold one; the latter is reported per target, and compared target by target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness.errors import EXIT_FAIL, EXIT_PASS, EXIT_USAGE


def add_parsers(sub: Any) -> None:
    """Add `report` and `compare` to the CLI's subparsers (argparse's _SubParsersAction)."""
    p = sub.add_parser("report", help="render RUN_DIR/result.json to report.md and report.html")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds result.json)")
    p.add_argument("--format", choices=("md", "html", "both"), default="both", help="what to write (default both)")
    p = sub.add_parser(
        "compare", help="what changed from BASE_RUN to CANDIDATE_RUN; exit 1 on a regression, 2 on unreadable input"
    )
    p.add_argument("base", metavar="BASE_RUN", help="the known-good run directory")
    p.add_argument("candidate", metavar="CANDIDATE_RUN", help="the run to judge")
    p.add_argument(
        "--out",
        help="where to write the comparison (default CANDIDATE_RUN/compare.md; .html and .json are written beside it)",
    )


def run_dirs(path: Path) -> list[Path]:
    """The run directories at `path`: itself, or its per-target subfolders."""
    if (path / "result.json").is_file():
        return [path]
    if path.is_dir():
        return sorted(p.parent for p in path.glob("*/result.json"))
    return []


def _unreadable(message: str) -> int:
    print(f"cma-harness: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report.render import write_reports
    from harness.run.result import ResultError

    root = Path(args.run_dir)
    dirs = run_dirs(root)
    if not dirs:
        return _unreadable(f"{root}: no result.json here (is this a run directory from 'cma-harness run --out'?)")
    formats = ("md", "html") if args.format == "both" else (args.format,)
    try:
        for run_dir in dirs:
            for path in write_reports(run_dir, formats):
                print(path)
    except ResultError as exc:
        return _unreadable(str(exc))
    return EXIT_PASS


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.report.compare import compare, render
    from harness.report.render import load_result
    from harness.run.result import ResultError

    base_root, cand_root = Path(args.base), Path(args.candidate)
    pairs = _pairs(base_root, cand_root)
    if isinstance(pairs, str):
        return _unreadable(pairs)
    texts, worst, comparisons = [], EXIT_PASS, []
    try:
        for base_dir, cand_dir in pairs:
            c = compare(load_result(base_dir), load_result(cand_dir), str(base_dir), str(cand_dir))
            texts.append(render(c))
            comparisons.append(c)
            worst = max(worst, EXIT_FAIL if c.regression else EXIT_PASS)
    except ResultError as exc:
        return _unreadable(str(exc))
    text = "\n".join(texts)
    out = Path(args.out) if args.out else cand_root / "compare.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text, end="")
    written = [out, *_write_formats(comparisons, out)]
    for c in comparisons:
        if c.provenance.warning():
            print(f"cma-harness: warning: {c.cand_name}: {c.provenance.warning()}", file=sys.stderr)
    print("→ " + ", ".join(str(p) for p in written), file=sys.stderr)
    return worst


def _write_formats(comparisons: list[Any], md: Path) -> list[Path]:
    """compare.html and compare.json beside compare.md."""
    import json

    from harness.report.compare_formats import render_html, render_json

    html, data = md.with_suffix(".html"), md.with_suffix(".json")
    html.write_text(render_html(comparisons))
    data.write_text(json.dumps(render_json(comparisons), indent=2) + "\n")
    return [html, data]


def _pairs(base_root: Path, cand_root: Path) -> list[tuple[Path, Path]] | str:
    """Match run directories: one to one, or per-target subfolders by target name."""
    base_dirs, cand_dirs = run_dirs(base_root), run_dirs(cand_root)
    for root, dirs in ((base_root, base_dirs), (cand_root, cand_dirs)):
        if not dirs:
            return f"{root}: no result.json here (is this a run directory from 'cma-harness run --out'?)"
    if len(base_dirs) == 1 and len(cand_dirs) == 1:
        return [(base_dirs[0], cand_dirs[0])]
    by_name = {d.name: d for d in base_dirs}
    pairs = [(by_name[d.name], d) for d in cand_dirs if d.name in by_name]
    if not pairs:
        return f"{base_root} and {cand_root}: no target subfolder in common"
    return pairs
