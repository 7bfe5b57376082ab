"""Commands over the serial console, with the framing of harness.guest.guestinit.

One line goes out per command and the reply is parsed from framed lines, so
kernel messages interleaved with the output never change what the caller
sees: the md5 sums (or, for a short reply, the byte and line counts) printed
by the guest prove the rebuilt output, and a corrupted reply is asked for
again.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import shlex
import time
import zlib
from collections.abc import Callable

from harness.errors import GuestError
from harness.guest.console import Console, ConsoleClosed
from harness.guest.transport.base import CommandResult

# A stream's proof: its md5, its counts (`c<bytes>:<lines>`, guestinit's builtin replies) or, for
# a bulky stdout, "gzip".
END = re.compile(r"^@@(\d+) X (\d+) ([0-9a-f]{32}|gzip|c\d+:\d+) ([0-9a-f]{32}|c\d+:\d+)$")
# A line of a bulky command's compressed stdout (guestinit's __z).
BASE64_LINE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
# The canonical-mode tty takes at most 4095 bytes per line.
MAX_LINE = 3800
RE_EMIT_ATTEMPTS = 3
# A bulky command longer than this goes gzip+base64 (two more guest processes, ~4 ms, against
# ~10 µs a byte of console input).
PACK_ABOVE = 600
# After an oops/BUG/panic the guest gets this long to finish the command; a dead task
# holding a lock would otherwise make us wait for the full command timeout.
FATAL_GRACE = 5.0


_ESCAPE = re.compile(r"\\\\|\\x5b")


def unescape(text: str) -> str:
    """Undo the guest's framing escapes: '\\\\' -> '\\', '\\x5b' -> '['."""
    return _ESCAPE.sub(lambda m: "\\" if m.group(0) == "\\\\" else "[", text)


def inflate(lines: list[str]) -> str | None:
    """The text a bulky command's base64 gzip lines carry; None if any of it was lost or changed."""
    try:
        data = gzip.decompress(base64.b64decode("".join(lines), validate=True))
    except (ValueError, OSError, EOFError, zlib.error):
        return None
    return data.decode("utf-8", "surrogateescape")


def rebuild(lines: list[str], prefix: str, proof: str, clean: bool = True) -> str | None:
    """The text whose framed lines these are, if its proof holds (with or without final newline).

    proof: the md5 the guest printed, or `c<bytes>:<lines>` (guestinit's counted builtin reply),
    which holds only for a `clean` reply: no other non-empty line arrived inside its frame. Kernel
    bytes K inside a framed line either push the rest of that line onto a line of its own (not
    clean) or stay in it, and then the framed text is len(K) minus K's newlines longer: the byte
    count differs unless K is newlines only, which changes nothing of the text."""
    body = [unescape(line[len(prefix) :]) for line in lines if line.startswith(prefix)]
    if not body:
        candidates = [""]
    else:
        joined = "\n".join(body)
        candidates = [joined + "\n", joined]
    if ":" in proof:  # c<bytes>:<lines> (an md5 is hex digits only)
        size, count = (int(n) for n in proof[1:].split(":"))
        # What the console changed in decoding (an invalid UTF-8 byte became U+FFFD) could
        # even out a count: only an md5 proves such a reply.
        if not clean or len(body) != count or any("\ufffd" in line for line in body):
            return None
        return next((t for t in candidates if len(t.encode("utf-8", "surrogateescape")) == size), None)
    for text in candidates:
        if hashlib.md5(text.encode("utf-8", "surrogateescape")).hexdigest() == proof:
            return text
    return None


def foreign(text: str, cid: int, bulky: bool = False) -> bool:
    """A non-empty line inside command cid's frame that is none of its reply's lines (a kernel
    message, or the rest of a framed line a kernel message cut): a counted proof then fails."""
    if not text or text.startswith((f"@{cid}o|", f"@{cid}e|")):
        return False
    return not (bulky and BASE64_LINE.match(text))


def command_line(cid: int, command: str, bulky: bool = False) -> str:
    """The console line that runs command as number cid: `__h ID 'command'`, or for a long bulky
    command `__hz ID "$(echo BASE64 | base64 -d | gunzip)"` (base64 needs no quoting)."""
    if bulky and len(command) > PACK_ABOVE:
        packed = base64.b64encode(gzip.compress(command.encode(), mtime=0)).decode()
        line = f'__hz {cid} "$(echo {packed} | base64 -d | gunzip)"'
    else:
        line = f"__h{'z' if bulky else ''} {cid} {shlex.quote(command)}"
    if len(line) > MAX_LINE:
        raise GuestError(f"command too long for the serial console ({len(line)} bytes): {command[:80]}...")
    return line


class SerialTransport:
    name = "serial"

    def __init__(
        self, console: Console, default_timeout: float = 60.0, fatal_count: Callable[[], int] = lambda: 0
    ) -> None:
        self.console = console
        self.default_timeout = default_timeout
        self.fatal_count = fatal_count  # kernel faults seen so far (the guest's fault detector)
        self._next_id = 1

    def run(self, command: str, timeout: float | None = None, *, bulky: bool = False) -> CommandResult:
        """bulky: stdout comes gzip-compressed (guestinit's __hz), and a long command goes
        compressed too. Under TCG the UART costs ~2.3 µs a byte out of the guest and ~10 µs a
        byte into it, so a 20 KB reply takes 12 ms instead of 60, a 3000-character command
        ~15 ms instead of 40."""
        cid = self._next_id
        line = command_line(cid, command, bulky)
        self._next_id += 1
        timeout = timeout or self.default_timeout
        started = time.monotonic()
        self.console.send_line(line)
        for _attempt in range(RE_EMIT_ATTEMPTS):
            status, stdout, stderr = self._collect(cid, command, started + timeout, timeout, bulky)
            if stdout is not None and stderr is not None:
                return CommandResult(
                    command=command,
                    status=status,
                    stdout=stdout,
                    stderr=stderr,
                    started=started - self.console.started_at,
                    duration=time.monotonic() - started,
                )
            # A kernel message landed inside the framed output: ask for it again.
            self.console.send_line(f"__{'z' if bulky else 'e'} {cid}")
        raise GuestError(
            f"output of '{command}' stayed corrupted after {RE_EMIT_ATTEMPTS} attempts", detail=self.console.tail()
        )

    def _collect(
        self, cid: int, command: str, deadline: float, timeout: float, bulky: bool = False
    ) -> tuple[int, str | None, str | None]:
        began = deadline - timeout
        out_prefix, err_prefix = f"@{cid}o|", f"@{cid}e|"
        begin = f"@@{cid} B"
        framed: list[str] = []
        packed: list[str] = []  # bulky: stdout's base64 lines
        clean = True  # no foreign line in the frame (a counted proof needs it)
        started = False
        fatal_before = self.fatal_count()
        after_fault = False
        while True:
            if not after_fault and self.fatal_count() > fatal_before:
                after_fault = True
                deadline = min(deadline, time.monotonic() + FATAL_GRACE)
            try:
                line = self.console.next_line(deadline, f"'{command}'")
            except GuestError as exc:
                if isinstance(exc, ConsoleClosed):
                    waited = time.monotonic() - began
                    exc.message = f"QEMU exited while the guest ran '{command}' ({waited:.1f} s in)"
                elif after_fault:
                    exc.message = f"guest stopped answering {FATAL_GRACE:.0f} s after a kernel fault: {command}"
                else:
                    exc.message = f"guest command timed out after {timeout:.0f} s: {command}"
                exc.args = (exc.message,)
                raise
            text = line.text
            if text == begin:
                started, framed, packed, clean = True, [], [], True
                continue
            if not started:
                continue
            m = END.match(text)
            if m and int(m.group(1)) == cid:
                proof = m.group(3)
                stdout = inflate(packed) if proof == "gzip" else rebuild(framed, out_prefix, proof, clean)
                return int(m.group(2)), stdout, rebuild(framed, err_prefix, m.group(4), clean)
            clean = clean and not foreign(text, cid, bulky)
            if text.startswith((out_prefix, err_prefix)):
                framed.append(text)
            elif bulky and BASE64_LINE.match(text):
                packed.append(text)

    def fits(self, command: str, *, bulky: bool = False) -> bool:
        try:
            command_line(0, command, bulky)
        except GuestError:
            return False
        return True

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file through the console: base64 in chunks that fit one tty line."""
        encoded = base64.b64encode(data).decode()
        tmp = f"{path}.b64"
        self._check(self.run(f": > {shlex.quote(tmp)}"))
        chunk = MAX_LINE - 100
        for i in range(0, len(encoded), chunk):
            self._check(self.run(f"echo {encoded[i : i + chunk]} >> {shlex.quote(tmp)}"))
        q = shlex.quote(path)
        self._check(self.run(f"base64 -d {shlex.quote(tmp)} > {q} && rm {shlex.quote(tmp)} && chmod {mode:o} {q}"))

    @staticmethod
    def _check(result: CommandResult) -> None:
        if result.status != 0:
            raise GuestError(f"guest command failed ({result.status}): {result.command}", detail=result.stderr)
