"""Parsers over real captured console logs (tests/fixtures) and the seed's log format."""

from harness.oracles.checks import driver_log_problems
from harness.oracles.cmatest import parse_record
from harness.oracles.dmesg import (
    announced_area_problems,
    parse_checkers,
    parse_dump_mem,
    parse_release,
    parse_reservation,
)
from harness.oracles.faults import find_faults, signature


def test_reservation_from_real_boot(fixture_text):
    text = fixture_text("console-arm64-boot-commands.log")
    res = parse_reservation(text)
    assert res is not None and res.size_mib == 128 and res.base == 0x76C00000
    assert res.contains(0x76C00000, 4096) and not res.contains(res.end - 4096, 8192)
    assert parse_release(text) == "6.1.0-50-arm64"


def test_clean_boot_has_no_faults(fixture_text):
    assert find_faults(fixture_text("console-arm64-boot-commands.log").splitlines()) == []


def test_real_panic_is_caught_with_title_and_report(fixture_text):
    [event] = find_faults(fixture_text("console-arm64-sysrq-crash.log").splitlines())
    assert event.kind == "panic"
    assert event.title == "kernel panic: sysrq triggered crash"
    assert event.report[0].startswith("Kernel panic - not syncing")
    assert any("Call trace" in line for line in event.report)


def test_seed_format_dump_mem_still_parses():
    seed_log = """\
dump_mem:CMA name:mem1
dump_mem:CMA id:1
dump_mem:Is usebuf:1
dump_mem:PHY Base:0x2e400000
dump_mem:KER Base:0xffc00000
dump_mem:USR Base:0xb6a00000
[    5.000000] dump_mem:CMA name:mem2
[    5.000001] dump_mem:CMA id:2
"""
    first, second = parse_dump_mem(seed_log.splitlines())
    assert (first.name, first.id, first.usebuf, first.phys, first.user, first.size) == (
        "mem1",
        1,
        1,
        0x2E400000,
        0xB6A00000,
        None,
    )
    assert (second.name, second.id) == ("mem2", 2)


def test_cma_record():
    rec = parse_record("@cma step=3 op=verify status=fail errno=0 name=mem2 at=4096 msg=pattern mismatch at 4096")
    assert rec is not None and not rec.ok and rec.op == "verify"
    assert rec.int("at") == 4096 and rec.get("msg") == "pattern mismatch at 4096"
    assert parse_record("something else") is None


def test_signature_ignores_addresses_and_numbers():
    assert signature("WARNING in cmamem_free+0x24/0x90") == signature("WARNING in cmamem_free+0x30/0x90")
    assert signature("WARNING in cmamem_free") != signature("WARNING in cmamem_alloc")


def test_warning_title_names_the_function():
    log = """\
[   10.000000] ------------[ cut here ]------------
[   10.000001] WARNING: CPU: 0 PID: 77 at /tmp/kmod/cma_mem.c:301 cmamem_free+0x5c/0x120 [cma_mem]
[   10.000002] Modules linked in: cma_mem(OE)
[   10.000003] Call trace:
[   10.000004]  cmamem_free+0x5c/0x120 [cma_mem]
[   10.000005] ---[ end trace 0000000000000000 ]---
"""
    [event] = find_faults(log.splitlines())
    assert event.kind == "warning" and event.title == "WARNING in cmamem_free"
    assert event.report[-1].startswith("---[ end trace")


def test_taint_lines_are_not_faults():
    log = """\
[    3.000000] cma_mem: loading out-of-tree module taints kernel.
[    3.000001] cma_mem: module verification failed: signature and/or required key missing - tainting kernel
"""
    assert find_faults(log.splitlines()) == []


def test_real_warn_from_a_broken_driver(fixture_text):
    events = find_faults(fixture_text("console-arm64-warn-in-driver.log").splitlines())
    assert len(events) == 3 and {e.kind for e in events} == {"warning"}  # the third is cut short
    assert events[0].title == "WARNING in cma_mem_ioctl"
    assert events[0].report[-1].startswith("---[ end trace")
    assert events[0].signature == events[1].signature  # same fault twice: one signature


