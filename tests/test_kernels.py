"""Kernel providers without a guest: config fragments, cache keys, target schema, vermagic parsing."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from harness.artifacts.debian import DebianProvider, ImageCache
from harness.artifacts.kernels import kconfig, source, vermagic
from harness.artifacts.kernels.local import LocalProvider
from harness.artifacts.kernels.registry import kernel_provider
from harness.artifacts.kernels.source import SourceProvider
from harness.config.targets import kernel_configs_dir, load_target
from harness.errors import ConfigError, InfraError

TARGETS = Path("configs/targets")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


# --- config fragments -----------------------------------------------------


def test_fragment_parse_values_and_unset():
    opts = kconfig.parse('CONFIG_A=y\n# comment\n\nCONFIG_B=16\nCONFIG_C="-x"\n# CONFIG_D is not set\nCONFIG_E=n\n')
    assert {n: o.value for n, o in opts.items()} == {
        "CONFIG_A": "y",
        "CONFIG_B": "16",
        "CONFIG_C": '"-x"',
        "CONFIG_D": None,
        "CONFIG_E": None,
    }
    assert opts["CONFIG_B"].where == "<string>:4"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("CONFIG_A=y\nKASAN=y\n", r"f.config:2: not a kernel config line: 'KASAN=y'"),
        ("CONFIG_A=yes\n", r"f.config:1: bad value for CONFIG_A: 'yes'"),
    ],
)
def test_fragment_errors_name_file_and_line(text, message):
    with pytest.raises(ConfigError, match=message):
        kconfig.parse(text, "f.config")


def test_merge_later_fragment_wins_and_keeps_its_place():
    merged = kconfig.merge(
        [
            ("base", 'CONFIG_A=y\nCONFIG_LOCALVERSION="-base"\nCONFIG_B=y\n'),
            ("debug", 'CONFIG_LOCALVERSION="-debug"\n# CONFIG_B is not set\n'),
        ]
    )
    assert [(o.name, o.value, o.where) for o in merged.values()] == [
        ("CONFIG_A", "y", "base:1"),
        ("CONFIG_LOCALVERSION", '"-debug"', "debug:1"),
        ("CONFIG_B", None, "debug:2"),
    ]
    assert kconfig.render_plain(merged) == 'CONFIG_A=y\nCONFIG_LOCALVERSION="-debug"\n# CONFIG_B is not set\n'


def test_dropped_options_are_named():
    merged = kconfig.merge([("f", "CONFIG_A=y\nCONFIG_B=y\nCONFIG_N=0x10\n# CONFIG_C is not set\nCONFIG_S=4\n")])
    dotconfig = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=16\n# CONFIG_C is not set\nCONFIG_S=8\n"
    problems = kconfig.dropped(merged, dotconfig)
    assert problems == [
        "CONFIG_B=y (f:2): the configured kernel has it not set",
        "CONFIG_S=4 (f:5): the configured kernel has it =8",
    ]
    assert "unknown symbol" in kconfig.dropped(kconfig.merge([("f", "CONFIG_NOPE=y\n")]), "")[0]
    assert kconfig.dropped(kconfig.merge([("f", "# CONFIG_GONE is not set\n")]), "") == []


def test_cache_key_depends_on_options_not_on_comments():
    a = kconfig.merge([("a", "# hello\nCONFIG_A=y\n")])
    b = kconfig.merge([("elsewhere", "CONFIG_A=y\n")])
    c = kconfig.merge([("a", "CONFIG_A=y\nCONFIG_B=y\n")])
    key = kconfig.cache_key("sha", a, "arm64", "gcc-12", "r1")
    assert key == kconfig.cache_key("sha", b, "arm64", "gcc-12", "r1")
    others = [
        kconfig.cache_key("sha", c, "arm64", "gcc-12", "r1"),
        kconfig.cache_key("sha2", a, "arm64", "gcc-12", "r1"),
        kconfig.cache_key("sha", a, "arm", "gcc-12", "r1"),
        kconfig.cache_key("sha", a, "arm64", "gcc-13", "r1"),
        kconfig.cache_key("sha", a, "arm64", "gcc-12", "r2"),
    ]
    assert len({key, *others}) == 6


def test_shipped_flavours_have_what_the_harness_needs():
    for arch in ("arm64", "armv7"):
        for flavour in ("fast", "debug"):
            merged = kconfig.merge_files(
                [kernel_configs_dir() / f"{arch}-base.config", kernel_configs_dir() / f"{flavour}.config"]
            )
            values = {n: o.value for n, o in merged.items()}
            # printk timestamps are parsed by the harness; the rest is what /init and cma_mem use.
            for name in (
                "PRINTK_TIME",
                "BLK_DEV_INITRD",
                "MODULES",
                "MODULE_UNLOAD",
                "DEVTMPFS",
                "TMPFS",
                "DEBUG_FS",
                "CMA",
                "DMA_CMA",
                "CMA_DEBUGFS",
                "CMA_SYSFS",
                "DMABUF_HEAPS_CMA",
                "SLUB",
                "BINFMT_SCRIPT",
                "SERIAL_AMBA_PL011_CONSOLE",
                "DETECT_HUNG_TASK",
            ):
                assert values[f"CONFIG_{name}"] == "y", (arch, flavour, name)
            assert values["CONFIG_LOCALVERSION"] == f'"-cmah-{flavour}"'
    debug = kconfig.merge_files([kernel_configs_dir() / "debug.config"])
    for name in ("KASAN", "DEBUG_KMEMLEAK", "PROVE_LOCKING", "DEBUG_LIST", "DMA_API_DEBUG"):
        assert debug[f"CONFIG_{name}"].value == "y"


# --- targets ----------------------------------------------------------------


def test_shipped_source_targets_load():
    fast = load_target(TARGETS / "arm64-fast.yaml")
    assert fast.kernel.provider == "source" and fast.kernel.flavour == "fast"
    assert [p.name for p in fast.kernel.configs] == ["arm64-base.config", "fast.config"]
    assert fast.kernel.image_target == "Image" and fast.kernel.source_package == "linux-source-6.1"
    assert fast.kernel.deb_arch == fast.userland.deb_arch  # no kernel packages: no extra foreign arch
    assert load_target(TARGETS / "armv7-fast.yaml").kernel.image_target == "zImage"
    assert load_target(TARGETS / "arm64-debug.yaml").kernel.configs[-1].name == "debug.config"
    assert load_target(TARGETS / "armv7-virt.yaml").kernel.flavour == "armmp-lpae"


FAST = (TARGETS / "arm64-fast.yaml").read_text()


def test_unknown_provider_names_file_and_line(tmp_path):
    path = write(tmp_path, "t.yaml", FAST.replace("provider: source", "provider: sauce"))
    with pytest.raises(
        ConfigError,
        match=rf"t.yaml:{line_of(path, 'sauce')}: kernel: key 'provider': expected one of debian, source, local",
    ):
        load_target(path)


def test_provider_keys_are_checked_per_provider(tmp_path):
    path = write(tmp_path, "t.yaml", FAST.replace("  flavour: fast\n", "  flavour: fast\n  deb_arch: arm64\n"))
    with pytest.raises(
        ConfigError,
        match=rf"t.yaml:{line_of(path, 'deb_arch: arm64')}: kernel \(provider source\): unknown key 'deb_arch'",
    ):
        load_target(path)
    path = write(tmp_path, "t.yaml", FAST.replace("  image_target: Image\n", ""))
    with pytest.raises(
        ConfigError, match=r"t.yaml:\d+: kernel \(provider source\): missing required key 'image_target'"
    ):
        load_target(path)


def test_unknown_config_fragment_is_named(tmp_path):
    path = write(tmp_path, "t.yaml", FAST.replace("[arm64-base, fast]", "[arm64-base, fsat]"))
    with pytest.raises(
        ConfigError,
        match=rf"t.yaml:{line_of(path, 'fsat')}: kernel: key 'config': no config file .*fsat.config.*known: .*fast",
    ):
        load_target(path)


def test_config_fragment_by_path_is_relative_to_the_target(tmp_path):
    write(tmp_path, "mine.config", "CONFIG_A=y\n")
    path = write(tmp_path, "t.yaml", FAST.replace("[arm64-base, fast]", "[arm64-base, ./mine.config]"))
    assert load_target(path).kernel.configs[-1] == tmp_path / "mine.config"


LOCAL = FAST.replace(
    """  provider: source
  flavour: fast
  config: [arm64-base, fast]
  image_target: Image
