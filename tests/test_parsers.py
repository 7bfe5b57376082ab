"""Parsers over real captured console logs (tests/fixtures) and the seed's log format."""

from harness.oracles.cmatest import parse_record
from harness.oracles.dmesg import parse_checkers, parse_dump_mem, parse_release, parse_reservation
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
    assert event.title == "Unable to handle kernel NULL pointer dereference in cma_mem_ioctl"
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