def test_real_oops_from_a_broken_driver(fixture_text):
    [event] = find_faults(fixture_text("console-arm64-oops-in-driver.log").splitlines())
    assert event.kind == "oops"
    assert event.title == "BUG: unable to handle kernel NULL pointer dereference in cma_mem_ioctl"  # syzkaller
    assert any(line.startswith("Internal error: Oops") for line in event.report)
    assert event.report[-1].startswith("---[ end trace")


def test_group_events_counts_by_signature():
    from harness.oracles.faults import group_events

    events = [
        {"signature": "a", "title": "WARNING in f", "step": "1"},
        {"signature": "a", "title": "WARNING in f", "step": "2"},
        {"signature": "b", "title": "BUG: x", "step": "2"},
    ]
    grouped = group_events(events)
    assert [(g["signature"], g["count"], g["step"]) for g in grouped] == [("a", 2, "1"), ("b", 1, "2")]


def test_ktap():
    from harness.oracles.ktap import parse_ktap, plan

    text = (
        "KTAP version 1\n1..4\nok 1 - alloc\nnot ok 2 - free # TODO later\n"
        "ok 3 mmap # SKIP no debugfs\nnot ok 4 - leak\n"
    )
    points = parse_ktap(text)
    assert [(p.number, p.name, p.status) for p in points] == [
        (1, "alloc", "pass"),
        (2, "free", "pass"),
        (3, "mmap", "skip"),
        (4, "leak", "fail"),
    ]
    assert plan(text) == 4


def test_real_hung_task_names_the_driver_not_the_scheduler(fixture_text):
    events = find_faults(fixture_text("console-arm64-hung-task.log").splitlines())
    hung = [e for e in events if e.kind == "hung_task"]
    assert hung, events
    assert hung[0].title in ("INFO: task hung in cma_mem_ioctl", "INFO: task hung in cma_mem_ioc_unmap")


def test_a_stock_kernel_boot_has_no_checkers(fixture_text):
    assert parse_checkers(fixture_text("console-arm64-boot-commands.log")) == []


def test_real_kasan_use_after_free_names_the_driver_function(fixture_text):
    # arm64-debug, the use-after-free-on-unmap variant of tests/guest/broken.py.
    log = fixture_text("console-arm64-debug-kasan-uaf.log")
    events = [e for e in find_faults(log.splitlines()) if e.kind == "bug"]
    assert [e.title for e in events] == ["KASAN: use-after-free Read in cma_mem_ioctl"]
    report = "\n".join(events[0].report)
    assert "Freed by task" in report and "cma_mem_buf_free_memory" in report
    assert parse_checkers(log) == ["kasan", "kmemleak", "lockdep", "dma-debug"]


# --- console shapes and titles as syzkaller gives them (issue 19) ----------------------------


def test_printk_caller_fields_are_read_and_reports_of_two_tasks_do_not_mix():
    log = """\
[   12.000001][  T81] ------------[ cut here ]------------
[   12.000002][  T81] WARNING: CPU: 1 PID: 81 at drivers/foo/bar.c:10 bar_release+0x10/0x40
[   12.000003][  T90] some other task's message
[   12.000004][  T81] Modules linked in:
[   12.000005][  T90] BUG: sleeping function called from invalid context at mm/slab.h:500
[   12.000006][  T81] Call Trace:
[   12.000007][  T90] in_atomic(): 1, irqs_disabled(): 0, pid: 90, name: syz-fuzzer
[   12.000008][  T81]  bar_release+0x10/0x40
[   12.000009][  T90] Call Trace:
[   12.000010][  T81]  __fput+0x20/0x80
[   12.000011][  T90]  dump_stack+0x1/0x2
[   12.000012][  T90]  __might_sleep+0x1/0x2
[   12.000013][  T90]  kmem_cache_alloc+0x1/0x2
[   12.000014][  T90]  qux_open+0x1/0x2
[   12.000015][  T81] ---[ end trace 0000000000000000 ]---
"""
    first, second = find_faults(log.splitlines())
    assert (first.kind, first.title, first.corrupted) == ("warning", "WARNING in bar_release", False)
    assert not any("T90" in line or "other task" in line for line in first.report)
    assert second.title == "BUG: sleeping function called from invalid context in qux_open"


def test_a_caller_stamped_message_in_the_middle_of_a_line_is_cut_out():
    line = "partial output[   12.000001][    C0] BUG: workqueue lockup - pool cpus=0 node=0 stuck for 31s!"
    [event] = find_faults([line])
    assert event.title == "BUG: workqueue lockup"


