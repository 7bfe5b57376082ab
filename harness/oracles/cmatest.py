"""cma_test's @cma records (format: userland/README.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

PREFIX = "@cma "


@dataclass(frozen=True)
class CmaRecord:
    fields: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    def int(self, key: str) -> int | None:
        value = self.fields.get(key)
        if value is None:
            return None
        try:
            return int(value, 0)
        except ValueError:
            return None

    @property
    def op(self) -> str:
        return self.get("op")

    @property
    def ok(self) -> bool:
        return self.get("status") == "ok"

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.fields.items())


def parse_record(line: str) -> CmaRecord | None:
    """One record line -> fields; 'msg' runs to the end of the line."""
    if not line.startswith(PREFIX):
        return None
    body = line[len(PREFIX) :].strip()
    fields: dict[str, str] = {}
    while body:
        if body.startswith("msg="):
            fields["msg"] = body[4:]
            break
        word, _, body = body.partition(" ")
        key, sep, value = word.partition("=")
        if sep:
            fields[key] = value
        body = body.lstrip()
    return CmaRecord(fields)


def parse_records(text: str) -> list[CmaRecord]:
    return [r for r in (parse_record(line) for line in text.splitlines()) if r is not None]
