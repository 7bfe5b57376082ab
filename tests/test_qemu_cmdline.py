from pathlib import Path

from harness.config.targets import load_target
from harness.guest.qemu import BootFiles, qemu_command


def test_arm64_virt_command_line():
    target = load_target(Path("configs/targets/arm64-virt.yaml"))
    argv = qemu_command(target, BootFiles(Path("/k/vmlinuz"), Path("/k/initrd")))
    assert argv[0] == "qemu-system-aarch64"
    joined = " ".join(argv)
    assert "-M virt" in joined and "-cpu cortex-a57" in joined and "-smp 1" in joined and "-m 1024M" in joined
    assert "-nodefaults" in argv and "-no-reboot" in argv  # no NIC option ROM; panic ends QEMU
    assert argv[argv.index("-append") + 1].startswith("console=ttyAMA0 cma=128M")
    assert argv[argv.index("-kernel") + 1] == "/k/vmlinuz"