def test_user_space_warnings_on_a_kernel_console_are_not_faults():
    log = """\
[    3.000000] random: crng init done
WARNING: /etc/ssh/moduli does not exist, using fixed modulus
BUG: this is a shell script talking
@23o|<3>\\x5b    7.452038] BUG: KASAN: use-after-free in f+0x1/0x2 (dmesg output framed by the harness)
"""
    assert find_faults(log.splitlines()) == []


def test_a_log_without_timestamps_is_read_to_the_report_end():
    log = """\
BUG: memory leak
unreferenced object 0xffff888012345678 (size 64):
  comm "cma_test", pid 53, jiffies 4294893774 (age 34.432s)
  backtrace:
    [<000000001234abcd>] kmalloc_trace+0x44/0xa0
    [<000000001234abce>] cma_mem_ioctl+0x1e8/0x11c8 [cma_mem]
    [<000000001234abcf>] __arm64_sys_ioctl+0x5a0/0xde0
"""
    [event] = find_faults(log.splitlines())
    assert (event.kind, event.title) == ("kmemleak", "memory leak in cma_mem_ioctl")


def test_helper_frames_are_not_the_culprit():
    log = """\
[   20.000000] ------------[ cut here ]------------
[   20.000001] refcount_t: underflow; use-after-free.
[   20.000002] WARNING: CPU: 0 PID: 98 at lib/refcount.c:28 refcount_warn_saturate+0x9c/0x150
[   20.000003] Modules linked in: cma_mem(OE)
[   20.000004] pc : refcount_warn_saturate+0x9c/0x150
[   20.000005] lr : refcount_warn_saturate+0x9c/0x150
[   20.000006] Call trace:
[   20.000007]  refcount_warn_saturate+0x9c/0x150
[   20.000008]  cma_mem_release+0x30/0x90 [cma_mem]
[   20.000009]  __fput+0x78/0x260
[   20.000010] ---[ end trace 0000000000000000 ]---
"""
    [event] = find_faults(log.splitlines())
    assert event.title == "WARNING: refcount bug in cma_mem_release"


def test_arm64_bug_on_is_one_event_named_after_its_function():
    log = """\
[    5.000000] ------------[ cut here ]------------
[    5.000001] kernel BUG at /tmp/kmod/cma_mem.c:410!
[    5.000002] Internal error: Oops - BUG: 00000000f2000800 [#1] SMP
[    5.000003] Modules linked in: cma_mem(OE)
[    5.000004] pc : cma_mem_ioctl+0x5c4/0xdd0 [cma_mem]
[    5.000005] lr : cma_mem_ioctl+0x5a4/0xdd0 [cma_mem]
[    5.000006] Call trace:
[    5.000007]  cma_mem_ioctl+0x5c4/0xdd0 [cma_mem]
[    5.000008]  __arm64_sys_ioctl+0xb4/0x100
[    5.000009] Code: 54002d81 d2800201 91002293 aa1303e0 (d4210000)
[    5.000010] ---[ end trace 0000000000000000 ]---
[    5.000011] Kernel panic - not syncing: Oops - BUG: Fatal exception
[    5.000012] ---[ end Kernel panic - not syncing: Oops - BUG: Fatal exception ]---
"""
    [event] = find_faults(log.splitlines())
    assert (event.kind, event.title) == ("bug", "kernel BUG in cma_mem_ioctl")
    assert event.report[-1].startswith("---[ end Kernel panic")


def test_titles_do_not_carry_process_names_or_pids():
    def title(comm: str) -> str:
        log = f"""\
[    9.000000] BUG: scheduling while atomic: {comm}/0x00000101
[    9.000001] Modules linked in:
[    9.000002] Call trace:
[    9.000003]  __schedule+0x1/0x2
[    9.000004]  schedule+0x1/0x2
[    9.000005]  cma_mem_ioctl+0x1/0x2 [cma_mem]
"""
        [event] = find_faults(log.splitlines())
        return event.title

    assert title("syz-fuzzer/2188") == title("cma_test/77") == "BUG: scheduling while atomic in cma_mem_ioctl"


