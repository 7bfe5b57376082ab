"""Host requirements: declared by what needs them, checked with dpkg, toolchains proved by a real link."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness import hosttools
from harness.artifacts.kernels.registry import provider_requirements
from harness.config.hostreq import EXTRAS
from harness.config.targets import (
    KERNEL_PROVIDERS,
    USERLAND_LIBC,
    UserlandConfig,
    load_target,
    resolve_target,
    target_paths,
)
from harness.errors import ConfigError, MissingHostTools

SHIPPED = [load_target(p) for p in target_paths()]
# What building a kernel from source needs on the host (Documentation/process/changes.rst).
KERNEL_BUILD_DEPS = {"gcc", "libc6-dev", "make", "flex", "bison", "bc", "libssl-dev", "libelf-dev"}


def packages(targets, extras=()):
    return {r.package for r in hosttools.requirements(targets, extras)}


@pytest.mark.parametrize("target", SHIPPED, ids=[t.name for t in SHIPPED])
def test_every_target_declares_its_c_library_and_provider_packages(target):
    needed = packages([target])
    assert target.userland.libc_package in needed
    assert {r.package for r in provider_requirements(target)} <= needed
    assert "gcc-" + target.userland.cross_compile.rstrip("-") in needed
    assert target.qemu.package in needed
    if target.kernel.provider == "source":
        assert needed >= KERNEL_BUILD_DEPS


def test_every_userland_arch_has_its_cross_c_library():
    assert USERLAND_LIBC, "no userland architecture declared"
    for arch, libc in USERLAND_LIBC.items():
        assert libc == f"libc6-dev-{arch}-cross"


def test_every_kernel_provider_declares_its_host_packages():
    # A provider added to the schema without a declaration raises here (unknown provider).
    target = resolve_target("arm64-virt")
    for name in KERNEL_PROVIDERS:
        kernel = dataclasses.replace(target.kernel, provider=name)
        provider_requirements(dataclasses.replace(target, kernel=kernel))
    assert {r.package for r in provider_requirements(resolve_target("arm64-fast"))} >= KERNEL_BUILD_DEPS


def test_an_unknown_userland_arch_is_refused_with_file_and_line(tmp_path):
    text = Path("configs/targets/arm64-virt.yaml").read_text()
    bad = tmp_path / "riscv.yaml"
    bad.write_text(text.replace("userland:\n  deb_arch: arm64", "userland:\n  deb_arch: riscv64"))
    line = bad.read_text().splitlines().index("  deb_arch: riscv64") + 1
    with pytest.raises(ConfigError, match=rf"riscv\.yaml:{line}: .*deb_arch.*arm64.*armhf"):
        load_target(bad)


def test_the_default_run_installs_no_browser():
    default = packages([resolve_target("arm64-virt")])
    assert not default & {r.package for reqs in EXTRAS.values() for r in reqs}
    assert "chromium" in packages([resolve_target("arm64-virt")], ["browser"])
    with pytest.raises(ConfigError, match="unknown extra 'firefox'"):
        hosttools.requirements([], ["firefox"])


def test_missing_packages_give_the_exact_fix():
    target = resolve_target("arm64-virt")
    status = hosttools.check([target], installed=lambda pkgs: set(pkgs) - {"libc6-dev-arm64-cross", "make"})
    assert [r.package for r in status.missing] == ["libc6-dev-arm64-cross", "make"]
    assert "link the static arm64 cma_test" in hosttools.describe(status)
    fix = hosttools.fix_commands(status)
    assert fix[-1] == "apt-get install -y --no-install-recommends libc6-dev-arm64-cross make"
    assert "apt-get update" in fix


def test_probes_link_the_userland_and_compile_for_a_kernel_only_toolchain():
    compat = resolve_target("arm64-compat")  # 64-bit kernel, 32-bit cma_test
    got = {(p.compiler, p.link) for p in hosttools.probes([compat])}
    assert got == {("arm-linux-gnueabihf-gcc", True), ("aarch64-linux-gnu-gcc", False)}
    fast = {(p.compiler, p.link) for p in hosttools.probes([resolve_target("arm64-fast")])}
    assert ("gcc", True) in fast  # the kernel's host programs


def test_a_compiler_that_cannot_link_is_found_at_setup_with_the_fix(tmp_path):
    # A cross "compiler" that compiles but has no C library to link against, as gcc-<triplet>
    # without libc6-dev-<arch>-cross behaves.
    fake = tmp_path / "fake-linux-gnu-gcc"
    fake.write_text('#!/bin/sh\necho "fatal error: stdio.h: No such file or directory" >&2\nexit 1\n')
    fake.chmod(0o755)
    target = resolve_target("arm64-virt")
    broken = dataclasses.replace(
        target,
        userland=UserlandConfig("arm64", str(tmp_path / "fake-linux-gnu-")),
        kernel=dataclasses.replace(target.kernel, cross_compile=str(tmp_path / "fake-linux-gnu-")),
    )
    with pytest.raises(MissingHostTools, match="cannot statically link a one-line C program") as info:
        hosttools.prove_toolchains([broken])
    assert "libc6-dev-<arch>-cross" in info.value.render()
    assert "stdio.h" in info.value.render()
