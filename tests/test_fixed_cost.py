"""What the guest cycle no longer waits for (issue 14), checked without QEMU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.guest.shell import DRIVER_WARNINGS_COMMAND
from harness.run.session import dmesg_text, plain_dmesg, process_age
from harness.scenario.loader import load_scenario
from tests.fake_guest import Reply, runner_for

RAW = (
    "<6>[    0.000000] Booting Linux\n<4>[    1.500000] cma_mem: <b> left\n<6>[    2.0] x <1> y\n"
    "<6>[    2.500000] cma_mem: loaded\n<12>[    3.000000] cma_mem: from user space\n"
)


def test_dmesg_kept_from_the_last_check_reads_as_plain_dmesg() -> None:
    assert plain_dmesg(RAW).splitlines()[:3] == [
        "[    0.000000] Booting Linux",
        "[    1.500000] cma_mem: <b> left",
        "[    2.0] x <1> y",
    ]


def test_the_last_scenario_reads_the_whole_kernel_log_once(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("steps:\n  - shell: {run: 'true'}\n")
    runner, transport = runner_for([Reply("true"), Reply("dmesg -r", 0, RAW)])
    # Asked when the final check runs, not before the scenario: by then a job sharing a queue
    # knows whether another scenario can still come its way.
    asked: list[int] = []
    runner.keep_kernel_log = lambda: asked.append(len(transport.replies)) is None
    outcome = runner.run_scenario(load_scenario(path))
    assert asked == [1]  # after the step's command, before the check's
    assert runner.kernel_log_raw == RAW
    assert transport.replies == []
    assert outcome.steps[0].problems == ["driver logged at warning level: cma_mem: <b> left"]
    other, _ = runner_for([Reply("true"), Reply(DRIVER_WARNINGS_COMMAND)])
    other.run_scenario(load_scenario(path))
    assert other.kernel_log_raw is None


def test_dmesg_txt_is_the_kept_log_and_the_console_lines_printed_after_it() -> None:
    later = [
        "[    2.500000] cma_mem: loaded",  # printed while dmesg ran: in both
        "[    3.000000] cma_mem: from user space",  # the newest line dmesg read
        "[    9.100000] kmemleak: 1 new suspected memory leaks (see /sys/kernel/debug/kmemleak)",
    ]
    text = dmesg_text(RAW, later)
    assert text.splitlines()[-2:] == ["[    3.000000] cma_mem: from user space", later[2]]
    assert text.count("new suspected") == 1 and text.count("cma_mem: loaded") == 1
    assert text.count("from user space") == 1
    assert dmesg_text(RAW, later[:2]) == plain_dmesg(RAW)  # nothing new since the read
    # A kernel without printk timestamps: nothing to tell them apart by, every later line is kept.
    assert dmesg_text("<6>Booting Linux\n", ["kmemleak: x"]) == "Booting Linux\nkmemleak: x\n"


def test_process_age_counts_from_process_start() -> None:
    assert 0.0 < process_age() < 3600


def test_the_cli_imports_no_fuzzer_model_or_report_to_start() -> None:
    code = (
        "import sys, contextlib, io; from harness.frontends.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): main(['run', '--help'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('harness.model', 'harness.report', 'rich.table'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_snapshots_key_is_the_same_for_every_build_of_the_driver(tmp_path: Path) -> None:
    from harness.config.targets import resolve_target
    from harness.guest import snapshot

    target = resolve_target("arm64-virt")
    files = {n: tmp_path / n for n in ("Image", "busybox", "virtio_blk.ko")}
    for name, path in files.items():
        path.write_bytes(name.encode())

    def plan(driver: bytes, cache: Path = tmp_path / "cache"):  # type: ignore[no-untyped-def]
        (tmp_path / "cma_mem.ko").write_bytes(driver)
        (tmp_path / "cma_test").write_bytes(b"cma_test")
        return snapshot.plan(
            cache, target, files["Image"], None, files["busybox"], tmp_path / "cma_test", tmp_path / "cma_mem.ko",
            [files["virtio_blk.ko"]],
        )  # fmt: skip

    one, two = plan(b"driver v1"), plan(b"driver v2")
    assert one.key == two.key and one.dir == two.dir  # the snapshot holds no driver
    assert one.payload != two.payload and one.payload_md5 != two.payload_md5  # the payload is this build's
    assert one.payload.stat().st_size == snapshot.PAYLOAD_SIZE
    assert snapshot.disk_args(Path("/a,b/p.cpio"))[1].endswith("file=/a,,b/p.cpio")
    files["Image"].write_bytes(b"another kernel")
    assert plan(b"driver v1").key != one.key  # a different kernel: a different snapshot
    assert "rmmod virtio_blk" in one.deliver_command() and "--flushbufs" in one.deliver_command()
    blob = one.payload.read_bytes()
    assert blob[510:1024] == bytes(514) and blob.startswith(b"070701")  # no partition table, a cpio archive


def test_old_snapshots_and_payloads_are_pruned_after_a_save(tmp_path: Path) -> None:
    import os

    from harness.guest import snapshot

    now = 1_000_000.0
    day = 86400.0
    # The 3 most recently used stay; an older one used within 10 minutes stays too.
    uses = {"a": now - 5 * day, "b": now - 60, "c": now - 2 * day, "d": now - 3 * day, "e": now - 4 * day}
    assert snapshot.stale(uses, 3, now) == ["a", "e"]
    assert snapshot.stale(uses | {"c": now - 300}, 1, now) == ["a", "d", "e"]  # c: in use 5 min ago

    root = tmp_path / "snapshots"
    names = [f"arm64-virt-{k:020x}" for k in range(6)] + ["armv7-virt-" + "f" * 20]
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        (root / name / snapshot.META).write_text("{}")
        os.utime(root / name / snapshot.META, (now - i * day, now - i * day))
        os.utime(root / name, (now - i * day, now - i * day))
    (root / "payloads").mkdir()
    for i in range(10):
        (root / "payloads" / f"{i}.cpio").write_bytes(b"x")
        os.utime(root / "payloads" / f"{i}.cpio", (now - i * day, now - i * day))
    saved = snapshot.Snapshot(
        names[5][len("arm64-virt-") :],
        root / names[5],
        None,
        root / "payloads" / "9.cpio",
        {},  # type: ignore[arg-type]
    )
    removed = snapshot.prune(saved, now=now + 1)
    left = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "payloads")
    # Kept: the one just saved (however old its files look), the three most recent, another target's.
    assert left == sorted([*names[:3], names[5], names[6]])
    assert sorted(p.name for p in (root / "payloads").iterdir()) == sorted(f"{i}.cpio" for i in [*range(8), 9])
    assert len(removed) == 3 and all(not p.exists() for p in removed)
    # An entry another process holds (saving it, say) is left alone.
    import fcntl

    with (root / f"{names[1]}.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert not snapshot.try_remove(root / names[1]) and (root / names[1]).exists()


def test_the_console_script_skips_teardown_but_runs_the_exit_hooks(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    code = (
        "import atexit, sys; from harness.frontends.cli import entry\n"
        f"atexit.register(lambda: open({str(hook)!r}, 'w').write('ran'))\n"
        "sys.argv = ['cma-harness', 'scenarios']; entry()\n"
        "print('not reached')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "smoke" in done.stdout and "not reached" not in done.stdout
    assert hook.read_text() == "ran"  # qemu_process.py stops any QEMU left from such a hook
    bad = subprocess.run([sys.executable, "-c", code.replace("'scenarios'", "'nosuch'")], capture_output=True)
    assert bad.returncode == 2  # argparse's usage error, through the same exit


def test_the_reservation_is_asked_for_once_and_only_when_a_check_needs_it(tmp_path: Path) -> None:
    from harness.guest.kernel_log import KernelLog
    from harness.scenario.runner import ScenarioRunner
    from tests.fake_guest import RESERVATION, ReplayTransport

    asked: list[int] = []

    def source():  # type: ignore[no-untyped-def]
        asked.append(1)
        return RESERVATION

    def runner(replies: list[Reply]) -> ScenarioRunner:
        log = KernelLog()
        return ScenarioRunner(ReplayTransport(replies, log), log, lambda: [], source)

    shell = tmp_path / "shell.yaml"
    shell.write_text("steps:\n  - shell: {run: 'true'}\n")
    runner([Reply("true"), Reply(DRIVER_WARNINGS_COMMAND)]).run_scenario(load_scenario(shell))
    assert asked == []  # a scenario that never touches the driver costs the guest no command for it

    alloc = tmp_path / "alloc.yaml"
    alloc.write_text("steps:\n  - alloc: {name: a, size: 4096}\n  - alloc: {name: b, size: 4096}\n")
    out = "@cma step=1 op=alloc status=ok errno=0 name={} id=1 len=4096 phys={:#x} user=0xffff0000\n"
    from tests.fake_guest import dump_mem_lines

    replies = [Reply("cma_test serve main", 0, "@cma op=serve status=ok name=main pid=7\n")]
    for name, phys in (("a", 0x1000), ("b", 0x76D00000)):
        text = out.format(name, phys)
        replies.append(Reply(f"cma_test ctl main alloc {name}", 0, text, "", dump_mem_lines(text)))
    steps = runner(replies).run(load_scenario(alloc))
    assert asked == [1]  # once, at the first placement check
    assert "outside the CMA reservation" in steps[0].problems[0] and not steps[1].problems


def test_boot_facts_need_a_log_that_reaches_back_to_the_boot() -> None:
    from harness.oracles.dmesg import CmaReservation, parse_boot_facts

    boot = (
        "<5>[    0.000000] Linux version 6.1.0-50-arm64 (debian-kernel@lists.debian.org)\n"
        "<6>[    0.000000] cma: Reserved 128 MiB at 0x0000000076c00000\n"
        "<6>[    0.300000] kmemleak: Kernel memory leak detector initialized (mem pool available: 15888)\n"
    )
    facts = parse_boot_facts(boot)
    assert facts is not None and facts.reservation == CmaReservation(128, 0x76C00000)
    assert facts.checkers == ["kmemleak"]
    none = parse_boot_facts(boot.replace("cma: Reserved", "cma: nothing"))
    assert none is not None and none.reservation is None  # the kernel reserved nothing: a finding
    # A ring buffer that wrapped has lost the boot: a missing reservation line then says nothing.
    assert parse_boot_facts("<6>[  912.000000] cma_mem: loaded\n") is None


def test_an_unknown_reservation_is_said_not_crashed_on(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from harness.report.compare import compare
    from harness.report.render import cma_text
    from harness.report.terminal import print_summary
    from harness.run.result import RunResult

    record = RunResult(target="arm64-virt")
    record.cma = {"note": "the CMA reservation is unknown: the kernel log no longer reaches back to the boot"}
    buf = io.StringIO()
    print_summary(record, tmp_path, Console(file=buf, width=200))
    assert "cma ?" in buf.getvalue()
    assert "no longer reaches back" in cma_text(record.to_json())
    known = {"cma": {"size_mib": 128, "base": "0x76c00000"}}
    c = compare(known, {"cma": record.cma})
    assert ("CMA", "128 MiB at 0x76c00000", "unknown") in c.facts and any("different CMA" in n for n in c.context)
    assert not any("different CMA" in n for n in compare(known, dict(known)).context)
