"""The driver model, the generator, the checker and the shrinker, without QEMU."""

from __future__ import annotations

from dataclasses import replace

import yaml

from harness.model.check import check_batch, check_blocks_listing, parse_debugfs_blocks
from harness.model.driver import CMDS, PAGE, Block, DriverModel, Params, Proc, pattern_byte, seeded_byte
from harness.model.fuzz import SimExecutor, fuzz, minimise, run_sequence
from harness.model.gen import EDGE_CLASSES, Generator
from harness.model.ops import Op, batches, count_steps
from harness.model.shrink import ddmin, replan, to_scenario_yaml
from harness.oracles.cmatest import parse_records

TOTAL = 64 << 20


def model() -> DriverModel:
    return DriverModel(Params(cma_total=TOTAL, capacity=60 << 20))


def run(m: DriverModel, *ops: Op) -> list[dict[str, str]]:
    """Fields predicted for each step, in step order (one command)."""
    preds = m.apply_batch(list(ops), None)
    return [p.fields for p in sorted(preds, key=lambda p: p.step)]


# ---- the model ---------------------------------------------------------------------------------


def test_alloc_rounds_ids_offsets_and_totals() -> None:
    m = model()
    a, b, t = run(m, Op("alloc", name="a", size=1), Op("alloc", name="b", size=PAGE + 1, wc=True), Op("total"))
    assert a | {} == a and (a["id"], a["len"], a["offset"]) == ("1", str(PAGE), "0x0")
    assert (b["id"], b["len"], b["offset"]) == ("2", str(2 * PAGE), hex(PAGE))
    assert t["used"] == str(3 * PAGE) and t["blocks"] == "2" and t["available"] == str(TOTAL - 3 * PAGE)
    # A one-page block holds two CMA pages; the ABI's "used" counts its length only.
    assert m.live_pages == 2 + 2


def test_name_rules() -> None:
    m = model()
    ok, at_limit, over, empty = run(
        m,
        Op("alloc", name="n" * 15, size=PAGE),
        Op("alloc", name="n" * 16, size=PAGE),
        Op("alloc", name="n" * 17, size=PAGE),
        Op("raw", cmd="CMEM_ALLOCATE", name="-", size=PAGE),
    )
    assert ok["errno"] == "0"
    assert at_limit["errno"] == over["errno"] == empty["errno"] == "EINVAL"
    # Names that prefix one another are different blocks.
    short, info = run(m, Op("alloc", name="n" * 14, size=PAGE), Op("info", name="n" * 14))
    assert short["errno"] == "0" and info["id"] == short["id"]


def test_size_edges() -> None:
    m = model()
    zero, whole_plus, dup = run(
        m, Op("alloc", name="z", size=0), Op("alloc", name="w", size=TOTAL + 1), Op("alloc", name="z", size=0)
    )
    assert zero["errno"] == whole_plus["errno"] == dup["errno"] == "EINVAL"
    (whole,) = run(m, Op("alloc", name="w", size=TOTAL))
    assert whole["errno"] == "ENOMEM"  # more than the capacity
    run(m, Op("alloc", name="x", size=PAGE))
    assert run(m, Op("alloc", name="x", size=PAGE))[0]["errno"] == "EEXIST"


def test_ownership_across_fork_and_files() -> None:
    m = model()
    run(m, Op("alloc", name="x", size=PAGE))
    fork_child = (
        Op("free", name="x"),
        Op("info", name="x"),
        Op("mmap", offset="@x", size=PAGE),
        Op("verify", name="x"),
        Op("alloc", name="x", size=PAGE),
        Op("alloc", name="y", size=PAGE),
    )
    recs = run(m, Op("fork", child=fork_child))
    assert [r["errno"] for r in recs[1:]] == ["EPERM", "EPERM", "EPERM", "0", "EEXIST", "0"]
    assert recs[0]["op"] == "fork" and recs[0]["exit"] == "1"  # its child had failing steps
    assert all(r.get("proc") == "child" for r in recs[1:])
    # The child's block stays on the shared file: the parent can neither free nor reuse its name.
    free_y, alloc_y, total = run(m, Op("free", name="y"), Op("alloc", name="y", size=PAGE), Op("total"))
    assert (free_y["errno"], alloc_y["errno"], total["blocks"]) == ("EPERM", "EEXIST", "2")
    # Another process has another file: ENOENT, not EPERM.
    other = run(m, Op("free", proc="p2", name="x"), Op("info", proc="p2", name="x"))
    assert [r["errno"] for r in other] == ["ENOENT", "ENOENT"]


