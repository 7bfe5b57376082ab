"""The serial protocol's host half: rebuild framed output, prove it by md5, detect corruption."""

import hashlib

from harness.guest.console import split_kernel_lines
from harness.guest.transport.serial import rebuild, unescape


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def frame(text: str, prefix: str = "@3o|") -> list[str]:
    escaped = text.replace("\\", "\\\\").replace("[", "\\x5b")
    return [prefix + line for line in escaped.split("\n")[: -1 if text.endswith("\n") else None]]


def test_unescape():
    assert unescape(r"a\\b \x5b1.0] \\x5b") == r"a\b [1.0] \x5b"


def test_rebuild_with_and_without_final_newline():
    for text in ("one\ntwo\n", "no newline", "", "[    1.000000] looks like printk\n", "back\\slash\n"):
        assert rebuild(frame(text), "@3o|", md5(text)) == text


def test_kernel_message_inside_output_is_detected_not_misparsed():
    text = "alpha beta gamma\nsecond line\n"
    lines = frame(text)
    # The kernel printed in the middle of the first line: the console splits it off.
    corrupted = [
        *split_kernel_lines(lines[0][:12] + "[   12.345678] WARNING: CPU: 0 PID: 1 at x"),
        lines[0][12:],
        lines[1],
    ]
    assert corrupted[1].startswith("[   12.345678] WARNING")
    assert rebuild(corrupted, "@3o|", md5(text)) is None  # caller asks the guest to emit again


def test_split_kernel_lines():
    assert split_kernel_lines("abc[    1.000000] x") == ["abc", "[    1.000000] x"]
    assert split_kernel_lines("[    1.000000] x") == ["[    1.000000] x"]
    assert split_kernel_lines("@5o|\\x5b    1.000000] old dmesg") == ["@5o|\\x5b    1.000000] old dmesg"]
