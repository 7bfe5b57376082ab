"""What the guest kernel must have (hard requirements) and what it may have (optional features).

Pure data and pure functions over text: no I/O. A kernel that lacks a hard
requirement cannot run the harness at all, and a run on it would fail in ways
that look like driver bugs (`socket failed: Function not implemented`, no
/dev/cma_mem, rmmod refused); such a kernel must be refused with a message
that names the missing options, before boot when its .config is at hand
(local KDIR, Debian `config-*`, the source provider's merged config) and
after boot from the guest probe. An optional feature only enables an oracle
or a convenience; without it the harness runs and says what it skipped.

Each requirement names the Kconfig symbols it needs and why, from what the
guest `/init` (harness/guestinit.py), the runner (harness/runner.py) and
`cma_test` (userland/cma_test.c) actually do. The source of truth for a
kernel that boots with exactly the hard requirements is
configs/kernels/tiny.config (target arm64-tiny).

    config = parse_kconfig(text)
    features = check(config, console="ttyAMA0")
    if not features.ok:
        raise ConfigError(features.message())
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")


@dataclass(frozen=True)
class Requirement:
    """Kconfig symbols that must be enabled: every one of all_of and, if any_of is given, one of any_of."""

    key: str  # short name: "modules", "cma-debugfs"
    all_of: tuple[str, ...]
    why: str  # hard: what breaks without it; optional: what it enables
    any_of: tuple[str, ...] = ()
    modular_ok: bool = False  # =m is enough (the harness loads the module itself)
    without: str = ""  # optional: what the harness does instead when it is absent
    cmdline: str = ""  # a kernel command line word that does the same job (printk.time=1)

    def options(self) -> tuple[str, ...]:
        return self.all_of + self.any_of


# Serial console drivers by the console device name the target's `console:` gives the kernel.
CONSOLE_DRIVERS: dict[str, tuple[str, ...]] = {
    "ttyAMA": ("CONFIG_SERIAL_AMBA_PL011_CONSOLE",),  # QEMU virt, many Arm boards
    "ttyS": ("CONFIG_SERIAL_8250_CONSOLE", "CONFIG_SERIAL_OMAP_CONSOLE"),
    "ttymxc": ("CONFIG_SERIAL_IMX_CONSOLE",),
    "ttyLP": ("CONFIG_SERIAL_FSL_LPUART_CONSOLE",),
    "ttyMSM": ("CONFIG_SERIAL_MSM_CONSOLE",),
    "ttySAC": ("CONFIG_SERIAL_SAMSUNG_CONSOLE",),
    "ttyPS": ("CONFIG_SERIAL_XILINX_PS_UART_CONSOLE",),
    "ttyAML": ("CONFIG_SERIAL_MESON_CONSOLE",),
    "ttySC": ("CONFIG_SERIAL_SH_SCI_CONSOLE",),
    "hvc": ("CONFIG_HVC_DCC", "CONFIG_VIRTIO_CONSOLE"),
}

ALL_CONSOLE_DRIVERS = tuple(sorted({option for options in CONSOLE_DRIVERS.values() for option in options}))

SERIAL_CONSOLE_WHY = (
    "the serial console carries the command protocol (harness/guestinit.py) and every kernel message "
    "the fault detector reads"
)

HARD: tuple[Requirement, ...] = (
    Requirement("elf", ("CONFIG_BINFMT_ELF",), "busybox and cma_test are static ELF programs"),
    Requirement("script", ("CONFIG_BINFMT_SCRIPT",), "the guest's /init is a #!/bin/sh script"),
    Requirement(
        "initramfs",
        ("CONFIG_BLK_DEV_INITRD",),
        "the guest's root file system is the harness's initramfs (uncompressed: no RD_* decompressor needed)",
    ),
    Requirement("modules", ("CONFIG_MODULES",), "cma_mem is loaded with insmod"),
    Requirement(
        "module-unload",
        ("CONFIG_MODULE_UNLOAD",),
        "scenarios unload cma_mem with rmmod (refused while mapped; capacity given back after unload)",
    ),
    Requirement("tty", ("CONFIG_TTY",), SERIAL_CONSOLE_WHY),
    Requirement("serial-console", (), SERIAL_CONSOLE_WHY, any_of=ALL_CONSOLE_DRIVERS),
    Requirement(
        "printk",
        ("CONFIG_PRINTK",),
        "kernel messages are oracles: the driver's dump_mem records, oops/WARN/BUG reports, dmesg checks",
    ),
    Requirement(
        "printk-time",
        ("CONFIG_PRINTK_TIME",),
        "the host tells kernel messages from command output on the shared console by their printk "
        "timestamp; without one the driver's records and oops reports are taken for command output",
        cmdline="printk.time=1",
    ),
    Requirement(
        "proc",
        ("CONFIG_PROC_FS",),
        "/proc/modules (is cma_mem loaded), /proc/meminfo (CmaTotal), /proc/PID/status (has a process gone)",
    ),
    Requirement(
        "sysctl",
        ("CONFIG_PROC_SYSCTL",),
        "/init raises the console loglevel through /proc/sys/kernel/printk; without it (and `quiet`) "
        "WARNs and the driver's records never reach the console",
    ),
    Requirement(
        "sysfs",
        ("CONFIG_SYSFS",),
        "/sys/module/cma_mem/parameters/test_pattern (the capacity probe switches the test pattern off)",
    ),
    Requirement(
        "devtmpfs",
        ("CONFIG_DEVTMPFS",),
        "/dev/cma_mem (a misc device with a dynamic minor) appears only through devtmpfs: the initramfs has no mdev",
    ),
    Requirement("cma", ("CONFIG_CMA",), "the driver allocates from CMA (cma_mem.c refuses to build without it)"),
    Requirement(
        "dma-cma",
        ("CONFIG_DMA_CMA",),
        "the DMA API takes the driver's blocks from the CMA area only with DMA_CMA (else the page allocator)",
    ),
)

OPTIONAL: tuple[Requirement, ...] = (
    Requirement(
        "cma-debugfs",
        ("CONFIG_DEBUG_FS", "CONFIG_CMA_DEBUGFS"),
        "exact page leak oracle: /sys/kernel/debug/cma/*/used before and after each scenario",
        without="only the allocatable-capacity probe (page-exact too: it goes down to 8 KiB)",
    ),
    Requirement(
        "kmemleak",
        ("CONFIG_DEBUG_FS", "CONFIG_DEBUG_KMEMLEAK"),
        "kernel memory leaks of the driver, failing the capacity check after their allocation (one sweep per run)",
        without="no kernel (slab) leak oracle",
    ),
    Requirement(
        "kasan",
        ("CONFIG_KASAN",),
        "use-after-free and out-of-bounds accesses reported as they happen",
        without="bad accesses show only if they crash",
    ),
    Requirement(
        "lockdep",
        ("CONFIG_PROVE_LOCKING",),
        "lock-order and locking-rule violations (possible deadlocks) reported before they deadlock",
        without="a deadlock shows only when it happens (hung task or command timeout)",
    ),
    Requirement(
        "atomic-sleep",
        ("CONFIG_DEBUG_ATOMIC_SLEEP",),
        "sleeping in atomic context reported (might_sleep checks)",
        without="no report of sleeping while atomic",
    ),
    Requirement(
        "dma-debug",
        ("CONFIG_DMA_API_DEBUG",),
        "DMA API misuse (wrong size or direction on free, unmapped memory) reported",
        without="no DMA API misuse oracle",
    ),
    Requirement(
        "hung-task",
        ("CONFIG_DETECT_HUNG_TASK",),
        "a task stuck in D state (a driver deadlock) reported with its stack after 10 s",
        without="a deadlock shows only as a command timeout, without the stuck task's stack",
    ),
    Requirement(
        "symbols",
        ("CONFIG_KALLSYMS",),
        "symbolized frames: function names in call traces, and /sys/module/cma_mem/sections, which lets "
        "the harness name the driver's frames in kmemleak reports read after rmmod",
        without="call traces and leak reports show bare addresses",
    ),
    Requirement(
        "dmabuf-heap-cma",
        ("CONFIG_DMABUF_HEAPS", "CONFIG_DMABUF_HEAPS_CMA"),
        "/dev/dma_heap/<cma area>: the kernel's own CMA allocator as a reference next to the driver",
        without="no reference allocator on the same area",
    ),
    Requirement(
        "sysrq",
        ("CONFIG_MAGIC_SYSRQ",),
        "SysRq on the serial console (BREAK then t, w, l, c): stacks of every task from a hung guest",
        without="a hung guest can only be killed",
    ),
    Requirement(
        "ssh",
        ("CONFIG_NET", "CONFIG_INET", "CONFIG_UNIX", "CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_NET", "CONFIG_MULTIUSER"),
        "the SSH transport (--transport ssh): virtio-net on QEMU's user network and dropbear "
        "(which changes user, hence MULTIUSER); virtio drivers may be modules",
        modular_ok=True,
        without="the serial console is the only transport",
    ),
    Requirement(
        "config-in-guest",
        ("CONFIG_IKCONFIG", "CONFIG_IKCONFIG_PROC"),
        "/proc/config.gz: the guest probe can check these requirements on a kernel whose .config is not at hand",
        without="after boot, features are inferred from what the guest shows (debugfs files, boot banners)",
    ),
)


@dataclass(frozen=True)
class Feature:
    """One requirement checked against a config."""

    requirement: Requirement
    present: bool
    missing: tuple[str, ...]  # options absent (for an unmet any_of: every alternative)

    @property
    def key(self) -> str:
        return self.requirement.key

    @property
    def reason(self) -> str:
        r = self.requirement
        if self.present:
            return f"{' + '.join(_short(o) for o in r.options() if o not in self.missing) or r.key}: {r.why}"
        text = f"{_names(self)} not set{_instead(r)}: {r.why}"
        return f"{text} (without it: {r.without})" if r.without else text


@dataclass(frozen=True)
class KernelFeatures:
    hard: tuple[Feature, ...]
    optional: tuple[Feature, ...]

    @property
    def missing_hard(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.hard if not f.present)

    @property
    def missing_options(self) -> tuple[str, ...]:
        """Every hard option absent, in requirement order."""
        return tuple(option for f in self.missing_hard for option in f.missing)

    @property
    def ok(self) -> bool:
        return not self.missing_hard

    def has(self, key: str) -> bool:
        for feature in self.hard + self.optional:
            if feature.key == key:
                return feature.present
        raise KeyError(key)

    def enabled(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.optional if f.present)

    def disabled(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.optional if not f.present)

    def message(self) -> str:
        """One line for a person: what is missing and what needs it, or that nothing is."""
        if self.missing_hard:
            parts = [f"{_names(f)}{_instead(f.requirement)} ({f.requirement.why})" for f in self.missing_hard]
            return f"the kernel cannot run the harness: it lacks {'; '.join(parts)}"
        off = ", ".join(self.disabled()) or "none"
        return f"the kernel has every hard requirement; optional features absent: {off}"


def parse_kconfig(text: str) -> dict[str, str]:
    """Options set in a .config (or fragment): {"CONFIG_X": "y" | "m" | number | "string"}.

    "# CONFIG_X is not set", CONFIG_X=n and any other line are left out: absent means off.
    """
    options: dict[str, str] = {}
    for line in text.splitlines():
        if m := _SET.match(line.strip()):
            value = m.group(2).strip()
            if value != "n":
                options[m.group(1)] = value
            else:
                options.pop(m.group(1), None)
    return options


def console_options(console: str) -> tuple[str, ...]:
    """The console drivers that can drive a console device such as ttyAMA0 (all known ones if unknown)."""
    name = re.sub(r"\d+$", "", console.split(",", 1)[0])
    return CONSOLE_DRIVERS.get(name, ALL_CONSOLE_DRIVERS)


def _enabled(config: dict[str, str], option: str, modular_ok: bool) -> bool:
    value = config.get(option)
    return value == "y" or (modular_ok and value == "m")


def check_one(config: dict[str, str], requirement: Requirement, cmdline: str = "") -> Feature:
    if requirement.cmdline and requirement.cmdline in cmdline.split():
        return Feature(requirement, True, ())
    missing = [o for o in requirement.all_of if not _enabled(config, o, requirement.modular_ok)]
    if requirement.any_of and not any(_enabled(config, o, requirement.modular_ok) for o in requirement.any_of):
        missing.extend(requirement.any_of)
    return Feature(requirement, not missing, tuple(missing))


def check(config: dict[str, str], console: str | None = None, cmdline: str = "") -> KernelFeatures:
    """Every hard requirement and optional feature against a parsed config.

    console: the target's console device (ttyAMA0): the serial console requirement then asks for
    that device's driver rather than any serial console driver.
    cmdline: the kernel command line the guest boots with; a word there can stand in for an
    option (printk.time=1 for CONFIG_PRINTK_TIME).
    """
    hard = []
    for requirement in HARD:
        if requirement.key == "serial-console" and console:
            requirement = Requirement(requirement.key, (), requirement.why, any_of=console_options(console))
        hard.append(check_one(config, requirement, cmdline))
    return KernelFeatures(tuple(hard), tuple(check_one(config, r, cmdline) for r in OPTIONAL))


def _names(feature: Feature) -> str:
    """The missing options: alternatives joined by 'or' (an unmet any_of), required ones by ','."""
    if feature.requirement.any_of and not feature.requirement.all_of:
        return " or ".join(feature.missing)
    return ", ".join(feature.missing)


def _instead(requirement: Requirement) -> str:
    return f" (nor {requirement.cmdline} on the command line)" if requirement.cmdline else ""


def _short(option: str) -> str:
    return option.removeprefix("CONFIG_")


HARD_BY_KEY = {r.key: r for r in HARD}
OPTIONAL_BY_KEY = {r.key: r for r in OPTIONAL}
