"""QEMU's command line: a pure function of the target and the boot files (the process that runs
it, and cannot outlive the harness, is harness/guest/qemu_process.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.config.targets import Target


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path
    dtb: Path | None = None
    module: Path | None = None  # the cma_mem.ko inside the initrd: its symbols name frames after rmmod


def ssh_netdev_args(port: int) -> list[str]:
    """virtio-net (MMIO: no option ROM needed) on QEMU's user network; guest port 22 forwarded
    to 127.0.0.1:port only, never to other host addresses."""
    return [
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-device,netdev=net0",
    ]  # fmt: skip


def qemu_command(
    target: Target, boot: BootFiles, append_extra: list[str] | None = None, extra_args: list[str] | None = None
) -> list[str]:
    """The full QEMU argv for a target. No I/O: unit-tested as data."""
    q = target.qemu
    argv = [
        q.binary,
        "-M", q.machine,
        "-cpu", q.cpu,
        "-smp", str(q.smp),
        "-m", f"{q.memory_mib}M",
        # No default devices: no NIC needing an option ROM, no monitor on stdio.
        "-nodefaults",
        "-no-reboot",  # with panic=-1 a kernel panic ends QEMU at once
        "-display", "none",
        # The serial console on our pty; signal=off so a stray ^C byte does not kill QEMU.
        "-chardev", "stdio,id=console,signal=off",
        "-serial", "chardev:console",
        "-kernel", str(boot.kernel),
        "-initrd", str(boot.initrd),
        "-append", target.kernel_cmdline(append_extra),
    ]  # fmt: skip
    if boot.dtb:
        argv += ["-dtb", str(boot.dtb)]
    return argv + list(q.extra_args) + list(extra_args or [])
