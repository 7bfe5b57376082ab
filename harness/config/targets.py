"""Targets: one YAML file per machine, everything architecture-specific lives there.

Nothing in the harness branches on the architecture; it reads these records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from harness import paths
from harness.config.guestfiles import FileSpec, is_file_list, parse_files
from harness.config.hostreq import Requirement, cross_gcc_package
from harness.config.yamlconf import (
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
from harness.errors import ConfigError

# The C library each userland architecture's static cma_test links against (Debian's cross
# packages). A target naming an architecture missing here is refused when it is loaded.
USERLAND_LIBC = {"arm64": "libc6-dev-arm64-cross", "armhf": "libc6-dev-armhf-cross"}


@dataclass(frozen=True)
class QemuConfig:
    binary: str
    machine: str
    cpu: str
    smp: int
    memory_mib: int
    extra_args: list[str] = field(default_factory=list)
    package: str = "qemu-system-arm"  # the Debian package that provides `binary`

    def requirements(self, target: str) -> tuple[Requirement, ...]:
        return (Requirement(self.package, f"boot the {target} guest ({self.binary})"),)


@dataclass(frozen=True)
class KernelConfig:
    """Where the kernel comes from (`provider`) and how modules are built for it.

    debian: Debian's packaged kernel `flavour` for `deb_arch`.
    source: built from Debian's linux-source package with `configs` (base config
            + fragments, merged in order); `flavour` names the build (fast, debug).
    local:  the user's own `image` and build tree `kdir` (+ optional `dtb`, extra
            QEMU arguments, expected `release`).
    """

    provider: str  # debian | source | local
    deb_arch: str  # debian: architecture of the kernel packages; others: the userland's (nothing is fetched)
    flavour: str  # debian: Debian kernel flavour (arm64, armmp-lpae); source: fast, debug; local: "local"
    make_arch: str  # ARCH= for kbuild
    cross_compile: str  # CROSS_COMPILE= for kbuild
    cmdline: list[str] = field(default_factory=list)
    # source
    configs: list[Path] = field(default_factory=list)  # base config and fragments, merged in this order
    image_target: str = ""  # make target and file name under arch/<make_arch>/boot/ (Image, zImage)
    source_package: str = ""  # Debian source package, e.g. linux-source-6.1
    # local
    image: Path | None = None
    kdir: Path | None = None
    dtb: Path | None = None
    qemu_args: list[str] = field(default_factory=list)  # already appended to qemu.extra_args
    release: str = ""  # expected `uname -r` (checked against KDIR before boot)
    # "file:line" of each key, for errors found after loading (a local image that is missing)
    where: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def toolchain_requirements(self, target: str) -> tuple[Requirement, ...]:
        # The kernel and its modules need no C library: the cross compiler alone.
        return (Requirement(cross_gcc_package(self.cross_compile), f"build kernel code for {target}"),)

    @property
    def bits(self) -> int:
        """The kernel's word size (BITS_PER_LONG): some of the driver's limits follow it."""
        return 32 if self.make_arch == "arm" else 64


@dataclass(frozen=True)
class UserlandConfig:
    deb_arch: str  # Debian architecture of busybox-static and of cma_test
    cross_compile: str

    @property
    def libc_package(self) -> str:
        return USERLAND_LIBC[self.deb_arch]

    @property
    def bits(self) -> int:
        """cma_test's word size (the driver model's limits for a 32-bit caller differ)."""
        return 32 if self.deb_arch == "armhf" else 64

    def requirements(self, target: str) -> tuple[Requirement, ...]:
        return (
            Requirement(cross_gcc_package(self.cross_compile), f"build cma_test for {target}"),
            Requirement(self.libc_package, f"link the static {self.deb_arch} cma_test for {target}"),
        )


@dataclass(frozen=True)
class Timeouts:
    boot: float  # QEMU start to shell prompt
    command: float  # default for one guest command
    shutdown: float  # poweroff to QEMU exit
    ssh: float = 30.0  # shell prompt to an authenticated SSH session (transport ssh)


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
    files: tuple[FileSpec, ...] = ()  # into the guest on every run (config/guestfiles.py)

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
KERNEL_PROVIDERS = ("debian", "source", "local")
_KERNEL_COMMON = [
    Field("provider", one_of(*KERNEL_PROVIDERS), required=True, doc="where the kernel comes from"),
    Field("make_arch", one_of("arm64", "arm"), required=True),
    Field("cross_compile", is_str, required=True),
    Field("cmdline", is_str_list, default=[]),
]
KERNEL_SCHEMA = Schema(_KERNEL_COMMON)
KERNEL_PROVIDER_SCHEMAS = {
    "debian": Schema(
        [
            *_KERNEL_COMMON,
            Field("deb_arch", one_of("arm64", "armhf"), required=True),
            Field("flavour", is_str, required=True, doc="Debian kernel flavour, e.g. arm64"),
        ]
    ),
    "source": Schema(
        [
            *_KERNEL_COMMON,
            Field("flavour", is_str, required=True, doc="name of the build, e.g. fast"),
            Field("config", is_str_list, required=True, doc="base config and fragments from configs/kernels"),
            Field("image_target", is_str, required=True, doc="make target under arch/ARCH/boot, e.g. Image"),
            Field("source_package", is_str, default="linux-source-6.1"),
        ]
    ),
    "local": Schema(
        [
            *_KERNEL_COMMON,
            Field("image", is_str, required=True, doc="the kernel image to boot"),
            Field("kdir", is_str, required=True, doc="its build tree (modules_prepare'd tree or headers)"),
            Field("dtb", is_str, default=None),
            Field("qemu_args", is_str_list, default=[]),
            Field("release", is_str, default=""),
        ]
    ),
}


def kernel_configs_dir() -> Path:
    return paths.configs_dir() / "kernels"


def _config_path(name: str, base: Path) -> Path:
    """A config named in a target: `fast` or `fast.config` is configs/kernels/fast.config; a path is
    relative to the target file."""
    if "/" in name:
        return (base / Path(name).expanduser()).resolve()
    return kernel_configs_dir() / (name if name.endswith(".config") else f"{name}.config")


def _local_path(value: str, base: Path) -> Path:
    # Environment variables and ~ expand, so one target file serves every checkout.
    return (base / Path(os.path.expanduser(os.path.expandvars(value)))).resolve()


def _kernel_section(root: LocatedDict, userland_arch: str) -> tuple[KernelConfig, list[str]]:
    """The kernel section, checked against its provider's keys; returns it and extra QEMU args."""
    value = root.get("kernel")
    mapping = expect_mapping(value, "kernel", root.source, root.line_of("kernel"))
    provider = validate(_subset(mapping, "provider"), Schema(_KERNEL_COMMON[:1]), "kernel")["provider"]
    values = validate(mapping, KERNEL_PROVIDER_SCHEMAS[provider], f"kernel (provider {provider})")
    where = {key: f"{mapping.source}:{mapping.line_of(key)}" for key in mapping}
    where["kernel"] = f"{mapping.source}:{mapping.line}"
    base = Path(mapping.source).parent
    common = {f.name: values[f.name] for f in _KERNEL_COMMON}
    if provider == "debian":
        return KernelConfig(**common, deb_arch=values["deb_arch"], flavour=values["flavour"], where=where), []
    if provider == "source":
        configs = [_config_path(name, base) for name in values["config"]]
        for name, path in zip(values["config"], configs, strict=True):
            if not path.is_file():
                raise ConfigError(
                    f"{where['config']}: kernel: key 'config': no config file {path} (for '{name}'); "
                    f"known: {', '.join(sorted(p.stem for p in kernel_configs_dir().glob('*.config')))}"
                )
        if not configs:
            raise ConfigError(f"{where['config']}: kernel: key 'config': expected at least one config file")
        return (
            KernelConfig(
                **common,
                deb_arch=userland_arch,
                flavour=values["flavour"],
                configs=configs,
                image_target=values["image_target"],
                source_package=values["source_package"],
                where=where,
            ),
            [],
        )
    local = KernelConfig(
        **common,
        deb_arch=userland_arch,
        flavour="local",
        image=_local_path(values["image"], base),
        kdir=_local_path(values["kdir"], base),
        dtb=_local_path(values["dtb"], base) if values["dtb"] else None,
        qemu_args=values["qemu_args"],
        release=values["release"],
        where=where,
    )
    return local, values["qemu_args"]