def test_mmap_offsets_and_lifetime() -> None:
    m = model()
    run(m, Op("alloc", name="a", size=4 * PAGE), Op("alloc", name="b", size=PAGE))
    inside, partial, beyond, across, unaligned, zero, nowhere = run(
        m,
        Op("mmap", offset=f"@a+{PAGE}", size=3 * PAGE),
        Op("mmap", offset=f"@a+{2 * PAGE}", size=1),
        Op("mmap", offset=f"@a+{PAGE}", size=3 * PAGE + 1),
        Op("mmap", offset="@a", size=5 * PAGE),
        Op("mmap", offset="@a+1", size=PAGE),
        Op("mmap", offset="@a", size=0),
        Op("mmap", offset=str(10 * PAGE), size=PAGE),
    )
    assert inside["errno"] == partial["errno"] == "0" and inside["offset"] == hex(PAGE)
    assert {beyond["errno"], across["errno"], unaligned["errno"], zero["errno"], nowhere["errno"]} == {"EINVAL"}
    # Freed by name while mapped: the mappings keep the memory (and the totals) until they go.
    free, total = run(m, Op("free", name="a"), Op("total"))
    assert free["errno"] == "0" and total["blocks"] == "2" and total["used"] == str(5 * PAGE)
    assert run(m, Op("info", name="a"))[0]["errno"] == "ENOENT"
    m.guest(Op("exit"))
    assert run(m, Op("total", proc="p2"))[0]["blocks"] == "0"


def test_close_with_a_mapping_keeps_the_old_file() -> None:
    m = model()
    run(m, Op("alloc", name="a", size=PAGE), Op("alloc", name="b", size=PAGE), Op("mmap", offset="@a", size=PAGE))
    close, total, again = run(m, Op("close"), Op("total"), Op("alloc", name="a", size=PAGE))
    assert close["blocks"] == "2"
    assert total["blocks"] == "2"  # the old file lives on in the mmap mapping: b too
    assert again["errno"] == "0" and again["offset"] == "0x0"  # a new file, a new offset space
    assert m.guest(Op("rmmod")).note == "busy"
    m.guest(Op("exit"))
    assert m.guest(Op("rmmod")).ok and not m.busy
    assert run(m, Op("total", proc="p2"))[0]["errno"] == "ENOENT"  # no device node
    assert m.guest(Op("insmod")).ok
    assert run(m, Op("alloc", proc="p2", name="a", size=PAGE))[0]["id"] == "1"  # ids restart


def test_verify_write_check_contents() -> None:
    m = model()
    run(m, Op("alloc", name="a", size=PAGE))
    v, w, c, v2, c2 = run(
        m,
        Op("verify", name="a"),
        Op("write", name="a", seed=7),
        Op("check", name="a", seed=7),
        Op("verify", name="a"),
        Op("check", name="a", seed=8),
    )
    assert v["status"] == w["status"] == c["status"] == "ok"
    assert v2["status"] == "fail" and v2["errno"] == "0"
    at = int(v2["at"])
    assert int(v2["want"], 16) == pattern_byte(1, at) and int(v2["got"], 16) == seeded_byte(7, at)
    assert c2["status"] == "fail"
    assert run(m, Op("verify", name="nosuch"))[0]["errno"] == "ENOENT"


