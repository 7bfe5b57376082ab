"""Tests written with the pytest plugin's fixtures: a booted guest and a clean driver per test."""

import pytest

pytestmark = pytest.mark.guest


def test_two_blocks_are_apart_and_keep_their_patterns(cma):
    a = cma.alloc("a", 4 << 20, "wc")
    b = cma.alloc("b", 4 << 20, "coherent")
    assert a.int("phys") + a.int("len") <= b.int("phys") or b.int("phys") + b.int("len") <= a.int("phys")
    cma.write("a", 7)
    cma.verify("b")
    cma.free("b")
    cma.check("a", 7)
    cma.free("b", expect="ENOENT")
    assert cma.events == []


def test_each_test_gets_a_clean_driver(cma):
    # The block of the previous test's process is gone: its process was closed and the module reloaded.
    record = cma.info("a", expect="ENOENT")
    assert record.get("errno") == "ENOENT"


def test_guest_fixture_runs_commands(guest):
    out = guest.run("cat /proc/meminfo")
    assert out.status == 0 and "CmaTotal:" in out.stdout
    assert guest.reservation is not None and guest.reservation.size_mib == guest.target.cma_mib
