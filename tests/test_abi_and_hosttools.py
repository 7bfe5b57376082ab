from harness import hosttools
from harness.config import abi
from harness.config.targets import resolve_target


def test_abi_facts_come_from_the_uapi_header():
    assert abi.name_len() == 16
    assert {"CMEM_ALLOCATE", "CMEM_UNMAP", "CMEM_GET_PHYS", "CMEM_GET_TOTAL_SIZE"} <= set(abi.command_names())


def test_missing_tools_give_the_exact_fix():
    target = resolve_target("arm64-virt")
    status = hosttools.check([target], which=lambda cmd: None if cmd in ("qemu-system-aarch64", "make") else "/x")
    assert [r.command for r in status.missing] == ["make", "qemu-system-aarch64"]
    fix = hosttools.fix_commands(status)
    assert fix[-1] == "apt-get install -y --no-install-recommends make qemu-system-arm"
    assert "apt-get update" in fix


def test_requirements_cover_cross_compilers():
    target = resolve_target("arm64-virt")
    reqs = {r.command: r.package for r in hosttools.requirements([target])}
    assert reqs["aarch64-linux-gnu-gcc"] == "gcc-aarch64-linux-gnu"
    assert reqs["qemu-system-aarch64"] == "qemu-system-arm"


def test_kmod_readme_defect_table_matches_the_variants():
    from pathlib import Path

    from tests.guest.broken import table

    assert table() in Path("kmod/README.md").read_text()
