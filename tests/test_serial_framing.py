"""The serial protocol's host half: rebuild framed output, prove it by md5 or by counts, detect corruption."""

import base64
import gzip
import hashlib

from harness.guest.console import split_kernel_lines
from harness.guest.transport.serial import BASE64_LINE, foreign, inflate, rebuild, unescape


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


def packed(text: str) -> list[str]:
    """What guestinit's __z prints for stdout: `gzip -c | base64`, 76 characters a line."""
    data = base64.b64encode(gzip.compress(text.encode())).decode()
    return [data[i : i + 76] for i in range(0, len(data), 76)]


RECORDS = "".join(f"@cma step={i} op=info status=ok errno=0 name=b{i} id={i} len=4096\n" for i in range(200))


def test_bulky_output_inflates_and_is_much_smaller():
    lines = packed(RECORDS)
    assert inflate(lines) == RECORDS
    assert sum(len(line) + 1 for line in lines) * 4 < len(RECORDS)
    assert all(BASE64_LINE.match(line) for line in lines)


def test_bulky_output_with_a_kernel_message_inside_is_detected():
    lines = packed(RECORDS)
    # A printk in the middle of a base64 line: the console splits it off; the kernel part is not
    # base64 (spaces, '['), the two halves are, so the stream has the right characters in pieces.
    cut = split_kernel_lines(lines[3][:30] + "[   12.345678] cma_mem: x")
    assert not BASE64_LINE.match(cut[1])
    broken = [*lines[:3], cut[0], lines[3][30:], *lines[4:]]
    assert inflate(broken) == RECORDS  # pieces of one line rejoin: nothing lost
    assert inflate([*lines[:3], *lines[4:]]) is None  # a line lost
    assert inflate([*lines[:3], "SGVsbG8", *lines[3:]]) is None  # a stray base64-looking line
    assert inflate(lines[:-1]) is None  # the end lost


def counted(text: str) -> str:
    """The proof guestinit's builtin path prints: the bytes written and the framed lines."""
    return f"c{len(text.encode())}:{len(frame(text))}"


def test_counted_replies_rebuild_with_and_without_final_newline():
    for text in ("one\ntwo\n", "no newline", "[    1.000000] looks like printk\n", "back\\slash\n", "\n\n", "a\n\nb"):
        assert rebuild(frame(text), "@3o|", counted(text)) == text
        assert rebuild(frame(text), "@3o|", counted(text), clean=False) is None
    assert rebuild(frame("one\ntwo\n"), "@3o|", "c8:1") is None  # a line lost or added
    assert rebuild(frame("beforeafter\n"), "@3o|", "c13:1") is None  # the guest's read dropped a NUL


def received(stream: str, cid: int = 3) -> tuple[list[str], bool]:
    """What the host makes of a frame's bytes: its lines as the console splits them, and whether
    the frame was clean (SerialTransport._collect and lava.replay.find_frames alike)."""
    lines = [piece for raw in stream.split("\n") for piece in split_kernel_lines(raw)]
    return lines, not any(foreign(line, cid) for line in lines)


KERNEL = ["[   12.345678] cma_mem: dump_mem: x\n", "cma_mem: no stamp\n", "[   1.000000] pr_cont without end", "\n"]


def test_a_kernel_message_anywhere_in_a_counted_reply_never_changes_it():
    # Every kernel message at every byte of every reply: the counted proof rebuilds the text or
    # refuses it (the caller asks again), never anything else. Refusals prove the check can fail.
    refused = accepted = 0
    for text in ("alpha beta\nsecond\n", "one\ntwo", "x\n\ny\n", "[ts] \\ esc\n", "a" * 40 + "\n"):
        sent = "".join(line + "\n" for line in frame(text))
        for k in KERNEL:
            for at in range(len(sent) + 1):
                lines, clean = received(sent[:at] + k + sent[at:])
                got = rebuild(lines, "@3o|", counted(text), clean)
                assert got in (None, text), (text, k, at, got)
                refused += got is None
                accepted += got == text
    assert refused > 400 and accepted > 10  # accepted: a lone newline between two framed lines


def test_md5_replies_survive_a_kernel_line_between_framed_lines():
    text = "one\ntwo\n"
    lines, clean = received("@3o|one\n[   12.345678] cma_mem: x\n@3o|two\n")
    assert not clean and rebuild(lines, "@3o|", md5(text), clean) == text
    assert rebuild(lines, "@3o|", counted(text), clean) is None


def test_what_the_console_changes_is_never_proved_by_counts():
    # An invalid UTF-8 byte arrives as U+FFFD (3 bytes), which a dropped byte elsewhere could
    # even out: only an md5 proves such a reply. (The guest sends a reply with a carriage
    # return, which the console drops, by sed and md5sum: guestinit's __p.)
    text = "bad \ufffd byte\n"
    assert rebuild(frame(text), "@3o|", counted(text)) is None
    assert rebuild(frame(text), "@3o|", md5(text)) == text