def test_raw_commands_pointers_and_ro_allocation() -> None:
    m = model()
    recs = run(
        m,
        Op("raw", cmd="CMEM_MAP", name="a"),
        Op("raw", cmd="0x12345", name="a"),
        Op("raw", cmd="CMEM_GET_TOTAL_SIZE", ptr="bad"),
        Op("raw", cmd="CMEM_ALLOCATE", name="a", size=PAGE, flags=2),
        Op("raw", cmd="CMEM_ALLOCATE", name="a", size=PAGE, ptr="ro"),
        Op("alloc", name="a", size=PAGE),
        Op("raw", cmd="CMEM_CACHE_FLUSH", name="a", ptr="ro"),
        Op("raw", cmd="CMEM_GET_SIZE", name="a"),
    )
    assert [r["errno"] for r in recs] == ["ENOTTY", "ENOTTY", "EFAULT", "EINVAL", "EFAULT", "0", "0", "0"]
    assert recs[0]["cmd"] == hex(CMDS["CMEM_MAP"]) and recs[0]["ret"] == "-1"
    # The read-only allocation used id 1 and offset 0 before it was undone.
    assert recs[5]["id"] == "2" and recs[5]["offset"] == hex(PAGE)
    assert recs[7]["len"] == str(PAGE) and recs[7]["id"] == "2"


# ---- the generator -----------------------------------------------------------------------------


def _sequence(seed: int, n: int) -> list[str]:
    gen = Generator(seed)
    m = model()
    out = []
    for _ in range(n):
        ops = gen.round(m, 100)
        out.extend(op.describe() for op in ops)
        run_sequence(ops, m, SimExecutor(model()))  # keeps m in step (a clean simulation)
    return out


def test_generator_is_deterministic_per_seed() -> None:
    assert _sequence(5, 3) == _sequence(5, 3)
    assert _sequence(5, 3) != _sequence(6, 3)


def test_generator_covers_every_edge_class() -> None:
    params = Params(cma_total=TOTAL, capacity=60 << 20)
    stats, failure = fuzz(DriverModel(params), SimExecutor(DriverModel(replace(params))), seed=3, total_ops=6000)
    assert failure is None
    assert set(stats.coverage) >= EDGE_CLASSES, EDGE_CLASSES - set(stats.coverage)


def test_batches_stay_under_the_line_limit_and_forks_end_them() -> None:
    ops = Generator(9).round(model(), 600)
    for b in batches(ops):
        if b.guest is None:
            assert len(b.words()) <= 3000 or len(b.ops) == 1
            assert all(op.kind != "fork" for op in b.ops[:-1])


# ---- the checker -------------------------------------------------------------------------------


