from harness.config import abi


def test_abi_facts_come_from_the_uapi_header():
    assert abi.name_len() == 16
    assert {"CMEM_ALLOCATE", "CMEM_UNMAP", "CMEM_GET_PHYS", "CMEM_GET_TOTAL_SIZE"} <= set(abi.command_names())


def test_kmod_readme_defect_table_matches_the_variants():
    from pathlib import Path

    from tests.guest.broken import table

    assert table() in Path("kmod/README.md").read_text()
