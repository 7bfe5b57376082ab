"""Every guest-side shell snippet the harness sends, in one place (the guest's /init is guestinit.py).

They are strings for busybox sh; the functions that parse what they print live in harness/oracles.
"""

from __future__ import annotations

from harness.oracles.dmesg import BOOT_FACT_PATTERN

MODULE = "cma_mem"
MODULE_PATH = f"/lib/modules/{MODULE}.ko"
# The driver's debugfs list of every live block (the fuzzer compares it with the model).
DEBUGFS_BLOCKS = f"/sys/kernel/debug/{MODULE}/blocks"
KMEMLEAK = "/sys/kernel/debug/kmemleak"
PATTERN_PARAM = f"/sys/module/{MODULE}/parameters/test_pattern"
# Exit codes of the capacity probe's own plumbing, distinct from cma_test's.
PROBE_INSMOD_FAILED = 99
PROBE_RMMOD_FAILED = 98
CMA_USED_MARKER = "@cmaused "
KMEMLEAK_MARKER = "@kmemleak "


def wait_gone(pid: str) -> str:
    """Shell that waits until a process has exited. A zombie counts as gone: it has closed its
    files (the driver's release ran), and over SSH nobody may reap it soon."""
    return f"while [ -e /proc/{pid} ] && ! grep -q '^State:.*Z' /proc/{pid}/status 2>/dev/null; do sleep 0.01; done"


# Between two scenarios in one guest: no cma_test process left, the module unloaded.
RESET_COMMAND = (
    "killall -9 cma_test 2>/dev/null; for p in $(pidof cma_test); do " + wait_gone("$p") + "; done; "
    f"rmmod {MODULE} 2>/dev/null; true"
)


def section_bases_command(module: str = MODULE) -> str:
    """The guest shell command that prints a loaded module's section bases (root can read them):
    one process for all of them (`path:base` lines, parse_section_bases), where a `cat` per section
    cost five processes a load, ~0.1 s each on the debug kernel under TCG. Always exits 0: a
    kernel without KALLSYMS (arm64-tiny) has no sections directory, and the load still worked."""
    return f"{{ grep -sH . /sys/module/{module}/sections/.*text* || true; }}"


def insmod_command(params: str) -> str:
    # Where this load put the module's code, printed in the same round trip: kmemleak reports
    # read after rmmod then still name the driver's functions (harness/oracles/symbolize.py).
    insmod = f"insmod {MODULE_PATH} {params}".strip()
    return f"{insmod} && {section_bases_command()}"


RMMOD_COMMAND = f"rmmod {MODULE}"
# After a scenario: the driver's messages at warning level or worse (levels are only in /dev/kmsg).
# The kernel log's boot facts (oracles/dmesg.py parse_boot_facts), asked for when a check first
# needs them (guest/machine.py Guest.read_facts). grep finding nothing is an answer too.
BOOT_FACTS_COMMAND = f"dmesg | grep -E '{BOOT_FACT_PATTERN}'; true"
DRIVER_WARNINGS_COMMAND = f"dmesg -r | grep -E '^<[0-4]>' | grep -E '{MODULE}|dump_mem' ; true"


UPTIME_MARKER = "@uptime "
# kmemleak reports nothing younger than this (its jiffies_min_age), and an object only once its
# contents are unchanged between two scans.
KMEMLEAK_MIN_AGE = 5.0
UPTIME = f"read __up __x < /proc/uptime; echo {UPTIME_MARKER.strip()} $__up"


def capacity_probe_command(chunks: str, mode: str) -> str:
    """Allocate until ENOMEM (cma_test exhaust) with the module as it is, or loaded just for the probe
    (after rmmod: what did unloading give back?). Also prints CMA debugfs page counts and the guest's
    uptime: the kmemleak sweep (harness/scenario/kmemleak.py) checks the leaks of the window that
    ends here later, once, instead of scanning and waiting here. Exit status: cma_test's, or
    PROBE_INSMOD_FAILED / PROBE_RMMOD_FAILED. `mode` no longer changes the command."""
    measure = f"echo 0 > {PATTERN_PARAM}; cma_test exhaust {chunks}; rc=$?; echo 1 > {PATTERN_PARAM}"
    # Where the kernel has them: CMA debugfs page counts (exact).
    used = f"for f in /sys/kernel/debug/cma/*/used; do [ -e $f ] && echo {CMA_USED_MARKER.strip()} $(cat $f); done"
    return (
        f"if grep -q '^{MODULE} ' /proc/modules; then {measure}; else "
        f"insmod {MODULE_PATH} test_pattern=0 || exit {PROBE_INSMOD_FAILED}; {section_bases_command()}; {measure}; "
        f"rmmod {MODULE} || exit {PROBE_RMMOD_FAILED}; fi; "
        f"{used}; {UPTIME}; exit $rc"
    )


def kmemleak_sweep_command(until: float) -> str:
    """Two kmemleak scans (the first settles the checksums of objects it has not seen, the second
    reports those unchanged and at least KMEMLEAK_MIN_AGE old), the second not before guest uptime
    `until`; then the uptime and the report. Prints nothing where the kernel has no kmemleak."""
    return (
        f"[ -e {KMEMLEAK} ] || exit 0; echo scan > {KMEMLEAK}; "
        f"while read __up __x < /proc/uptime; [ ${{__up%.*}} -lt {int(until) + 1} ]; do sleep 0.1; done; "
        f"echo scan > {KMEMLEAK}; {UPTIME}; sed 's/^/{KMEMLEAK_MARKER}/' {KMEMLEAK}"
    )
