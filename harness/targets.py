"""Targets: one YAML file per machine, everything architecture-specific lives there.

Nothing in the harness branches on the architecture; it reads these records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness import paths
from harness.errors import ConfigError
from harness.yamlconf import (
    Field,
    LocatedDict,
    Schema,
    expect_mapping,
    is_number,
    is_positive_int,
    is_str,
    is_str_list,
    load_file,
    one_of,
    parse_size,
    validate,
)


@dataclass(frozen=True)
class QemuConfig:
    binary: str
    machine: str
    cpu: str
    smp: int
    memory_mib: int
    extra_args: list[str] = field(default_factory=list)
    package: str = "qemu-system-arm"  # the Debian package that provides `binary`


@dataclass(frozen=True)
class KernelConfig:
    provider: str  # debian (more providers come with the targets issue)
    deb_arch: str  # Debian architecture of the kernel packages (arm64, armhf)
    flavour: str  # Debian kernel flavour (arm64, armmp-lpae)
    make_arch: str  # ARCH= for kbuild
    cross_compile: str  # CROSS_COMPILE= for kbuild
    cmdline: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class UserlandConfig:
    deb_arch: str  # Debian architecture of busybox-static and of cma_test
    cross_compile: str


@dataclass(frozen=True)
class Timeouts:
    boot: float  # QEMU start to shell prompt
    command: float  # default for one guest command
    shutdown: float  # poweroff to QEMU exit


@dataclass(frozen=True)
class Target:
    name: str
    path: Path
    description: str
    console: str
    cma_mib: int
    qemu: QemuConfig
    kernel: KernelConfig
    userland: UserlandConfig
    timeouts: Timeouts

    def kernel_cmdline(self, extra: list[str] | None = None) -> str:
        # panic=-1: a panic reboots at once, and -no-reboot turns that into QEMU exiting,
        # so a panicking guest ends the run in bounded time.
        words = [f"console={self.console}", f"cma={self.cma_mib}M", "rdinit=/init", "panic=-1"]
        return " ".join([*words, *self.kernel.cmdline, *(extra or [])])


QEMU_SCHEMA = Schema(
    [
        Field("binary", is_str, required=True, doc="QEMU system emulator, e.g. qemu-system-aarch64"),
        Field("package", is_str, default="qemu-system-arm", doc="Debian package providing the binary"),
        Field("machine", is_str, required=True, doc="-M value, e.g. virt"),
        Field("cpu", is_str, required=True, doc="-cpu value"),
        Field("smp", is_positive_int, default=1),
        Field("memory", parse_size, required=True, doc="guest RAM, e.g. 1024M"),
        Field("extra_args", is_str_list, default=[]),
    ]
)
KERNEL_SCHEMA = Schema(
    [
        Field("provider", one_of("debian"), required=True, doc="where the kernel comes from"),
        Field("deb_arch", one_of("arm64", "armhf"), required=True),
        Field("flavour", is_str, required=True, doc="Debian kernel flavour, e.g. arm64"),
        Field("make_arch", one_of("arm64", "arm"), required=True),
        Field("cross_compile", is_str, required=True),
        Field("cmdline", is_str_list, default=[]),
    ]
)
USERLAND_SCHEMA = Schema(
    [
        Field("deb_arch", one_of("arm64", "armhf"), required=True),
        Field("cross_compile", is_str, required=True),
    ]
)
TIMEOUTS_SCHEMA = Schema(
    [
        Field("boot", is_number, default=180.0),
        Field("command", is_number, default=60.0),
        Field("shutdown", is_number, default=20.0),
    ]
)
TARGET_SCHEMA = Schema(
    [
        Field("description", is_str, default=""),
        Field("console", is_str, required=True, doc="kernel console device, e.g. ttyAMA0"),
        Field("cma", parse_size, required=True, doc="CMA reservation, e.g. 128M"),
        Field("qemu", lambda v: v, required=True),
        Field("kernel", lambda v: v, required=True),
        Field("userland", lambda v: v, required=True),
        Field("timeouts", lambda v: v, default=None),
    ]
)


def _section(root: LocatedDict, key: str, schema: Schema) -> dict:
    value = root.get(key)
    if value is None:
        return validate(_empty_like(root), schema, key)
    mapping = expect_mapping(value, key, root.source, root.line_of(key))
    return validate(mapping, schema, key)


def _empty_like(root: LocatedDict) -> LocatedDict:
    empty = LocatedDict()
    empty.source, empty.line, empty.key_lines = root.source, root.line, {}
    return empty


def load_target(path: Path) -> Target:
    root = expect_mapping(load_file(path), "target", str(path), 1)
    top = validate(root, TARGET_SCHEMA, "target")
    qemu = _section(root, "qemu", QEMU_SCHEMA)
    kernel = _section(root, "kernel", KERNEL_SCHEMA)
    userland = _section(root, "userland", USERLAND_SCHEMA)
    timeouts = _section(root, "timeouts", TIMEOUTS_SCHEMA)
    cma = top["cma"]
    if cma % (1 << 20):
        raise ConfigError(f"{path}:{root.line_of('cma')}: target: key 'cma': expected whole MiB, got {cma} bytes")
    return Target(
        name=path.stem,
        path=path,
        description=top["description"],
        console=top["console"],
        cma_mib=cma >> 20,
        qemu=QemuConfig(
            binary=qemu["binary"],
            package=qemu["package"],
            machine=qemu["machine"],
            cpu=qemu["cpu"],
            smp=qemu["smp"],
            memory_mib=qemu["memory"] >> 20,
            extra_args=qemu["extra_args"],
        ),
        kernel=KernelConfig(**kernel),
        userland=UserlandConfig(**userland),
        timeouts=Timeouts(**timeouts),
    )


def target_paths() -> list[Path]:
    return sorted(paths.targets_dir().glob("*.yaml"))


def resolve_target(name_or_path: str) -> Target:
    """A target by name (configs/targets/NAME.yaml) or by path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not candidate.is_file():
            raise ConfigError(f"target file not found: {candidate}")
        return load_target(candidate)
    path = paths.targets_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in target_paths()) or "none"
        raise ConfigError(f"unknown target '{name_or_path}'; known targets: {known}")
    return load_target(path)
