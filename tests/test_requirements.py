"""The guest kernel's requirements as data, checked against real config text (no cache, no guest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.artifacts.kernels.requirements import HARD, OPTIONAL, check, console_options, parse_kconfig

FIXTURES = Path(__file__).parent / "fixtures" / "kconfig"
KERNELS = Path("configs/kernels")
# configs/targets/arm64-tiny.yaml: the tiny kernel has no CONFIG_PRINTK_TIME, its command line asks for it.
TINY_CMDLINE = "console=ttyAMA0 cma=32M rdinit=/init panic=-1 quiet printk.time=1"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def without(text: str, *options: str) -> str:
    """The config with these options switched off the way kconfig writes it."""
    lines = []
    for line in text.splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"# {name} is not set" if name in options else line)
    return "\n".join(lines) + "\n"


def test_parse_kconfig_keeps_set_options_only():
    config = parse_kconfig(
        'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\nCONFIG_D=16\nCONFIG_E="-tiny"\nCONFIG_F=n\n'
        "# comment\nnot a config line\n  CONFIG_G=y  \n"
    )
    assert config == {"CONFIG_A": "y", "CONFIG_C": "m", "CONFIG_D": "16", "CONFIG_E": '"-tiny"', "CONFIG_G": "y"}


def test_parse_kconfig_later_line_wins():
    assert parse_kconfig("CONFIG_A=y\nCONFIG_A=n\n") == {}
    assert parse_kconfig("CONFIG_A=m\nCONFIG_A=y\n") == {"CONFIG_A": "y"}


def test_debian_arm64_kernel_has_every_hard_requirement():
    features = check(parse_kconfig(fixture("debian-6.1.0-50-arm64.config")), console="ttyAMA0")
    assert features.ok, features.message()
    assert features.missing_options == ()
    # Debian builds CMA without debugfs: the exact page leak oracle is off, the capacity probe remains.
    assert not features.has("cma-debugfs")
    assert features.has("symbols") and features.has("sysrq") and features.has("hung-task")
    # virtio-net and virtio-mmio are modules there: enough for SSH, the harness loads them.
    assert features.has("ssh")
    assert not features.has("kasan") and not features.has("kmemleak")
    assert features.message() == (
        "the kernel has every hard requirement; optional features absent: "
        "cma-debugfs, kmemleak, kasan, lockdep, atomic-sleep, dma-debug, dmabuf-heap-cma, config-in-guest"
    )


def test_tiny_kernel_has_the_hard_requirements_and_nothing_optional():
    features = check(parse_kconfig(fixture("tiny-arm64.config")), console="ttyAMA0", cmdline=TINY_CMDLINE)
    assert features.ok, features.message()
    assert features.enabled() == ()
    ssh = next(f for f in features.optional if f.key == "ssh")
    assert "CONFIG_NET" in ssh.missing and "CONFIG_UNIX" in ssh.missing
    assert ssh.reason.startswith("CONFIG_NET, CONFIG_INET, CONFIG_UNIX,")
    assert "without it: the serial console is the only transport" in ssh.reason


def test_missing_hard_options_are_named_in_one_line():
    text = without(fixture("tiny-arm64.config"), "CONFIG_MODULE_UNLOAD", "CONFIG_DEVTMPFS")
    features = check(parse_kconfig(text), console="ttyAMA0", cmdline=TINY_CMDLINE)
    assert not features.ok
    assert features.missing_options == ("CONFIG_MODULE_UNLOAD", "CONFIG_DEVTMPFS")
    message = features.message()
    assert "\n" not in message
    assert message.startswith("the kernel cannot run the harness: it lacks CONFIG_MODULE_UNLOAD (scenarios unload")
    assert "; CONFIG_DEVTMPFS (/dev/cma_mem" in message


def test_a_module_is_not_enough_for_a_hard_requirement():
    text = fixture("tiny-arm64.config").replace("CONFIG_SERIAL_AMBA_PL011_CONSOLE=y", "")
    text = text.replace("CONFIG_DMA_CMA=y", "CONFIG_DMA_CMA=m")
    features = check(parse_kconfig(text), console="ttyAMA0", cmdline=TINY_CMDLINE)
    assert features.missing_options == ("CONFIG_SERIAL_AMBA_PL011_CONSOLE", "CONFIG_DMA_CMA")


def test_serial_console_follows_the_target_console():
    config = parse_kconfig(fixture("tiny-arm64.config"))
    config["CONFIG_PRINTK_TIME"] = "y"
    assert check(config, console="ttyAMA0").ok
    on_8250 = check(config, console="ttyS0,115200")
    assert on_8250.missing_options == ("CONFIG_SERIAL_8250_CONSOLE", "CONFIG_SERIAL_OMAP_CONSOLE")
    assert "CONFIG_SERIAL_8250_CONSOLE or CONFIG_SERIAL_OMAP_CONSOLE (the serial console" in on_8250.message()
    # No console given: any known serial console driver will do.
    assert check(config).ok
    assert "CONFIG_SERIAL_AMBA_PL011_CONSOLE" in console_options("ttyUNKNOWN7")


def test_the_board_kernel_of_issue_18():
    """tinyconfig + serial console, initramfs, modules with unloading, proc, sysfs, devtmpfs, CMA with
    debugfs, no networking: every hard requirement (cma_test's servers need no sockets)."""
    text = fixture("tiny-arm64.config").replace("# CONFIG_DEBUG_FS is not set", "CONFIG_DEBUG_FS=y")
    features = check(parse_kconfig(text + "CONFIG_CMA_DEBUGFS=y\n"), console="ttyAMA0", cmdline=TINY_CMDLINE)
    assert features.ok
    assert features.enabled() == ("cma-debugfs",)


def test_printk_time_or_its_command_line_word():
    config = parse_kconfig(fixture("tiny-arm64.config"))
    features = check(config, console="ttyAMA0", cmdline="console=ttyAMA0 quiet")
    assert features.missing_options == ("CONFIG_PRINTK_TIME",)
    assert features.message().startswith(
        "the kernel cannot run the harness: it lacks CONFIG_PRINTK_TIME (nor printk.time=1 on the command line) "
        "(the host tells kernel messages from command output"
    )
    assert check(config, console="ttyAMA0", cmdline="quiet printk.time=1").ok


@pytest.mark.parametrize(
    ("name", "cmdline"),
    [("tiny.config", TINY_CMDLINE), ("arm64-base.config", "quiet"), ("armv7-base.config", "quiet")],
)
def test_committed_base_fragments_ask_for_every_hard_requirement(name, cmdline):
    """The fragments ask for these options explicitly (kconfig's defaults are not relied upon)."""
    text = (KERNELS / name).read_text()
    missing = check(parse_kconfig(text), console="ttyAMA0", cmdline=cmdline).missing_options
    # Without EXPERT these are on by default and cannot be turned off: the base fragments omit them.
    implied = set() if "CONFIG_EXPERT=y" in text else {"CONFIG_PRINTK", "CONFIG_PROC_SYSCTL"}
    assert set(missing) <= implied, missing


def test_requirement_keys_are_unique_and_every_reason_says_why():
    keys = [r.key for r in HARD + OPTIONAL]
    assert len(keys) == len(set(keys))
    for requirement in HARD + OPTIONAL:
        assert requirement.why
        assert all(option.startswith("CONFIG_") for option in requirement.options())
    assert all(r.without for r in OPTIONAL)
