"""report.md / report.html from real captured runs (tests/fixtures/runs)."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import pytest

from harness.frontends import cli_reports
from harness.report.render import (
    blocks,
    load_result,
    render_html,
    render_markdown,
    svg_block_map,
    write_reports,
    zoom_window,
)
from harness.run.result import ResultError

RUNS = Path(__file__).parent / "fixtures" / "runs"


def run(name: str) -> dict:
    return json.loads((RUNS / name / "result.json").read_text())


class Checker(HTMLParser):
    """Collects what a self-contained page must not have, and checks that tags nest."""

    VOID: ClassVar[set[str]] = {"meta", "br", "hr", "img", "input", "link", "line", "rect", "path", "circle"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts += 1
        for key, value in attrs:
            if key in ("src", "href") and value and re.match(r"https?:|//", value):
                self.external.append(value)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


@pytest.mark.parametrize("name", ["clean-suite", "warn-on-free", "wc-never-freed", "wrong-phys"])
def test_html_is_self_contained_and_well_formed(name):
    page = render_html(run(name))
    checker = Checker()
    checker.feed(page)
    assert checker.stack == ["html"] or checker.stack == [], checker.stack
    assert checker.external == [] and checker.scripts == 0
    assert "<style>" in page


def test_failing_run_puts_failures_and_kernel_events_first():
    page = render_html(run("warn-on-free"))
    assert '<div class="verdict">FAIL</div>' in page
    # Failures, then events, then the block map: what a reader needs first comes first.
    order = [page.index(f'id="{s}"') for s in ("failures", "events", "blockmap", "scenarios", "timings")]
    assert order == sorted(order)
    assert "smoke step 10" in page and "WARNING in cma_mem_ioctl" in page
    assert "×45" in page  # 45 events, one signature
    assert "a90568c6e410" in page
    assert page.count("<pre>") >= 2  # the event report and command output


def test_problem_floods_are_summarised_but_kept():
    result = run("warn-on-free")
    step17 = next(s for s in result["steps"] if s["index"] == 17)
    step17["problems"] = step17["problems"] * 3  # a longer scenario makes many more WARN lines
    page = render_html(result)
    assert f"{len(step17['problems']) - 12} more problems" in page
    assert page.count(step17["problems"][-1]) >= 3  # hidden behind <details>, not dropped


def test_block_map_has_one_rect_per_allocation_inside_the_reservation():
    result = run("clean-suite")
    svg = svg_block_map(result)
    rects = re.findall(r'<rect class="alloc" x="([\d.]+)" y="\d+" width="([\d.]+)"', svg)
    assert len(rects) == len(result["allocations"]) == 93
    for x, width in rects:
        assert float(x) >= 150 and float(x) + float(width) <= 150 + 960 + 2
    # Every scenario with allocations has its lane.
    for name in ("exhaustion", "fragmentation", "stress"):
        assert f">{name}</text>" in svg
    # The 64 MiB 'half' block of exhaustion is half the bar wide.
    assert any(abs(float(w) - 480) < 1 for _, w in rects)


def test_block_titles_name_the_allocation():
    svg = svg_block_map(run("wrong-phys"))
    assert "mem1 (wc) · smoke, process main" in svg
    assert "dmesg says phys 0x76d00000" in svg  # the ioctl said one page more


def test_zoom_only_when_the_blocks_use_a_small_part():
    assert zoom_window(run("clean-suite")) is None
    lo, hi = zoom_window(run("wc-never-freed")) or (0, 0)
    placed = blocks(run("wc-never-freed"))
    assert lo <= min(b.phys for b in placed) and max(b.end for b in placed) <= hi
    assert hi - lo < 32 << 20
    page = render_html(run("wc-never-freed"))
    assert 'class="blockmap zoom"' in page


def test_markdown_has_the_same_story():
    md = render_markdown(run("wc-never-freed"))
    assert md.startswith("# 🔴 FAIL — cma_mem on arm64-virt")
    assert "## Failures (1)" in md
    assert "CMA capacity leak: 6291456 bytes fewer allocatable" in md
    assert "| CMA reservation | 128 MiB at 0x76c00000–0x7ec00000 |" in md
    assert "## Stage timings" in md and "| **total** |" in md
    clean = render_markdown(run("clean-suite"))
    assert "🟢 PASS" in clean and "## Failures" not in clean and "## Kernel events" not in clean
    assert "| stress | 40 | 40 | 0 | 0 | 0 |" in clean  # the fixture keeps stress's first 40 (wc) blocks


def test_markdown_fences_survive_backticks_in_output():
    result = run("wrong-phys")
    result["steps"][2]["commands"][0]["stdout"] = "```\nnot the end\n```"
    md = render_markdown(result)
    assert "````\n```\nnot the end\n```\n````" in md


def test_error_run_without_steps_still_renders():
    result = {"verdict": "error", "target": "arm64-virt", "error": "guest did not boot", "console_tail": "[ 0.1] x"}
    page = render_html(result)
    assert "ERROR" in page and "guest did not boot" in page and "no allocations" in page
    assert "guest did not boot" in render_markdown(result)


def test_write_reports_and_cli(tmp_path, capsys):
    shutil.copy(RUNS / "warn-on-free" / "result.json", tmp_path / "result.json")
    (tmp_path / "console.log").write_text("x")
    paths = write_reports(tmp_path)
    assert [p.name for p in paths] == ["report.md", "report.html"]
    assert '<a href="console.log">console.log</a>' in (tmp_path / "report.html").read_text()
    args = _parse("report", str(tmp_path), "--format", "md")
    assert cli_reports.cmd_report(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.md")


def test_unreadable_run_is_exit_2(tmp_path, capsys):
    assert cli_reports.cmd_report(_parse("report", str(tmp_path))) == 2
    (tmp_path / "result.json").write_text("{not json")
    with pytest.raises(ResultError):
        load_result(tmp_path)
    assert cli_reports.cmd_report(_parse("report", str(tmp_path))) == 2
    assert "cannot read a run result" in capsys.readouterr().err


def test_multi_target_run_directory_is_reported_per_target(tmp_path, capsys):
    for target in ("arm64-virt", "armv7-virt"):
        (tmp_path / target).mkdir()
        shutil.copy(RUNS / "wrong-phys" / "result.json", tmp_path / target / "result.json")
    assert cli_reports.cmd_report(_parse("report", str(tmp_path))) == 0
    assert len(capsys.readouterr().out.split()) == 4


def _parse(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    cli_reports.add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)
