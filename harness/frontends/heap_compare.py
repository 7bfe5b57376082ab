"""`cma-harness heap-compare`: cma_mem and the kernel's CMA heap side by side, one boot, three files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.errors import EXIT_FAIL, EXIT_PASS


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "heap-compare",
        help="the same workload on cma_mem and on the kernel's CMA heap (/dev/dma_heap) in one boot: "
        "compare.json, heap-compare.md, heap-compare.html",
    )
    p.add_argument("--target", default="arm64-fast", help="target name or YAML path (default arm64-fast: has the heap)")
    p.add_argument("--kmod", help="driver source folder (default: the project's kmod/)")
    p.add_argument("--out", help="output directory (default ./runs/<timestamp>-heap-compare)")
    p.add_argument(
        "--sizes", default="4K,64K,1M,4M,16M", help="allocation sizes, comma separated (default %(default)s)"
    )
    p.add_argument("--calls", type=int, default=200, help="calls per latency median (default %(default)s)")
    p.add_argument("--cache-dir", help="artifact cache (default $CMA_HARNESS_CACHE or ~/.cache/cma-harness)")


def cmd_heap_compare(args: argparse.Namespace) -> int:
    from harness import paths
    from harness.config.targets import resolve_target
    from harness.config.yamlconf import parse_size
    from harness.errors import ConfigError
    from harness.report.heapcompare import problems, render_markdown, write_reports
    from harness.run.heapcompare import measure
    from harness.run.session import RunOptions, default_run_dir

    try:
        sizes = tuple(parse_size(s.strip()) for s in args.sizes.split(",") if s.strip())
    except ValueError as exc:
        raise ConfigError(f"--sizes: {exc}") from None
    if not sizes or not 1 <= args.calls <= 100000:
        raise ConfigError("--sizes needs at least one size and --calls 1..100000")
    out = Path(args.out).resolve() if args.out else Path(f"{default_run_dir()}-heap-compare")
    opts = RunOptions(
        target=resolve_target(args.target),
        scenarios=[],
        kmod=Path(args.kmod).resolve() if args.kmod else paths.kmod_dir(),
        out=out,
        cache=paths.cache_dir(args.cache_dir),
    )
    data = measure(opts, sizes, args.calls, log=lambda msg: print(f"  {msg}", flush=True))
    print(render_markdown(data), end="")
    for path in write_reports(out, data):
        print(f"→ {path}")
    return EXIT_FAIL if problems(data) else EXIT_PASS
