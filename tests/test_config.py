"""Targets and scenarios: valid files load; bad ones name the file, the line and what was expected."""

from pathlib import Path

import pytest

from harness.config.targets import load_target, target_paths
from harness.config.yamlconf import parse_size
from harness.errors import ConfigError
from harness.scenario.loader import load_scenario, scenario_paths


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_targets_and_scenarios_load():
    assert [load_target(p).name for p in target_paths()]
    smoke = load_scenario(Path("configs/scenarios/smoke.yaml"))
    assert smoke.steps[2].args["size"] == 800 * 480 * 4
    assert scenario_paths()


def test_target_kernel_cmdline_has_cma_and_console():
    target = load_target(Path("configs/targets/arm64-virt.yaml"))
    cmdline = target.kernel_cmdline()
    assert "cma=128M" in cmdline and "console=ttyAMA0" in cmdline and "panic=-1" in cmdline


TARGET = Path("configs/targets/arm64-virt.yaml").read_text()


def test_target_unknown_key_names_file_and_line(tmp_path):
    path = write(tmp_path, "t.yaml", TARGET.replace("  smp: 1", "  smpp: 1"))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "smpp" in text)
    with pytest.raises(ConfigError, match=rf"t.yaml:{line}: qemu: unknown key 'smpp'; expected one of: binary"):
        load_target(path)


def test_target_wrong_type(tmp_path):
    path = write(tmp_path, "t.yaml", TARGET.replace("cma: 128M", "cma: lots"))
    with pytest.raises(ConfigError, match=r"t.yaml:\d+: target: key 'cma': expected a size"):
        load_target(path)


def test_target_missing_key(tmp_path):
    path = write(tmp_path, "t.yaml", TARGET.replace("console: ttyAMA0\n", ""))
    with pytest.raises(ConfigError, match="missing required key 'console'"):
        load_target(path)


def test_yaml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, "s.yaml", "steps:\n  - insmod: {\n  - rmmod: {}\n")
    with pytest.raises(ConfigError, match=r"s.yaml:\d+: invalid YAML"):
        load_scenario(path)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("  - insmd: {}\n", r"s.yaml:3: unknown step 'insmd'; expected one of: alloc"),
        (
            "  - alloc: {name: a, size: 4K, type: wx}\n",
            r"s.yaml:3: step 'alloc': key 'type': expected one of wc, coherent",
        ),
        ("  - alloc: {name: a, size: 4K, colour: red}\n", r"s.yaml:3: step 'alloc': unknown key 'colour'"),
        ("  - free: nosuch\n", r"s.yaml:3: step 'free': block 'nosuch' is not allocated in process 'main'"),
        (
            "  - alloc: {name: waytoolongblockname, size: 4K}\n",
            r"s.yaml:3: step 'alloc': key 'name': expected a block name",
        ),
        ("  - exit: ghost\n", r"s.yaml:3: step 'exit': process 'ghost' is not running"),
    ],
)
def test_scenario_errors(tmp_path, steps, message):
    path = write(tmp_path, "s.yaml", "name: x\nsteps:\n" + steps)
    with pytest.raises(ConfigError, match=message):
        load_scenario(path)


def test_duplicate_key(tmp_path):
    path = write(tmp_path, "s.yaml", "name: x\nname: y\nsteps:\n  - insmod: {}\n")
    with pytest.raises(ConfigError, match=r"s.yaml:2: duplicate key 'name' \(first at line 1\)"):
        load_scenario(path)


@pytest.mark.parametrize(
    ("text", "value"), [("4K", 4096), ("128M", 128 << 20), ("800*480*4", 1536000), (17, 17), ("1MiB", 1 << 20)]
)
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_target_spec_forms():
    from harness.config.targets import resolve_targets

    assert [t.name for t in resolve_targets("arm64-virt,arm64-compat")] == ["arm64-virt", "arm64-compat"]
    assert {t.name for t in resolve_targets("all")} == {p.stem for p in target_paths()}
    with pytest.raises(ConfigError, match="unknown target 'nope'; known targets: "):
        resolve_targets("arm64-virt,nope")