def _subset(mapping: LocatedDict, *keys: str) -> LocatedDict:
    out = LocatedDict({k: v for k, v in mapping.items() if k in keys})
    out.source, out.line, out.key_lines = mapping.source, mapping.line, mapping.key_lines
    return out


USERLAND_SCHEMA = Schema(
    [
        Field("deb_arch", one_of(*USERLAND_LIBC), required=True),
        Field("cross_compile", is_str, required=True),
    ]
)
TIMEOUTS_SCHEMA = Schema(
    [
        Field("boot", is_number, default=180.0),
        Field("command", is_number, default=60.0),
        Field("shutdown", is_number, default=20.0),
        Field("ssh", is_number, default=30.0),
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
        Field("files", is_file_list, default=[], doc="files into the guest: 'SRC[:DEST]', {src, dest}, {kselftest}"),
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
    userland = _section(root, "userland", USERLAND_SCHEMA)
    kernel, kernel_qemu_args = _kernel_section(root, userland["deb_arch"])
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
            extra_args=[*qemu["extra_args"], *kernel_qemu_args],
        ),
        kernel=kernel,
        userland=UserlandConfig(**userland),
        timeouts=Timeouts(**timeouts),
        files=parse_files(top["files"], str(path), root.line_of("files")),
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


def resolve_targets(spec: str) -> list[Target]:
    """--target: a name, a YAML path, a comma list of those, or 'all'."""
    if spec == "all":
        return [load_target(p) for p in target_paths()]
    return [resolve_target(part.strip()) for part in spec.split(",") if part.strip()]
