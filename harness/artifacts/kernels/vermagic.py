"""Does the module fit the kernel? Checked before boot, so a mismatch is a plain error, not a guest log.

The kernel refuses a module whose vermagic (release + SMP/preempt/unload/
modversions/arch flags) differs from its own. Before boot we read:
- the module's vermagic from the .modinfo section of the .ko (a small ELF reader);
- the kernel's `Linux version ...` banner and its vermagic string from the
  image itself (raw, or the gzip/xz payload of a vmlinuz/zImage);
- the release the build tree (KDIR) says, from include/config/kernel.release.
Pure functions apart from `check_module`, which caches what it read from an image.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from harness.artifacts.cachelock import write_atomic
from harness.errors import ConfigError, InfraError

BANNER = re.compile(rb"Linux version (\S+) \([^\0\n]*")
_MAGICS = (b"\x1f\x8b\x08", b"\xfd7zXZ\x00")
MAX_TRIES = 64  # compressed-stream candidates tried per image


# --- ELF ------------------------------------------------------------------


def elf_section(data: bytes, name: str) -> bytes | None:
    """The contents of section `name` of an ELF file (32 or 64 bit, either endianness), or None."""
    if data[:4] != b"\x7fELF" or len(data) < 52:
        raise ValueError("not an ELF file")
    elf_class, encoding = data[4], data[5]
    if elf_class not in (1, 2) or encoding not in (1, 2):
        raise ValueError("unknown ELF class or data encoding")
    end = "<" if encoding == 1 else ">"
    if elf_class == 2:
        shoff, shentsize, shnum, shstrndx = struct.unpack_from(end + "Q10xHHH", data, 0x28)
        entry = end + "IIQQQQIIQQ"
    else:
        shoff, shentsize, shnum, shstrndx = struct.unpack_from(end + "I10xHHH", data, 0x20)
        entry = end + "IIIIIIIIII"
    sections = []
    for i in range(shnum):
        fields = struct.unpack_from(entry, data, shoff + i * shentsize)
        sh_name, offset, size = fields[0], fields[4], fields[5]
        sections.append((sh_name, offset, size))
    if not sections or shstrndx >= len(sections):
        return None
    _, str_off, str_size = sections[shstrndx]
    strtab = data[str_off : str_off + str_size]
    for sh_name, offset, size in sections:
        end_of_name = strtab.find(b"\0", sh_name)
        if strtab[sh_name:end_of_name].decode(errors="replace") == name:
            return data[offset : offset + size]
    return None


def modinfo(data: bytes) -> dict[str, str]:
    """key=value pairs of a module's .modinfo section (first value of each key)."""
    section = elf_section(data, ".modinfo")
    info: dict[str, str] = {}
    for entry in (section or b"").split(b"\0"):
        key, sep, value = entry.decode(errors="replace").partition("=")
        if sep and key not in info:
            info[key] = value
    return info


def module_vermagic(ko: Path) -> str:
    try:
        info = modinfo(ko.read_bytes())
    except (OSError, ValueError, struct.error) as exc:
        raise InfraError(f"{ko}: cannot read the module's .modinfo ({exc})") from None
    if "vermagic" not in info:
        raise InfraError(f"{ko}: no vermagic in .modinfo: not a kernel module?")
    return info["vermagic"]


# --- kernel image ---------------------------------------------------------


@dataclass(frozen=True)
class ImageFacts:
    banner: str  # "Linux version 6.1.176-cmah-fast (cma-harness@cache) (...) #1 SMP ..."; "" if unreadable
    release: str  # from the banner
    vermagics: list[str]  # strings in the image that start with the release and look like a vermagic


def kernel_text(data: bytes) -> bytes | None:
    """The bytes that hold the kernel banner: the image itself, or its gzip/xz payload."""
    if BANNER.search(data):
        return data
    tries = 0
    for magic in _MAGICS:
        start = data.find(magic)
        while start != -1 and tries < MAX_TRIES:
            tries += 1
            text = _decompress(data[start:], magic)
            if text and BANNER.search(text):
                return text
            start = data.find(magic, start + 1)
    return None


def _decompress(chunk: bytes, magic: bytes) -> bytes | None:
    try:
        if magic.startswith(b"\x1f\x8b"):
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(chunk)
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(chunk)
    except (zlib.error, lzma.LZMAError, EOFError):
        return None


def image_facts(data: bytes) -> ImageFacts:
    text = kernel_text(data)
    if text is None:
        return ImageFacts("", "", [])
    m = BANNER.search(text)
    assert m is not None
    release = m.group(1).decode(errors="replace")
    # VERMAGIC_STRING: UTS_RELEASE " " then flag words (SMP, preempt, mod_unload, modversions, arch).
    pattern = re.escape(release.encode()) + rb" [\x20-\x7e]*?\0"
    vermagics = sorted(
        {
            v.rstrip(b"\0").decode()
            for v in re.findall(pattern, text)
            if re.search(rb"mod_unload|SMP|preempt|modversions", v)
        }
    )
    return ImageFacts(m.group(0).decode(errors="replace"), release, vermagics)


def cached_image_facts(image: Path, cache_root: Path) -> ImageFacts:
    """image_facts, remembered per image path, size and mtime (decompressing costs ~0.2 s)."""
    st = image.stat()
    key = hashlib.sha256(f"{image.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:24]
    path = cache_root / "vermagic" / f"{key}.json"
    try:
        data = json.loads(path.read_text())
        return ImageFacts(data["banner"], data["release"], data["vermagics"])
    except (OSError, ValueError, KeyError):
        pass
    facts = image_facts(image.read_bytes())
    write_atomic(path, json.dumps(facts.__dict__).encode())
    return facts


# --- the check ------------------------------------------------------------


def mismatch(vermagic: str, facts: ImageFacts, kdir_release: str, expected_release: str = "") -> str | None:
    """Why the kernel would refuse a module with this vermagic; None when it fits (or cannot be told)."""
    module_release = vermagic.split()[0] if vermagic.split() else ""
    if expected_release and kdir_release != expected_release:
        return (
            f"the build tree is for release {kdir_release}, but the target expects {expected_release}: "
            "the module would be built for the wrong kernel"
        )
    if not facts.release:
        if module_release != kdir_release:
            return f"the module is for release {module_release}, the build tree says {kdir_release}"
        return None
    if module_release != facts.release:
        return (
            f"the module was built for {module_release} (vermagic '{vermagic}'), "
            f"but the kernel image is {facts.release} ({facts.banner[:160]})"
        )
    # Compared without trailing blanks: arm's ends with "p2v8 " in both, but say it plainly.
    if facts.vermagics and vermagic.strip() not in {v.strip() for v in facts.vermagics}:
        return (
            f"the module's vermagic '{vermagic}' differs from the kernel's '{facts.vermagics[0]}' "
            "(same release, different SMP/preempt/modversions/arch options)"
        )
    return None


def check_module(
    ko: Path, image: Path, kdir: Path, kdir_release: str, cache_root: Path, *, expected_release: str = ""
) -> ImageFacts:
    """Raise ConfigError when the kernel image would refuse the module; return what the image says."""
    vermagic = module_vermagic(ko)
    facts = cached_image_facts(image, cache_root)
    problem = mismatch(vermagic, facts, kdir_release, expected_release)
    if problem:
        raise ConfigError(
            f"vermagic mismatch: {problem}",
            hint=f"build the module against the tree the image was built from (kdir {kdir} is for "
            f"{kdir_release}; image {image})",
        )
    return facts
