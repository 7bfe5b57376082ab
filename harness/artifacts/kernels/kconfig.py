"""Kernel config fragments: parse, merge in order, and check what kconfig actually kept.

Pure functions over text. A fragment uses .config syntax:

    CONFIG_CMA=y
    CONFIG_CMA_SIZE_MBYTES=16
    CONFIG_LOCALVERSION="-fast"
    # CONFIG_SLOB is not set

Later fragments override earlier ones. kconfig silently drops an option
whose dependencies are not met; `dropped()` compares the merged request with
the resulting .config so that a dropped option is an error that names it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Option:
    name: str  # CONFIG_FOO
    value: str | None  # y, m, 16, "string"; None: not set
    where: str  # file:line it came from

    def render(self) -> str:
        return f"{self.name}={self.value}" if self.value is not None else f"# {self.name} is not set"


def parse(text: str, source: str = "<string>", *, strict: bool = True) -> dict[str, Option]:
    """Options of a fragment or .config in file order. strict: anything else (but comments) is an error."""
    options: dict[str, Option] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{source}:{number}"
        if m := _UNSET.match(line):
            options[m.group(1)] = Option(m.group(1), None, where)
            continue
        if m := _SET.match(line):
            value = m.group(2).strip()
            if value == "n":
                value = None
            elif strict and not _valid_value(value):
                raise ConfigError(
                    f"{where}: bad value for {m.group(1)}: {value!r} (expected y, m, a number or a string)"
                )
            options[m.group(1)] = Option(m.group(1), value, where)
            continue
        if not line or line.startswith("#") or not strict:
            continue
        raise ConfigError(
            f"{where}: not a kernel config line: {raw!r} (expected CONFIG_X=value or '# CONFIG_X is not set')"
        )
    return options


def _valid_value(value: str) -> bool:
    if value in ("y", "m"):
        return True
    if re.fullmatch(r"-?\d+|0x[0-9a-fA-F]+", value):
        return True
    return len(value) >= 2 and value[0] == value[-1] == '"'


def merge(fragments: list[tuple[str, str]]) -> dict[str, Option]:
    """(source, text) fragments merged in order: a later value replaces an earlier one."""
    merged: dict[str, Option] = {}
    for source, text in fragments:
        for name, option in parse(text, source).items():
            merged.pop(name, None)  # keep the order of the last writer
            merged[name] = option
    return merged


def merge_files(paths: list[Path]) -> dict[str, Option]:
    fragments = []
    for path in paths:
        try:
            fragments.append((str(path), path.read_text()))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read kernel config fragment: {exc.strerror}") from None
    return merge(fragments)


def render(merged: dict[str, Option]) -> str:
    """The merged fragment as one file (what KCONFIG_ALLCONFIG reads), with where each line came from."""
    lines = ["# merged by cma-harness; do not edit (the sources are named on each line)"]
    for option in merged.values():
        lines.append(f"{option.render()}  # {option.where}" if option.value is None else option.render())
    return "\n".join(lines) + "\n"


def render_plain(merged: dict[str, Option]) -> str:
    """The merged options only: what the cache key hashes (comments and file names do not matter)."""
    return "".join(option.render() + "\n" for option in merged.values())


def dropped(merged: dict[str, Option], dotconfig: str) -> list[str]:
    """One message per requested option that the final .config does not have as requested."""
    actual = parse(dotconfig, ".config", strict=False)
    problems = []
    for option in merged.values():
        have = actual.get(option.name)
        have_value = have.value if have else None
        if not _same(option.value, have_value):
            shown = "not set" if have_value is None else f"={have_value}"
            if have is None and option.value is not None:
                shown = "absent (unknown symbol, or its dependencies are not met)"
            problems.append(f"{option.render()} ({option.where}): the configured kernel has it {shown}")
    return problems


def _same(want: str | None, have: str | None) -> bool:
    if want is None or have is None:
        return want == have
    if want == have:
        return True
    try:
        return int(want, 0) == int(have, 0)
    except ValueError:
        return False


def cache_key(source_sha256: str, merged: dict[str, Option], make_arch: str, toolchain: str, recipe: str) -> str:
    """What a built kernel depends on: source package, merged config, architecture, compiler, build recipe."""
    digest = hashlib.sha256()
    for part in (source_sha256, render_plain(merged), make_arch, toolchain, recipe):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()
