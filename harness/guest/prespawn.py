"""Start QEMU before the harness knows it needs it: the boot runs while Python imports and plans.

A warm `cma-harness run` spends ~0.1 s in Python start-up, imports, parsing and cache checks
before it can compute QEMU's command line: on a kernel that boots in 0.3 s, a third of the
harness's fixed cost. The same invocation (same arguments, directory and cache) almost always
resolves to the same command line as last time, so the CLI starts that command line at once,
from a plan remembered by the last run, and the session adopts the running QEMU only if the
command line it resolves is identical, argument for argument, and every file it names (kernel,
initramfs, device tree, snapshot) has the size and mtime it had when the plan was made. Anything
else (an edited driver: a new content-keyed initramfs; another target; a pruned snapshot) stops
the guess and boots as usual; a wrong guess costs a fraction of a second of CPU, never a result.

Only `run` arms this, and only for guests whose command line can repeat (serial, not a
snapshot being saved). The speculative QEMU is an ordinary `QemuProcess`: PR_SET_PDEATHSIG,
the atexit hook and the SIGTERM handler stop it like any other.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import zlib

from harness.guest.qemu_process import QemuProcess

# Everything above is what the CLI imports before QEMU starts: no dataclasses, pathlib, hashlib
# or typing (~20 ms together), which the rest of the run imports while the guest boots.
TYPE_CHECKING = False  # mypy reads this name as True
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

PLAN_VERSION = 1
# What shapes the resolution besides the arguments: where the cache and the configs are found.
KEY_ENV = ("CMA_HARNESS_CACHE", "XDG_CACHE_HOME", "HOME", "PATH")
KEEP_PLANS = 64


class Armed:
    def __init__(self, plans: str, key: str) -> None:
        self.plans = plans  # the cache's plans/ folder
        self.key = key
        self.guess: QemuProcess | None = None
        self.files: dict[str, list[int]] | None = None  # the guess's files as stat'ed before it started
        self.first_done = False  # one guess and one plan per process: its first guest's
        self.yielded: int | None = None  # this process's own nice value while it yields to the guess

    def plan_path(self) -> str:
        return os.path.join(self.plans, f"{self.key}.json")


# While the guess boots, this process imports and plans on the host's other core, and the guest
# then reached its boot facts 0.08 s later in its own uptime than a bare boot of the same command
# line (10 alternating pairs; QEMU's main loop and the host's other tenants share that core). So
# it runs at a lower priority (nice +5) until it takes the guest (adopt) or drops it (discard),
# and only where it may return to its own priority (root, or RLIMIT_NICE): a process that could
# not would leave every later child, a fallback QEMU included, at the lower priority.
YIELD_NICE = 5


def _yield() -> int | None:
    """Lower this thread's priority; the value to return to, or None if it stays as it is."""
    try:
        own = os.getpriority(os.PRIO_PROCESS, 0)
        if os.geteuid() != 0 and resource.getrlimit(resource.RLIMIT_NICE)[0] < 20 - own:
            return None
        os.setpriority(os.PRIO_PROCESS, 0, min(own + YIELD_NICE, 19))
    except OSError:
        return None
    return own


def _unyield(armed: Armed) -> None:
    if armed.yielded is not None:
        with contextlib.suppress(OSError):  # a root without CAP_SYS_NICE: only slower on a busy host
            os.setpriority(os.PRIO_PROCESS, 0, armed.yielded)
        armed.yielded = None


_armed: Armed | None = None


# Options whose values never reach QEMU's command line: runs differing only in them share a plan
# (a CI job's --out per build, the -j jobs of one target). Safe either way: adoption compares argv.
UNKEYED = ("--out", "--claim-dir")


def plan_key(args: list[str], cwd: str, env: dict[str, str]) -> str:
    """The arguments minus UNKEYED options, scenarios as a set (-j orders each job's queue by the
    last durations), the directory and KEY_ENV."""
    kept, scenarios, pending = [], [], ""
    for arg in args:
        if pending:
            if pending == "--scenario":
                scenarios.append(arg)
            pending = ""
        elif arg in (*UNKEYED, "--scenario"):
            pending = arg
        elif arg.startswith("--scenario="):
            scenarios.append(arg.split("=", 1)[1])
        elif not arg.startswith(tuple(f"{o}=" for o in UNKEYED)):
            kept.append(arg)
    blob = json.dumps([PLAN_VERSION, kept, sorted(scenarios), cwd, [env.get(k, "") for k in KEY_ENV]]).encode()
    # Two checksums, not a cryptographic hash (hashlib's OpenSSL costs 3-6 ms to load before the
    # early start): a collision could only start a wrong guess, which adoption refuses.
    return f"{zlib.crc32(blob):08x}{zlib.adler32(blob):08x}{len(blob):04x}"


