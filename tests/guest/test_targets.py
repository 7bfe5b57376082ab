"""Targets and kernels end to end: armv7, kernels built from source (fast, debug), the user's own kernel.

Each suite run is one boot through the real CLI. The source kernels are
built into the harness cache on first use (a few minutes each, once); the
`local` tests build a second kernel outside the cache, from a copy of the
fast build tree with another release name, as a developer's board kernel
would be.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import paths
from harness.artifacts.debian import ImageCache, KernelImage
from harness.artifacts.kernels.source import SourceProvider, kernel_release, make_command
from harness.config.targets import resolve_target
from tests.guest.broken import DEBUG_VARIANTS
from tests.guest.test_run import run_cli

pytestmark = pytest.mark.guest

SHIPPED = sorted(p.stem for p in Path("configs/scenarios").glob("*.yaml"))


def assert_suite_passed(code: int, output: str, result: dict, target: str) -> None:
    assert code == 0, output
    assert result["verdict"] == "pass" and result["target"] == target
    assert [(s["name"], s["verdict"]) for s in result["scenarios"]] == [(name, "pass") for name in SHIPPED]
    assert result["kernel_events"] == []
    assert result["kernel"]["release"] == result["kernel"]["booted_release"]
    assert result["cma"]["size_mib"] == 128


def test_suite_passes_on_armv7_virt(tmp_path):
    code, output, result = run_cli("--target", "armv7-virt", "--scenario", "configs/scenarios", out=tmp_path)
    assert_suite_passed(code, output, result, "armv7-virt")
    assert result["kernel"]["booted_release"].endswith("-armmp-lpae")
    assert result["kernel"]["checkers"] == []  # the stock kernel has none of them


def test_suite_passes_on_the_fast_source_kernel(tmp_path):
    code, output, result = run_cli("--target", "arm64-fast", "--scenario", "configs/scenarios", out=tmp_path)
    assert_suite_passed(code, output, result, "arm64-fast")
    assert re.fullmatch(r"6\.1\.\d+-cmah-fast", result["kernel"]["booted_release"])
    assert result["kernel"]["package"].startswith("linux-source-6.1 (fast")


def test_suite_passes_on_the_debug_source_kernel_with_checkers_on(tmp_path):
    code, output, result = run_cli("--target", "arm64-debug", "--scenario", "configs/scenarios", out=tmp_path)
    assert_suite_passed(code, output, result, "arm64-debug")  # KASAN, kmemleak and lockdep stayed quiet
    assert re.fullmatch(r"6\.1\.\d+-cmah-debug", result["kernel"]["booted_release"])
    # What actually ran at boot (their banners), not only what the config asked for.
    assert result["kernel"]["checkers"] == ["kasan", "kmemleak", "lockdep", "dma-debug"]


@pytest.mark.parametrize("variant", DEBUG_VARIANTS, ids=[v.name for v in DEBUG_VARIANTS])
def test_the_debug_kernel_catches_what_the_stock_kernel_cannot(tmp_path, variant):
    kmod = variant.make(tmp_path)
    out = tmp_path / "run"
    code, output, result = run_cli(
        "--target", "arm64-debug", "--scenario", variant.scenario, "--kmod", str(kmod), out=out
    )
    assert code == 1, output
    problems = "\n".join(p for step in result["steps"] for p in step["problems"])
    assert re.search(variant.expected_message, problems), problems
    assert re.search(variant.expected_message, output), output
    # The kernel event carries the report and a signature, like any console fault.
    events = result["kernel_events"] + result.get("extra_events", [])
    assert any(re.search(r"cma_mem_ioc", e["title"]) and e["signature"] for e in events), events
    # Nothing else gave it away: the memory itself came back.
    assert not re.search(r"capacity leak|CMA debugfs", problems), problems


# --- local: a kernel the harness has never seen --------------------------------


def fast_kernel() -> KernelImage:
    target = resolve_target("arm64-fast")
    return SourceProvider(ImageCache(paths.cache_dir(), log=print)).kernel(target)


# Tests sharing the kernel built elsewhere run in the same xdist worker: it is built once.
ELSEWHERE_KERNEL = pytest.mark.xdist_group("elsewhere-kernel")


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    """A second arm64 kernel and build tree outside the harness cache, released as 6.1.x-elsewhere.

    A copy of the fast build tree with CONFIG_LOCALVERSION changed: make rebuilds what
    depends on the release (utsname, vermagic) and relinks, in well under a minute.
    """
    fast = fast_kernel()
    tree = tmp_path_factory.mktemp("board") / "build"
    subprocess.run(["cp", "-a", str(fast.kdir), str(tree)], check=True)
    config = tree / ".config"
    config.write_text(
        re.sub(r'^CONFIG_LOCALVERSION=".*"$', 'CONFIG_LOCALVERSION="-elsewhere"', config.read_text(), flags=re.M)
    )
    src = (tree / "source").resolve()
    target = resolve_target("arm64-fast")
    jobs = os.cpu_count() or 1
    for goals in (["olddefconfig"], ["Image", "modules"]):
        cmd = make_command(src, tree, target, *goals, jobs=jobs)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert kernel_release(tree).endswith("-elsewhere")
    assert not str(tree).startswith(str(paths.cache_dir()))
    return tree


def local_target(tmp_path: Path, image: Path, kdir: Path) -> Path:
    text = (Path("configs/targets/arm64-fast.yaml")).read_text()
    text = text.replace(
        "  provider: source\n  flavour: fast\n  config: [arm64-base, fast]\n  image_target: Image\n",
        f"  provider: local\n  image: {image}\n  kdir: {kdir}\n",
    )
    assert "provider: local" in text
    path = tmp_path / "board.yaml"
    path.write_text(text)
    return path


@ELSEWHERE_KERNEL
def test_smoke_passes_on_a_local_kernel_built_outside_the_cache(tmp_path, elsewhere):
    target = local_target(tmp_path, elsewhere / "arch/arm64/boot/Image", elsewhere)
    code, output, result = run_cli("--target", str(target), "--scenario", "smoke", out=tmp_path / "run")
    assert code == 0, output
    assert result["verdict"] == "pass"
    assert result["kernel"]["booted_release"] == kernel_release(elsewhere)
    assert result["kernel"]["release"] == kernel_release(elsewhere)


@ELSEWHERE_KERNEL
def test_vermagic_mismatch_is_a_config_error_before_boot(tmp_path, elsewhere):
    # The module is built against the fast tree; the image is the other kernel.
    fast = fast_kernel()
    target = local_target(tmp_path, elsewhere / "arch/arm64/boot/Image", fast.kdir)
    code, output, result = run_cli("--target", str(target), "--scenario", "smoke", out=tmp_path / "run")
    # A ConfigError (exit 2 from the CLI); inside `run` every error is verdict "error" today.
    assert code in (2, 3), output
    assert result["verdict"] == "error"
    assert "vermagic mismatch" in result["error"]
    assert f"built for {fast.release}" in result["error"] and kernel_release(elsewhere) in result["error"]
    assert "boot" not in result["timings"]
    assert not (tmp_path / "run" / "qemu.pid").exists()


def test_local_kernel_missing_image_names_the_target_line(tmp_path):
    target = local_target(tmp_path, tmp_path / "no-such-Image", tmp_path)
    code, output, result = run_cli("--target", str(target), "--scenario", "smoke", out=tmp_path / "run")
    assert code in (2, 3), output
    assert re.search(r"board\.yaml:\d+: kernel: key 'image': no such file", result["error"])
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
