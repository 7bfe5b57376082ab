"""The side-by-side report of `cma-harness heap-compare`: Markdown and HTML from compare.json."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from harness.report.render import CSS, size_text

BACKEND_TEXT = {"driver": "cma_mem", "heap": "CMA heap"}
HEADER = [
    "size",
    "backend",
    "total allocatable",
    "buffers",
    "fragmentation: fill, free every other, then 2×size / 1×size",
    "alloc (median)",
    "map (median)",
    "free (median)",
]


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / (1 << 20):.1f} MiB"


def _us(ns: int | None) -> str:
    if ns is None:
        return "—"
    return f"{ns / 1000:.0f} µs" if ns >= 100_000 else f"{ns / 1000:.1f} µs"


def _frag(f: dict[str, Any] | None) -> str:
    if not f:
        return "—"
    return f"{f['filled']} filled, {f['freed']} freed: 2×size {f['double'] if f['double'] != '0' else 'ok'}, " + (
        f"1×size {f['single'] if f['single'] != '0' else 'ok'}"
    )


def table_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for row in data.get("rows", []):
        rows.append(
            [
                size_text(row["size"]),
                BACKEND_TEXT.get(row["backend"], row["backend"]),
                _mib(row["total"]),
                "—" if row["count"] is None else str(row["count"]),
                _frag(row["fragmentation"]),
                _us(row["alloc_ns"]),
                _us(row["map_ns"]) if row["backend"] == "heap" else "(in alloc)",
                _us(row["free_ns"]),
            ]
        )
    return rows


def facts(data: dict[str, Any]) -> list[tuple[str, str]]:
    kernel = data.get("kernel", {})
    cma = data.get("cma", {})
    heap = data.get("heap", {})
    out = [
        ("target", str(data.get("target", "?"))),
        ("kernel", str(kernel.get("booted_release") or kernel.get("release", "?"))),
        ("CMA", f"{cma.get('size_mib', '?')} MiB at {cma.get('base', '?')}"),
        (
            "CMA heap",
            f"/dev/dma_heap/{heap.get('name')}" if heap.get("available") else str(heap.get("reason", "unavailable")),
        ),
        ("latency", f"median of {data.get('calls', '?')} calls per size and backend, timed in the guest"),
    ]
    largest = data.get("largest", {})
    for backend, value in largest.items():
        out.append((f"largest single allocation, {BACKEND_TEXT.get(backend, backend)}", _mib(value)))
    return out


def problems(data: dict[str, Any]) -> list[str]:
    out = [f"{size_text(r['size'])} {r['backend']}: {e}" for r in data.get("rows", []) for e in r.get("errors", [])]
    out += [f"kernel {e.get('kind')}: {e.get('title')}" for e in data.get("kernel_events", [])]
    return out


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(data: dict[str, Any]) -> str:
    lines = [f"# cma_mem vs the kernel's CMA heap on {data.get('target', '?')}", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_md_cell(v)} |" for k, v in facts(data)]
    if not data.get("heap", {}).get("available"):
        lines += ["", f"**Comparison {data.get('heap', {}).get('reason', 'unavailable')}**: the driver alone below."]
    lines += ["", "| " + " | ".join(HEADER) + " |", "|---|---|---:|---:|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table_rows(data)]
    lines += [
        "",
        "alloc: `CMEM_ALLOCATE` (allocates, zeroes and maps) or `DMA_HEAP_IOCTL_ALLOC` (allocates and zeroes); "
        "map: `mmap()` of the dma-buf (pages are faulted in on touch; the driver maps in its ioctl); "
        "free: `CMEM_UNMAP`, or `munmap()` + `close()`. The driver's test-pattern fill is off.",
    ]
    found = problems(data)
    if found:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in found]
    return "\n".join(lines) + "\n"


def render_html(data: dict[str, Any]) -> str:
    title = f"cma_mem vs the kernel's CMA heap on {data.get('target', '?')}"
    fact_rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts(data))
    head = "".join(f"<th>{escape(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in table_rows(data))
    note = ""
    if not data.get("heap", {}).get("available"):
        note = f"<p><b>Comparison {escape(str(data.get('heap', {}).get('reason', 'unavailable')))}</b></p>"
    found = problems(data)
    probs = ""
    if found:
        probs = '<h2>Problems</h2><ul class="problems">' + "".join(f"<li>{escape(p)}</li>" for p in found) + "</ul>"
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<style>{CSS}</style></head><body><main><h1>{escape(title)}</h1>"
        f"<table>{fact_rows}</table>{note}<h2>Side by side</h2><table><tr>{head}</tr>{body}</table>{probs}"
        "</main></body></html>\n"
    )


def write_reports(out: Path, data: dict[str, Any]) -> list[Path]:
    written = []
    for name, text in (
        ("compare.json", json.dumps(data, indent=2) + "\n"),
        ("heap-compare.md", render_markdown(data)),
        ("heap-compare.html", render_html(data)),
    ):
        path = out / name
        path.write_text(text)
        written.append(path)
    return written
