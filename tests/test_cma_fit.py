"""Scenarios that fit the reservation, and kernels that can run the harness, both decided before boot."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config.targets import resolve_target
from harness.config.yamlconf import parse_share
from harness.errors import ConfigError, InfraError
from harness.run.session import check_fit, check_kernel_features
from harness.scenario.loader import load_scenario, resolve_scenarios
from harness.scenario.model import CmaShare
from harness.scenario.steps import fit_problems

MIB = 1 << 20


@pytest.mark.parametrize(
    ("text", "share"),
    [("50%", (50, 100)), ("12.5%", (125, 1000)), ("cma", (1, 1)), ("cma/2", (1, 2)), ("CMA*3/4", (3, 4)), ("4M", None)],
)
def test_shares_of_the_area(text: str, share: tuple[int, int] | None) -> None:
    assert parse_share(text) == share


def test_a_share_resolves_to_whole_pages() -> None:
    assert CmaShare(1, 3, "cma/3").bytes(32 * MIB) == (32 * MIB // 3) // 4096 * 4096
    assert CmaShare(3, 4, "75%").bytes(128 * MIB) == 96 * MIB


def scenario(tmp_path: Path, steps: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nsteps:\n  - insmod: {}\n" + steps)
    return load_scenario(path)


def test_a_share_over_the_whole_area_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"s\.yaml:4: .*size.*share of the CMA area"):
        scenario(tmp_path, "  - alloc: {name: a, size: 150%}\n")


def test_relative_steps_keep_their_names_when_resolved(tmp_path: Path) -> None:
    s = scenario(tmp_path, "  - alloc: {name: a, size: 50%}\n  - fragment: {count: fill, size: 4M, large: 8M}\n")
    resolved = s.resolved(32 * MIB)
    assert resolved.steps[1].args["size"] == 16 * MIB
    assert [st.describe() for st in resolved.steps] == [st.describe() for st in s.steps]
    assert "size=50%" in resolved.steps[1].describe()


def test_the_shipped_suite_fits_a_32_mib_board() -> None:
    board = resolve_target("arm64-tiny")
    assert board.cma_mib == 32
    check_fit(resolve_scenarios(["configs/scenarios"]), board)  # raises if anything does not fit


def test_a_scenario_written_for_128_mib_is_refused_on_32_before_boot(tmp_path: Path) -> None:
    old = scenario(tmp_path, "  - alloc: {name: half, size: 64M}\n  - fragment: {count: 31, size: 4M, large: 8M}\n")
    problems = fit_problems(old.steps, 32 * MIB, "s.yaml")
    assert problems == [
        "s.yaml:4: alloc name=half size=67108864 type=wc needs 64 MiB of CMA; the area is 32 MiB",
        "s.yaml:5: fragment count=31 size=4194304 large=8388608 type=coherent needs 124 MiB of CMA; the area is 32 MiB",
    ]
    with pytest.raises(ConfigError, match="does not fit arm64-tiny's CMA area") as info:
        check_fit([old], resolve_target("arm64-tiny"))
    assert info.value.exit_code == 2
    # An allocation meant to fail asks nothing of the area.
    assert fit_problems(scenario(tmp_path, "  - alloc: {name: x, size: 1G, expect: ENOMEM}\n").steps, MIB, "s") == []


FIXTURES = Path(__file__).parent / "fixtures" / "kconfig"


def test_a_kernel_lacking_a_hard_requirement_is_refused_before_boot_naming_it(tmp_path: Path) -> None:
    config = (FIXTURES / "tiny-arm64.config").read_text().replace("CONFIG_DEVTMPFS=y", "# CONFIG_DEVTMPFS is not set")
    (tmp_path / ".config").write_text(config)
    with pytest.raises(InfraError, match="CONFIG_DEVTMPFS") as info:
        check_kernel_features(resolve_target("arm64-tiny"), tmp_path / ".config")
    assert info.value.exit_code == 3
    assert "CONFIG_DEVTMPFS" in info.value.hint


def test_optional_oracles_absent_are_recorded_with_what_they_switch_off() -> None:
    features = check_kernel_features(resolve_target("arm64-virt"), FIXTURES / "debian-6.1.0-50-arm64.config")
    absent = {a["feature"]: a["without"] for a in features["absent"]}
    assert "kmemleak" in absent and "cma-debugfs" in absent
    assert "capacity probe" in absent["cma-debugfs"]
    assert "ssh" in features["present"]


def test_a_config_that_is_not_at_hand_is_checked_after_boot_only(tmp_path: Path) -> None:
    features = check_kernel_features(resolve_target("arm64-virt"), tmp_path / "missing" / ".config")
    assert features["absent"] == [] and "checked after boot only" in features["note"]
