"""`cma-harness boot`: a guest with the driver and cma_test in place, left running for a person."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO

from harness.guest.machine import Guest
from harness.guest.shell import MODULE_PATH
from harness.run.result import RunResult
from harness.run.session import RunOptions, Stages, boot_guest, prepare


def ssh_command(out: Path, port: int) -> str:
    keys = out / "ssh"
    return (
        f"ssh -p {port} -i {keys / 'id_ecdsa'} -o UserKnownHostsFile={keys / 'known_hosts'} "
        "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes root@127.0.0.1"
    )


def boot(opts: RunOptions, say: Callable[[str], None]) -> int:
    record = RunResult(target=opts.target.name)
    stages = Stages(record, lambda name, event, s: say(f"{name}: {s:.2f} s") if event == "done" else None)
    files = prepare(opts, stages, record, say)
    opts.out.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Signals only set a flag, for the whole life of the guest: a second Ctrl-C must not cut the
    # shutdown short (the guest is powered off and reaped whatever arrives meanwhile).
    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        with (opts.out / "console.log").open("wb", buffering=0) as log:
            guest = boot_guest(opts, stages, files, log, record)
            try:
                _serve(guest, opts, log, stop, say)
            finally:
                guest.poweroff()
                guest.stop()
                say("guest powered off")
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    return 0


def _serve(guest: Guest, opts: RunOptions, log: IO[bytes], stop: threading.Event, say: Callable[[str], None]) -> None:
    assert guest.transport is not None
    loaded = guest.transport.run(f"insmod {MODULE_PATH}")
    res = guest.read_facts().reservation
    say(f"guest up: {opts.target.name}, kernel {guest.facts.release}, "
        f"cma {res.size_mib if res else '?'} MiB at {hex(res.base) if res else '?'}")  # fmt: skip
    say("cma_mem " + ("loaded (rmmod cma_mem to unload)" if loaded.ok else f"NOT loaded: {loaded.stderr}"))
    say("cma_test is /bin/cma_test (see userland/README.md); the driver is /lib/modules/cma_mem.ko")
    if guest.ssh is not None:
        say(f"ssh: {ssh_command(opts.out, guest.ssh.port)}")
    say(f"console log: {opts.out / 'console.log'}")
    if sys.stdin.isatty():
        say("serial console attached below; Ctrl-] leaves and powers the guest off")
        guest.stop_console_pump()
        assert guest.console is not None and guest.serial is not None
        guest.serial.run("true")  # the REPL is idle: hand the console to a person
        guest.qemu.child.logfile_read = log
        guest.console.send_line("stty echo; PS1='cma-guest# ' exec setsid cttyhack sh -i")
        guest.qemu.child.interact(escape_character="\x1d")
        return
    say("no terminal: Ctrl-C or SIGTERM powers the guest off")
    guest.start_console_pump()  # keep reading the console: faults, and the log
    while not stop.wait(0.2) and guest.qemu.alive():
        pass
