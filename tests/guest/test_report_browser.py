"""The HTML report in a real browser: headless Chromium renders a committed run's report and we read the pixels.

No guest is booted (the result.json is a real captured run), so this is not marked `guest`;
it is marked `browser` and is never skipped: without Chromium it fails with the fix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import pytest

from harness.report.render import TYPE_COLOURS, VERDICT_COLOURS, render_html

pytestmark = pytest.mark.browser

RUNS = Path(__file__).resolve().parents[1] / "fixtures" / "runs"
WIDTH, HEIGHT = 1280, 2400  # tall enough to reach the block map below the kernel events


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no headless Chromium on PATH: run ./bootstrap.sh as root, or `apt-get install -y chromium`")


def screenshot(html: Path, png: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
        cmd = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={WIDTH},{HEIGHT}",
            html.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert png.exists(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def decode_png(data: bytes) -> tuple[int, int, list[bytes], int]:
    """(width, height, rows, bytes per pixel) of an 8-bit RGB/RGBA PNG: enough to look at a screenshot."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    height = depth = colour = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and colour in (2, 6), f"unexpected PNG format depth={depth} colour={colour}"
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        ftype, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif ftype == 2:
            line = bytearray((x + p) & 255 for x, p in zip(line, prev, strict=True))
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif ftype == 4:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                up_left = prev[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + _paeth(left, prev[i], up_left)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows, bpp


def colours(png: Path) -> Counter[tuple[int, int, int]]:
    width, _, rows, bpp = decode_png(png.read_bytes())
    counts: Counter[tuple[int, int, int]] = Counter()
    for row in rows:
        for x in range(0, width * bpp, bpp):
            counts[(row[x], row[x + 1], row[x + 2])] += 1
    return counts


def rgb(hex_colour: str) -> tuple[int, int, int]:
    value = int(hex_colour.lstrip("#"), 16)
    return value >> 16, (value >> 8) & 255, value & 255


def near(counts: Counter[tuple[int, int, int]], target: tuple[int, int, int], tolerance: int = 4) -> int:
    return sum(n for c, n in counts.items() if all(abs(a - b) <= tolerance for a, b in zip(c, target, strict=True)))


def blend(fg: tuple[int, int, int], bg: tuple[int, int, int], alpha: float) -> tuple[int, int, int]:
    r, g, b = (round(alpha * f + (1 - alpha) * k) for f, k in zip(fg, bg, strict=True))
    return r, g, b


@pytest.fixture(scope="module")
def rendered() -> tuple[str, dict, Counter[tuple[int, int, int]], Path]:
    result = json.loads((RUNS / "warn-on-free" / "result.json").read_text())
    out = Path(tempfile.mkdtemp(prefix="report-browser-"))
    html = out / "report.html"
    html.write_text(render_html(result, None))
    png = out / "report.png"
    screenshot(html, png)
    if os.environ.get("CMA_KEEP_SCREENSHOT"):
        shutil.copy(png, os.environ["CMA_KEEP_SCREENSHOT"])
    return html.read_text(), result, colours(png), png


def test_html_holds_the_verdict_and_one_rect_per_allocation(rendered):
    html, result, _, _ = rendered
    assert '<div class="verdict">FAIL</div>' in html
    blockmap = re.search(r'<svg class="blockmap".*?</svg>', html, re.S)
    assert blockmap, "no block map <svg>"
    assert blockmap.group(0).count('<rect class="alloc"') == len(result["allocations"]) > 0
    assert "WARNING in cma_mem_ioctl" in html


def test_the_page_renders_in_chromium(rendered):
    _, _, counts, png = rendered
    assert png.stat().st_size > 20_000, "screenshot suspiciously small"
    pixels = sum(counts.values())
    assert pixels == WIDTH * HEIGHT
    # Not blank: a real page has many colours, and no single colour covers nearly everything.
    assert len(counts) > 50, f"only {len(counts)} colours: the page did not render"
    assert counts.most_common(1)[0][1] < 0.9 * pixels
    # The verdict banner is a large solid block of the FAIL colour.
    assert near(counts, rgb(VERDICT_COLOURS["fail"])) > 0.01 * pixels


def test_the_block_map_is_drawn(rendered):
    _, _, counts, _ = rendered
    # Freed write-combine blocks: the type colour at 35 % over the lane's background.
    faded_wc = blend(rgb(TYPE_COLOURS["wc"]), rgb("#eef1f4"), 0.35)
    assert near(counts, faded_wc, tolerance=6) > 200, "no write-combine block visible in the block map"