def test_a_report_cut_short_is_flagged_corrupted():
    log = "[    1.000000] BUG: unable to handle kernel paging request at ffff88002bde1e40\n"
    [event] = find_faults(log.splitlines())
    assert event.corrupted and event.title == "BUG: unable to handle kernel paging request in corrupted"


def test_the_captured_runs_still_give_their_titles():
    # result.json keeps the full report of the first event of each signature (tests/fixtures/runs).
    import json
    from pathlib import Path

    runs = Path(__file__).parent / "fixtures" / "runs"

    def events(node):
        if isinstance(node, dict):
            if "signature" in node and "report" in node:
                yield node
            for value in node.values():
                yield from events(value)
        elif isinstance(node, list):
            for value in node:
                yield from events(value)

    seen = {}
    for result in sorted(runs.glob("*/result.json")):
        for event in events(json.loads(result.read_text())):
            if "\n" in event["report"]:
                [again] = find_faults(event["report"].splitlines())
                seen[result.parent.name] = (again.title, event["title"], again.signature, event["signature"])
    assert set(seen) == {"warn-on-free", "armv7-warn-on-free"}
    for got, stored, got_sig, stored_sig in seen.values():
        assert (got, got_sig) == (stored, stored_sig)


def test_a_report_without_an_end_marker_ends_when_the_kernel_moves_on():
    log = """\
[   20.504430] INFO: task cma_test:99 blocked for more than 10 seconds.
[   20.505864] Call trace:
[   20.506050]  __switch_to+0xe8/0x120
[   20.506345]  __schedule+0x340/0x920
[   20.507069]  mutex_lock+0x78/0x90
[   20.507172]  cma_mem_ioctl+0x5cc/0xdd8 [cma_mem]
cma_test output, not the kernel's
[   45.000000] cma_mem: released 4 buffers
"""
    [event] = find_faults(log.splitlines())
    assert event.title == "INFO: task hung in cma_mem_ioctl"
    assert event.report[-1].endswith("[cma_mem]")


def test_the_announced_cma_area_must_be_the_reserved_one(fixture_text):
    # Real lines (tests/fixtures/console-arm64-warn-in-driver.log): the reservation and the load.
    log = fixture_text("console-arm64-warn-in-driver.log").splitlines()
    reservation = parse_reservation("\n".join(log))
    assert reservation is not None and reservation.size_mib == 128
    assert announced_area_problems(log, reservation) == []
    # Broken inputs: a lower bound off by a pageblock, an upper bound off by one block; a driver
    # announcing another size (a board with two areas) or nothing at all is not judged here.
    line = next(x for x in log if "cma_mem: CMA:" in x)
    off = line.replace("[0x0000000076c00000-", "[0x0000000076e00000-")
    assert "kernel reserved [0x76c00000-0x7ec00000)" in announced_area_problems([off], reservation)[0]
    assert announced_area_problems([line.replace("-0x000000007ec00000)", "-0x000000007ea00000)")], reservation)
    assert announced_area_problems([line.replace("128 MiB", "192 MiB")], reservation) == []
    assert announced_area_problems([], reservation) == []
    assert announced_area_problems([off], None) == []


def test_the_kernel_complaining_about_the_driver_is_a_driver_problem():
    # Captured (dmesg -r) from a driver whose init returned 1: the module loader's own warning.
    raw = (
        "<4>[    0.215934] cma_mem: loading out-of-tree module taints kernel.\n"
        "<4>[    0.223255] do_init_module: 'cma_mem'->init suspiciously returned 1, it should follow 0/-E convention\n"
        "<4>[    0.223300] do_init_module: 'other'->init suspiciously returned 1, it should follow 0/-E convention\n"
    )
    assert driver_log_problems(raw, 0.0) == [
        "driver logged at warning level: do_init_module: 'cma_mem'->init suspiciously returned 1, "
        "it should follow 0/-E convention"
    ]
    assert driver_log_problems(raw.splitlines()[0], 0.0) == []  # the taint notice is not a problem
    # Captured from a driver whose unload left its debugfs directory behind, at the next load.
    stale = "<3>[    0.713911] debugfs: Directory 'cma_mem' with parent '/' already present!\n"
    assert driver_log_problems(stale, 0.0) == [
        "driver logged at err level: debugfs: Directory 'cma_mem' with parent '/' already present!"
    ]
    assert driver_log_problems(stale.replace("cma_mem", "other"), 0.0) == []
