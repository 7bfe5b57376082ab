"""Tests written with the pytest plugin's fixtures: a booted guest and a clean driver per test."""

import pytest

from harness.guest.shell import section_bases_command
from harness.oracles.symbolize import parse_section_bases

pytestmark = pytest.mark.guest


def test_two_blocks_are_apart_and_keep_their_patterns(cma):
    a = cma.alloc("a", 4 << 20, "wc")
    b = cma.alloc("b", 4 << 20, "coherent")
    assert a.int("phys") + a.int("len") <= b.int("phys") or b.int("phys") + b.int("len") <= a.int("phys")
    cma.write("a", 7)
    cma.verify("b")
    cma.free("b")
    cma.check("a", 7)
    cma.free("b", expect="ENOENT")
    assert cma.events == []


def test_each_test_gets_a_clean_driver(cma):
    # The block of the previous test's process is gone: its process was closed and the module reloaded.
    record = cma.info("a", expect="ENOENT")
    assert record.get("errno") == "ENOENT"


def test_guest_fixture_runs_commands(guest):
    out = guest.run("cat /proc/meminfo")
    assert out.status == 0 and "CmaTotal:" in out.stdout
    assert guest.reservation is not None and guest.reservation.size_mib == guest.target.cma_mib


def test_the_module_section_bases_are_whole_addresses(guest):
    # kmemleak reports read after rmmod are symbolized with these: a base read short (a "0")
    # would name no function.
    bases = parse_section_bases(guest.run(section_bases_command()).stdout)
    assert ".text" in bases and ".init.text" in bases
    assert all(base >= 0x10000000 for base in bases.values()) and len(set(bases.values())) == len(bases)


# Replies of every shape the framing must carry byte for byte: escapes, text that looks like a
# kernel line or a frame, spaces, tabs, empty lines, a last line without newline, and sizes on
# both sides of the builtin path's limit (guestinit.FAST_BYTES: 256).
FRAMED = {
    "escapes": "a\\b [x] \\x5b \\\\ [[\n",
    "kernel-like": "[    1.234567] cma_mem: not from the kernel\n@@99 X 0 gzip x\n@1o|not a frame\n",
    "blanks": "  lead\ttab  \n\n\ntrail  \n",
    "no final newline": "one\ntwo",
    "only newlines": "\n\n",
    "under the limit": "".join(f"line {i:02d} [\\]\n" for i in range(20)),
    "255 bytes": "[" + "a" * 253 + "\n",
    "256 bytes": "\\" + "b" * 254 + "\n",
    "257 bytes": "c" * 256 + "\n",
    "many lines": "".join(f"line {i:02d} \\{i}\n" for i in range(40)),
    "one long line": "y" * 300 + "\n",
    "long": "".join(f"{i:04d} " + "x" * 15 + "\n" for i in range(100)),
}


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_replies_come_back_byte_for_byte(guest, stream):
    import base64

    for name, text in FRAMED.items():
        packed = base64.b64encode(text.encode()).decode()
        out = guest.run(f"echo {packed} | base64 -d" + (" >&2" if stream == "stderr" else ""))
        got = out.stdout if stream == "stdout" else out.stderr
        other = out.stderr if stream == "stdout" else out.stdout
        assert (out.status, got, other) == (0, text, ""), name


def test_binary_output_needs_a_bulky_command(guest):
    # A NUL byte does not come back through the framed lines: a plain command's reply fails its md5
    # sum every time and is reported as corrupted, never returned changed. Bulky replies are
    # gzip+base64 and carry any byte.
    from harness.errors import GuestError

    command = "printf 'before\\000after\\n'"
    assert guest.run(command, bulky=True).stdout == "before\0after\n"
    with pytest.raises(GuestError, match="stayed corrupted"):
        guest.run(command)
    # A short reply is proved by counts, not md5 (guestinit's __p): a NUL its `read` dropped, and
    # a carriage return the console drops, still make it an error, never a changed reply.
    for short in ("printf 'a\\000b\\n'", "printf 'a\\rb\\n'", "printf 'a\\r\\n' >&2"):
        with pytest.raises(GuestError, match="stayed corrupted"):
            guest.run(short)
    assert guest.run("printf 'a\\r\\n'", bulky=True).stdout == "a\r\n"
