"""YAML loading that remembers where every value came from.

Config errors must name the file, the line and what was expected. PyYAML's
plain loaders forget positions, so this module composes the node tree and
converts it into dicts and lists that carry line numbers, then offers a
small schema checker over them. Pure functions over text, apart from
`load_file`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError


class LocatedDict(dict[str, Any]):
    """A mapping that knows its own line and the line of each key (1-based)."""

    source: str = "<string>"
    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LocatedList(list[Any]):
    """A sequence that knows its own line and each item's line."""

    source: str = "<string>"
    line: int = 0
    item_lines: list[int]


_constructor = yaml.constructor.SafeConstructor()


def _construct(node: yaml.Node) -> Any:
    return _constructor.construct_object(node, deep=True)


def _convert(node: yaml.Node, source: str) -> Any:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = LocatedDict()
        out.source, out.line, out.key_lines = source, line, {}
        for key_node, value_node in node.value:
            key = _construct(key_node)
            if not isinstance(key, str):
                raise ConfigError(f"{source}:{key_node.start_mark.line + 1}: keys must be strings, got {key!r}")
            if key in out:
                raise ConfigError(
                    f"{source}:{key_node.start_mark.line + 1}: duplicate key '{key}' "
                    f"(first at line {out.key_lines[key]})"
                )
            out.key_lines[key] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        seq = LocatedList()
        seq.source, seq.line, seq.item_lines = source, line, []
        for item in node.value:
            seq.item_lines.append(item.start_mark.line + 1)
            seq.append(_convert(item, source))
        return seq
    return _construct(node)


def load_text(text: str, source: str = "<string>") -> Any:
    """Parse YAML text into LocatedDict/LocatedList/scalars; syntax errors become ConfigError."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: invalid YAML: {exc.problem}") from None
    if node is None:
        raise ConfigError(f"{source}: the file is empty")
    return _convert(node, source)


def load_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return load_text(text, str(path))


# --- schema ---------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One key of a mapping: its type check, whether it must be there, and its default."""

    name: str
    check: Callable[[Any], Any]  # returns the converted value or raises ValueError(expected)
    required: bool = False
    default: Any = None
    doc: str = ""


@dataclass
class Schema:
    fields: list[Field] = field(default_factory=list)

    def names(self) -> list[str]:
        return [f.name for f in self.fields]


def where(mapping: LocatedDict, key: str | None = None) -> str:
    line = mapping.line_of(key) if key else mapping.line
    return f"{mapping.source}:{line}"


def expect_mapping(value: Any, context: str, source: str = "<string>", line: int = 0) -> LocatedDict:
    if not isinstance(value, LocatedDict):
        raise ConfigError(f"{source}:{line}: {context}: expected a mapping, got {_kind(value)}")
    return value


def validate(mapping: LocatedDict, schema: Schema, context: str) -> dict[str, Any]:
    """Check keys and types; return plain values with defaults filled in.

    Unknown keys are errors (a typo must not silently become a default).
    """
    for key in mapping:
        if key not in schema.names():
            raise ConfigError(
                f"{where(mapping, key)}: {context}: unknown key '{key}'; expected one of: {', '.join(schema.names())}"
            )
    out: dict[str, Any] = {}
    for f in schema.fields:
        if f.name not in mapping:
            if f.required:
                raise ConfigError(f"{where(mapping)}: {context}: missing required key '{f.name}' ({f.doc})")
            out[f.name] = f.default
            continue
        try:
            out[f.name] = f.check(mapping[f.name])
        except ValueError as exc:
            raise ConfigError(
                f"{where(mapping, f.name)}: {context}: key '{f.name}': expected {exc}, got {_show(mapping[f.name])}"
            ) from None
    return out


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return _kind(value)
    return f"{value!r}"


# --- type checks (each raises ValueError with what was expected) ----------


def is_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty string")
    return value


def is_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("an integer")
    return value


def is_positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("a positive integer")
    return value


def is_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("a positive number (seconds)")
    return float(value)


def is_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def is_str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("a list of strings")
    return list(value)


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return str(value)

    return check


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(value: Any) -> int:
    """Bytes from an int or a string like '128M', '4K', '1536000', '800*480*4'."""
    if isinstance(value, bool):
        raise ValueError("a size (bytes, or with K/M/G)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size (bytes, or with K/M/G)")
        return value
    if isinstance(value, str):
        text = value.strip().upper().removesuffix("IB").removesuffix("B")
        if "*" in text:
            product = 1
            for part in text.split("*"):
                product *= parse_size(part)
            return product
        unit = text[-1:] if text[-1:] in _SIZE_UNITS and text[-1:] else ""
        number = text[: len(text) - len(unit)] if unit else text
        if number.isdigit() or (number.startswith("0X") and _is_hex(number[2:])):
            return int(number, 0) * _SIZE_UNITS[unit]
    raise ValueError("a size (bytes, or with K/M/G, e.g. 128M)")


_SHARE = re.compile(r"^(?:(\d+(?:\.\d+)?)%|CMA(?:\*(\d+))?(?:/(\d+))?)$")


def parse_share(value: Any) -> tuple[int, int] | None:
    """(numerator, denominator) of a size written relative to the CMA area, or None.

    '50%' -> (50, 100), '12.5%' -> (125, 1000), 'cma' -> (1, 1), 'cma/2' -> (1, 2), 'cma*3/4' -> (3, 4).
    """
    if not isinstance(value, str):
        return None
    m = _SHARE.match(value.strip().upper().replace(" ", ""))
    if not m:
        return None
    percent, times, over = m.groups()
    if percent is not None:
        whole, _, frac = percent.partition(".")
        den = 100 * 10 ** len(frac)
        num = int(whole + frac)
    else:
        num, den = int(times or 1), int(over or 1)
    if num <= 0 or den <= 0 or num > den:
        raise ValueError("a share of the CMA area between 0 and all of it (e.g. 50%, cma/2)")
    return num, den


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789ABCDEF" for c in text)


def iter_items(seq: LocatedList) -> Iterator[tuple[int, Any]]:
    """(line, item) pairs of a located list."""
    yield from zip(seq.item_lines, seq, strict=True)
