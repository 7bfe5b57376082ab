"""Naming the driver's frames in a kmemleak report read after rmmod (real capture, arm64-debug).

The fixture is what the guest printed for the `node-never-kfreed` variant
(tests/guest/broken.py): the module's section bases after insmod, the
kmemleak file after rmmod (the driver's frames are bare addresses by then)
and the .ko that was loaded.
"""

import subprocess
from pathlib import Path

from harness.guest.shell import section_bases_command
from harness.oracles.faults import kmemleak_events
from harness.oracles.symbolize import Symbol, locate, module_functions, parse_section_bases, symbolize

FIXTURE = Path(__file__).parent / "fixtures" / "kmemleak-after-rmmod"
GREP_H = Path(__file__).parent / "fixtures" / "section-bases" / "arm64-virt-insmod-stdout.txt"


def test_function_symbols_come_from_the_ko():
    symbols = {s.name: s for s in module_functions(FIXTURE / "cma_mem.ko")}
    assert symbols["cma_mem_ioctl"].section == ".text" and symbols["cma_mem_ioctl"].size > 0x100
    assert symbols["cma_mem_exit"].section == ".exit.text"
    assert module_functions(None) == []


def test_section_bases_from_the_guest():
    bases = parse_section_bases((FIXTURE / "insmod-stdout.txt").read_text())
    assert bases[".text"] == 0xFFFFFFC000550000 and ".init.text" in bases


def test_section_bases_from_one_grep():
    # What `grep -H . /sys/module/cma_mem/sections/.*text*` printed in an arm64-virt guest.
    bases = parse_section_bases(GREP_H.read_text())
    assert set(bases) == {".exit.text", ".init.text", ".text", ".text.ftrace_trampoline"}
    assert bases[".text"] == 0xFFFFD0E943A6E000


def test_a_truncated_or_foreign_section_line_gives_no_base():
    # A read that got one character ("0": what busybox's `read` gave from sysfs), a value without
    # 0x, a path outside /sys/module: no base rather than a wrong one.
    assert (
        parse_section_bases(
            "/sys/module/cma_mem/sections/.text:0\n"
            "/sys/module/cma_mem/sections/.text:ffffd0e943a6e000\n"
            "/tmp/sections/.text:0xffffd0e943a6e000\n"
            "@modsec .text 0\n"
        )
        == {}
    )


def test_kmemleak_after_rmmod_names_the_driver_function():
    raw = (FIXTURE / "kmemleak.txt").read_text()
    assert "] 0xffffffc00055107c" in raw  # what the kernel printed: the module was gone
    # Unsymbolized, the first named frame is the syscall: a title that blames the wrong code.
    assert next(e.title for e in kmemleak_events(raw)) == "memory leak in sys_ioctl"  # syzkaller drops __arm64_
    loads = [parse_section_bases((FIXTURE / "insmod-stdout.txt").read_text())]
    text = symbolize(raw, loads, module_functions(FIXTURE / "cma_mem.ko"), "cma_mem")
    assert "] cma_mem_ioctl+0x1e8/0x11c8 [cma_mem]" in text
    events = kmemleak_events(text)
    assert len(events) == 50 and {e.title for e in events} == {"memory leak in cma_mem_ioctl"}
    assert len({e.signature for e in events}) == 1  # 50 leaks, one bug


def test_addresses_outside_the_module_stay_as_they_are():
    symbols = [Symbol("f", ".text", 0x10, 0x20)]
    loads = [{".text": 0x1000}]
    assert locate(0x1015, loads, symbols) == "f+0x5/0x20"
    assert locate(0x1030, loads, symbols) is None
    line = "    [<(____ptrval____)>] 0xffffffc000999999"
    assert symbolize(line, loads, symbols, "m") == line
    assert symbolize("    [<(____ptrval____)>] 0x0000000000001015", loads, symbols, "m").endswith("] f+0x5/0x20 [m]")


def test_the_section_bases_command_succeeds_where_a_kernel_has_no_sections():
    # arm64-tiny has no KALLSYMS, so no /sys/module/*/sections: the load itself worked, and
    # `insmod … && <this>` must keep its status. Run by the host's sh on a module it lacks.
    command = section_bases_command("cma_harness_no_such_module")
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert subprocess.run(["sh", "-c", f"false && {command}"], check=False).returncode == 1