""",
    """  provider: local
  image: ${KDIR_FOR_TEST}/arch/arm64/boot/Image
  kdir: ${KDIR_FOR_TEST}
  qemu_args: [-d, guest_errors]
  release: 6.1.0-board
""",
)


def fake_kdir(root: Path, release: str) -> Path:
    (root / "include" / "config").mkdir(parents=True)
    (root / "include" / "config" / "kernel.release").write_text(release + "\n")
    (root / "Makefile").write_text("# kernel\n")
    (root / "arch" / "arm64" / "boot").mkdir(parents=True)
    (root / "arch" / "arm64" / "boot" / "Image").write_bytes(b"Linux version " + release.encode() + b" (x)\0")
    return root


def test_local_target_expands_paths_and_adds_qemu_args(tmp_path, monkeypatch):
    kdir = fake_kdir(tmp_path / "kdir", "6.1.0-board")
    monkeypatch.setenv("KDIR_FOR_TEST", str(kdir))
    target = load_target(write(tmp_path, "t.yaml", LOCAL))
    assert target.kernel.kdir == kdir and target.kernel.image == kdir / "arch/arm64/boot/Image"
    assert target.qemu.extra_args[-2:] == ["-d", "guest_errors"]
    kernel = LocalProvider().kernel(target)
    assert (kernel.release, kernel.kdir, kernel.dtb) == ("6.1.0-board", kdir, None)


def test_local_errors_name_the_key_line(tmp_path, monkeypatch):
    kdir = fake_kdir(tmp_path / "kdir", "6.1.0-other")
    monkeypatch.setenv("KDIR_FOR_TEST", str(kdir))
    path = write(tmp_path, "t.yaml", LOCAL)
    with pytest.raises(
        ConfigError,
        match=rf"t.yaml:{line_of(path, 'release:')}: kernel: key 'release': "
        r"the target expects 6.1.0-board, but .* says 6.1.0-other",
    ):
        LocalProvider().kernel(load_target(path))
    path = write(tmp_path, "t.yaml", LOCAL.replace("boot/Image", "boot/zImage"))
    with pytest.raises(ConfigError, match=rf"t.yaml:{line_of(path, 'image:')}: kernel: key 'image': no such file"):
        LocalProvider().kernel(load_target(path))
    (kdir / "include" / "config" / "kernel.release").unlink()
    path = write(tmp_path, "t.yaml", LOCAL)
    with pytest.raises(ConfigError, match=rf"t.yaml:{line_of(path, 'kdir:')}: kernel: key 'kdir': .* is not prepared"):
        LocalProvider().kernel(load_target(path))


def test_kernel_provider_follows_the_target(tmp_path):
    cache = ImageCache(tmp_path)
    assert type(kernel_provider(load_target(TARGETS / "arm64-virt.yaml"), cache)) is DebianProvider
    assert type(kernel_provider(load_target(TARGETS / "arm64-fast.yaml"), cache)) is SourceProvider


def test_failed_build_step_reports_the_log_tail(tmp_path):
    log = tmp_path / "build.log"
    with log.open("w") as out, pytest.raises(InfraError, match="failed \\(make exit 3\\)") as info:
        source.stream_build(
            ["sh", "-c", "echo compiling; echo 'error: boom' >&2; exit 3"],
            out,
            log,
            "test kernel",
            log=lambda s: None,
            started=0.0,
        )
    assert "error: boom" in info.value.detail and "compiling" in log.read_text()


# --- vermagic ---------------------------------------------------------------


def elf_with_modinfo(modinfo: bytes, *, bits: int = 64, big: bool = False) -> bytes:
    """A minimal relocatable ELF with a .modinfo and a .shstrtab section."""
    end = ">" if big else "<"
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    header_size = 64 if bits == 64 else 52
    modinfo_off = header_size
    shstr_off = modinfo_off + len(modinfo)
    shoff = shstr_off + len(shstrtab)
    shoff += (-shoff) % 8
    if bits == 64:
        header = struct.pack(
            end + "16sHHIQQQIHHHHHH",
            b"\x7fELF\x02" + (b"\x02" if big else b"\x01") + b"\x01" + b"\0" * 9,
            1,
            183,
            1,
            0,
            0,
            shoff,
            0,
            64,
            0,
            0,
            64,
            3,
            2,
        )
        entry = end + "IIQQQQIIQQ"
    else:
        header = struct.pack(
            end + "16sHHIIIIIHHHHHH",
            b"\x7fELF\x01" + (b"\x02" if big else b"\x01") + b"\x01" + b"\0" * 9,
            1,
            40,
            1,
            0,
            0,
            shoff,
            0,
            52,
            0,
            0,
            40,
            3,
            2,
        )
        entry = end + "IIIIIIIIII"
    sections = [
        struct.pack(entry, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        struct.pack(entry, 1, 1, 2, 0, modinfo_off, len(modinfo), 0, 0, 1, 0),
        struct.pack(entry, 10, 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0),
    ]
    body = header + modinfo + shstrtab
    return body + b"\0" * (shoff - len(body)) + b"".join(sections)


MODINFO = b"license=GPL\0vermagic=6.1.176-cmah-fast SMP mod_unload aarch64\0name=cma_mem\0"


@pytest.mark.parametrize(("bits", "big"), [(64, False), (32, False), (64, True), (32, True)])
def test_modinfo_from_elf(bits, big):
    info = vermagic.modinfo(elf_with_modinfo(MODINFO, bits=bits, big=big))
    assert info["vermagic"] == "6.1.176-cmah-fast SMP mod_unload aarch64"
    assert info["name"] == "cma_mem"


def test_module_vermagic_errors(tmp_path):
    bad = write(tmp_path, "x.ko", "not an elf")
    with pytest.raises(InfraError, match=r"cannot read the module's \.modinfo"):
        vermagic.module_vermagic(bad)
    empty = tmp_path / "e.ko"
    empty.write_bytes(elf_with_modinfo(b"license=GPL\0"))
    with pytest.raises(InfraError, match="no vermagic"):
        vermagic.module_vermagic(empty)


KERNEL_TEXT = (
    b"\0junk\0Linux version 6.1.176-cmah-fast (cma-harness@cache) (aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0) "
    b"#1 SMP Thu Jan  1 00:00:00 UTC 1970\n\0more\0"
    + b"6.1.176-cmah-fast SMP mod_unload aarch64\0"
    + b"6.1.176-cmah-fast\0"
)


@pytest.mark.parametrize("wrap", ["raw", "gzip", "xz"])
def test_image_facts_from_raw_and_compressed_images(wrap):
    payload = {"raw": KERNEL_TEXT, "gzip": gzip.compress(KERNEL_TEXT), "xz": lzma.compress(KERNEL_TEXT)}[wrap]
    data = b"\x00decompressor stub\x1f\x8b\x08garbage" + payload + b"trailing appended dtb"
    facts = vermagic.image_facts(data)
    assert facts.release == "6.1.176-cmah-fast"
    assert facts.banner.startswith("Linux version 6.1.176-cmah-fast (cma-harness@cache)")
    assert facts.vermagics == ["6.1.176-cmah-fast SMP mod_unload aarch64"]


def test_mismatch_messages():
    facts = vermagic.image_facts(KERNEL_TEXT)
    fits = "6.1.176-cmah-fast SMP mod_unload aarch64"
    assert vermagic.mismatch(fits, facts, "6.1.176-cmah-fast") is None
    other = vermagic.mismatch("6.1.176-elsewhere SMP mod_unload aarch64", facts, "6.1.176-elsewhere")
    assert other and "built for 6.1.176-elsewhere" in other and "kernel image is 6.1.176-cmah-fast" in other
    flags = vermagic.mismatch("6.1.176-cmah-fast SMP preempt mod_unload aarch64", facts, "6.1.176-cmah-fast")
    assert flags and "different SMP/preempt" in flags
    arm = vermagic.ImageFacts(
        "Linux version 6.1.0-50-armmp-lpae (x)",
        "6.1.0-50-armmp-lpae",
        ["6.1.0-50-armmp-lpae SMP mod_unload modversions ARMv7 p2v8 "],
    )
    assert (
        vermagic.mismatch("6.1.0-50-armmp-lpae SMP mod_unload modversions ARMv7 p2v8 ", arm, "6.1.0-50-armmp-lpae")
        is None
    )
    unreadable = vermagic.ImageFacts("", "", [])
    assert vermagic.mismatch(fits, unreadable, "6.1.176-cmah-fast") is None
    assert "build tree is for release 6.1.0-a" in (vermagic.mismatch(fits, unreadable, "6.1.0-a", "6.1.0-b") or "")


def test_check_module_raises_config_error_before_boot(tmp_path):
    ko = tmp_path / "cma_mem.ko"
    ko.write_bytes(elf_with_modinfo(b"vermagic=6.1.176-elsewhere SMP mod_unload aarch64\0"))
    image = tmp_path / "Image"
    image.write_bytes(gzip.compress(KERNEL_TEXT))
    with pytest.raises(ConfigError, match=r"vermagic mismatch: the module was built for 6\.1\.176-elsewhere") as info:
        vermagic.check_module(ko, image, tmp_path, "6.1.176-elsewhere", tmp_path / "cache")
    assert info.value.exit_code == 2
    ko.write_bytes(elf_with_modinfo(b"vermagic=6.1.176-cmah-fast SMP mod_unload aarch64\0"))
    facts = vermagic.check_module(ko, image, tmp_path, "6.1.176-cmah-fast", tmp_path / "cache")
    assert facts.release == "6.1.176-cmah-fast"
    assert list((tmp_path / "cache" / "vermagic").glob("*.json"))  # remembered for warm runs
