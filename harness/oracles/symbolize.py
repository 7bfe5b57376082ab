"""Name the driver's frames in reports printed after the module is gone.

kmemleak keeps raw return addresses and prints them with %pS when its file
is read. The harness reads it after rmmod (that is when a leak is a leak),
so the driver's frames come out as bare addresses (`0xffffffc00055107c`)
and a title cannot name the function. This is what syzkaller's symbolizer
does for it: the guest tells where each load put the module's sections
(/sys/module/cma_mem/sections/*), the host has the .ko with its symbol
table, and address - section base = offset into a function.

Pure functions: ELF bytes in, symbols out; report text in, report text out.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

SECTIONS_MARKER = "@modsec "  # the older form: '@modsec .text 0x...', one `cat` per section
# What `grep -H . /sys/module/M/sections/.*text*` prints: every section in one process.
SECTION_LINE = re.compile(r"^/sys/module/[^/\s]+/sections/(?P<name>[^/\s:]+):(?P<base>0x[0-9a-fA-F]+)$")
STT_FUNC = 2


@dataclass(frozen=True)
class Symbol:
    name: str
    section: str
    offset: int  # from the start of its section
    size: int


def elf_functions(data: bytes) -> list[Symbol]:
    """Function symbols of an ELF relocatable object (a .ko), 32- or 64-bit little-endian."""
    if data[:4] != b"\x7fELF" or data[5] != 1:
        raise ValueError("not a little-endian ELF file")
    is64 = data[4] == 2
    if is64:
        shoff, shentsize, shnum, shstrndx = (
            *struct.unpack_from("<Q", data, 0x28),
            *struct.unpack_from("<HHH", data, 0x3A),
        )
        section_fmt, sym_fmt = "<IIQQQQIIQQ", "<IBBHQQ"
    else:
        shoff, shentsize, shnum, shstrndx = (
            *struct.unpack_from("<I", data, 0x20),
            *struct.unpack_from("<HHH", data, 0x2E),
        )
        section_fmt, sym_fmt = "<IIIIIIIIII", "<IIIBBH"
    sections = [struct.unpack_from(section_fmt, data, shoff + i * shentsize) for i in range(shnum)]

    def string(table: int, index: int) -> str:
        start = sections[table][4] + index  # sh_offset
        return data[start : data.index(b"\0", start)].decode()

    names = [string(shstrndx, s[0]) for s in sections]
    symbols: list[Symbol] = []
    for sec in sections:
        if sec[1] != 2:  # SHT_SYMTAB
            continue
        offset, size, link, entsize = sec[4], sec[5], sec[6], sec[9]
        for pos in range(offset, offset + size, entsize):
            if is64:
                name, info, _other, shndx, value, sym_size = struct.unpack_from(sym_fmt, data, pos)
            else:
                name, value, sym_size, info, _other, shndx = struct.unpack_from(sym_fmt, data, pos)
            if info & 0xF == STT_FUNC and 0 < shndx < len(sections) and name:
                # Thumb functions have bit 0 set in st_value; the code starts one byte lower.
                symbols.append(Symbol(string(link, name), names[shndx], value & ~1, sym_size))
    return symbols


def module_functions(ko: Path | None) -> list[Symbol]:
    return elf_functions(ko.read_bytes()) if ko is not None else []


def parse_section_bases(text: str) -> dict[str, int]:
    """Section bases from what the guest printed after insmod: grep -H lines
    ('/sys/module/cma_mem/sections/.text:0xffffffc000550000') or, in older logs,
    '@modsec .text 0xffffffc000550000' lines."""
    bases: dict[str, int] = {}
    for line in text.splitlines():
        m = SECTION_LINE.match(line)
        if m:
            bases[m["name"]] = int(m["base"], 16)
        elif line.startswith(SECTIONS_MARKER):
            parts = line[len(SECTIONS_MARKER) :].split()
            if len(parts) == 2 and parts[1].startswith("0x"):
                bases[parts[0]] = int(parts[1], 16)
    return bases


def locate(address: int, loads: list[dict[str, int]], symbols: list[Symbol]) -> str | None:
    """'func+0x5c/0x200' for an address inside a function of any recorded load, else None."""
    for bases in reversed(loads):  # the newest load first: addresses are reused after rmmod
        for sym in symbols:
            base = bases.get(sym.section)
            if base is not None and base + sym.offset <= address < base + sym.offset + max(sym.size, 1):
                return f"{sym.name}+{address - base - sym.offset:#x}/{sym.size:#x}"
    return None


BARE_FRAME = re.compile(r"(?P<head>^\s*(?:\[<[^>]*>\]\s*)?)0x(?P<addr>[0-9a-f]{8,16})\s*$")


def symbolize(report: str, loads: list[dict[str, int]], symbols: list[Symbol], module: str) -> str:
    """Replace bare-address frames that fall inside the module with 'func+off/size [module]'."""
    if not loads or not symbols:
        return report
    out = []
    for line in report.splitlines():
        m = BARE_FRAME.match(line)
        where = locate(int(m.group("addr"), 16), loads, symbols) if m else None
        out.append(f"{m.group('head')}{where} [{module}]" if m and where else line)
    return "\n".join(out)