def _records(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def test_checker_catches_a_wrong_errno_a_wrong_length_and_overlap() -> None:
    ops = [Op("alloc", name="a", size=PAGE + 1), Op("alloc", name="b", size=1), Op("free", name="zz")]
    good = _records(
        "@cma step=1 op=alloc status=ok errno=0 name=a id=1 len=8192 phys=0x40000000 user=0x7f0000000000 offset=0x0",
        "@cma step=2 op=alloc status=ok errno=0 name=b id=2 len=4096 phys=0x40002000 user=0x7f0000010000 offset=0x2000",
        "@cma step=3 op=free status=fail errno=ENOENT name=zz msg=expected errno 0, got ENOENT",
    )
    assert check_batch(model(), ops, good) == []
    wrong_errno = good.replace("errno=ENOENT", "errno=EPERM")
    (mm,) = check_batch(model(), ops, wrong_errno)
    assert (mm.kind, mm.key, mm.want, mm.got) == ("errno", "errno", "ENOENT", "EPERM")
    wrong_len = good.replace("len=8192", "len=4096")
    (mm,) = check_batch(model(), ops, wrong_len)
    assert (mm.kind, mm.key, mm.want, mm.got) == ("field", "len", "8192", "4096")
    # b's real extent (two pages) overlaps a's, and its user mapping overlaps a's mapping.
    overlap = good.replace("phys=0x40002000", "phys=0x40001000").replace("user=0x7f0000010000", "user=0x7f0000001000")
    kinds = {(m.kind, m.key) for m in check_batch(model(), ops, overlap)}
    assert kinds == {("constraint", "phys"), ("constraint", "user")}


def test_checker_sees_missing_and_extra_records() -> None:
    ops = [Op("total")]
    kinds = [m.kind for m in check_batch(model(), ops, "@cma step=2 op=total status=ok errno=0\n")]
    assert kinds == ["missing", "extra"]


# ---- the shrinker ------------------------------------------------------------------------------


def test_ddmin_finds_the_minimal_core() -> None:
    ops = [Op("total", name=str(i)) for i in range(40)]

    def fails(xs: list[Op]) -> bool:
        names = {o.name for o in xs}
        return {"7", "23", "31"} <= names

    assert [o.name for o in ddmin(ops, fails)] == ["7", "23", "31"]


class PrefixLookup(DriverModel):
    """A planted bug: by-name lookups match a prefix of the stored name (strncmp with the caller's length)."""

    def lookup(self, pr: Proc, name: str) -> tuple[str, object]:  # type: ignore[override]
        if not self.name_ok(name) or pr.file is None:
            return super().lookup(pr, name)
        for b in pr.file.blocks:
            if b.name.startswith(name):
                return ("0", b) if b.owner == pr.pid else ("EPERM", None)
        return "ENOENT", None


def test_planted_bug_is_found_and_shrunk_to_a_few_steps() -> None:
    params = Params(cma_total=TOTAL, capacity=60 << 20)

    def fresh() -> DriverModel:
        return DriverModel(replace(params))

    def broken() -> SimExecutor:
        return SimExecutor(PrefixLookup(replace(params)))

    _, failure = fuzz(fresh(), broken(), seed=1, total_ops=5000)
    assert failure is not None, "the fuzzer missed the planted bug"
    small = minimise(failure, fresh, broken)
    assert count_steps(small) <= 5, [o.describe() for o in small]
    assert run_sequence(replan(small, fresh()), fresh(), broken())
    text = to_scenario_yaml(small, fresh())
    doc = yaml.safe_load(text)
    assert doc["steps"][0] == {"insmod": {}}
    shells = [s["shell"]["run"] for s in doc["steps"] if "shell" in s]
    assert shells and all(s.startswith("cma_test ctl ") and "awk -v W=" in s for s in shells)


def test_scenario_checks_what_the_model_knows() -> None:
    ops = replan([Op("alloc", name="a", size=1), Op("info", name="a"), Op("total")], model())
    text = to_scenario_yaml(ops, model())
    assert "2:len=4096" in text and "3:used=4096" in text and "1:offset=0x0" in text
    # Records parse back as what the awk check looks for.
    assert parse_records("@cma step=1 op=total status=ok errno=0 used=4096")[0].get("used") == "4096"


# ---- the driver's global list (debugfs cma_mem/blocks) -------------------------------------------


def test_debugfs_listing_as_the_model_predicts_it(fixture_text) -> None:  # type: ignore[no-untyped-def]
    # Captured on arm64-fast: `cma_test ctl main alloc a 4096 wc alloc mmmmmmmmmmmmmmm 65537
    # coherent mmap @a 4096; cma_test ctl p2 alloc a 1 wc; cat /sys/kernel/debug/cma_mem/blocks`.
    real = parse_debugfs_blocks(fixture_text("debugfs-cma_mem-blocks.txt"))
    m = model()
    a, mmm = Op("alloc", name="a", size=4096, wc=True), Op("alloc", name="m" * 15, size=65537)
    run(m, a, mmm, Op("mmap", offset="@a", size=4096))
    run(m, Op("alloc", "p2", name="a", size=1, wc=True))
    assert m.debugfs_blocks() == real == ["1 a 4096 wc 2", f"2 {'m' * 15} 69632 coherent 1", "3 a 4096 wc 1"]
    blocks = Op("blocks")
    assert check_blocks_listing(m, blocks, fixture_text("debugfs-cma_mem-blocks.txt")) == []
    # Broken listings: a block missing, a wrong length, a mapping count off by one, garbage.
    lines = fixture_text("debugfs-cma_mem-blocks.txt").splitlines()
    for broken in (lines[1:], [lines[0].replace("len=4096", "len=8192"), *lines[1:]],
                   [lines[0].replace("maps=2", "maps=1"), *lines[1:]], [*lines, "garbage"]):  # fmt: skip
        assert check_blocks_listing(m, blocks, "\n".join(broken))[0].kind == "blocks"


class GlobalListKeepsOnlyTheNewest(DriverModel):
    """A planted bug like list_add_tail() with its arguments swapped: the global list loses every
    block but the newest (the file lists, and so every ioctl, are still right)."""

    def debugfs_blocks(self) -> list[str]:
        return super().debugfs_blocks()[-1:]


def test_a_global_list_bug_is_found_by_the_listing_and_shrunk() -> None:
    params = Params(cma_total=TOTAL, capacity=60 << 20)

    def fresh() -> DriverModel:
        return DriverModel(replace(params))

    def broken() -> SimExecutor:
        return SimExecutor(GlobalListKeepsOnlyTheNewest(replace(params)))

    _, failure = fuzz(fresh(), broken(), seed=1, total_ops=3000)
    assert failure is not None and failure.mismatches[0].kind == "blocks", "the listing missed the planted bug"
    small = minimise(failure, fresh, broken)
    assert count_steps(small) <= 4, [o.describe() for o in small]
    doc = yaml.safe_load(to_scenario_yaml(small, fresh()))
    assert any("cma_mem/blocks" in s["shell"]["run"] for s in doc["steps"] if "shell" in s)
    # Without the listing the same driver passes: nothing else sees the global list.
    _, failure = fuzz(fresh(), broken(), seed=1, total_ops=3000, gen=Generator(1, listing=False))
    assert failure is None


# ---- what a mapping shows (mmap shows=) -------------------------------------------------------------


class MmapIgnoresTheOffset(DriverModel):
    """A planted bug like dma_mmap_*() called with the cookie instead of the page offset inside
    the buffer: every mapping shows its block from the start, whatever offset was asked for."""

    def shown(self, block: Block, inner: int) -> str:
        return super().shown(block, 0)


def test_mmap_steps_say_what_the_mapping_must_show() -> None:
    m = model()
    a = Op("alloc", name="a", size=3 * PAGE)
    planned = [replan([a, Op("mmap", offset="@a+4096", size=PAGE)], m)[1]]
    assert planned[0].shows == "pattern:1:4096" and planned[0].words().endswith("shows=pattern:1:4096")
    m2 = model()
    ops = replan([a, Op("write", name="a", seed=7), Op("mmap", offset="@a", size=2 * PAGE)], m2)
    assert ops[2].shows == "seeded:7:0"


def test_a_mapping_of_the_wrong_part_is_found_and_shrunk() -> None:
    params = Params(cma_total=TOTAL, capacity=60 << 20)

    def fresh() -> DriverModel:
        return DriverModel(replace(params))

    def broken() -> SimExecutor:
        return SimExecutor(MmapIgnoresTheOffset(replace(params)))

    _, failure = fuzz(fresh(), broken(), seed=2, total_ops=5000)
    assert failure is not None, "the fuzzer missed a mapping of the wrong part of a block"
    assert failure.mismatches[0].op is not None and failure.mismatches[0].op.kind == "mmap"
    small = minimise(failure, fresh, broken)
    assert count_steps(small) <= 3, [o.describe() for o in small]
