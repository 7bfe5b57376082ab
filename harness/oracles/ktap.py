"""KTAP / TAP output (kselftest style): one result per test point."""

from __future__ import annotations

import re
from dataclasses import dataclass

RESULT = re.compile(r"^\s*(?P<ok>ok|not ok)\s+(?P<num>\d+)(?:\s+-?\s*(?P<desc>[^#]*?))?\s*(?:#\s*(?P<directive>.*))?$")


@dataclass(frozen=True)
class TestPoint:
    number: int
    name: str
    status: str  # pass | fail | skip
    directive: str = ""
    depth: int = 0  # KTAP subtest nesting (indentation / 4)

    def as_dict(self) -> dict[str, object]:
        return {"number": self.number, "name": self.name, "status": self.status, "directive": self.directive}


def parse_ktap(text: str) -> list[TestPoint]:
    """Test points in order. '# SKIP' is skip; '# TODO' with 'not ok' is not a failure (TAP rules)."""
    points = []
    for line in text.splitlines():
        m = RESULT.match(line)
        if not m:
            continue
        directive = (m.group("directive") or "").strip()
        upper = directive.upper()
        if upper.startswith("SKIP"):
            status = "skip"
        elif m.group("ok") == "ok" or upper.startswith("TODO"):
            status = "pass"
        else:
            status = "fail"
        depth = (len(line) - len(line.lstrip())) // 4
        points.append(TestPoint(int(m.group("num")), (m.group("desc") or "").strip(), status, directive, depth))
    return points


def plan(text: str) -> int | None:
    """The top-level plan '1..N', if any."""
    m = re.search(r"^1\.\.(\d+)", text, re.M)
    return int(m.group(1)) if m else None


TOTALS = re.compile(
    r"^#\s*Totals:\s*pass:(?P<pass>\d+)\s+fail:(?P<fail>\d+)\s+xfail:(?P<xfail>\d+)\s+"
    r"xpass:(?P<xpass>\d+)\s+skip:(?P<skip>\d+)\s+error:(?P<error>\d+)",
    re.M,
)


def totals(text: str) -> dict[str, int] | None:
    """kselftest's own count, '# Totals: pass:N fail:N xfail:N xpass:N skip:N error:N' (the last one)."""
    found = list(TOTALS.finditer(text))
    return {k: int(v) for k, v in found[-1].groupdict().items()} if found else None


def totals_problems(points: list[TestPoint], text: str) -> list[str]:
    """The test points must add up to the program's own Totals line, when it prints one.

    kselftest.h prints 'ok' for pass and xfail, 'ok # SKIP' for skip, 'not ok' for fail and error."""
    counted = totals(text)
    if counted is None:
        return []
    top = [p for p in points if p.depth == 0]
    seen = {s: sum(1 for p in top if p.status == s) for s in ("pass", "fail", "skip")}
    expected = {
        "pass": counted["pass"] + counted["xfail"],
        "fail": counted["fail"] + counted["error"] + counted["xpass"],
        "skip": counted["skip"],
    }
    return [
        f"the program's Totals line says {expected[s]} {s}, its test points say {seen[s]}"
        for s in ("pass", "fail", "skip")
        if seen[s] != expected[s]
    ]