def cache_override(args: list[str]) -> str | None:
    """The value of --cache-dir among `run`'s arguments, if given."""
    for i, arg in enumerate(args):
        if arg == "--cache-dir" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--cache-dir="):
            return arg.split("=", 1)[1]
    return None


def named_files(argv: list[str]) -> list[str]:
    """The files a QEMU command line reads: absolute paths as arguments or inside `exec:` ones."""
    out = []
    for token in argv[1:]:
        words = token[len("exec:") :].split() if token.startswith("exec:") else [token]
        out += [w for w in words if w.startswith("/") and os.path.isfile(w)]
    return out


def file_stats(paths: list[str]) -> dict[str, list[int]] | None:
    """size and mtime of each file; None if one is gone."""
    try:
        return {p: [(st := os.stat(p)).st_size, st.st_mtime_ns] for p in paths}
    except OSError:
        return None


def arm(cache: str, args: list[str]) -> None:
    """Called first thing by `cma-harness run`: start the remembered command line, if any."""
    global _armed
    _armed = Armed(os.path.join(cache, "plans"), plan_key(args, os.getcwd(), dict(os.environ)))
    try:
        with open(_armed.plan_path(), "rb") as f:
            plan = json.loads(f.read())
        argv, files = list(plan["argv"]), dict(plan["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # no plan yet (or an unreadable one): boot as usual
    if file_stats(list(files)) != files:
        return  # a file changed since the plan was made: the resolution will differ
    _armed.files = files
    try:
        _armed.guess = QemuProcess(argv).start()
    except Exception:
        _armed.guess = None
        return
    _armed.yielded = _yield()  # after the spawn: QEMU keeps the process's own priority


def adopt(argv: list[str]) -> QemuProcess | None:
    """For the process's first guest: the speculative QEMU if it runs exactly `argv` on
    unchanged files, even one killed by a signal meanwhile. A guess that does not match, or
    that exited by itself (a QEMU that refused its arguments), is stopped and the run boots."""
    armed = _armed
    if armed is None or armed.first_done or armed.guess is None:
        return None
    _unyield(armed)  # before a QEMU of its own is started, if this guess is not it
    guess, armed.guess = armed.guess, None
    if guess.argv == argv and file_stats(list(armed.files or {})) == armed.files:
        if guess.alive():
            return guess
        if guess.child.signalstatus is not None:
            # The very guest this run would boot, killed from outside before the harness took
            # it (an operator, the OOM killer, a CI system's timeout): the boot then fails as
            # any boot whose QEMU is killed does, an infrastructure error with the evidence,
            # instead of a second QEMU quietly taking its place.
            return guess
    guess.stop(grace=0.5)
    return None


def spawned(argv: list[str], repeatable: bool) -> None:
    """After the process's first guest started: its command line becomes the plan the next run
    starts early, if it can repeat (no per-run port, key or socket in it)."""
    armed = _armed
    if armed is None or armed.first_done:
        return
    armed.first_done = True  # adopt() has already taken or stopped the guess
    files = file_stats(named_files(argv))
    if not repeatable or files is None:
        return
    from harness.artifacts.cachelock import write_atomic  # here: not on the way to the early start

    data: dict[str, Any] = {"version": PLAN_VERSION, "argv": argv, "files": files}
    try:
        # Atomic: a concurrent run reads the old plan or the new one.
        from pathlib import Path

        write_atomic(Path(armed.plan_path()), json.dumps(data).encode())
        prune(Path(armed.plans))
    except OSError:
        pass  # a read-only cache only loses the head start


def prune(plans: Path, keep: int = KEEP_PLANS) -> None:
    """One plan per distinct invocation (a test suite makes hundreds): keep the newest."""
    entries = list(plans.glob("*.json"))
    if len(entries) <= 2 * keep:
        return
    entries.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in entries[keep:]:
        old.unlink(missing_ok=True)


def discard() -> None:
    """Stop a guess nobody adopted (the run failed before booting, or booted another way)."""
    armed = _armed
    if armed is not None and armed.guess is not None:
        _unyield(armed)
        armed.guess.stop(grace=0.5)
        armed.guess = None


def pending() -> QemuProcess | None:
    """The guess started and not yet adopted or stopped (for tests and diagnostics)."""
    return None if _armed is None else _armed.guess
